"""Time ``make_synthetic``: how long the built-in synthetic dataset takes to write.

    python benchmarks/bench_synthetic.py [--num 1000] [--size 256] [--workers N] [--seed 0]

Generates ``--num`` images (80% train, 20% val) into a temporary directory, then prints a small
markdown table and one JSON line with images, size, workers, seconds and images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spatialflow.data.synthetic import data_stats, make_synthetic  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=1000, help="images in total (train + val)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: min(2, cpus))")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    num_val = args.num // 5
    with tempfile.TemporaryDirectory(prefix="bench_synthetic_") as tmp:
        t0 = time.perf_counter()
        make_synthetic(tmp, num_train=args.num - num_val, num_val=num_val, size=args.size,
                       seed=args.seed, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
        summary = data_stats(tmp)
        mbytes = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
    segments = sum(sum(c["normal"] + c["crowd"] for c in s["segments"].values()) for s in summary.values())
    result = {"benchmark": "synthetic", "images": args.num, "size": args.size, "workers": workers,
              "seconds": round(seconds, 3), "images_per_s": round(args.num / seconds, 1),
              "segments": segments, "megabytes": round(mbytes, 1)}
    print("| images | size | workers | seconds | images/s | segments | MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.num} | {args.size} | {workers} | {seconds:.2f} | {result['images_per_s']:.1f} "
          f"| {segments} | {result['megabytes']:.1f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
