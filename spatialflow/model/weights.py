"""Loading a ``state_dict`` into a module with a short, readable account of what does not fit
(torch's own message lists every tensor, hundreds of lines for a detector)."""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from spatialflow.errors import InputError


def state_mismatch(module: nn.Module, state: Mapping[str, torch.Tensor],
                   ignore: Iterable[str] = ()) -> Optional[str]:
    """``None`` when ``state`` fits ``module`` exactly (same keys, same shapes), else one line:
    how many tensors are missing, unexpected or of another shape, with the first of each.
    Keys starting with a prefix in ``ignore`` are left out on both sides."""
    mine, theirs = _without(module.state_dict(), ignore), _without(state, ignore)
    missing = [k for k in mine if k not in theirs]
    # BatchNorm's step counter: FrozenBatchNorm2d drops it on load by design
    unexpected = [k for k in theirs if k not in mine and not k.endswith(".num_batches_tracked")]
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(mine[k].shape)}" for k in mine
              if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(mine[k].shape)]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected),
                        ("of another shape (file vs model)", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            parts.append(f"{len(items)} tensor(s) {what}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_state(module: nn.Module, state, source: str, ignore: Iterable[str] = ()) -> None:
    """``module.load_state_dict(state)`` after checking that it fits; otherwise an
    :class:`~spatialflow.errors.InputError` that names ``source`` (the file) and the first
    tensors that differ. Keys under the ``ignore`` prefixes are skipped."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise InputError(f"{source}: not a state_dict (a mapping of names to tensors)")
    ignore = tuple(ignore)
    problem = state_mismatch(module, state, ignore)
    if problem:
        raise InputError(f"{source}: weights do not fit the model ({problem})")
    module.load_state_dict(_without(state, ignore), strict=not ignore)


def missing_parts(module: nn.Module, state: Mapping[str, torch.Tensor]) -> List[str]:
    """The parts of ``module`` that ``state`` has no tensor of, each as ``"name (N tensors)"``
    with ``name`` the module path up to its second level (``"subnets.stuff_tower"``,
    ``"thing_head"``), in the module's order."""
    parts: Dict[str, int] = {}
    for key in module.state_dict():
        if key not in state:
            part = ".".join(key.split(".")[:2 if key.startswith("subnets.") else 1])
            parts[part] = parts.get(part, 0) + 1
    return [f"{k} ({n} tensors)" for k, n in parts.items()]


def load_part(module: nn.Module, state, source: str) -> List[str]:
    """Load ``state`` into the parts of ``module`` it has (e.g. a detector's weights into a
    panoptic model of the same backbone): every tensor of ``state`` must fit (same name, same
    shape), otherwise an :class:`~spatialflow.errors.InputError` naming ``source``; the
    module's other parts keep their values. Returns :func:`missing_parts`."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise InputError(f"{source}: not a state_dict (a mapping of names to tensors)")
    mine = module.state_dict()
    problem = state_mismatch(module, {**{k: v for k, v in mine.items() if k not in state},
                                      **state})  # what differs, the missing tensors aside
    if problem:
        raise InputError(f"{source}: weights do not fit the model ({problem})")
    module.load_state_dict(dict(state), strict=False)
    return missing_parts(module, state)


def _without(state: Mapping, prefixes: Iterable[str]) -> dict:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
