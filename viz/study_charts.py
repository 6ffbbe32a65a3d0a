"""The difference charts of saved studies, drawn again from their JSON alone (no runs needed)::

    python -m viz.study_charts docs/results/07_subnetworks_and_detection.json [--out docs/figures]

A study notebook saves its studies with :func:`~spatialflow.studies.save_rows` as ``{name:
study_record}``; each record holds the paired comparison (per row and metric the difference,
its 95% interval and the verdict). The runs themselves live in the ignored ``runs/`` folder,
so the JSON is what a repository can keep of a study; this draws each study's
:func:`~viz.plots.difference_bars` from it, one PNG per study.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from viz.plots import difference_bars

#: the y label of a study whose metrics are box AP (Table XII)
_BOX_METRICS = {"ap", "ap50", "ap75"}


def chart_name(study: str) -> str:
    """The PNG name of a study: ``'Table VII'`` -> ``'table_vii.png'``, ``'Fig. 4'`` ->
    ``'fig_4.png'``."""
    return re.sub(r"[^a-z0-9]+", "_", study.lower()).strip("_") + ".png"


def study_charts(path, out, dpi: int = 100, note: Optional[str] = None) -> Dict[str, Path]:
    """Write one difference chart per study of the study JSON ``path`` into ``out``
    (:func:`chart_name`), titled with the study's name and ``note`` (e.g. what trained it);
    returns ``{study: png}``."""
    path, out = Path(path), Path(out)
    studies = json.loads(path.read_text())
    if not isinstance(studies, dict) or not all(
            isinstance(r, dict) and "rows" in r for r in studies.values()):
        raise ValueError(f"{path}: not a study JSON ({{name: study record with 'rows'}}, as "
                         "spatialflow.studies.save_rows writes a notebook's studies)")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, record in studies.items():
        metrics = record["metrics"]
        ylabel = "box AP" if set(metrics) <= _BOX_METRICS else "PQ"
        fig = difference_bars(record["rows"], metrics, record["by"],
                              title=f"{name}: {note}" if note else name,
                              ylabel=f"difference in {ylabel} (points)")
        target = out / chart_name(name)
        fig.savefig(target, dpi=dpi, bbox_inches="tight")
        written[name] = target
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="study JSON files (a notebook's save_rows output)")
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs")
    p.add_argument("--note", default=None, help="added to each title, e.g. the runs' settings")
    p.add_argument("--dpi", type=int, default=100)
    args = p.parse_args(argv)
    for path in args.json:
        for name, png in study_charts(path, args.out, args.dpi, args.note).items():
            print(f"{name}: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
