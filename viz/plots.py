"""Matplotlib figures of runs and studies: training curves (also live, as a ``train(...,
on_log=...)`` callback), ablation bars over seeds, accuracy vs speed, and the loss-balance
(lambda) sweep.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
figure state, nothing is shown or left open); a notebook displays a returned figure as its
cell's value, a script saves it with ``fig.savefig(...)``. Values are plotted as given: pass
PQ in the same unit (fractions as ``metrics.json`` holds them, or percent as the paper prints
them) within one figure. :func:`training_curves` is the exception: it reads ``metrics.jsonl``
records (fractions) and plots PQ in percent.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.figure import Figure

from spatialflow.studies.statistics import LABELS

#: loss terms of a ``metrics.jsonl`` loss record, in plotting order
LOSS_KEYS = ("loss", "loss_cls", "loss_reg", "loss_thing", "loss_stuff")
#: ``(group of an eval record, line label)`` of the PQ panel
PQ_GROUPS = (("All", "PQ"), ("Things", "PQ_Th"), ("Stuff", "PQ_St"))
#: axis / legend labels of the metric keys of study rows
METRIC_LABELS = LABELS


# --- training curves -------------------------------------------------------------------------
def read_metrics(path) -> List[dict]:
    """The records of a run's ``metrics.jsonl`` (``path``: the run folder or the file). A
    partly written last line (a run still writing) is skipped; a missing file gives ``[]``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def split_records(records: Iterable[dict]) -> Tuple[List[dict], List[dict]]:
    """``(loss records, eval records)``, each sorted by ``iter``; when an iteration appears
    twice (a resumed run repeats the iterations after its last checkpoint) the later record
    wins."""
    losses: Dict[int, dict] = {}
    evals: Dict[int, dict] = {}
    for r in records:
        if "iter" not in r:
            continue
        if "eval" in r:
            evals[int(r["iter"])] = r
        elif "loss" in r or "lr" in r:
            losses[int(r["iter"])] = r
    return ([losses[k] for k in sorted(losses)], [evals[k] for k in sorted(evals)])


def _legend_or_note(ax, note: str) -> None:
    """A legend when the axes have lines, else ``note`` in their middle."""
    if ax.lines:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)


def training_curves(records_or_run_dir: Union[str, Path, Sequence[dict]],
                    fig: Optional[Figure] = None, title: Optional[str] = None) -> Figure:
    """Three panels of a training run: the loss terms (:data:`LOSS_KEYS`) and the learning rate
    against the iteration, and PQ / PQ_Th / PQ_St (percent) at each evaluation.

    Args:
        records_or_run_dir: ``metrics.jsonl`` records (as ``train``'s ``on_log`` receives
            them), or a run folder / ``metrics.jsonl`` path.
        fig: a figure to draw into (cleared first), e.g. to redraw live; default a new one.
        title: figure title.

    Lines carry their key as label (``"loss_cls"``, ``"lr"``, ``"PQ_Th"``, ...); the axes are
    ``fig.axes[0..2]`` (loss, learning rate, PQ).
    """
    if isinstance(records_or_run_dir, (str, Path)):
        records = read_metrics(records_or_run_dir)
    else:
        records = list(records_or_run_dir)
    losses, evals = split_records(records)
    if fig is None:
        fig = Figure(figsize=(13, 3.6), layout="constrained")
    else:
        fig.clear()
    ax_loss, ax_lr, ax_pq = fig.subplots(1, 3)

    iters = [r["iter"] for r in losses]
    for key in LOSS_KEYS:
        points = [(r["iter"], r[key]) for r in losses if r.get(key) is not None]
        if points:
            x, y = zip(*points)
            ax_loss.plot(x, y, label=key, linewidth=2.0 if key == "loss" else 1.0)
    ax_loss.set(title="losses", xlabel="iteration", ylabel="loss")
    _legend_or_note(ax_loss, "no loss record yet")

    lr = [(r["iter"], r["lr"]) for r in losses if r.get("lr") is not None]
    if lr:
        ax_lr.plot(*zip(*lr), label="lr")
    ax_lr.set(title="learning rate", xlabel="iteration", ylabel="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    for group, label in PQ_GROUPS:
        points = [(r["iter"], 100.0 * r["eval"][group]["pq"]) for r in evals
                  if group in r.get("eval", {}) and r["eval"][group].get("n", 1) != 0]
        if points:
            ax_pq.plot(*zip(*points), marker="o", label=label)
    ax_pq.set(title="PQ at evaluations", xlabel="iteration", ylabel="PQ (%)")
    _legend_or_note(ax_pq, "no evaluation yet")
    if iters:
        for ax in (ax_loss, ax_lr):
            ax.set_xlim(left=0)
    if title:
        fig.suptitle(title)
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG file contents of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class LiveCurves:
    """A ``train(..., on_log=LiveCurves())`` callback that keeps the records it receives and
    redraws :func:`training_curves` in a notebook output at each call.

    Args:
        output: where to draw: an ``ipywidgets.Output`` (default: a new one, also ``.widget``;
            display it, or the ``LiveCurves`` object, before training) or an IPython
            ``DisplayHandle`` (``display(..., display_id=True)``), whose ``update`` is called.
        every: redraw on every ``every``-th loss record (evaluation records always redraw).
        dpi: resolution of the drawn PNG.

    Attributes: ``records`` (all received), ``figure`` (redrawn in place), ``draws``.
    """

    def __init__(self, output=None, every: int = 1, dpi: int = 80, title: Optional[str] = None):
        if output is None:
            import ipywidgets

            output = ipywidgets.Output()
        self.output, self.widget = output, output
        self.every, self.dpi, self.title = max(1, int(every)), dpi, title
        self.records: List[dict] = []
        self.figure = Figure(figsize=(13, 3.6), layout="constrained")
        self.draws = 0
        self._losses = 0

    def __call__(self, record: dict) -> None:
        """Take one ``metrics.jsonl`` record; redraw when due."""
        self.records.append(dict(record))
        if "eval" not in record:
            self._losses += 1
        if "eval" in record or self._losses % self.every == 0:
            self.redraw()

    def redraw(self) -> None:
        """Draw the curves of all records so far into ``output``."""
        training_curves(self.records, fig=self.figure, title=self.title)
        png = figure_png(self.figure, self.dpi)
        text = f"<training curves: {len(self.records)} records>"
        try:
            import ipywidgets
            is_output = isinstance(self.output, ipywidgets.Output)
        except ImportError:  # pragma: no cover - ipywidgets is a dependency
            is_output = False
        if is_output:
            # replacing the Output's contents directly works with and without a kernel
            self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                    "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                             "text/plain": text}},)
        else:
            from IPython.display import Image

            self.output.update(Image(data=png, format="png"))
        self.draws += 1

    def _ipython_display_(self):
        from IPython.display import display

        display(self.output)


# --- studies: rows of results ------------------------------------------------------------------
def _grouped_axes(groups: int, metrics: int, min_width: float = 5.0):
    """A figure for grouped bars (``groups`` groups of ``metrics`` bars), at least
    ``min_width`` inches wide: ``(fig, ax, the x positions of each metric's bars, the bar
    width)``."""
    fig = Figure(figsize=(max(min_width, 1.5 + groups * (0.4 + 0.3 * metrics)), 3.8),
                 layout="constrained")
    x = np.arange(groups)
    width = 0.8 / max(1, metrics)
    return fig, fig.subplots(), [x + (k - (metrics - 1) / 2) * width for k in range(metrics)], width


def _group_ticks(ax, names: Sequence[str]) -> None:
    """The groups' names under their bars, slanted when there are more than four."""
    many = len(names) > 4
    ax.set_xticks(np.arange(len(names)), names, rotation=20 if many else 0,
                  ha="right" if many else "center")


def difference_bars(comparison: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
                    by: str = "variant", title: Optional[str] = None,
                    labels: Optional[Dict[str, str]] = None,
                    ylabel: str = "difference (points)") -> Figure:
    """The paired differences of a study (:func:`spatialflow.studies.compare`): one group per
    compared variant, one bar per metric at the mean per-seed difference to the reference, its
    error bar the 95% interval; the paper's difference, where it has one, as a black diamond
    on the bar; a line at 0.

    The bars of metric ``k`` form the ``k``-th ``BarContainer`` of ``fig.axes[0].containers``
    (labelled with :data:`METRIC_LABELS` or ``labels``). The title says what a bar is, how
    many seeds it pairs, and when a single seed leaves it without an interval.
    """
    if not comparison:
        raise ValueError("no compared variants (a study of the reference alone)")
    labels = {**METRIC_LABELS, **(labels or {})}
    # wide enough for the title's line on the interval and the legend beside the axes
    fig, ax, positions, width = _grouped_axes(len(comparison), len(metrics), 7.5)
    paper_drawn = False
    for m, pos in zip(metrics, positions):
        diffs = np.array([e[m]["diff"] for e in comparison], dtype=float)
        low = np.array([e[m]["ci_low"] for e in comparison], dtype=float)
        high = np.array([e[m]["ci_high"] for e in comparison], dtype=float)
        ax.bar(pos, np.nan_to_num(diffs), width, label=labels.get(m, m))
        known = np.isfinite(low) & np.isfinite(high)  # one seed: no interval, no error bar
        if known.any():
            yerr = np.array([diffs - low, high - diffs])[:, known]
            ax.errorbar(pos[known], diffs[known], yerr=yerr, fmt="none", capsize=3, color="0.2")
        paper = np.array([np.nan if e[m]["paper"] is None else e[m]["paper"]
                          for e in comparison], dtype=float)
        if np.isfinite(paper).any():
            ax.scatter(pos, paper, marker="D", s=18, color="black", zorder=3,
                       label=None if paper_drawn else "paper's difference")
            paper_drawn = True
    ax.axhline(0, color="0.3", linewidth=0.8)
    _group_ticks(ax, [str(e[by]) for e in comparison])
    refs = sorted({f"'{e['reference']}'" if by == "variant" else f"{by} = {e['reference']}"
                   for e in comparison})
    n = sorted({e[m]["n"] for e in comparison for m in metrics})
    if n[-1] > 1:
        what = (f"difference to {' / '.join(refs)}, paired by seed: mean and 95% CI over "
                f"{n[0] if len(n) == 1 else f'{n[0]}-{n[-1]}'} seeds")
    else:
        what = f"difference to {' / '.join(refs)}, one seed: no interval"
    ax.set(xlabel=by, ylabel=ylabel, title=f"{title}\n{what}" if title else what)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def accuracy_speed_plot(rows: Sequence[dict], title: Optional[str] = "accuracy vs speed",
                        xlabel: str = "speed (images/s)", ylabel: str = "PQ") -> Figure:
    """PQ against speed, one labelled point per row ``{"name", "fps", "pq", "source"}``;
    ``source`` ``"measured"`` (circles) or ``"paper"`` (squares), each a scatter labelled
    with its source (``fig.axes[0].collections``); names are annotations next to the points.
    Rows with a ``group`` and a ``scale`` (as :func:`spatialflow.studies.speed_points` gives
    them) are joined by a line per group in the order of their scales.
    Speeds measured here and the paper's (a V100) are not comparable in absolute terms; the
    plot shows the shape of the trade-off."""
    markers = {"measured": "o", "paper": "s"}
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.subplots()
    for r in rows:
        if r.get("source") not in markers:
            raise ValueError(f"source must be 'measured' or 'paper', got {r.get('source')!r} "
                             f"in {r}")
    groups: Dict[tuple, list] = {}
    for r in rows:
        if r.get("group") is not None and r.get("scale") is not None:
            groups.setdefault((r["source"], r["group"]), []).append(r)
    for (source, _), pts in groups.items():
        if len(pts) > 1:
            pts = sorted(pts, key=lambda r: r["scale"])
            ax.plot([r["fps"] for r in pts], [r["pq"] for r in pts], color="0.6", lw=1,
                    zorder=0)
    for source, marker in markers.items():
        pts = [r for r in rows if r["source"] == source]
        if not pts:
            continue
        ax.scatter([r["fps"] for r in pts], [r["pq"] for r in pts], marker=marker, s=40,
                   label=source)
        for r in pts:
            ax.annotate(str(r["name"]), (r["fps"], r["pq"]), xytext=(4, 4),
                        textcoords="offset points", fontsize="small")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.margins(x=0.25, y=0.15)  # room for the names right of the points
    if ax.collections:
        ax.legend(fontsize="small")
    return fig


def quality_curve(runs: Sequence[dict], metrics: Sequence[str] = ("pq_th", "pq"),
                  title: Optional[str] = "quality per minute", goals: Optional[Dict] = None
                  ) -> Figure:
    """Quality against training minutes (``spatialflow bench``'s quality per minute): one
    dot per run (``{"minutes", "seed", "pq_th", ...}`` rows, as the bench JSON's ``runs``),
    a line through the median over the seeds of each mark, per metric; ``goals``
    (``{metric: [(minutes, value), ...]}``) drawn as crosses."""
    labels = METRIC_LABELS
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    marks = sorted({r["minutes"] for r in runs})
    for k, m in enumerate(metrics):
        color = f"C{k}"
        ax.scatter([r["minutes"] for r in runs], [r[m] for r in runs], s=14, color=color,
                   alpha=0.6)
        medians = [float(np.median([r[m] for r in runs if r["minutes"] == t])) for t in marks]
        seeds = len({r["seed"] for r in runs})
        ax.plot(marks, medians, marker="o", color=color,
                label=f"{labels.get(m, m)} (median of {seeds} seed(s); dots: each run)")
        for t, v in (goals or {}).get(m, ()):
            ax.scatter([t], [v], marker="x", s=60, color=color,
                       label=f"goal {labels.get(m, m)} >= {v:g} at {t:g} min")
    ax.set(xlabel="training minutes", ylabel="PQ on the synthetic val split",
           title=title, xticks=marks)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="x-small", loc="lower right")
    return fig
