"""Whole training processes before and after: ``spatialflow train`` of ``tiny-cpu`` for
``--iters`` iterations, the code of another tree (``../shared/tools/run_at.py``) and of this
one, alternating, one seed after another, on the same data; written as ``OUT.md`` and
``OUT.json``.

    git archive 04e2d48 | tar -x -C /tmp/base
    python benchmarks/train_speed.py --before /tmp/base --data DATA --seeds 0 1 2 \\
        --out benchmarks/results/train_speed

Per seed: the wall time of the process (start-up, data reading, training, checkpoints and the
final evaluation on the val split), its images per second, the loss every ``log_every``
iterations and PQ / PQ_Th / box AP at the end; the after / before ratio of the wall times
and the paired difference of each final figure, with its 95% t-interval over the seeds.
``--reuse``: keep runs already finished in ``--runs`` (their ``wall_s.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
RUN_AT = HERE.parent / "shared" / "tools" / "run_at.py"


def paired(before, after) -> dict:
    """Mean of ``after - before`` over the seeds with its 95% t-interval
    (:func:`spatialflow.studies.t_interval`; NaN bounds for one seed)."""
    sys.path.insert(0, str(HERE))
    from spatialflow.studies import t_interval

    d = [a - b for a, b in zip(after, before)]
    t = t_interval(d)
    return {"diff": t["mean"], "ci_low": t["low"], "ci_high": t["high"], "per_seed": d}


def train_once(side: str, tree: Path, data: Path, seed: int, iters: int, run: Path,
               reuse: bool) -> dict:
    """One ``spatialflow train`` process (its wall time measured here), then its log and
    metrics."""
    stamp = run / "wall_s.txt"
    if not (reuse and stamp.is_file() and (run / "model_final.pt").is_file()):
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        cli = ([sys.executable, str(RUN_AT), str(tree)] if side == "before"
               else [sys.executable, "-m", "spatialflow.cli"])
        start = time.perf_counter()
        subprocess.run(cli + ["train", "--preset", "tiny-cpu", "--set", f"data.root={data}",
                              f"train.max_iters={iters}", f"train.seed={seed}", "--out",
                              str(run), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(f"{time.perf_counter() - start}\n")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    final = [r for r in records if "eval" in r][-1]
    return {"side": side, "seed": seed, "wall_s": float(stamp.read_text()),
            "images_per_s": statistics.median(r["images_per_s"] for r in losses),
            "loss": {r["iter"]: r["loss"] for r in losses},
            "PQ": 100 * final["eval"]["All"]["pq"], "PQ_Th": 100 * final["eval"]["Things"]["pq"],
            "box AP": 100 * final["bbox"]["AP"]}


def report(rows, command: str, machine: dict, iters: int) -> str:
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["side"], r["seed"]): r for r in rows}
    lines = [f"# {iters}-iteration training processes, before and after\n", f"`{command}`\n",
             f"Machine: {machine['cpu_model']}, {machine['threads']} threads, AMX "
             f"{'yes' if machine['amx'] else 'no'}, AVX512-BF16 "
             f"{'yes' if machine['avx512_bf16'] else 'no'}. Runs alternate before / after, "
             "seed by seed, nothing else running.\n",
             "| seed | before s | after s | after / before speed | before img/s | after img/s |",
             "|---:|---:|---:|---:|---:|---:|"]
    for s in seeds:
        b, a = by[("before", s)], by[("after", s)]
        lines.append(f"| {s} | {b['wall_s']:.0f} | {a['wall_s']:.0f} | "
                     f"{b['wall_s'] / a['wall_s']:.2f}x | {b['images_per_s']:.1f} | "
                     f"{a['images_per_s']:.1f} |")
    total_b = sum(by[("before", s)]["wall_s"] for s in seeds)
    total_a = sum(by[("after", s)]["wall_s"] for s in seeds)
    lines += [f"\nAll seeds: {total_b:.0f} s before, {total_a:.0f} s after: "
              f"**{total_b / total_a:.2f}x** the images per second of a whole process.\n",
              "| at the end (paired, after - before) | per seed | mean | 95% CI |",
              "|---|---|---:|---|"]
    for key in ("PQ", "PQ_Th", "box AP"):
        p = paired([by[("before", s)][key] for s in seeds], [by[("after", s)][key] for s in seeds])
        lines.append(f"| {key} | {', '.join(f'{x:+.1f}' for x in p['per_seed'])} | "
                     f"{p['diff']:+.1f} | {p['ci_low']:+.1f} to {p['ci_high']:+.1f} |")
    marks = sorted(by[("before", seeds[0])]["loss"])
    lines += ["\nThe loss per iteration (sum of the four terms, at the logged iteration; before "
              "/ after):\n", "| iteration | " + " | ".join(f"seed {s}" for s in seeds)
              + " | paired mean difference (95% CI) |",
              "|---:|" + "---|" * (len(seeds) + 1)]
    for it in marks:
        b = [by[("before", s)]["loss"].get(it) for s in seeds]
        a = [by[("after", s)]["loss"].get(it) for s in seeds]
        if None in a or None in b:
            continue
        p = paired(b, a)
        lines.append(f"| {it} | " + " | ".join(f"{x:.3f} / {y:.3f}" for x, y in zip(b, a))
                     + f" | {p['diff']:+.3f} ({p['ci_low']:+.3f} to {p['ci_high']:+.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the other source tree (holds spatialflow/)")
    p.add_argument("--data", required=True, help="a make-data folder (tiny-cpu's scenes)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--runs", default="runs/train_speed", help="where the runs go")
    p.add_argument("--reuse", action="store_true", help="keep finished runs")
    p.add_argument("--out", default="benchmarks/results/train_speed")
    args = p.parse_args(argv)
    from spatialflow.benchmark.timing import machine_info
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    rows = []
    for seed in args.seeds:
        for side, tree in (("before", Path(args.before).resolve()), ("after", HERE)):
            print(f"{side}, seed {seed}", flush=True)
            rows.append(train_once(side, tree, Path(args.data).resolve(), seed, args.iters,
                                   Path(args.runs) / f"{side}-s{seed}", args.reuse))
    command = "python benchmarks/train_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    machine = machine_info("cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(report(rows, command, machine, args.iters))
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": machine,
                                                    "runs": rows}, indent=1))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
