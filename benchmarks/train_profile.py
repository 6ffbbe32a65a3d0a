"""The training step's profile before and after: ``spatialflow.benchmark.profile`` run on this
tree and on another one (an old commit unpacked with ``git archive``), side by side, each in a
fresh process, alternating; written as ``OUT.md`` and ``OUT.json``.

    git archive 04e2d48 | tar -x -C /tmp/base
    python benchmarks/train_profile.py --before /tmp/base --weights RUN \\
        --out benchmarks/results/train_profile

The other tree's model is profiled by this tree's profiler (its parts are found by the model's
attribute names; a part the old model has not, such as ``thing_loss``, counts as "other").
``--data`` is a ``make-data`` folder used by both (default: tiny-cpu's synthetic data, made
once in a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib.util, json, sys
tree, out, weights, data, steps = sys.argv[1:6]
sys.path[:] = [p for p in sys.path if p not in ("", ".")]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, tree)
import spatialflow
assert spatialflow.__file__.startswith(tree), spatialflow.__file__
spec = importlib.util.spec_from_file_location("train_profile_child", sys.argv[6])
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)
result = profile.profile_training(steps=int(steps), weights=None if weights == "-" else weights,
                                  data_root=data)
json.dump(result, open(out, "w"))
"""


def run_profile(tree: Path, weights, data: Path, steps: int, out: Path) -> dict:
    """One profile in a fresh process with ``tree``'s ``spatialflow`` and this tree's
    profiler."""
    subprocess.run([sys.executable, "-c", CHILD, str(tree), str(out), str(weights or "-"),
                    str(data), str(steps), str(HERE / "spatialflow" / "benchmark" / "profile.py")],
                   check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return json.loads(out.read_text())


def side_by_side(before: dict, after: dict) -> str:
    """Markdown: the parts of both profiles (ms an iteration and share), after's order."""
    b = {p["part"]: p for p in before["parts"]}
    a = {p["part"]: p for p in after["parts"]}
    names = [p["part"] for p in after["parts"]] + [n for n in b if n not in a]
    lines = ["| part | before ms | before share | after ms | after share |",
             "|---|---:|---:|---:|---:|"]
    for n in names:
        cells = []
        for side in (b, a):
            p = side.get(n)
            cells += ["-", "-"] if p is None else [f"{p['ms']:.1f}", f"{100 * p['share']:.1f}%"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append(f"| **iteration** (profiled) | {before['profiled_step_ms']:.0f} | 100% | "
                 f"{after['profiled_step_ms']:.0f} | 100% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the other source tree (holds spatialflow/)")
    p.add_argument("--weights", nargs="*", default=[], help="also profile from these runs' weights")
    p.add_argument("--data", default=None, help="make-data folder (default: made once)")
    p.add_argument("--steps", type=int, default=10, help="iterations profiled (default 10)")
    p.add_argument("--out", default="benchmarks/results/train_profile")
    args = p.parse_args(argv)
    from spatialflow.benchmark.profile import format_profile

    with tempfile.TemporaryDirectory(prefix="train_profile_") as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            from spatialflow.data.synthetic import make_synthetic
            make_synthetic(data, 2000, 100, 128, 0, progress=True)
        pairs = []
        for weights in [None, *args.weights]:
            got = {}
            for side, tree in (("before", Path(args.before).resolve()), ("after", HERE)):
                print(f"profiling {side} ({tree}), {weights or 'a fresh model'}", flush=True)
                got[side] = run_profile(tree, weights, data, args.steps,
                                        Path(tmp) / f"{side}.json")
            pairs.append({"weights": weights, **got})
    machine = pairs[0]["after"]["machine"]
    command = "python benchmarks/train_profile.py " + " ".join(argv if argv is not None
                                                              else sys.argv[1:])
    parts = [f"# The training step, profiled before and after\n\n`{command}`\n\n"
             f"Machine: {machine['cpu_model']}, {machine['threads']} threads, AMX "
             f"{'yes' if machine['amx'] else 'no'}, AVX512-BF16 "
             f"{'yes' if machine['avx512_bf16'] else 'no'}; torch {machine['torch']}. Before: "
             f"`{args.before}`; after: this tree. Self time of each part per iteration; "
             f"'(backward)' is the backward of the part's forward operators."]
    for pair in pairs:
        title = pair["weights"] or "a fresh model"
        parts.append(f"## {title}\n\n" + side_by_side(pair["before"], pair["after"]))
        for side in ("before", "after"):
            parts.append(f"### {side}\n\n" + format_profile(pair[side]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n\n".join(parts) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "profiles": pairs},
                                                   indent=1))
    print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
