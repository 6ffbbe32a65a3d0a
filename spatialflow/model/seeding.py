"""Initial weights drawn per part, so that runs compared in a study start from the same weights.

A model built by :func:`~spatialflow.model.spatialflow.build_model` draws one number from
torch's global generator (seeded from ``train.seed`` by the training loop) and initialises each
of its parts (the backbone, each tower, each flow's adaptation conv, each head) from a generator
seeded by that number and the part's name, e.g. ``"subnets.stuff_tower"``. Adding or removing a
part (a flow, the sub-networks, a stage) therefore leaves every other part's initial weights as
they were: a variant and its reference trained with the same seed start from the same weights in
every part both have. A tower of fewer stages has the first stages of a longer one.

Outside a :func:`model_seed` block (a part built on its own) :func:`part` is a no-op and the
weights come from the global generator, as in plain PyTorch.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from typing import Iterator, Optional

import torch

#: names how initial weights are drawn; part of a study run's cache key
#: (:func:`spatialflow.studies.config_key`), so that runs drawn another way are not paired with
#: these
SCHEME = "per part, v1"

_BASE: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("spatialflow_init_seed",
                                                                     default=None)


def part_seed(base: int, name: str) -> int:
    """The seed of part ``name`` of a model whose seed is ``base``: 63 bits of a SHA-1 of both
    (the same on every machine and Python version, unlike ``hash``)."""
    digest = hashlib.sha1(f"{int(base)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


@contextlib.contextmanager
def model_seed(base: Optional[int] = None) -> Iterator[int]:
    """Within the block, :func:`part` seeds each part from ``base`` (default: one number drawn
    from torch's global generator, so the global seed decides); yields the base. Nested blocks
    keep the outer base."""
    outer = _BASE.get()
    if outer is not None:
        yield outer
        return
    if base is None:
        base = int(torch.randint(0, 2 ** 62, (1,)).item())
    token = _BASE.set(int(base))
    try:
        yield int(base)
    finally:
        _BASE.reset(token)


@contextlib.contextmanager
def part(name: str) -> Iterator[None]:
    """Build part ``name`` inside the block: within :func:`model_seed`, torch's global generator
    is seeded by :func:`part_seed` for the block and restored after it (the generator of the
    caller goes on as if the block had drawn nothing); outside it, nothing changes."""
    base = _BASE.get()
    if base is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(part_seed(base, name))
        yield
