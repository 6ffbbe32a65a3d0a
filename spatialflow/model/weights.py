"""Loading a ``state_dict`` into a module with a short, readable account of what does not fit
(torch's own message lists every tensor, hundreds of lines for a detector)."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

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


def _without(state: Mapping, prefixes: Iterable[str]) -> dict:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
