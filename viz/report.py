"""What a study notebook shows for one study, in one call: the measured table (mean ± std over
seeds), the paper's table, the bar chart and the plain sentences on the differences."""

from __future__ import annotations

from typing import List, Optional, Sequence

from spatialflow.studies import describe_differences, format_summary, format_table, summarize
from viz.plots import ablation_bars


def study_parts(name: str, rows: Sequence[dict], reference: str,
                paper: Optional[Sequence[dict]] = None,
                metrics: Sequence[str] = ("pq", "pq_th", "pq_st")) -> List:
    """The parts of :func:`show_study`, in order: markdown strings and one matplotlib figure
    (variants in the order of their first row)."""
    parts = [f"**{name}, measured** (mean ± std over seeds)\n\n"
             + format_summary(summarize(rows, metrics), metrics)]
    if paper:
        parts.append(f"**{name}, paper** (COCO val, ResNet-50)\n\n"
                     + format_table(paper, ["variant", *metrics]))
    parts.append(ablation_bars(rows, metrics, title=name))
    parts.append(describe_differences(rows, reference, metrics, paper=paper))
    return parts


def show_study(name: str, rows: Sequence[dict], reference: str,
               paper: Optional[Sequence[dict]] = None,
               metrics: Sequence[str] = ("pq", "pq_th", "pq_st")) -> None:
    """Display :func:`study_parts` in a notebook (markdown rendered, the figure drawn)."""
    from IPython.display import Markdown, display

    for part in study_parts(name, rows, reference, paper, metrics):
        display(Markdown(part) if isinstance(part, str) else part)
