"""Prediction with a trained model, in one place: :class:`Predictor` holds a model and its
inference settings (one :class:`~spatialflow.config.InferConfig`) and predicts one image, with
test-time augmentation, a data set, an evaluation or a folder of files; :func:`evaluate_run`
scores a run. What knows the run folder (loading it, its checkpoints, its data) is
:mod:`spatialflow.engine.runs`."""

from __future__ import annotations

import collections
import copy
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from spatialflow.config import Config, InferConfig, update_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.panoptic_io import IMAGE_EXTENSIONS, read_image, write_panoptic_png
from spatialflow.data.transforms import pad_to_divisible, shortest_edge_size
from spatialflow.engine.runs import (INFERENCE_KEYS, eval_folder, load_run, run_dataset,
                                     run_folder, unwrap)
from spatialflow.errors import DatasetError, InputError
from spatialflow.evaluation import PanopticEvaluator, coco_detections
from spatialflow.panoptic import merge_outputs
from spatialflow.render import detection_overlay, panoptic_overlay, save_png, side_by_side

ImageLike = Union[np.ndarray, torch.Tensor, str, os.PathLike]
#: the :class:`InferConfig` fields the model decodes its boxes with
DETECTION_KEYS = ("score_thresh", "nms_thresh", "detections_per_img")
#: the :class:`InferConfig` fields of the panoptic merge (:func:`spatialflow.panoptic.merge`)
MERGE_KEYS = ("mask_conf", "overlap", "stuff_area", "box_fill", "box_fill_enabled")
#: :meth:`Predictor.predict_dataset` puts at most this many padded pixels in one forward pass
#: (64 images of 128 x 128; one 800 x 1088 image)
BATCH_PIXELS = 1 << 20


def merge_kwargs(infer: InferConfig) -> dict:
    """The merge thresholds of an :class:`InferConfig` (:data:`MERGE_KEYS`) as
    :func:`spatialflow.panoptic.merge` keyword arguments."""
    return {key: getattr(infer, key) for key in MERGE_KEYS}


def to_tensor(image) -> torch.Tensor:
    """``float[3,H,W]`` in [0, 1] from an ``uint8[H,W,3]`` array (as the readers return)."""
    array = np.ascontiguousarray(image)
    if not array.flags.writeable:  # e.g. np.asarray of a PIL image: torch wants to own it
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


def prepare_image(image: torch.Tensor, test_size: int, max_size: Optional[int]) -> torch.Tensor:
    """Resize a ``float[3,H,W]`` image so its shorter edge is ``test_size`` (longer edge capped
    at ``max_size``), as in training."""
    h, w = image.shape[-2:]
    size = shortest_edge_size(h, w, test_size, max_size)
    if size == (h, w):
        return image
    return F.resize_image(image, list(size), antialias=True)


def augmentations(infer: InferConfig, test_size: int,
                  max_size: Optional[int]) -> List[Tuple[int, Optional[int], bool]]:
    """The test-time passes ``(shorter edge, longer-edge cap, flipped)`` that ``infer`` asks
    for: each of ``infer.tta_scales`` (or just ``test_size``), each also flipped when
    ``infer.tta_flip``."""
    scales = [(int(a), int(b)) for a, b in infer.tta_scales] or [(test_size, max_size)]
    flips = (False, True) if infer.tta_flip else (False,)
    return [(short, cap, flip) for short, cap in scales for flip in flips]


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """xyxy boxes mirrored left-right in an image ``width`` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def padded_size(height: int, width: int, test_size: int, max_size: Optional[int],
                divisor: int) -> Tuple[int, int]:
    """The size the model runs an ``height x width`` image at: resized to ``test_size``
    (:func:`prepare_image`), then padded to a multiple of ``divisor``."""
    return pad_to_divisible(*shortest_edge_size(height, width, test_size, max_size), divisor)


def list_images(inputs) -> list:
    """Image files named in ``inputs`` (files, or folders searched recursively), sorted."""

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                           and f.is_file())
            if not found:
                raise InputError(f"{p}: no image files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return files


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
    in memory (e.g. during training). Every threshold comes from one :class:`InferConfig`,
    ``infer``: the detection thresholds (``score_thresh``, ``nms_thresh``,
    ``detections_per_img``) are set on the model before each forward pass, the merge's are
    passed to it, so a predictor made by :meth:`with_settings` or :meth:`from_run` with other
    thresholds changes what the model keeps as well as what the merge does.
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
                 channels_last: Optional[bool] = None, **settings) -> "Predictor":
        """The predictor of a run folder (its final weights, else its last checkpoint) or a
        checkpoint file. ``overrides`` (``"infer.mask_conf=0.5"``, ``"data.test_size=600"``,
        text as ``--set`` gives it) and keyword arguments (:meth:`with_settings`:
        ``mask_conf=0.5``, ``nms_thresh=0.3``, ``test_size=600``) change the run's inference
        settings; anything else is refused.

        ``channels_last`` (default: on a CPU) puts the model's weights in the channels_last
        memory format, the convolutions' preferred layout on CPUs with oneDNN: SpatialFlow R50
        at 800x1067 ran 1.04x, 1.14x and 1.15x faster on three 2-core Xeons, the same
        outputs, and evaluating a ``tiny-cpu`` run at 128 px no slower (``spatialflow bench
        --options``; docs/benchmarks.md)."""
        cfg, model, categories = load_run(run, device, overrides)
        if channels_last if channels_last is not None else torch.device(device).type == "cpu":
            model.to(memory_format=torch.channels_last)
        predictor = cls(model, categories, cfg.infer, cfg.data.test_size, cfg.data.max_size,
                        device, cfg).with_settings(**settings)
        predictor.run = run_folder(run)
        return predictor

    def with_settings(self, **settings) -> "Predictor":
        """The same predictor (the model shared) with other inference settings: keyword
        arguments named as :class:`InferConfig` fields (``nms_thresh=0.3``, ``mask_conf=0.5``)
        or ``test_size`` / ``max_size``, checked as the config checks them (a
        :class:`~spatialflow.errors.ConfigError` names a bad value); anything else is
        refused."""
        known = {f.name for f in fields(InferConfig)} | {"test_size", "max_size"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(f"Predictor: unknown inference setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        if not settings:
            return self
        base = self.config or Config()
        base = replace(base, infer=self.infer, data=replace(
            base.data, test_size=self.test_size, max_size=self.max_size))
        section = {k: "data" if k in ("test_size", "max_size") else "infer" for k in settings}
        cfg = update_config(base, {f"{section[k]}.{k}": v for k, v in settings.items()},
                            INFERENCE_KEYS)
        other = copy.copy(self)
        other.infer, other.test_size = cfg.infer, cfg.data.test_size
        other.max_size = cfg.data.max_size
        other.config = cfg if self.config is not None else None
        return other

    @property
    def panoptic(self) -> bool:
        """Whether the model segments (``False``: a detector alone, boxes only)."""
        return getattr(unwrap(self.model), "panoptic", True)

    def at_size(self, test_size: int, max_size: Optional[int]) -> "Predictor":
        """The same predictor at another test resolution (shorter edge ``test_size``, longer
        edge capped at ``max_size``); the model is shared."""
        return self.with_settings(test_size=test_size, max_size=max_size)

    def _detect_as_infer(self) -> None:
        """Set :data:`DETECTION_KEYS` of :attr:`infer` on the model, which decodes its boxes
        with them (torchvision's ``RetinaNet`` attributes)."""
        model = unwrap(self.model)
        for key in DETECTION_KEYS:
            setattr(model, key, getattr(self.infer, key))

    def raw(self, image: ImageLike, mask_conf: Optional[float] = None,
            dense_masks: bool = True) -> dict:
        """The model's raw output (``boxes``, ``scores``, ``labels``, ``masks``, ``sem_seg``)
        for one image at its original size, before the merge; with ``infer.tta_scales`` or
        ``infer.tta_flip`` set, :meth:`tta`'s. Masks are those of every detection, or with
        ``mask_conf`` of the detections scoring at least that (the first ones; a merge with that
        ``mask_conf`` or higher uses no other); with ``dense_masks=False`` a
        :class:`~spatialflow.model.masks.BoxMasks` (what the merge reads fastest). A detector
        alone gives ``boxes``, ``scores`` and ``labels``."""
        return self.raw_batch([image], mask_conf, dense_masks)[0]

    @torch.inference_mode()
    def raw_batch(self, images: Sequence[ImageLike], mask_conf: Optional[float] = None,
                  dense_masks: bool = True) -> List[dict]:
        """:meth:`raw` of several images in one forward pass (with test-time augmentation, one
        image after the other). The model pads the batch to its largest image, and a padded
        pixel changes what GroupNorm sees: pass images of one :meth:`padded_size` (as
        :meth:`predict_dataset` groups them) for the outputs each would have alone."""
        images = [_as_tensor(im) for im in images]
        if self.infer.tta_scales or self.infer.tta_flip:
            return [self.tta(im, mask_conf, dense_masks) for im in images]
        self.model.eval()
        self._detect_as_infer()
        sizes = [tuple(int(v) for v in im.shape[-2:]) for im in images]
        xs = [prepare_image(im, self.test_size, self.max_size).to(self.device) for im in images]
        outs = self.model(xs, output_sizes=sizes, mask_score_thresh=mask_conf or 0.0,
                          dense_masks=dense_masks)
        if len(outs) != len(xs):
            raise ValueError(f"the model returned {len(outs)} outputs for {len(xs)} images; it "
                             "must return one per image")
        return [{k: v.cpu() for k, v in out.items()} for out in outs]

    @torch.inference_mode()
    def tta(self, image: ImageLike, mask_conf: Optional[float] = None,
            dense_masks: bool = True) -> dict:
        """Multi-scale + flip test-time augmentation of one image (the passes of
        :func:`augmentations`): the stuff probabilities of all passes are averaged and give the
        stuff map; the detections of all passes are pooled and reduced by per-class NMS
        (``infer.nms_thresh``, top ``infer.detections_per_img``); each kept box's 28x28 mask
        probabilities are averaged over the passes (the thing head run on every pass's
        features; with ``mask_conf``, for the detections scoring at least that only) and
        pasted once by the model's own last step (``SpatialFlow.image_output``). Returns what
        :meth:`raw` returns."""
        image = _as_tensor(image)
        model, infer = unwrap(self.model), self.infer
        model.eval()
        self._detect_as_infer()
        panoptic = self.panoptic
        h, w = image.shape[-2:]
        passes, found, sem = [], [], None
        for short, cap, flip in augmentations(infer, self.test_size, self.max_size):
            x = prepare_image(image, short, cap).to(self.device)
            x = x.flip(-1) if flip else x
            sizes, thing_features, detections, stuff_logits = model.raw_outputs([x])
            (ah, aw), det = sizes[0], detections[0]
            boxes = flip_boxes(det["boxes"], aw) if flip else det["boxes"]
            found.append((resize_boxes(boxes, (ah, aw), (h, w)), det["scores"], det["labels"]))
            if not panoptic:
                continue
            logits = stuff_logits[:, :, :ah, :aw]
            logits = logits.flip(-1) if flip else logits
            probs = nnf.interpolate(logits, size=(h, w), mode="bilinear",
                                    align_corners=False)[0].softmax(0)
            sem = probs if sem is None else sem + probs
            passes.append((thing_features, (ah, aw), flip))
        boxes, scores, labels = (torch.cat(v) for v in zip(*found))
        keep = batched_nms(boxes, scores, labels, infer.nms_thresh)[:infer.detections_per_img]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if not panoptic:
            return {"boxes": boxes.cpu(), "scores": scores.cpu(), "labels": labels.cpu()}
        m = len(scores) if mask_conf is None else int((scores >= mask_conf).sum())
        mask_probs = None
        for thing_features, (ah, aw), flip in passes:
            b = resize_boxes(boxes[:m], (h, w), (ah, aw))
            p = model.mask_probs(thing_features, [flip_boxes(b, aw) if flip else b], [labels[:m]],
                                 [(ah, aw)])[0]
            p = p.flip(-1) if flip else p
            mask_probs = p if mask_probs is None else mask_probs + p
        out = dict(boxes=boxes, scores=scores, labels=labels,
                   **model.image_output(boxes, mask_probs / len(passes), sem, (h, w), dense_masks))
        return {k: v.cpu() for k, v in out.items()}

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
        """Predict image files and write ``out_dir/panoptic/*.png`` + ``out_dir/panoptic.json``
        (COCO panoptic) and ``out_dir/overlays/*.png`` (image | prediction); for a detector
        alone ``out_dir/detections.json`` (``images``, ``annotations``: COCO results,
        ``categories``: the thing classes) and overlays of its boxes scoring at least
        ``infer.mask_conf``. A file that cannot be read is skipped; returns ``(number written,
        [(file, reason), ...])``."""
        categories, panoptic = self.categories, self.panoptic
        out_dir = Path(out_dir)
        if panoptic:
            (out_dir / "panoptic").mkdir(parents=True, exist_ok=True)
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
        images, annotations, failures = [], [], []
        stems = set()
        for path in tqdm(files, desc="predict", unit="img", disable=not progress):
            try:
                image = read_image(path)
            except DatasetError as e:
                failures.append((str(path), str(e)))
                continue
            stem = path.stem if path.stem not in stems else f"{path.stem}_{len(stems)}"
            stems.add(stem)
            result = self(image)
            image_id = len(images) + 1
            if panoptic:
                pan, segments = result["panoptic"], result["segments_info"]
                write_panoptic_png(out_dir / "panoptic" / f"{stem}.png", pan)
                overlay = panoptic_overlay(image, pan, segments, categories, boxes=True, labels=True)
                annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                    "segments_info": segments})
            else:
                overlay = detection_overlay(image, result["detections"], categories,
                                            self.infer.mask_conf)
                annotations += [{"image_id": image_id, **d} for d in result["detections"]]
            save_png(out_dir / "overlays" / f"{stem}.png", side_by_side(image, overlay))
            images.append({"id": image_id, "file_name": path.name, "height": image.shape[0],
                           "width": image.shape[1], "path": str(path)})
        if panoptic:
            (out_dir / "panoptic.json").write_text(json.dumps(
                {"images": images, "annotations": annotations, "categories": categories.to_coco()}))
        else:
            (out_dir / "detections.json").write_text(json.dumps(
                {"images": images, "annotations": annotations,
                 "categories": categories.thing_categories()}))
        return len(images), failures


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
    dataset = data if isinstance(data, CocoPanopticDataset) else run_dataset(
        folder, split or cfg.data.val_split, data, cfg)
    dataset.categories.check_model(predictor.categories, str(dataset.panoptic_json))
    out = Path(out) if out is not None else eval_folder(folder)
    return predictor.evaluate(dataset, out, max_images, instances_json, progress, on_skip)
