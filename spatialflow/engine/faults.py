"""Training faults: stop signals handled at iteration boundaries, non-finite steps detected, and
the processes of a distributed run kept in agreement about both.

The training loop (:func:`spatialflow.engine.train.train`) uses these so that

- SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM (``kill``, schedulers, ``torchrun``)
  let the current iteration finish, save a checkpoint and stop; a second SIGINT stops at once
  (the previous checkpoint stays);
- a step whose loss or gradient is NaN / Inf is skipped (the weights are not touched) and
  counted;
- under DDP every process takes the same decision at the same iteration (:func:`agree`), so
  none waits forever for the others in a collective.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Dict, List, Sequence

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: while active, the first SIGINT or SIGTERM only sets :attr:`signum`
    (the loop checks it after each iteration); a second SIGINT raises ``KeyboardInterrupt`` at
    once. Outside the main thread (where Python cannot install handlers) it does nothing.
    The previous handlers are restored on exit."""

    def __init__(self, message: str = "finishing the current iteration, then saving a "
                                      "checkpoint (Ctrl-C again stops without saving)"):
        self.signum = None
        self.message = message
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: {self.message}", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoader workers: a terminal's Ctrl-C or a scheduler's SIGTERM
    reaches the whole process group, and a worker dying under the main process would end the
    run mid-iteration; the workers leave the decision to the main process instead. SIGINT is
    ignored; the first SIGTERM too, while a second one (PyTorch's and multiprocessing's own
    clean-up of workers that do not stop in time) ends the worker as usual."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_once)


def _ignore_once(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)


def agree(flag: bool, device="cpu") -> bool:
    """``flag`` of any process of the distributed run (logical or over the processes); the
    flag itself in a single process. Every process must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def nonfinite_terms(losses: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the loss terms that are NaN or infinite (one device sync for all terms)."""
    names = list(losses)
    ok = torch.isfinite(torch.stack([losses[k].detach().float() for k in names])).tolist()
    return [k for k, good in zip(names, ok) if not good]


def grads_finite(params: Sequence[torch.Tensor], total_norm=None) -> bool:
    """Whether every gradient of ``params`` is finite, from their total norm: ``total_norm``
    when the caller has it (``clip_grad_norm_``'s result), else computed once (torch's fused
    ``get_total_norm`` where it exists). Parameters without a gradient are ignored."""
    if total_norm is None:
        grads = [p.grad.detach() for p in params if p.grad is not None]
        if not grads:
            return True
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
        total_norm = (get_total_norm(grads) if get_total_norm is not None else
                      torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                            for g in grads])))
    return bool(torch.isfinite(torch.as_tensor(total_norm)))


def params_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of ``module`` is finite (checked before a checkpoint
    overwrites the last good one)."""
    return all(bool(torch.isfinite(t).all()) for t in
               list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()])
