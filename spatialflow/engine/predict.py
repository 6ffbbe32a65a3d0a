"""Inference on one image (resize to the test size, run the model; test-time augmentation)
and the writer of predicted files. :class:`~spatialflow.engine.runs.Predictor` holds a model
and its settings and calls these."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from spatialflow.config import InferConfig
from spatialflow.data.panoptic_io import IMAGE_EXTENSIONS, read_image, write_panoptic_png
from spatialflow.data.transforms import pad_to_divisible, shortest_edge_size
from spatialflow.errors import DatasetError, InputError
from spatialflow.model.masks import paste_mask_crops, stuff_map
from spatialflow.render import detection_overlay, panoptic_overlay, save_png, side_by_side


def merge_kwargs(infer: InferConfig) -> dict:
    """The merge thresholds of an :class:`InferConfig` as :func:`spatialflow.panoptic.merge`
    keyword arguments."""
    return dict(mask_conf=infer.mask_conf, overlap=infer.overlap, stuff_area=infer.stuff_area,
                box_fill=infer.box_fill, box_fill_enabled=infer.box_fill_enabled)


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


@torch.inference_mode()
def predict_tta(model, image: torch.Tensor, infer: InferConfig = InferConfig(),
                test_size: int = 800, max_size: Optional[int] = 1333,
                device: str = "cpu", mask_conf: Optional[float] = None,
                dense_masks: bool = True) -> dict:
    """Multi-scale + flip test-time augmentation of one ``float[3,H,W]`` image (the passes of
    :func:`augmentations`): the stuff probabilities of all passes are averaged and give the
    stuff map (:func:`~spatialflow.model.masks.stuff_map`); the detections of all passes are
    pooled and reduced by per-class NMS (``nms_thresh``, top ``detections_per_img``); each kept
    box's 28x28 mask probabilities are averaged over the passes (the thing head run on every
    pass's features; with ``mask_conf``, for the detections scoring at least that only) and
    pasted once. Returns the raw output (``boxes``, ``scores``, ``labels``, ``masks``,
    ``sem_seg``) at the original size; with ``dense_masks=False`` the masks are a
    :class:`~spatialflow.model.masks.BoxMasks`. A detector alone gives the pooled ``boxes``,
    ``scores`` and ``labels`` only."""
    model.eval()
    panoptic = getattr(model, "panoptic", True)
    h, w = image.shape[-2:]
    passes, found, sem = [], [], None
    for short, cap, flip in augmentations(infer, test_size, max_size):
        x = prepare_image(image, short, cap).to(device)
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
    keep = batched_nms(boxes, scores, labels, model.nms_thresh)[:model.detections_per_img]
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
    masks = paste_mask_crops(mask_probs / len(passes), boxes[:m], (h, w))
    masks = masks.dense() if dense_masks else masks
    out = dict(boxes=boxes, scores=scores, labels=labels, masks=masks, sem_seg=stuff_map(sem))
    return {k: v.cpu() for k, v in out.items()}


def predict_raw(model, image: torch.Tensor, infer: InferConfig = InferConfig(),
                test_size: int = 800, max_size: Optional[int] = 1333,
                device: str = "cpu", mask_conf: Optional[float] = None,
                dense_masks: bool = True) -> dict:
    """The model's raw output (``boxes``, ``scores``, ``labels``, ``masks``, ``sem_seg``) for
    one ``float[3,H,W]`` image (values in [0, 1]) at its original size, before the merge; with
    ``infer.tta_scales`` or ``infer.tta_flip`` set, :func:`predict_tta`'s. Masks are those of
    every detection, or with ``mask_conf`` of the detections scoring at least that (the first
    ones; a merge with that ``mask_conf`` or higher uses no other). With ``dense_masks=False``
    the masks are a :class:`~spatialflow.model.masks.BoxMasks` (what the merge reads fastest)."""
    return predict_raw_batch(model, [image], infer, test_size, max_size, device, mask_conf,
                             dense_masks)[0]


@torch.inference_mode()
def predict_raw_batch(model, images: Sequence[torch.Tensor], infer: InferConfig = InferConfig(),
                      test_size: int = 800, max_size: Optional[int] = 1333,
                      device: str = "cpu", mask_conf: Optional[float] = None,
                      dense_masks: bool = True) -> List[dict]:
    """:func:`predict_raw` of several images in one forward pass (with test-time augmentation,
    one image after the other). The model pads the batch to its largest image, and a padded
    pixel changes what GroupNorm sees: pass images of one :func:`padded_size` (as
    :meth:`~spatialflow.engine.runs.Predictor.predict_dataset` groups them) for the outputs
    each would have alone."""
    model.eval()
    if infer.tta_scales or infer.tta_flip:
        return [predict_tta(model, im, infer, test_size, max_size, device, mask_conf,
                            dense_masks) for im in images]
    sizes = [tuple(int(v) for v in im.shape[-2:]) for im in images]
    xs = [prepare_image(im, test_size, max_size).to(device) for im in images]
    outs = model(xs, output_sizes=sizes, mask_score_thresh=mask_conf or 0.0,
                 dense_masks=dense_masks)
    if len(outs) != len(xs):
        raise ValueError(f"the model returned {len(outs)} outputs for {len(xs)} images; it "
                         "must return one per image")
    return [{k: v.cpu() for k, v in out.items()} for out in outs]


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


def write_predictions(predictor, files, out_dir, progress: bool = True):
    """Predict image files with ``predictor`` (a :class:`~spatialflow.engine.runs.Predictor`)
    and write ``out_dir/panoptic/*.png`` + ``out_dir/panoptic.json`` (COCO panoptic) and
    ``out_dir/overlays/*.png`` (image | prediction); for a detector alone ``out_dir/
    detections.json`` (``images``, ``annotations``: COCO results, ``categories``: the thing
    classes) and overlays of its boxes scoring at least ``infer.mask_conf``. A file that
    cannot be read is skipped; returns ``(number written, [(file, reason), ...])``."""
    categories, panoptic = predictor.categories, predictor.panoptic
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
        result = predictor(image)
        image_id = len(images) + 1
        if panoptic:
            pan, segments = result["panoptic"], result["segments_info"]
            write_panoptic_png(out_dir / "panoptic" / f"{stem}.png", pan)
            overlay = panoptic_overlay(image, pan, segments, categories, boxes=True, labels=True)
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                "segments_info": segments})
        else:
            overlay = detection_overlay(image, result["detections"], categories,
                                        predictor.infer.mask_conf)
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
