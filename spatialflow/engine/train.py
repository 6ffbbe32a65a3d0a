"""Training: SGD with warm-up and step decay, AMP on CUDA, DDP through ``torchrun``, atomic
checkpoints with exact resume, progress bars, ``metrics.jsonl`` and periodic evaluation.

Faults (:mod:`spatialflow.engine.faults`): SIGINT / SIGTERM finish the iteration, save a
checkpoint and raise :class:`~spatialflow.errors.TrainingInterrupted`; a step with a NaN / Inf
loss or gradient is skipped (logged as ``bad_step`` in ``metrics.jsonl``) and after
``train.max_bad_steps`` of them the run saves a checkpoint and raises
:class:`~spatialflow.errors.TrainingDiverged`; a kill during a checkpoint write leaves the
previous checkpoint (the write is atomic).

A run directory holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint_last.pt``,
``model_final.pt`` and ``eval/``; with ``data.root`` unset the synthetic data is generated into
``<run>/data`` (the same bytes for the same config).

Determinism: the order of images is a function of ``(train.seed, epoch)`` and the augmentation
of an image a function of ``(train.seed, epoch, index)``, independent of workers and processes;
so ``--resume`` continues exactly, and N processes see the same global batches as one.
"""

from __future__ import annotations

import functools
import json
import signal
import warnings
from dataclasses import replace
import os
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from spatialflow.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config, save_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset, collate_panoptic
from spatialflow.data.transforms import build_transforms
from spatialflow.engine.faults import (StopSignals, agree, grads_finite, ignore_stop_signals,
                                       nonfinite_terms, params_finite)
from spatialflow.errors import InputError, TrainingDiverged, TrainingInterrupted
from spatialflow.model import build_model
from spatialflow.model.weights import load_state

CHECKPOINT = "checkpoint_last.pt"
FINAL = "model_final.pt"


# --- distributed helpers --------------------------------------------------------------------
def dist_info():
    """``(rank, world_size, local_rank)`` from torchrun's environment (1 process without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- data order and augmentation ------------------------------------------------------------
class TrainBatches(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys for one process, from iteration ``start`` on.

    Epoch ``e`` is a permutation drawn from ``(seed, e)``; it is cut into global batches of
    ``global_batch`` images (the last incomplete one is dropped) and process ``rank`` takes its
    ``global_batch / world`` slice of each. Infinite: the loop decides when to stop.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, rank: int = 0,
                 world: int = 1, start: int = 0):
        if global_batch % world:
            raise InputError(f"train.batch_size={global_batch} is not divisible by the "
                             f"{world} processes")
        if num_items < global_batch:
            raise InputError(f"the training set has {num_items} images, fewer than "
                             f"train.batch_size={global_batch}")
        self.n, self.batch, self.seed = num_items, global_batch, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_epoch = num_items // global_batch

    def __iter__(self) -> Iterator[List[tuple]]:
        it = self.start
        per_rank = self.batch // self.world
        while True:
            epoch, k = divmod(it, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            batch = perm[k * self.batch:(k + 1) * self.batch]
            yield [(epoch, i) for i in batch[self.rank * per_rank:(self.rank + 1) * per_rank]]
            it += 1


class SeededItems(torch.utils.data.Dataset):
    """Reads ``dataset[index]`` for a key ``(epoch, index)`` with the random augmentation
    seeded from ``(seed, epoch, index)`` (the caller's random state is left untouched)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
            return self.dataset[index]


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
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16
    is emulated and slower than float32."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported",
                                                          "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def amp_dtype(device: str, enabled: bool = True) -> Optional[torch.dtype]:
    """The autocast dtype of mixed-precision training (``train.amp``): float16 on CUDA (with
    loss scaling), bfloat16 on a CPU that computes it natively (:func:`cpu_has_bf16`; on
    others training stays in float32), ``None`` when off."""
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


# --- checkpoints ----------------------------------------------------------------------------
def save_checkpoint(path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over
    ``path``. A crash or a kill leaves the previous checkpoint intact; a failed write (a full
    disk) removes the temporary file and raises ``OSError`` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"{path}: checkpoint not written ({e.strerror or e}); the "
                                   f"previous one, if any, is kept") from e
        raise


def load_checkpoint(path) -> dict:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable checkpoint ({e})") from None


def unwrap(model):
    return model.module if hasattr(model, "module") else model


# what may change once a model is trained: the inference settings and the test resolution
INFERENCE_KEYS = ("infer.", "data.test_size", "data.max_size")


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint a run folder or file stands for (``model_final.pt``, else
    ``checkpoint_last.pt``), or ``None`` if there is none (or ``path`` is ``None``)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return path
    return next((path / f for f in (FINAL, CHECKPOINT) if (path / f).is_file()), None)


def load_run(path, device: str = "cpu", overrides: Sequence[str] = ()):
    """``(config, model in eval mode, categories)`` from a run folder (its ``model_final.pt``,
    else ``checkpoint_last.pt``) or a checkpoint file; ``overrides`` (``key=value``) may
    change the :data:`INFERENCE_KEYS` of its config."""
    from spatialflow.data.categories import CategoryMap

    found = find_checkpoint(path)
    if found is None:
        raise InputError(f"{path}: not a trained run: no {FINAL} or {CHECKPOINT} in that folder"
                         if Path(path).is_dir() else f"{path}: no such run folder or checkpoint")
    path = found
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise InputError(f"{path}: not a SpatialFlow checkpoint (needs 'model' and 'config')")
    cfg = apply_overrides(config_from_dict(state["config"]), overrides, INFERENCE_KEYS)
    categories = CategoryMap.from_coco(state["categories"], source=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights: loaded below
        model = build_model(replace(cfg, model=replace(cfg.model, pretrained=None)), categories)
    load_state(model, state["model"], f"{path} (against the model of its own config)")
    return cfg, model.to(device).eval(), categories


def load_weights(model, path, config: Optional[Config] = None) -> dict:
    """Load the weights of a SpatialFlow checkpoint (a run folder or a ``.pt`` file) into a
    model you built, e.g. ``build_model(load_config("r50-coco"), categories)``; returns the
    checkpoint. When they do not fit, the :class:`~spatialflow.errors.InputError` names the
    file, the first tensors that differ and, given the model's ``config``, the model settings
    in which the checkpoint's config differs (e.g. another preset's backbone)."""
    path = find_checkpoint(path) or Path(path)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"{path}: not a SpatialFlow checkpoint (no 'model' weights)")
    try:
        load_state(unwrap(model), state["model"], str(path))
    except InputError as e:
        if config is None or "config" not in state:
            raise
        theirs = config_from_dict(state["config"])
        diffs = _differences(config_to_dict(theirs)["model"], config_to_dict(config)["model"],
                             "model.")
        raise InputError(f"{path}: a checkpoint of preset '{theirs.name}' does not fit this "
                         f"model (preset '{config.name}'): "
                         + (", ".join(diffs[:6]) + "; " if diffs else "")
                         + str(e).split(": ", 1)[1]) from None
    return state


def _differences(a: dict, b: dict, prefix: str = "") -> List[str]:
    """``key: A (checkpoint) vs B (model)`` for each leaf where the nested dicts differ."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k} {x!r} in the checkpoint vs {y!r}")
    return out


# --- data ---------------------------------------------------------------------------------
def prepare_data(cfg: Config, run_dir: Path, rank: int = 0) -> Path:
    """The data folder: ``data.root``, or the synthetic data generated into ``<run>/data``."""
    if cfg.data.root is not None:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise InputError(f"{root}: data.root is not a folder")
        return root
    root = run_dir / "data"
    if rank == 0 and not (root / f"panoptic_{cfg.data.val_split}.json").is_file():
        from spatialflow.data.synthetic import make_synthetic
        s = cfg.data.synthetic
        make_synthetic(root, s.num_train, s.num_val, s.size, s.seed, progress=True, scene=s.scene)
    _barrier()
    return root


def build_datasets(cfg: Config, root: Path):
    d = cfg.data
    train_tf = build_transforms(d.min_size, d.max_size, d.size_sample, d.scale_range,
                                d.crop_size, d.flip)
    train = CocoPanopticDataset.from_root(root, d.train_split, transforms=train_tf,
                                          on_error=d.on_error)
    val = CocoPanopticDataset.from_root(root, d.val_split, on_error=d.on_error)
    return train, val


# --- the loop -------------------------------------------------------------------------------
def _to(targets, device):
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
            for t in targets]


def _trim_log(path: Path, iteration: int) -> None:
    """Drop the records of ``metrics.jsonl`` written after ``iteration`` (a resumed run redoes
    those iterations) and any torn last line of a killed run; rewritten atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("iter", 0) <= iteration:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def _log(path: Path, record: dict, on_log=None) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if on_log is not None:
        on_log(record)


def train(config, out, resume: bool = False, device: Optional[str] = None,
          progress: bool = True, evaluate_at_end: bool = True,
          stop_at: Optional[int] = None, on_log=None,
          stop_after_s: Optional[float] = None) -> Path:
    """Train a model as ``config`` says into the run folder ``out``; returns ``out``.

    A new run that fails before its first checkpoint (bad data, a config that only fails
    when the model is built, ...) leaves nothing behind: the folder is removed if this call
    made it, else the files it wrote there are; so a later ``--resume`` or ``train --out``
    into it is not misled by a half-made run. A run with a checkpoint is kept (resume it).

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
    try:
        return _train(config, run, resume, device, progress, evaluate_at_end, stop_at, on_log,
                      stop_after_s)
    except BaseException:
        started = any((run / name).exists() for name in (CHECKPOINT, FINAL))
        if not resume and not started and dist_info()[0] == 0:
            _undo_start(run, existed, before)
        raise


def _undo_start(run: Path, existed: bool, before: set) -> None:
    """Remove what a new run that never saved a checkpoint wrote into ``run``."""
    import shutil

    if not existed:
        shutil.rmtree(run, ignore_errors=True)
        return
    for path in set(run.iterdir()) - before if run.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train(config, run: Path, resume: bool, device: Optional[str], progress: bool,
           evaluate_at_end: bool, stop_at: Optional[int], on_log,
           stop_after_s: Optional[float]) -> Path:
    rank, world, local_rank = dist_info()
    if stop_after_s is not None and world > 1:
        raise InputError("stop_after_s works in one process only (the clocks of several "
                         "processes would stop them at different iterations)")
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))

    state = None
    if resume:
        state = load_checkpoint(run / CHECKPOINT)
        cfg = config_from_dict(state["config"])
        if rank == 0:  # what a kill left behind: a torn temporary, log lines past the checkpoint
            for name in (CHECKPOINT, FINAL):
                (run / (name + ".tmp")).unlink(missing_ok=True)
            _trim_log(run / "metrics.jsonl", int(state["iteration"]))
    else:
        cfg = config if isinstance(config, Config) else load_config(config)
        if rank == 0:
            if (run / CHECKPOINT).exists():
                raise InputError(f"{run}: a run is already there; use --resume to continue it "
                                 f"or choose another --out")
            run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run / "config.yaml")
    _barrier()
    t = cfg.train
    torch.manual_seed(t.seed)

    root = prepare_data(cfg, run, rank)
    train_ds, val_ds = build_datasets(cfg, root)
    model = build_model(cfg, train_ds.categories).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    batches = TrainBatches(len(train_ds), t.batch_size, t.seed, rank, world)
    total = t.max_iters or t.epochs * batches.per_epoch
    milestones = [int(round(m * total)) for m in t.milestones]
    scheduler = lr_scheduler(optimizer, min(t.warmup_iters, total), milestones)
    dtype = amp_dtype(device, t.amp)
    use_scaler = dtype == torch.float16  # loss scaling: float16 only (bfloat16 has float32's range)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start, bad_steps = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        start = int(state["iteration"])
        bad_steps = int(state.get("bad_steps", 0))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None)
    batches.start = start
    loader = torch.utils.data.DataLoader(
        SeededItems(train_ds, t.seed), batch_sampler=batches,
        collate_fn=functools.partial(collate_panoptic, size_divisibility=cfg.data.size_divisibility),
        num_workers=cfg.data.num_workers,
        worker_init_fn=ignore_stop_signals if cfg.data.num_workers > 0 else None)

    def checkpoint(it: int) -> bool:
        """Save ``checkpoint_last.pt`` (process 0); ``False`` when the weights hold NaN / Inf
        and the previous checkpoint is kept instead."""
        if rank != 0:
            return True
        if not params_finite(unwrap(model)):  # never replace a good checkpoint by a bad one
            warnings.warn(f"{run / CHECKPOINT}: not updated at iteration {it}: the weights hold "
                          f"NaN / Inf", RuntimeWarning, stacklevel=2)
            return False
        save_checkpoint(run / CHECKPOINT, {
            "bad_steps": bad_steps,
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "iteration": it, "epoch": it // batches.per_epoch,
            "rng": {"torch": torch.get_rng_state()}, "config": config_to_dict(cfg),
            "categories": train_ds.categories.to_coco()})
        return True

    def run_eval(it: int) -> dict:
        from spatialflow.evaluation import evaluate, format_metrics
        metrics = {}
        if rank == 0:
            metrics = evaluate(unwrap(model), val_ds, run / "eval" / f"iter_{it:07d}", cfg.infer,
                               cfg.data.test_size, cfg.data.max_size, device, progress=progress)
            _log(run / "metrics.jsonl", {"iter": it, "eval": {
                k: metrics["panoptic"][k] for k in ("All", "Things", "Stuff")},
                "bbox": metrics["bbox"]}, on_log)
            print(format_metrics(metrics))
        model.train()
        _barrier()
        return metrics

    from tqdm import tqdm
    bar = tqdm(total=total, initial=start, disable=not progress or rank != 0, desc="train",
               unit="it", dynamic_ncols=True)
    model.train()
    it, tick, skipped = start, time.perf_counter(), 0
    deadline = None if stop_after_s is None else tick + stop_after_s
    signals = StopSignals()
    batch_iter = iter(loader)  # one pass over an endless sampler
    try:
        with signals:
            for images, targets in batch_iter:
                if it >= total:
                    break
                skipped += sum(len(x.get("skipped", ())) for x in targets)
                images, targets = images.to(device), _to(targets, device)
                with autocast(device, dtype):
                    losses = {k: v.float() for k, v in model(images, targets).items()}
                    loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                bad = nonfinite_terms(losses)
                if agree(bool(bad), device):  # every process skips the backward together
                    bad = bad or ["(in another process)"]
                else:
                    scaler.scale(loss).backward()
                    norm = None
                    if t.clip_grad:
                        scaler.unscale_(optimizer)
                        norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad)
                    # (AMP's scaler skips non-finite gradients itself)
                    if not use_scaler and not grads_finite(params, norm):
                        bad = ["gradient"]
                if bad:
                    bad_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    message = (f"iteration {it + 1}: non-finite {', '.join(bad)}; step skipped "
                               f"({bad_steps} so far, train.max_bad_steps={t.max_bad_steps})")
                    if rank == 0:
                        _log(run / "metrics.jsonl", {"iter": it + 1, "bad_step": bad,
                                                     "bad_steps": bad_steps}, on_log)
                    if bad_steps > t.max_bad_steps:
                        if checkpoint(it):
                            kept = f"Checkpoint of iteration {it}: {run / CHECKPOINT}"
                        elif (run / CHECKPOINT).is_file():
                            kept = (f"The weights hold NaN / Inf; the last checkpoint, with "
                                    f"finite weights, is kept: {run / CHECKPOINT}")
                        else:
                            kept = "The weights hold NaN / Inf and no checkpoint was saved"
                        raise TrainingDiverged(
                            f"{run}: training stopped at {message}. {kept}. A lower train.lr "
                            f"or train.clip_grad may help; the loss terms are in "
                            f"{run / 'metrics.jsonl'}")
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                    with warnings.catch_warnings():  # the schedule follows the iteration,
                        warnings.simplefilter("ignore")  # stepped or not
                        scheduler.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                it += 1
                bar.update(1)
                if not bad and (it % t.log_every == 0 or it == total):
                    values = {k: v.item() for k, v in losses.items()}
                    now = time.perf_counter()
                    rate = t.log_every * t.batch_size / max(now - tick, 1e-9)
                    tick = now
                    bar.set_postfix(loss=f"{sum(values.values()):.3f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2g}")
                    if rank == 0:
                        _log(run / "metrics.jsonl", {
                            "iter": it, "lr": scheduler.get_last_lr()[0],
                            "loss": sum(values.values()), **values, "images_per_s": rate,
                            "skipped": skipped}, on_log)
                leave = it == stop_at or (deadline is not None and time.perf_counter() >= deadline)
                interrupted = agree(signals.requested, device)
                if it % t.checkpoint_every == 0 or it == total or leave or interrupted:
                    checkpoint(it)
                if interrupted:
                    raise TrainingInterrupted(signals.signum or signal.SIGTERM, it,
                                              run / CHECKPOINT)
                if leave and it < total:
                    bar.close()
                    _barrier()
                    return run
                if t.eval_every and it % t.eval_every == 0 and it < total:
                    run_eval(it)
    finally:
        bar.close()
        # stop the DataLoader workers now, whatever happened: an error's traceback keeps the
        # iterator alive, and workers that ignore stop signals must not be left for
        # multiprocessing's exit handler (as PyTorch Lightning does, with the same method)
        getattr(batch_iter, "_shutdown_workers", lambda: None)()
        del batch_iter
    if rank == 0:
        save_checkpoint(run / FINAL, {"model": unwrap(model).state_dict(),
                                      "config": config_to_dict(cfg), "iteration": it,
                                      "categories": train_ds.categories.to_coco()})
    if evaluate_at_end:
        run_eval(it)
    _barrier()
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return run
