"""The run folder: its layout, one writer at a time, checkpoints, loading a trained model, and
the one way to predict with it (:class:`Predictor`) and to evaluate it (:func:`evaluate_run`).

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint_last.pt`` (written every
``train.checkpoint_every`` iterations), ``model_final.pt`` (at the end), ``eval/`` and, with
``data.root`` unset, the synthetic data in ``data/``; while a process trains it, ``train.lock``
names that process. Any run can be resumed or re-evaluated from its folder alone.
"""

from __future__ import annotations

import collections
import copy
import json
import os
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from spatialflow.config import (Config, InferConfig, apply_overrides, config_from_dict,
                                config_to_dict)
from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.panoptic_io import read_image
from spatialflow.engine.predict import (merge_kwargs, padded_size, predict_raw_batch,
                                        to_tensor, write_predictions)
from spatialflow.errors import DatasetError, InputError
from spatialflow.evaluation import PanopticEvaluator, coco_detections
from spatialflow.model import build_model
from spatialflow.model.weights import load_part, load_state
from spatialflow.panoptic import merge_outputs

CONFIG = "config.yaml"
LOG = "metrics.jsonl"
CHECKPOINT = "checkpoint_last.pt"
FINAL = "model_final.pt"
LOCK = "train.lock"
#: where ``evaluate_run`` writes by default, under the run folder
FINAL_EVAL = Path("eval") / "final"
#: what may change once a model is trained: the inference settings and the test resolution
INFERENCE_KEYS = ("infer.", "data.test_size", "data.max_size")
#: :meth:`Predictor.predict_dataset` puts at most this many padded pixels in one forward pass
#: (64 images of 128 x 128; one 800 x 1088 image)
BATCH_PIXELS = 1 << 20


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


def run_folder(path) -> Path:
    """The run folder of a run folder or of a checkpoint file in it."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def load_run(path, device: str = "cpu", overrides: Sequence[str] = ()):
    """``(config, model in eval mode, categories)`` from a run folder (its ``model_final.pt``,
    else ``checkpoint_last.pt``) or a checkpoint file; ``overrides`` (``key=value``) may
    change the :data:`INFERENCE_KEYS` of its config."""
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
    root = Path(run_dir) / name
    s = cfg.data.synthetic
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


# --- prediction -----------------------------------------------------------------------------
ImageLike = Union[np.ndarray, torch.Tensor, str, os.PathLike]


class Predictor:
    """A trained model with everything inference needs, held once (in the spirit of
    detectron2's ``DefaultPredictor``): the inference settings (``infer``: the merge
    thresholds, test-time augmentation), the test resolution, the categories and the device.

    ``predictor(image)`` takes an ``uint8[H,W,3]`` array, a ``float[3,H,W]`` tensor in [0, 1]
    or an image path and returns ``{"panoptic": int32[H,W] segment ids (0 = void; PNG-ready
    with :func:`~spatialflow.data.panoptic_io.write_panoptic_png`), "segments_info": [...] in
    the data set's category ids}``, plus ``"raw"`` (boxes, scores, labels, masks, stuff map at
    the image size) with ``raw=True``. The predictor of a detector alone (``model.panoptic:
    false``) returns ``{"detections": [COCO results: category_id, bbox (xywh), score]}``
    instead (:attr:`panoptic` says which).

    Build it with :meth:`from_run` for a run folder or checkpoint, or directly around a model
    in memory (e.g. during training). The detection thresholds (``score_thresh``,
    ``nms_thresh``, ``detections_per_img``) are the model's own: :meth:`from_run` builds the
    model with those of the run's ``infer`` (after the overrides); a model passed in is used
    as it is.
    """
    def __init__(self, model, categories, infer: Optional[InferConfig] = None,
                 test_size: int = 800, max_size: Optional[int] = 1333, device: str = "cpu",
                 config: Optional[Config] = None):
        self.model = model
        self.categories = (categories if isinstance(categories, CategoryMap)
                           else CategoryMap.from_coco(categories))
        self.infer = infer or InferConfig()
        self.test_size, self.max_size, self.device = test_size, max_size, device
        self.config = config
        self.run: Optional[Path] = None  # the run folder, for a predictor made by from_run

    @classmethod
    def from_run(cls, run, device: str = "cpu", overrides: Sequence[str] = (),
                 channels_last: Optional[bool] = None, **infer) -> "Predictor":
        """The predictor of a run folder (its final weights, else its last checkpoint) or a
        checkpoint file. ``overrides`` (``"infer.mask_conf=0.5"``, ``"data.test_size=600"``,
        as ``--set``) and keyword arguments named as :class:`InferConfig` fields
        (``mask_conf=0.5``) or ``test_size`` / ``max_size`` change the run's inference
        settings; anything else is refused.

        ``channels_last`` (default: on a CPU) puts the model's weights in the channels_last
        memory format, the convolutions' preferred layout on CPUs with oneDNN: SpatialFlow R50
        at 800x1067 ran 1.04x, 1.14x and 1.15x faster on three 2-core Xeons, the same
        outputs, and evaluating a ``tiny-cpu`` run at 128 px no slower (``spatialflow bench
        --options``; docs/benchmarks.md)."""
        known = {f.name for f in fields(InferConfig)} | {"test_size", "max_size"}
        unknown = sorted(set(infer) - known)
        if unknown:
            raise InputError(f"Predictor.from_run: unknown inference setting(s) "
                             f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
        sets = [f"{'data' if k in ('test_size', 'max_size') else 'infer'}.{k}={_override_value(v)}"
                for k, v in infer.items()]
        cfg, model, categories = load_run(run, device, [*overrides, *sets])
        if channels_last if channels_last is not None else torch.device(device).type == "cpu":
            model.to(memory_format=torch.channels_last)
        predictor = cls(model, categories, cfg.infer, cfg.data.test_size, cfg.data.max_size,
                        device, cfg)
        predictor.run = run_folder(run)
        return predictor

    @property
    def panoptic(self) -> bool:
        """Whether the model segments (``False``: a detector alone, boxes only)."""
        return getattr(unwrap(self.model), "panoptic", True)

    def at_size(self, test_size: int, max_size: Optional[int]) -> "Predictor":
        """The same predictor at another test resolution (shorter edge ``test_size``, longer
        edge capped at ``max_size``); the model is shared."""
        other = copy.copy(self)
        other.test_size, other.max_size = test_size, max_size
        return other

    def raw(self, image: ImageLike, mask_conf: Optional[float] = None,
            dense_masks: bool = True) -> dict:
        """The model's raw output at the image's size (:func:`~spatialflow.engine.predict.
        predict_raw`): masks of every detection, or with ``mask_conf`` of those scoring at
        least that; with ``dense_masks=False`` as a :class:`~spatialflow.model.masks.BoxMasks`
        (what the merge reads fastest)."""
        return self.raw_batch([image], mask_conf, dense_masks)[0]

    def raw_batch(self, images: Sequence[ImageLike], mask_conf: Optional[float] = None,
                  dense_masks: bool = True) -> List[dict]:
        """:meth:`raw` of several images in one forward pass (:func:`~spatialflow.engine.
        predict.predict_raw_batch`: give it images of one :meth:`padded_size`)."""
        return predict_raw_batch(self.model, [_as_tensor(im) for im in images], self.infer,
                                 self.test_size, self.max_size, self.device, mask_conf,
                                 dense_masks)

    def padded_size(self, height: int, width: int) -> tuple:
        """The ``(H, W)`` the model runs an ``height x width`` image at (resized to the test
        size, then padded to the model's ``size_divisibility``)."""
        divisor = getattr(unwrap(self.model), "size_divisibility", 1)
        return padded_size(height, width, self.test_size, self.max_size, divisor)

    def __call__(self, image: ImageLike, raw: bool = False) -> dict:
        """The panoptic result of one image (see the class; a detector's detections);
        ``raw``: add the model's output (masks of the detections the merge can use: score >=
        ``infer.mask_conf``)."""
        out = self.raw(image, self.infer.mask_conf, dense_masks=raw)
        if not self.panoptic:
            result = {"detections": coco_detections(out, self.categories)}
            return dict(result, raw=out) if raw else result
        return self._merged(out, raw)

    def _merged(self, out: dict, raw: bool = True) -> dict:
        if not self.panoptic:  # nothing to merge: boxes only
            return {"panoptic": None, "segments_info": None, "raw": out}
        pan, segments = merge_outputs(out, self.categories, **merge_kwargs(self.infer))
        result = {"panoptic": pan, "segments_info": segments}
        if raw:
            result["raw"] = out
        return result

    def predict_dataset(self, dataset, indices=None, progress: bool = True,
                        on_error: Optional[Callable[[int, Exception], None]] = None,
                        check: Optional[Callable[[np.ndarray, dict], None]] = None,
                        batch_size: int = 8) -> Iterator[tuple]:
        """Yield ``(index, record, raw output, panoptic id map, segments_info)`` for the items
        of a :class:`~spatialflow.data.CocoPanopticDataset` (read without its transforms), at
        their original size, in the order of ``indices``. The raw output's masks are a
        :class:`~spatialflow.model.masks.BoxMasks` (``.dense()`` gives the tensor). For a detector
        alone the id map and segments are ``None``.

        Consecutive items of one :meth:`padded_size` go through the model together, up to
        ``batch_size`` of them and :data:`BATCH_PIXELS` padded pixels (each gets the output it
        would get alone). The next items are read, and the last batch merged, while the model
        runs (one thread each).

        Args:
            on_error: called as ``on_error(index, error)`` for an item whose image or panoptic
                PNG cannot be read (a :class:`~spatialflow.errors.DatasetError` from
                ``dataset.load`` or from ``check``); the item is then left out and the others
                go on. Without it, the first such error is raised.
            check: called as ``check(ground-truth id map, record)`` on each item before it is
                predicted; raise ``DatasetError`` to refuse the item.
        """
        indices = range(len(dataset)) if indices is None else list(indices)

        def load(idx):
            try:
                image, gt_pan, rec = dataset.load(idx)
                if check is not None:
                    check(gt_pan, rec)
                return idx, image, rec, None
            except DatasetError as e:
                return idx, None, None, e

        bar = tqdm(total=len(indices), desc="predict", unit="img", disable=not progress)
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as merger:
            items = _read_ahead(reader, load, indices, 2 * batch_size)
            previous = []
            for batch in self._batches(items, batch_size, on_error, bar):
                outs = self.raw_batch([image for _, image, _ in batch], self.infer.mask_conf,
                                      dense_masks=False)
                # this batch is merged while the previous one is handed out (and, by an
                # evaluation, written) and the next one goes through the model
                merged = [merger.submit(self._merged, out) for out in outs]
                yield from _finished(previous, bar)
                previous = [(idx, rec, future) for (idx, _, rec), future in zip(batch, merged)]
            yield from _finished(previous, bar)
        bar.close()

    def _batches(self, items, batch_size: int, on_error, bar):
        """Consecutive readable items of one :meth:`padded_size`, ``batch_size`` and
        :data:`BATCH_PIXELS` at most; items that failed to read go to ``on_error`` (or raise)."""
        batch, key = [], None
        for idx, image, rec, error in items:
            if error is not None:
                if on_error is None:
                    raise error
                on_error(idx, error)
                bar.update()
                continue
            size = self.padded_size(*image.shape[:2])
            if batch and (size != key or len(batch) >= batch_size
                          or (len(batch) + 1) * size[0] * size[1] > BATCH_PIXELS):
                yield batch
                batch = []
            batch.append((idx, image, rec))
            key = size
        if batch:
            yield batch

    def evaluate(self, dataset, out_dir, max_images: Optional[int] = None,
                 instances_json=None, progress: bool = True,
                 on_skip: Optional[Callable[[object, str, str], None]] = None) -> dict:
        """Predict every image of ``dataset`` (or the first ``max_images``) and score them with
        panopticapi and pycocotools (:class:`~spatialflow.evaluation.PanopticEvaluator`; a
        detector alone by box AP only); writes the predictions and ``metrics.json`` into
        ``out_dir`` and returns the metrics.

        An item whose image or panoptic PNG cannot be read, whose sizes differ, or whose PNG
        ids do not match its ``segments_info`` is left out with a ``SkippedItemWarning``; the
        left-out items are listed in ``out_dir/skipped.json`` and passed to
        ``on_skip(image_id, file, reason)`` as they are met. Raises ``DatasetError`` when no
        item can be read."""
        evaluator = PanopticEvaluator(dataset, out_dir, instances_json, self.panoptic)

        def skip(idx, error):
            evaluator.skip(dataset.annotation(idx), error)
            if on_skip is not None:
                on_skip(*evaluator.skipped[-1])

        n = len(dataset) if max_images is None else min(max_images, len(dataset))
        for _, rec, out, pan, segments in self.predict_dataset(dataset, range(n), progress,
                                                               on_error=skip,
                                                               check=evaluator.check):
            evaluator.add(rec, out, pan, segments)
        return evaluator.compute()

    def write(self, files: Sequence, out_dir, progress: bool = True):
        """Predict image files and write ``out_dir/panoptic/*.png`` + ``panoptic.json`` (COCO
        panoptic) and ``out_dir/overlays/*.png`` (:func:`~spatialflow.engine.predict.
        write_predictions`); returns ``(number written, [(file, reason), ...])``."""
        return write_predictions(self, files, out_dir, progress)


def _read_ahead(pool, fn, items, ahead: int):
    """``fn(item)`` for each of ``items``, in order, computed in ``pool`` up to ``ahead`` items
    before they are asked for."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _finished(merged, bar):
    """``(index, record, raw output, panoptic id map, segments_info)`` of each ``(index,
    record, future of Predictor._merged)``, in order, as each merge finishes."""
    for idx, rec, future in merged:
        result = future.result()
        bar.update()
        yield idx, rec, result["raw"], result["panoptic"], result["segments_info"]


def _override_value(value) -> str:
    """A Python value as the ``key=value`` override syntax reads it."""
    return json.dumps(value) if not isinstance(value, str) else value


def _as_tensor(image: ImageLike) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    return to_tensor(image)


def evaluate_run(run, data=None, out=None, split: Optional[str] = None, device: str = "cpu",
                 overrides: Sequence[str] = (), max_images: Optional[int] = None,
                 instances_json=None, progress: bool = True,
                 on_skip: Optional[Callable[[object, str, str], None]] = None) -> dict:
    """Evaluate a trained run (folder or checkpoint, or the :class:`Predictor` of one) and
    return its metrics (``metrics.json``'s content, also written into ``out``, default
    ``<run>/eval/final``).

    ``data``: a :class:`~spatialflow.data.CocoPanopticDataset`, or a data folder in
    ``make-data``'s or COCO's layout whose ``split`` (default: the run's val split) is read;
    default: the run's own data (its synthetic data made again if its ``data/`` folder is
    gone: the same bytes for the same config). The data set's categories must be those the run
    was trained on. ``overrides`` change the run's inference settings (as :meth:`Predictor.from_run`);
    the rest is :meth:`Predictor.evaluate`'s."""
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, device, overrides)
    cfg, folder = predictor.config, predictor.run
    if cfg is None or folder is None:
        raise InputError("evaluate_run needs a run: a folder, a checkpoint or "
                         "Predictor.from_run(...); for a model in memory use Predictor.evaluate")
    if isinstance(data, CocoPanopticDataset):
        dataset = data
    else:
        root = Path(data) if data is not None else prepare_data(cfg, folder)
        dataset = CocoPanopticDataset.from_root(root, split or cfg.data.val_split,
                                                on_error=cfg.data.on_error)
    dataset.categories.check_model(predictor.categories, str(dataset.panoptic_json))
    out = Path(out) if out is not None else folder / FINAL_EVAL
    return predictor.evaluate(dataset, out, max_images, instances_json, progress, on_skip)
