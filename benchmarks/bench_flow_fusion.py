"""Would fusing the flows' adaptation convs pay? Time it before building it.

    python benchmarks/bench_flow_fusion.py [--size 800] [--channels 256] [--repeat 15]

At each stage j of P3-P5 the reg->cls and the reg->stuff flows both read ``P_reg[i,j]``
(eq 3): two 3x3 ``C -> C`` convs (psi) on one input. They could run as one ``C -> 2C`` conv
with the two weights stacked, split afterwards: the same FLOPs and outputs in one larger
matrix product. This times both ways at the feature sizes of an image of shorter edge
``--size`` (4:3, padded to 32), in NCHW and channels_last, alternating, and checks the outputs
agree. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spatialflow.benchmark.timing import image_shape, machine_info  # noqa: E402
from spatialflow.data.transforms import pad_to_divisible  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=800, help="shorter edge (default 800)")
    ap.add_argument("--channels", type=int, default=256, help="FPN channels (default 256)")
    ap.add_argument("--repeat", type=int, default=15, help="timed runs of each (median)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    h, w = pad_to_divisible(*image_shape(a.size), 32)
    c = a.channels
    rows = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for level, stride in (("P3", 8), ("P4", 16), ("P5", 32)):
            x = torch.randn(1, c, h // stride, w // stride).to(memory_format=fmt)
            cls_psi, stuff_psi = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
            fused = nn.Conv2d(c, 2 * c, 3, padding=1)
            with torch.no_grad():
                fused.weight.copy_(torch.cat([cls_psi.weight, stuff_psi.weight]))
                fused.bias.copy_(torch.cat([cls_psi.bias, stuff_psi.bias]))
            for m in (cls_psi, stuff_psi, fused):
                m.to(memory_format=fmt)

            def two():
                return cls_psi(x), stuff_psi(x)

            def one():
                return fused(x).split(c, 1)

            times = {"two": [], "fused": []}
            with torch.inference_mode():
                same = all(torch.allclose(p, q, atol=1e-4) for p, q in zip(two(), one()))
                for _ in range(3):
                    two(), one()
                for _ in range(a.repeat):
                    for name, fn in (("two", two), ("fused", one)):
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
            t2, t1 = statistics.median(times["two"]), statistics.median(times["fused"])
            rows.append({"layout": layout, "level": level, "shape": [h // stride, w // stride],
                         "two_ms": 1000 * t2, "fused_ms": 1000 * t1, "speedup": t2 / t1,
                         "same": same})
    m = machine_info("cpu")
    print(f"| layout | level | feature map | two convs (ms) | one fused conv (ms) | speed-up | "
          f"same outputs |\n|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['level']} | {r['shape'][0]}x{r['shape'][1]}x{c} | "
              f"{r['two_ms']:.1f} | {r['fused_ms']:.1f} | {r['speedup']:.2f}x | "
              f"{'yes' if r['same'] else 'no'} |")
    print(f"\n{m['device']}, {m['threads']} threads, torch {m['torch']}; median of {a.repeat}")
    print(json.dumps({"machine": m, "size": [h, w], "channels": c, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
