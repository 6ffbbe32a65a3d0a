"""What a study notebook shows for one study, in one call: the measured table (mean ± std over
seeds), the paper's table (or tables: COCO and Cityscapes), the bar chart and the plain sentences
on the differences."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

from spatialflow.studies import describe_differences, format_summary, format_table, summarize
from viz.plots import ablation_bars

#: the paper's rows of one study: a table (COCO val) or ``{data set: rows}``
Paper = Union[None, Sequence[dict], Mapping[str, Sequence[dict]]]


def study_parts(name: str, rows: Sequence[dict], reference, paper: Paper = None,
                metrics: Sequence[str] = ("pq", "pq_th", "pq_st"), by: str = "variant",
                ylabel: str = "PQ") -> List:
    """The parts of :func:`show_study`, in order: markdown strings and one matplotlib figure
    (variants in the order of their first row). ``paper``: the paper's rows of this study,
    COCO val, or ``{"COCO val": rows, "Cityscapes val": rows}``, each shown as a table; the
    sentences quote the first. ``by``: the key the study varies and the paper's rows are
    keyed by (``"variant"``; ``"stages"`` for Tables VII and VIII), ``reference`` its value
    in the reference row."""
    tables = {} if not paper else (dict(paper) if isinstance(paper, Mapping)
                                   else {"COCO val": paper})
    parts = [f"**{name}, measured** (mean ± std over seeds)\n\n"
             + format_summary(summarize(rows, metrics, by), metrics, by)]
    for data, table in tables.items():
        parts.append(f"**{name}, paper** ({data}, ResNet-50)\n\n"
                     + format_table(table, [by, *metrics]))
    parts.append(ablation_bars(rows, metrics, title=name, ylabel=ylabel))
    first = next(iter(tables.values()), None)
    text = describe_differences(rows, reference, metrics, paper=first, by=by)
    if len(tables) > 1:
        text += f"\n\n(The paper's differences quoted are those of {next(iter(tables))}.)"
    parts.append(text)
    return parts


def show_study(name: str, rows: Sequence[dict], reference, paper: Paper = None,
               metrics: Sequence[str] = ("pq", "pq_th", "pq_st"), by: str = "variant",
               ylabel: str = "PQ") -> None:
    """Display :func:`study_parts` in a notebook (markdown rendered, the figure drawn)."""
    from IPython.display import Markdown, display

    for part in study_parts(name, rows, reference, paper, metrics, by, ylabel):
        display(Markdown(part) if isinstance(part, str) else part)
