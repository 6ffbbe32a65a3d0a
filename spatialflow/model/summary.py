"""Model size and FLOPs: parameters and GFLOPs of each part of a :class:`SpatialFlow`.

``model_summary(model, 800)`` runs ONE eval forward pass of one synthetic ``800 x 800`` image
under :class:`torch.utils.flop_counter.FlopCounterMode` and maps its per-module breakdown onto
the parts of the network (backbone, FPN, the four towers, the four flows, the four heads and
whatever falls outside them). ``format_summary_table(rows)`` renders the rows as markdown.

What is counted (FlopCounterMode counts a multiply-add as 2 FLOPs):

* every ``aten.convolution`` (convs, the thing head's transposed conv) and matrix product;
* torchvision's ``DeformConv2d`` is a custom op FlopCounterMode does not see: its FLOPs are
  added analytically as those of the equivalent plain conv, ``2 * Cin/groups * Cout * kh * kw *
  Hout * Wout`` per image (the bilinear sampling and the modulation are not counted).

Not counted (no FLOP formula in FlopCounterMode, or taken out): RoIAlign (the matrix products
of its separable form on a CPU, :mod:`spatialflow.model.roi_align`, are subtracted, so the count
does not depend on the device or the map size), normalisation layers (GroupNorm,
frozen BatchNorm), ReLU / sigmoid / softmax and other element-wise ops, bilinear upsampling,
box decoding, NMS and mask pasting. These are small next to the convolutions.

The thing head runs on every detection, so its cost depends on how many boxes survive the
post-processing. With random weights that number is arbitrary; the summary therefore sets
``score_thresh = 0`` for the pass, which gives the full ``detections_per_img`` (100) boxes, the
worst case and what the paper's inference sends to the thing head ("top-100 scoring boxes").
Images are padded to a multiple of ``model.size_divisibility`` before the backbone: 32 (the
anchors sit at each level's true stride), so an 800 x 1067 image is processed as 800 x 1088;
runs trained before that say 128 in their config (896 x 1152).
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import DeformConv2d, MultiScaleRoIAlign


Size = Union[int, Sequence[int]]

# (part, module path inside the model); flows get their direction from ``flows.source``
_PARTS: Tuple[Tuple[str, str], ...] = (
    ("backbone", "backbone.body"),
    ("fpn", "backbone.fpn"),
    ("cls tower", "subnets.cls_tower"),
    ("reg tower", "subnets.reg_tower"),
    ("stuff tower", "subnets.stuff_tower"),
    ("thing tower", "subnets.thing_tower"),
    ("flow {src}->{peer}", "subnets.reg_to_cls"),
    ("flow {src}->stuff", "subnets.reg_to_stuff"),
    ("flow {src}->thing", "subnets.reg_to_thing"),
    ("flow stuff->thing", "subnets.stuff_to_thing"),
    ("cls head", "head.classification_head"),
    ("reg head", "head.regression_head"),
    ("thing head", "thing_head"),
    ("stuff head", "stuff_head"),
)
OTHER = "other (anchors, post-processing)"
TOTAL = "total"


def image_hw(image_size: Size) -> Tuple[int, int]:
    """``(h, w)`` of an image size given as one int (a square) or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def _get(model: nn.Module, path: str) -> Optional[nn.Module]:
    """``model.get_submodule(path)``, or None for a part that is switched off (None)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def param_count(module: Optional[nn.Module]) -> int:
    """Parameters of ``module`` (0 for ``None``)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _deform_conv_flops(module: DeformConv2d, args, output: torch.Tensor) -> int:
    """FLOPs of the plain conv a ``DeformConv2d`` call stands for (2 per multiply-add)."""
    n, c_out, h, w = output.shape
    kh, kw = module.kernel_size
    return 2 * n * c_out * h * w * (module.in_channels // module.groups) * kh * kw


def _flops_under(counts: Dict[str, int], name: str) -> int:
    """FLOPs inside the module called ``name``. FlopCounterMode's count of a module includes
    its submodules', but containers that are never called themselves (the towers and flows are
    ``ModuleList``s) have no entry: sum their outermost called descendants instead."""
    if name in counts:
        return counts[name]
    total = 0
    for key, flops in counts.items():
        if not key.startswith(name + "."):
            continue
        parts = key[len(name) + 1:].split(".")
        if not any(f"{name}.{'.'.join(parts[:i])}" in counts for i in range(1, len(parts))):
            total += flops
    return total


class FlopCount:
    """``with FlopCount(model) as count: ...``: the FLOPs of what runs inside, counted by
    ``FlopCounterMode`` (a multiply-add = 2) plus, for ``model``'s ``DeformConv2d`` modules
    (which the counter does not see), the analytic FLOPs of the equivalent plain conv.
    ``count.total``: all FLOPs; ``count.by_module``: FlopCounterMode's per-module totals
    (module names prefixed with the root module's class name, and ``"Global"``);
    ``count.deform``: the deformable-conv FLOPs per module path. The one FLOP counter of the
    project: ``spatialflow info`` and ``spatialflow bench`` both use it."""

    def __init__(self, model: Optional[nn.Module] = None):
        self.model = model
        self.deform: Dict[str, int] = {}
        self._counter = FlopCounterMode(display=False)
        self._handles: list = []

    def __enter__(self) -> "FlopCount":
        if self.model is not None:
            names = {m: n for n, m in self.model.named_modules()}
            for module in self.model.modules():
                if isinstance(module, DeformConv2d):
                    def hook(mod, args, out):
                        key = names[mod]
                        self.deform[key] = self.deform.get(key, 0) + _deform_conv_flops(
                            mod, args, out)
                    self._handles.append(module.register_forward_hook(hook))
        self._counter.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._counter.__exit__(*exc)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _roi_align_keys(self) -> List[str]:
        """The counter's names of ``model``'s RoIAlign modules (their FLOPs are taken out)."""
        if self.model is None:
            return []
        root = type(self.model).__name__
        return [f"{root}.{n}" for n, m in self.model.named_modules()
                if isinstance(m, MultiScaleRoIAlign) and n]

    @property
    def by_module(self) -> Dict[str, int]:
        counts = {k: sum(v.values()) for k, v in self._counter.get_flop_counts().items()}
        for roi in self._roi_align_keys():
            flops = counts.get(roi, 0)
            for key in counts:  # the module itself, its parents and "Global"
                if key == "Global" or roi == key or roi.startswith(key + "."):
                    counts[key] -= flops
        return counts

    @property
    def total(self) -> int:
        counted = self._counter.get_total_flops()
        if self._roi_align_keys():
            counted = self.by_module.get("Global", counted)
        return counted + sum(self.deform.values())


def count_flops(fn: Callable[[], object], model: Optional[nn.Module] = None) -> int:
    """FLOPs of one call of ``fn`` (:class:`FlopCount`; give ``model`` to count its deformable
    convs too)."""
    with FlopCount(model) as count:
        fn()
    return count.total


def _count(model: nn.Module, image: torch.Tensor):
    """One forward pass under :class:`FlopCount`: ``(flops per module name, the root name,
    analytic deformable-conv FLOPs per module name, detections of the image)``."""
    with torch.inference_mode(), FlopCount(model) as count:
        out = model([image])
    counts = count.by_module
    # FlopCounterMode names modules by their fqn prefixed with the top module's class name
    # (and has a "Global" entry for everything)
    root = type(model).__name__
    if root not in counts:
        root = "Global"
    return counts, root, count.deform, out[0]


def model_summary(model: nn.Module, image_size: Size = 800,
                  score_thresh: Optional[float] = 0.0, seed: int = 0) -> List[dict]:
    """Parameters and GFLOPs of each part of a :class:`SpatialFlow` for one image.

    Runs one eval forward pass of a random ``image_size`` image (an int for a square, or
    ``(h, w)``) with ``score_thresh`` (default 0: the thing head then runs on the full
    ``detections_per_img`` boxes; ``None`` keeps the model's). The model's mode and threshold
    are restored afterwards; nothing else is changed.

    Returns rows ``{"part", "params", "gflops", "note"}``: one per part present in the model
    (parts that are ``None`` - the flows switched off, the stuff / thing towers of the naive
    baseline - are left out), an ``other`` row with what falls outside them (only when not 0)
    and a last ``total`` row. ``gflops`` is FLOPs / 1e9 with a multiply-add counted as 2 FLOPs;
    the rows above the total sum to it, and their ``params`` sum to the model's parameters.
    See the module docstring for what is and is not counted.
    """
    h, w = image_hw(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
    was_training, old_thresh = model.training, getattr(model, "score_thresh", None)
    model.eval()
    if score_thresh is not None:
        model.score_thresh = score_thresh
    try:
        counts, root, deform, det = _count(model, image)
    finally:
        model.train(was_training)
        if score_thresh is not None:
            model.score_thresh = old_thresh

    flows = getattr(getattr(model, "subnets", None), "flows", None)
    src = getattr(flows, "source", "reg")
    peer = "reg" if src == "cls" else "cls"

    def flops_under(path: str) -> int:
        return _flops_under(counts, f"{root}.{path}") + sum(
            v for k, v in deform.items() if k == path or k.startswith(path + "."))

    rows = []
    for label, path in _PARTS:
        module = _get(model, path)
        if module is None:
            continue
        note = []
        dcn = sum(v for k, v in deform.items() if k.startswith(path + "."))
        if dcn:
            note.append(f"incl. {dcn / 1e9:.2f} GFLOPs of deformable convs counted as plain "
                        f"convs")
        offsets = [m for n, m in module.named_modules() if n.endswith("psi_offset")]
        if offsets:
            off_flops = sum(_flops_under(counts, f"{root}.{path}.{n}")
                            for n, m in module.named_modules() if n.endswith("psi_offset"))
            note.append(f"incl. psi_offset {sum(map(param_count, offsets)) / 1e6:.3f} M params, "
                        f"{off_flops / 1e9:.2f} GFLOPs")
        if path.startswith("subnets.") and "_to_" in path and param_count(module) == 0:
            note.append("no conv with DCN: the flow feeds psi_offset in the tower")
        if path == "thing_head":
            note.append(f"{len(det['boxes'])} RoIs of 14x14 whatever the image size; RoIAlign "
                        f"not counted")
        rows.append({"part": label.format(src=src, peer=peer), "params": param_count(module),
                     "flops": flops_under(path), "note": "; ".join(note)})

    total_params = sum(p.numel() for p in model.parameters())
    total_flops = counts.get("Global", 0) + sum(deform.values())
    other_params = total_params - sum(r["params"] for r in rows)
    other_flops = total_flops - sum(r["flops"] for r in rows)
    if other_params or other_flops:
        rows.append({"part": OTHER, "params": other_params, "flops": other_flops,
                     "note": "box decoding, NMS, mask pasting: element-wise, not counted"})
    dpi = getattr(model, "detections_per_img", None)
    n_det = len(det["boxes"])
    if dpi is not None and n_det != dpi:
        warnings.warn(f"the pass gave {n_det} detections, not detections_per_img={dpi}: the "
                      f"thing head FLOPs are for {n_det} RoIs", stacklevel=2)
    div = getattr(model, "size_divisibility", 1)
    ph, pw = -(-h // div) * div, -(-w // div) * div
    padded = f" (padded to {ph}x{pw})" if (ph, pw) != (h, w) else ""
    rows.append({"part": TOTAL, "params": total_params, "flops": total_flops,
                 "note": f"1 image {h}x{w}{padded}, {n_det} detections"})
    return [{"part": r["part"], "params": r["params"], "gflops": r.pop("flops") / 1e9,
             "note": r["note"]} for r in rows]


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.3f} M" if n else "0"


def format_summary_table(rows: Sequence[dict], title: Optional[str] = None) -> str:
    """The rows of :func:`model_summary` as a markdown table (params in millions, GFLOPs with
    2 decimals; a ``None`` GFLOPs prints as ``-``), under ``title`` when given."""
    lines = [] if not title else [title, ""]
    lines += ["| part | params | GFLOPs | note |", "|---|---:|---:|---|"]
    for r in rows:
        gf = "-" if r.get("gflops") is None else f"{r['gflops']:.2f}"
        part = f"**{r['part']}**" if r["part"] == TOTAL else r["part"]
        lines.append(f"| {part} | {_fmt_params(r['params'])} | {gf} | {r.get('note', '')} |")
    return "\n".join(lines)
