"""What a study notebook shows for one study, in one call: the paired differences to the
reference with their 95% intervals (table, bar chart and verdict sentences, the paper's
difference beside each), the measured mean of each variant and the paper's table (or tables:
COCO and Cityscapes)."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

from spatialflow.studies import (compare, describe_comparison, describe_reached,
                                 format_comparison, format_table, study_record, summarize)
from viz.plots import difference_bars

#: the paper's rows of one study: a table (COCO val) or ``{data set: rows}``
Paper = Union[None, Sequence[dict], Mapping[str, Sequence[dict]]]


def study_parts(name: str, rows: Sequence[dict], reference, paper: Paper = None,
                metrics: Sequence[str] = ("pq", "pq_th", "pq_st"), by: str = "variant",
                ylabel: str = "PQ", target: Optional[float] = None) -> List:
    """The parts of :func:`show_study`, in order: markdown strings and one matplotlib figure
    (variants in the order of their first row). ``paper``: the paper's rows of this study,
    COCO val, or ``{"COCO val": rows, "Cityscapes val": rows}``, each shown as a table; the
    sentences quote the first. ``by``: the key the study varies and the paper's rows are
    keyed by (``"variant"``; ``"stages"`` for Tables VII and VIII), ``reference`` its value
    in the reference row. The sentences end with the precision reached
    (:func:`~spatialflow.studies.describe_reached`; ``target``: the half-width aimed at)."""
    tables = _tables(paper)
    comparison = compare(rows, reference, metrics, by, next(iter(tables.values()), None))
    return _parts(name, comparison, rows, reference, tables, metrics, by, ylabel, target)


def _parts(name, comparison, rows, reference, tables, metrics, by, ylabel, target) -> List:
    """:func:`study_parts` of a study's :func:`~spatialflow.studies.compare`."""
    seeds = max((e[m]["n"] for e in comparison for m in metrics), default=0)
    note = "" if len(tables) < 2 else f"; the paper's differences are those of {next(iter(tables))}"
    parts = [f"**{name}, measured**: each variant minus {reference} with the same seed, mean and "
             f"95% CI over {seeds} seed{'s' if seeds != 1 else ''} (points{note})\n\n"
             + format_comparison(comparison, metrics, by),
             difference_bars(comparison, metrics, by, title=name,
                             ylabel=f"difference in {ylabel} (points)"),
             describe_comparison(comparison, metrics, by) + "\n\n"
             + describe_reached(comparison, metrics, target),
             f"**{name}, measured means** (over seeds; compare variants by the differences "
             f"above)\n\n" + format_table(_means(rows, metrics, by), [by, "seeds", *metrics],
                                            exact=[by])]
    for data, table in tables.items():
        if all("reference" in r for r in table):  # the paper gives only differences
            parts.append(f"**{name}, paper's differences** ({data}, ResNet-50)\n\n"
                         + format_table(table, [by, "reference", *metrics], exact=[by]))
        else:
            parts.append(f"**{name}, paper** ({data}, ResNet-50)\n\n"
                         + format_table(table, [by, *metrics], exact=[by]))
    return parts


def _means(rows, metrics, by) -> List[dict]:
    return [{by: e[by], "seeds": len(e["seeds"]), **{m: e[m]["mean"] for m in metrics}}
            for e in summarize(rows, metrics, by)]


def show_study(name: str, rows: Sequence[dict], reference, paper: Paper = None,
               metrics: Sequence[str] = ("pq", "pq_th", "pq_st"), by: str = "variant",
               ylabel: str = "PQ", target: Optional[float] = None) -> dict:
    """Display :func:`study_parts` in a notebook (markdown rendered, the figure drawn); returns
    the study's :func:`~spatialflow.studies.statistics.study_record`, what its JSON keeps."""
    from IPython.display import Markdown, display

    tables = _tables(paper)
    record = study_record(rows, reference, metrics, by, next(iter(tables.values()), None))
    for part in _parts(name, record["rows"], rows, reference, tables, metrics, by, ylabel,
                       target):
        display(Markdown(part) if isinstance(part, str) else part)
    return record


def _tables(paper: Paper) -> dict:
    """The paper's tables by data set (a single table is COCO val's)."""
    return {} if not paper else dict(paper) if isinstance(paper, Mapping) else {"COCO val": paper}
