"""Training: SGD with warm-up and step decay, AMP on CUDA, DDP through ``torchrun``, atomic
checkpoints with exact resume, progress bars, ``metrics.jsonl`` and periodic evaluation.

Faults (:mod:`spatialflow.engine.faults`): SIGINT / SIGTERM finish the iteration, save a
checkpoint and raise :class:`~spatialflow.errors.TrainingInterrupted`; a step with a NaN / Inf
loss or gradient is skipped (logged as ``bad_step`` in ``metrics.jsonl``) and after
``train.max_bad_steps`` of them the run saves a checkpoint and raises
:class:`~spatialflow.errors.TrainingDiverged`; a kill during a checkpoint write leaves the
previous checkpoint (the write is atomic).

The run folder (its layout, checkpoints, the one-writer lock) is :mod:`spatialflow.engine.runs`'.

Determinism: the order of images is a function of ``(train.seed, epoch)`` and the augmentation
of an image a function of ``(train.seed, epoch, index)``, independent of workers and processes;
so ``--resume`` continues exactly, and N processes see the same global batches as one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from spatialflow.config import Config, config_from_dict, config_to_dict, load_config, save_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.model.inputs import collate_panoptic
from spatialflow.data.sampling import SeededItems, TrainBatches
from spatialflow.data.transforms import build_transforms
from spatialflow.engine.cpu_step import (TUNE_MIN_ITERS, StepFormat, cpu_has_amx, describe,
                                         tuned_format)
from spatialflow.engine.faults import (StopSignals, agree, grads_finite, ignore_stop_signals,
                                       nonfinite_terms, params_finite)
from spatialflow.engine.predict import Predictor
from spatialflow.engine.runs import (CHECKPOINT, CONFIG, FINAL, LOG, RunLock, append_log,
                                     clean_after_kill, eval_folder, load_checkpoint,
                                     prepare_data, save_checkpoint, undo_start, unwrap)
from spatialflow.errors import InputError, TrainingDiverged, TrainingInterrupted
from spatialflow.evaluation import format_metrics
from spatialflow.model import build_model


# --- distributed helpers --------------------------------------------------------------------
def dist_info():
    """``(rank, world_size, local_rank)`` from torchrun's environment (1 process without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- schedule -----------------------------------------------------------------------------
def lr_scheduler(optimizer, warmup_iters: int, milestones: Sequence[int],
                 warmup_factor: float = 0.001):
    """Per-iteration schedule: torch's ``LinearLR`` warm-up from ``warmup_factor`` over
    ``warmup_iters``, chained with ``MultiStepLR`` (x0.1 at each milestone iteration)."""
    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    steps = MultiStepLR(optimizer, milestones=list(milestones), gamma=0.1)
    if warmup_iters <= 0:
        return steps
    warm = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_iters)
    return ChainedScheduler([warm, steps], optimizer=optimizer)


def build_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW, at the batch-scaled learning rate."""
    t = cfg.train
    if t.optimizer == "adamw":  # fused: one kernel for all tensors (4x faster on a CPU)
        return torch.optim.AdamW(params, lr=scaled_lr(cfg), weight_decay=t.weight_decay,
                                 fused=True)
    return torch.optim.SGD(params, lr=scaled_lr(cfg), momentum=t.momentum,
                           weight_decay=t.weight_decay)


def cpu_has_bf16() -> bool:
    """Whether bfloat16 is a CPU run's precision without measuring (``train.cpu_tune``
    off or a short run): with AMX tiles (about 1.3x the float32 step of ``tiny-cpu``). Other
    CPUs differ (AVX512-BF16 made it slower on one Xeon, faster on an AMD EPYC): a long run
    measures instead (:mod:`spatialflow.engine.cpu_step`)."""
    return cpu_has_amx()


def amp_dtype(device: str, enabled: bool = True) -> Optional[torch.dtype]:
    """The autocast dtype of mixed-precision training (``train.amp``) before any measurement:
    float16 on CUDA (with loss scaling), bfloat16 on a CPU with AMX (:func:`cpu_has_bf16`;
    float32 on others unless :func:`~spatialflow.engine.cpu_step.tuned_format` picks
    bfloat16), ``None`` when off."""
    if not enabled:
        return None
    if device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if device == "cpu" and cpu_has_bf16() else None


def autocast(device: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for the device of ``device`` to ``dtype`` (:func:`amp_dtype`);
    disabled when ``dtype`` is ``None``."""
    return torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def scaled_lr(cfg: Config) -> float:
    """The linear scaling rule: ``train.lr`` is for ``train.base_batch_size`` images."""
    return cfg.train.lr * cfg.train.batch_size / cfg.train.base_batch_size


# --- data ---------------------------------------------------------------------------------
def build_datasets(cfg: Config, root: Path):
    d = cfg.data
    train_tf = build_transforms(d.min_size, d.max_size, d.size_sample, d.scale_range,
                                d.crop_size, d.flip)
    train = CocoPanopticDataset.from_root(root, d.train_split, transforms=train_tf,
                                          on_error=d.on_error, cache=d.cache)
    val = CocoPanopticDataset.from_root(root, d.val_split, on_error=d.on_error)
    return train, val


# --- the loop -------------------------------------------------------------------------------
def _to(targets, device):
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]




def train(config, out, resume: bool = False, device: Optional[str] = None,
          progress: bool = True, evaluate_at_end: bool = True,
          stop_at: Optional[int] = None, on_log=None,
          stop_after_s: Optional[float] = None) -> Path:
    """Train a model as ``config`` says into the run folder ``out``; returns ``out``.

    A new run that fails before its first checkpoint (bad data, a config that only fails
    when the model is built, ...) leaves nothing behind: the folder is removed if this call
    made it, else the files it wrote there are; so a later ``--resume`` or ``train --out``
    into it is not misled by a half-made run. A run with a checkpoint is kept (resume it).

    One writer per run folder: while it trains, ``out/train.lock`` names this process, and a
    second ``train`` into the same folder (new or resumed, in any process) raises
    :class:`~spatialflow.engine.runs.RunBusy` at once; a lock left by a killed process is
    taken over.

    Under ``torchrun`` the processes share the work (gloo on CPU, NCCL on GPU), each taking
    ``train.batch_size / world_size`` images of every global batch. ``resume=True`` continues
    from ``out/checkpoint_last.pt`` with the run's saved config. ``stop_at``: leave after that
    iteration with a checkpoint, as an interrupted run would (``resume`` goes on from there).
    ``on_log``: called on process 0 with each record written to ``metrics.jsonl`` (loss terms
    every ``train.log_every`` iterations, metrics at each evaluation), e.g. to draw live curves.
    ``stop_after_s``: like ``stop_at``, after the first iteration that ends that many seconds
    after the loop started (one process only; e.g. quality after N minutes of training).
    """
    run = Path(out)
    existed = run.is_dir()
    before = set(run.iterdir()) if existed else set()
    rank = dist_info()[0]
    with RunLock(run) if rank == 0 else contextlib.nullcontext():  # one writer at a time
        try:
            return _train(config, run, resume, device, progress, evaluate_at_end, stop_at,
                          on_log, stop_after_s)
        except BaseException:
            started = any((run / name).exists() for name in (CHECKPOINT, FINAL))
            if not resume and not started and rank == 0:
                undo_start(run, existed, before)
            raise


def train_or_resume(config, out, **kwargs) -> Path:
    """Train ``config`` into the run folder ``out`` unless its final weights are there
    already: a run with a checkpoint (interrupted) is resumed, an empty one started. Keyword
    arguments go to :func:`train`. The demo, the notebooks and the quality bench call this, so
    running them again re-uses or continues their runs."""
    run = Path(out)
    if (run / FINAL).is_file():
        return run
    return train(config, run, resume=(run / CHECKPOINT).is_file(), **kwargs)


def _train(config, run: Path, resume: bool, device: Optional[str], progress: bool,
           evaluate_at_end: bool, stop_at: Optional[int], on_log,
           stop_after_s: Optional[float]) -> Path:
    """The loop: one :class:`_Loop` step after another until the schedule ends, a stop is
    asked for (``stop_at``, ``stop_after_s``, SIGINT / SIGTERM) or training diverges."""
    if stop_after_s is not None and dist_info()[1] > 1:
        raise InputError("stop_after_s works in one process only (the clocks of several "
                         "processes would stop them at different iterations)")
    loop = _Loop(config, run, resume, device, progress, on_log)
    deadline = None if stop_after_s is None else time.perf_counter() + stop_after_s
    signals = StopSignals()
    batches = loop.batches()
    try:
        with signals:
            for images, targets in batches:
                if loop.it >= loop.total:
                    break
                losses, bad = loop.step(images, targets)  # forward, backward, update
                if bad:
                    loop.skip(bad)  # log it; after train.max_bad_steps: TrainingDiverged
                else:
                    loop.log(losses)
                leave = loop.it == stop_at or (deadline is not None
                                               and time.perf_counter() >= deadline)
                interrupted = agree(signals.requested, loop.device)
                if loop.checkpoint_due() or leave or interrupted:
                    loop.checkpoint()
                if interrupted:
                    raise TrainingInterrupted(signals.signum or signal.SIGTERM, loop.it,
                                              run / CHECKPOINT)
                if leave and loop.it < loop.total:
                    return loop.leave()
                if loop.evaluation_due():
                    loop.evaluate()
    finally:
        loop.close(batches)
    return loop.finish(evaluate_at_end)


class _Loop:
    """One training run: its folder, data, model, optimizer, schedule and mixed precision, set
    up (or restored from ``checkpoint_last.pt``) by the constructor, and the named steps that
    :func:`_train` calls in order."""
    def __init__(self, config, run: Path, resume: bool, device: Optional[str], progress: bool,
                 on_log):
        self.run, self.progress, self.on_log = run, progress, on_log
        self.rank, self.world, local_rank = dist_info()
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        state = self._open_folder(config, resume)
        cfg = self.cfg
        t = cfg.train
        torch.manual_seed(t.seed)
        root = prepare_data(cfg, run, write=self.rank == 0)
        _barrier()
        self.train_ds, self.val_ds = build_datasets(cfg, root)
        model = build_model(cfg, self.train_ds.categories).to(device)
        self.sampler = TrainBatches(len(self.train_ds), t.batch_size, t.seed, self.rank,
                                    self.world)
        self.total = t.max_iters or t.epochs * self.sampler.per_epoch
        self.it = int(state["iteration"]) if state is not None else 0
        self.dtype = amp_dtype(device, t.amp)
        self.memory_format, self.cpu_step = torch.contiguous_format, None
        if device == "cpu":  # float32 or bfloat16, NCHW or channels_last: the fastest here
            fmt = self._cpu_format(model, state, progress)
            self.dtype, self.memory_format, self.cpu_step = fmt.dtype, fmt.memory_format, fmt.name
        model = model.to(memory_format=self.memory_format)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg)
        milestones = [int(round(m * self.total)) for m in t.milestones]
        self.scheduler = lr_scheduler(self.optimizer, min(t.warmup_iters, self.total),
                                      milestones)
        # loss scaling: float16 only (bfloat16 has float32's range)
        self.use_scaler = self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.bad_steps, self.skipped = 0, 0
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            self.bad_steps = int(state.get("bad_steps", 0))
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if device.startswith("cuda") else None)
        self.model = model
        self.sampler.start = self.it
        self.bar = tqdm(total=self.total, initial=self.it, desc="train", unit="it",
                        disable=not progress or self.rank != 0, dynamic_ncols=True)
        self.tick = time.perf_counter()
        model.train()

    def _cpu_format(self, model, state: Optional[dict], progress: bool) -> StepFormat:
        """The CPU step's precision and memory format: a resumed run's own (kept in its
        checkpoint); else, for a run of at least ``TUNE_MIN_ITERS`` iterations in one process
        with ``train.cpu_tune``, the fastest on the first batch
        (:func:`~spatialflow.engine.cpu_step.tuned_format`); else bfloat16 with AMX only and
        the memory format of ``train.channels_last``."""
        t = self.cfg.train
        if state is not None and state.get("cpu_step"):
            return StepFormat.from_name(state["cpu_step"])
        if state is not None or not (t.cpu_tune and self.world == 1 and self.total >= TUNE_MIN_ITERS):
            return StepFormat(self.dtype, t.channels_last)
        self.sampler.start = self.it
        keys = next(iter(self.sampler))
        items = SeededItems(self.train_ds, t.seed)
        images, targets = collate_panoptic([items[k] for k in keys],
                                           size_divisibility=self.cfg.data.size_divisibility)
        fmt, info = tuned_format(model, images, targets, config_to_dict(self.cfg)["model"],
                                 t.amp, t.channels_last)
        if progress and self.rank == 0:
            print(describe(info), flush=True)
        return fmt

    def _open_folder(self, config, resume: bool) -> Optional[dict]:
        """Resume: the checkpoint (its config becomes the run's), with what a kill left behind
        removed (a torn temporary, log lines past the checkpoint). New: the config written to
        the folder, refused if a run is already there."""
        run, state = self.run, None
        if resume:
            state = load_checkpoint(run / CHECKPOINT)
            self.cfg = config_from_dict(state["config"])
            if self.rank == 0:
                clean_after_kill(run, int(state["iteration"]))
        else:
            self.cfg = config if isinstance(config, Config) else load_config(config)
            if self.rank == 0:
                if (run / CHECKPOINT).exists():
                    raise InputError(f"{run}: a run is already there; use --resume to continue "
                                     f"it or choose another --out")
                run.mkdir(parents=True, exist_ok=True)
                save_config(self.cfg, run / CONFIG)
        _barrier()
        return state

    def batches(self):
        """The batches of the schedule, from the current iteration on (one pass over an
        endless sampler; the order is a function of the seed, so a resume continues it)."""
        workers = self.cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            SeededItems(self.train_ds, self.cfg.train.seed), batch_sampler=self.sampler,
            collate_fn=functools.partial(collate_panoptic,
                                         size_divisibility=self.cfg.data.size_divisibility),
            num_workers=workers, worker_init_fn=ignore_stop_signals if workers > 0 else None)
        return iter(loader)

    def step(self, images, targets):
        """One iteration: forward (under autocast), backward, gradient clipping and the
        optimizer and schedule steps. Returns ``(loss terms, bad)``: ``bad`` names the
        non-finite loss terms or gradient (the step is then not taken; :meth:`skip`)."""
        t, device = self.cfg.train, self.device
        self.skipped += sum(len(x.get("skipped", ())) for x in targets)
        images, targets = images.to(device), _to(targets, device)
        images.tensors = images.tensors.contiguous(memory_format=self.memory_format)
        with autocast(device, self.dtype):
            losses = {k: v.float() for k, v in self.model(images, targets).items()}
            loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        bad = nonfinite_terms(losses)
        if agree(bool(bad), device):  # every process skips the backward together
            bad = bad or ["(in another process)"]
        else:
            self.scaler.scale(loss).backward()
            norm = None
            if t.clip_grad:
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(self.params, t.clip_grad)
            # (AMP's scaler skips non-finite gradients itself)
            if not self.use_scaler and not grads_finite(self.params, norm):
                bad = ["gradient"]
        if not bad:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.it += 1
        self.bar.update(1)
        return losses, bad

    def skip(self, bad: List[str]) -> None:
        """A step not taken: logged as ``bad_step``; after ``train.max_bad_steps`` of them a
        checkpoint (if the weights are finite) and :class:`TrainingDiverged`. The schedule
        follows the iteration, stepped or not."""
        t, run, it = self.cfg.train, self.run, self.it
        self.bad_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        message = (f"iteration {it}: non-finite {', '.join(bad)}; step skipped "
                   f"({self.bad_steps} so far, train.max_bad_steps={t.max_bad_steps})")
        if self.rank == 0:
            append_log(run, {"iter": it, "bad_step": bad, "bad_steps": self.bad_steps},
                       self.on_log)
        if self.bad_steps > t.max_bad_steps:
            if self.checkpoint(it - 1):
                kept = f"Checkpoint of iteration {it - 1}: {run / CHECKPOINT}"
            elif (run / CHECKPOINT).is_file():
                kept = (f"The weights hold NaN / Inf; the last checkpoint, with finite "
                        f"weights, is kept: {run / CHECKPOINT}")
            else:
                kept = "The weights hold NaN / Inf and no checkpoint was saved"
            raise TrainingDiverged(
                f"{run}: training stopped at {message}. {kept}. A lower train.lr or "
                f"train.clip_grad may help; the loss terms are in {run / LOG}")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.scheduler.step()

    def log(self, losses: dict) -> None:
        """Every ``train.log_every`` iterations (and the last): the loss terms, lr and images
        per second to ``metrics.jsonl`` (process 0) and the progress bar."""
        t, it = self.cfg.train, self.it
        if not (it % t.log_every == 0 or it == self.total):
            return
        values = {k: v.item() for k, v in losses.items()}
        now = time.perf_counter()
        rate = t.log_every * t.batch_size / max(now - self.tick, 1e-9)
        self.tick = now
        lr = self.scheduler.get_last_lr()[0]
        self.bar.set_postfix(loss=f"{sum(values.values()):.3f}", lr=f"{lr:.2g}")
        if self.rank == 0:
            append_log(self.run, {"iter": it, "lr": lr, "loss": sum(values.values()), **values,
                                  "images_per_s": rate, "skipped": self.skipped}, self.on_log)

    def checkpoint_due(self) -> bool:
        return self.it % self.cfg.train.checkpoint_every == 0 or self.it == self.total

    def evaluation_due(self) -> bool:
        every = self.cfg.train.eval_every
        return bool(every) and self.it % every == 0 and self.it < self.total

    def checkpoint(self, it: Optional[int] = None) -> bool:
        """Save ``checkpoint_last.pt`` (process 0) at iteration ``it`` (default: the current
        one); ``False`` when the weights hold NaN / Inf and the previous checkpoint is kept
        instead."""
        it = self.it if it is None else it
        if self.rank != 0:
            return True
        model = unwrap(self.model)
        if not params_finite(model):  # never replace a good checkpoint by a bad one
            warnings.warn(f"{self.run / CHECKPOINT}: not updated at iteration {it}: the weights "
                          f"hold NaN / Inf", RuntimeWarning, stacklevel=2)
            return False
        save_checkpoint(self.run / CHECKPOINT, {
            "bad_steps": self.bad_steps, "cpu_step": self.cpu_step,
            "model": model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "iteration": it, "epoch": it // self.sampler.per_epoch,
            "rng": {"torch": torch.get_rng_state()}, "config": config_to_dict(self.cfg),
            "categories": self.train_ds.categories.to_coco()})
        return True

    def evaluate(self) -> dict:
        """PQ and box AP on the val split into ``eval/iter_<N>`` and ``metrics.jsonl``
        (process 0), then back to training."""
        metrics = {}
        if self.rank == 0:
            cfg = self.cfg
            predictor = Predictor(unwrap(self.model), self.train_ds.categories, cfg.infer,
                                  cfg.data.test_size, cfg.data.max_size, self.device)
            metrics = predictor.evaluate(self.val_ds, eval_folder(self.run, self.it),
                                         progress=self.progress)
            record = {"iter": self.it, "bbox": metrics["bbox"]}
            if "panoptic" in metrics:  # (a detector alone has box AP only)
                record["eval"] = {k: metrics["panoptic"][k] for k in ("All", "Things", "Stuff")}
            append_log(self.run, record, self.on_log)
            print(format_metrics(metrics))
        self.model.train()
        _barrier()
        return metrics

    def leave(self) -> Path:
        """Stop before the schedule's end (``stop_at``, ``stop_after_s``): the checkpoint is
        saved; ``resume`` goes on from it."""
        self.bar.close()
        _barrier()
        return self.run

    def close(self, batches) -> None:
        """Whatever happened: close the bar and stop the DataLoader workers now (an error's
        traceback keeps the iterator alive, and workers that ignore stop signals must not be
        left for multiprocessing's exit handler, as PyTorch Lightning does). A worker that dies
        while stopping (seen on 2-core CPUs: 3 of 10 runs of 800 iterations, a worker killed by
        SIGABRT after the last batch) is warned about, not raised: its batches were used, and
        the run goes on to ``model_final.pt``."""
        self.bar.close()
        try:
            getattr(batches, "_shutdown_workers", lambda: None)()
        except RuntimeError as e:
            warnings.warn(f"{self.run}: a data loader worker failed while stopping ({e}); "
                          "training is not affected", RuntimeWarning, stacklevel=2)

    def finish(self, evaluate: bool) -> Path:
        """The end of the schedule: ``model_final.pt`` and, with ``evaluate``, the final
        evaluation."""
        if self.rank == 0:
            save_checkpoint(self.run / FINAL, {
                "model": unwrap(self.model).state_dict(), "config": config_to_dict(self.cfg),
                "iteration": self.it, "categories": self.train_ds.categories.to_coco()})
        if evaluate:
            self.evaluate()
        _barrier()
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
        return self.run
