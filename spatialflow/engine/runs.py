"""The run folder and everything that knows it: its layout, one writer at a time, atomic
checkpoints, loading a trained model (:func:`load_run`, :func:`load_weights`) and the run's data
(:func:`prepare_data`, :func:`run_dataset`). Predicting with a run and evaluating it is
:mod:`spatialflow.engine.predict`'s.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint_last.pt`` (written every
``train.checkpoint_every`` iterations), ``model_final.pt`` (at the end), ``eval/`` and, with
``data.root`` unset, the synthetic data in ``data/``; while a process trains it, ``train.lock``
names that process. Any run can be resumed or re-evaluated from its folder alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from spatialflow.config import Config, apply_overrides, config_from_dict, config_to_dict
from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.errors import InputError
from spatialflow.model import build_model
from spatialflow.model.weights import load_part, load_state

CONFIG = "config.yaml"
LOG = "metrics.jsonl"
CHECKPOINT = "checkpoint_last.pt"
FINAL = "model_final.pt"
LOCK = "train.lock"
#: where ``evaluate_run`` writes by default, under the run folder
FINAL_EVAL = Path("eval") / "final"
#: what may change once a model is trained: the inference settings and the test resolution
INFERENCE_KEYS = ("infer.", "data.test_size", "data.max_size")


# --- one writer -----------------------------------------------------------------------------
class RunBusy(InputError):
    """Another live process is training into the run folder (its ``train.lock`` names it)."""

_HELD: set = set()  # lock files this process holds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``with RunLock(run):`` holds ``run/train.lock`` (the owner's pid and host) while one
    process writes the run. A second writer gets :class:`RunBusy` at once, naming the folder
    and the holder. A lock whose process is gone (killed) is taken over. Readers (evaluation,
    :class:`Predictor`) never look at it."""
    def __init__(self, run):
        self.path = Path(run) / LOCK

    def _holder(self) -> Optional[tuple]:
        try:
            pid, host = self.path.read_text().split()[:2]
            return int(pid), host
        except (OSError, ValueError):
            return None  # gone, or torn while being written: no live owner to respect

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                stale = (holder is None
                         or (holder[1] == socket.gethostname() and not _alive(holder[0]))
                         or (holder[0] == os.getpid() and str(self.path) not in _HELD))
                if not stale:
                    raise RunBusy(f"{self.path.parent}: already being trained by process "
                                  f"{holder[0]} on {holder[1]} ({self.path}); wait for it to "
                                  f"finish or choose another --out") from None
                self.path.unlink(missing_ok=True)  # left by a killed process: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            _HELD.add(str(self.path))
            return self
        raise RunBusy(f"{self.path.parent}: another process keeps taking {self.path}")

    def __exit__(self, *exc) -> None:
        _HELD.discard(str(self.path))
        holder = self._holder()
        if holder is not None and holder[0] == os.getpid():
            self.path.unlink(missing_ok=True)


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
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def find_checkpoint(path) -> Optional[Path]:
    """The checkpoint a run folder or file stands for (``model_final.pt``, else
    ``checkpoint_last.pt``), or ``None`` if there is none (or ``path`` is ``None``)."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return path
    return next((path / f for f in (FINAL, CHECKPOINT) if (path / f).is_file()), None)


def require_checkpoint(path) -> Path:
    """:func:`find_checkpoint`, or an :class:`~spatialflow.errors.InputError` saying that
    ``path`` is no trained run."""
    found = find_checkpoint(path)
    if found is None:
        raise InputError(f"{path}: not a trained run: no {FINAL} or {CHECKPOINT} in that folder"
                         if Path(path).is_dir() else f"{path}: no such run folder or checkpoint")
    return found


def run_folder(path) -> Path:
    """The run folder of a run folder or of a checkpoint file in it."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_run(path, device: str = "cpu", overrides: Sequence[str] = ()):
    """``(config, model in eval mode, categories)`` from a run folder (its ``model_final.pt``,
    else ``checkpoint_last.pt``) or a checkpoint file; ``overrides`` (``key=value``) may
    change the :data:`INFERENCE_KEYS` of its config."""
    path = require_checkpoint(path)
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
    in which the checkpoint's config differs (e.g. another preset's backbone).

    The weights of a detector alone (``model.panoptic: false``) load into a panoptic model of
    the same backbone: its backbone, FPN, cls and reg towers (with the reg->cls flow) and
    heads; the parts the detector has not (the thing and stuff towers, flows and heads) keep
    their values, and are named in a warning and in the returned checkpoint's ``"missing"``."""
    path = find_checkpoint(path) or Path(path)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise InputError(f"{path}: not a SpatialFlow checkpoint (no 'model' weights)")
    detector = not (state.get("config") or {}).get("model", {}).get("panoptic", True)
    try:
        if detector and getattr(unwrap(model), "panoptic", True):
            state["missing"] = load_part(unwrap(model), state["model"],
                                         f"{path} (a detector's weights)")
            warnings.warn(f"{path}: the weights of a detector alone (model.panoptic: false) "
                          f"loaded into a panoptic model; not in them, left as built: "
                          f"{', '.join(state['missing'])}", UserWarning, stacklevel=2)
        else:
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


# --- the log, a failed start, evaluations -------------------------------------------------
def append_log(run, record: dict, on_log=None) -> None:
    """Append ``record`` to the run's ``metrics.jsonl`` (one JSON object a line); then
    ``on_log(record)``."""
    with open(Path(run) / LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
    if on_log is not None:
        on_log(record)


def clean_after_kill(run, iteration: int) -> None:
    """Before a run resumes from its checkpoint of ``iteration``: remove the temporary file of
    a checkpoint write that a kill tore, and drop the records of ``metrics.jsonl`` written
    after ``iteration`` (the resumed run redoes those iterations) and any torn last line; the
    log is rewritten atomically."""
    run = Path(run)
    for name in (CHECKPOINT, FINAL):
        (run / (name + ".tmp")).unlink(missing_ok=True)
    path = run / LOG
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


def undo_start(run, existed: bool, before: set) -> None:
    """Remove what a new run that never saved a checkpoint wrote into ``run``: the whole
    folder if it did not exist (``existed``), else what is there that ``before`` (its
    entries then) did not hold."""
    run = Path(run)
    if not existed:
        shutil.rmtree(run, ignore_errors=True)
        return
    for path in set(run.iterdir()) - before if run.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def eval_folder(run, iteration: Optional[int] = None) -> Path:
    """Where an evaluation of the run goes: ``eval/iter_<N>`` during training, ``eval/final``
    (:data:`FINAL_EVAL`) at the end."""
    return Path(run) / (FINAL_EVAL if iteration is None else Path("eval") / f"iter_{iteration:07d}")


# --- data -----------------------------------------------------------------------------------
def prepare_data(cfg: Config, run_dir, write: bool = True, name: str = "data") -> Path:
    """The data folder: ``data.root``, or the synthetic data of ``data.synthetic`` in
    ``<run>/<name>`` (generated there first when ``write`` and not yet there: the same bytes
    for the same config; synthetic data made with other settings there raises
    :class:`~spatialflow.errors.InputError`)."""
    if cfg.data.root is not None:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise InputError(f"{root}: data.root is not a folder")
        return root
    return synthetic_data(cfg, Path(run_dir) / name, write)


def synthetic_data(cfg: Config, root, write: bool = True) -> Path:
    """The one place that makes a config's synthetic data (``data.synthetic``): in ``root``,
    generated there first when ``write`` and not yet there (the same bytes for the same
    settings), else checked: data made with other settings raises
    :class:`~spatialflow.errors.InputError`. Returns ``root``."""
    root, s = Path(root), cfg.data.synthetic
    if write and not (root / f"panoptic_{cfg.data.val_split}.json").is_file():
        from spatialflow.data.synthetic import make_synthetic  # (the generator: only if needed)
        make_synthetic(root, s.num_train, s.num_val, s.size, s.seed, progress=True, scene=s.scene)
    else:
        _check_synthetic(root, s)
    return root


def _check_synthetic(root: Path, s) -> None:
    """Raise :class:`InputError` if the synthetic data already in ``root`` was made with other
    settings than ``s`` (``data.synthetic``): a run would silently train or score on it."""
    want = {"train": s.num_train, "val": s.num_val}
    for split, count in want.items():
        path = root / f"panoptic_{split}.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        info = d.get("info", {})
        have = {"images": len(d.get("images", [])), "seed": info.get("seed"),
                "size": info.get("size"), "scene": info.get("scene")}
        asked = {"images": count, "seed": s.seed, "size": s.size, "scene": s.scene}
        if "SpatialFlow" not in str(info.get("description", "")):
            return  # not the generator's: nothing to compare
        differ = {k: (have[k], asked[k]) for k in asked
                  if have[k] is not None and have[k] != asked[k]}  # (older data: no scene)
        if differ:
            said = ", ".join(f"{k} {h!r} (data.synthetic asks {a!r})"
                             for k, (h, a) in differ.items())
            raise InputError(f"{path}: this synthetic {split} split was made with other "
                             f"settings: {said}; remove {root} or use another folder")


def run_dataset(run, split: Optional[str] = None, data=None, cfg: Optional[Config] = None,
                on_error: Optional[str] = None) -> CocoPanopticDataset:
    """The one way to open a run's data: the ``split`` (default: the run's val split) of
    ``data`` (a folder in ``make-data``'s or COCO's layout) or, without it, of the run's own
    data (:func:`prepare_data`: ``data.root``, or its synthetic data, made again if its folder
    is gone: the same bytes for the same config). ``cfg``: the run's config (read from the
    run's checkpoint when not given); ``on_error``: ``"raise"`` or ``"skip"`` (default: the
    config's ``data.on_error``)."""
    if cfg is None:
        cfg = config_from_dict(load_checkpoint(require_checkpoint(run))["config"])
    root = Path(data) if data is not None else prepare_data(cfg, run_folder(run))
    return CocoPanopticDataset.from_root(root, split or cfg.data.val_split,
                                         on_error=on_error or cfg.data.on_error)
