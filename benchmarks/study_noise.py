"""The noise of a study, measured: Table V's naive baseline and '+ both' trained with the same
seeds (paired), each scored on one val split, and the seed-0 models of both also scored on
disjoint val sets of ``--val`` images and of their first ``--small`` images; written as
``OUT.md`` and ``OUT.json``.

    python benchmarks/study_noise.py --runs /tmp/noise --iters 500 --seeds 0 1 2 3 4 5 6 7 \\
        --out benchmarks/results/study_noise --package
    python benchmarks/study_noise.py --package-from benchmarks/results/study_noise.json

The training data is ``tiny-cpu``'s synthetic set (2000 images of 128 px, seed 0) with a val
split of ``--val`` images; the disjoint val sets are synthetic sets of other seeds
(``--eval-seeds``, as ``spatialflow make-data synthetic --seed K`` writes them). Runs are
cached in ``--runs`` (:func:`spatialflow.studies.run_study`): a second call reads them back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from spatialflow.benchmark.timing import machine_info  # noqa: E402
from spatialflow.data.synthetic import make_synthetic  # noqa: E402
from spatialflow.engine.predict import evaluate_run  # noqa: E402
from spatialflow.evaluation import metrics_row  # noqa: E402
from spatialflow.studies import components_variants, run_study  # noqa: E402
from spatialflow.studies.variants import STUDY_VAL_IMAGES  # noqa: E402
from spatialflow.studies.planning import package_noise  # noqa: E402
from spatialflow.studies.noise import (evaluation_noise, format_evaluation_noise,  # noqa: E402
                                       format_seed_noise, seed_noise)
from spatialflow.studies.statistics import LABELS  # noqa: E402

METRICS = ("pq", "pq_th", "pq_st", "ap")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", help="study folder (runs and data, cached)")
    p.add_argument("--out", default="benchmarks/results/study_noise")
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--val", type=int, default=STUDY_VAL_IMAGES,
                   help="images of the val split and sets")
    p.add_argument("--small", type=int, default=100, help="the smaller val sets' images")
    p.add_argument("--eval-seeds", type=int, nargs="*", default=[11, 12, 13, 14, 15])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--package", action="store_true",
                   help="also write the paired spread the studies plan with "
                        "(spatialflow/studies/measured_noise.json)")
    p.add_argument("--package-from", nargs="+", metavar="OUT.json", default=[],
                   help="only write that spread from results written before, and stop")
    args = p.parse_args(argv)
    if args.package_from:
        return [package_noise(json.loads(Path(f).read_text())) for f in args.package_from]
    if not args.runs:
        p.error("--runs is required (unless --package-from)")
    runs = Path(args.runs)
    base, both = components_variants()[0], components_variants()[3]
    t0 = time.perf_counter()
    # the overrides of a notebook's study (notebook_settings), so that a notebook with the same
    # study folder and iterations reads these runs back
    rows = run_study([base, both], args.seeds, runs, "tiny-cpu",
                     [f"train.max_iters={args.iters}", f"data.synthetic.num_val={args.val}"],
                     workers=args.workers)
    t_study = time.perf_counter() - t0
    first = {r["variant"]: r["run"] for r in rows if r["seed"] == args.seeds[0]}
    scored = []
    for k in args.eval_seeds:
        folder = runs / f"val_seed{k}"
        if not (folder / "panoptic_val.json").is_file():
            make_synthetic(folder, num_train=1, num_val=args.val, size=128, seed=k)
        for name, run in first.items():
            for images in (args.val, args.small):
                out = Path(run) / "eval" / f"val_seed{k}_{images}"
                cached = out / "metrics.json"
                metrics = (json.loads(cached.read_text()) if cached.is_file() else
                           evaluate_run(run, folder, out, max_images=images, progress=False))
                scored.append({"variant": name, "val_set": k, "images": images,
                               **metrics_row(metrics)})
    evaluation = evaluation_noise(scored, METRICS, base.name, both.name)
    seeds = seed_noise(rows, METRICS, base.name, both.name)
    result = {"command": "python benchmarks/study_noise.py " + " ".join(sys.argv[1:]),
              "machine": machine_info(), "iters": args.iters, "seeds": args.seeds,
              "val_images": args.val, "study_s": t_study, "evaluation": evaluation,
              "seed": seeds, "runs": rows, "scored": scored}
    text = [f"# The noise of a study ({args.iters} iterations, val split of {args.val} images)",
            "", f"`{result['command']}`", "",
            f"Machine: {result['machine']['cpu_model']}, AMX {result['machine']['amx']}; the {len(rows)} runs took "
            f"{t_study / 60:.1f} minutes ({args.workers} side by side, evaluation included).",
            *([] if not args.eval_seeds else [
                "", "Evaluation noise: the seed-0 models of baseline and + both scored on "
                "disjoint synthetic val sets (seeds " + ", ".join(map(str, args.eval_seeds))
                + ").", "", *format_evaluation_noise(evaluation, LABELS)]), "",
            f"Seed noise: + both minus baseline with the same seed, scored on the val split of "
            f"{args.val} images.", "", *format_seed_noise(seeds, LABELS)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    if args.package:
        package_noise(result)
    return result


if __name__ == "__main__":
    main()
