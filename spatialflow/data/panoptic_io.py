"""Reading and writing the files of the COCO panoptic format (I/O at the edge, clear errors).

Panoptic PNGs hold one segment id per pixel as ``id = R + 256 G + 256^2 B`` (panopticapi's
``rgb2id`` / ``id2rgb``); id 0 is VOID.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np
from PIL import Image
from panopticapi.utils import id2rgb, rgb2id

from spatialflow.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def load_json(path, required: Iterable[str] = ()) -> dict:
    """Read a JSON object; a missing file, bad JSON or a missing top-level key is a
    :class:`DatasetError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: JSON file not found")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in required if k not in data]
    if missing:
        raise DatasetError(f"{path}: missing top-level key(s) {missing}")
    return data


def _open_checked(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        im = Image.open(path)
        im.load()  # decodes now: a truncated or corrupt file fails here, not later
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot decode {what} ({e})") from None
    return im


def read_image(path) -> np.ndarray:
    """``uint8[H,W,3]`` RGB from any format Pillow reads; grayscale, 16-bit, palette, CMYK and
    RGBA images are converted (16-bit is scaled to 8-bit, alpha is dropped)."""
    path = Path(path)
    im = _open_checked(path, "image")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode != "I" or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_panoptic_png(path) -> np.ndarray:
    """``int64[H,W]`` segment ids of a COCO panoptic PNG."""
    path = Path(path)
    im = _open_checked(path, "panoptic PNG")
    if im.mode != "RGB":
        raise DatasetError(f"{path}: panoptic PNG must be RGB (ids as R + 256G + 256^2B), "
                           f"got mode {im.mode}")
    return rgb2id(np.asarray(im, dtype=np.uint8)).astype(np.int64)


def write_panoptic_png(path, pan: np.ndarray) -> None:
    """Write ``int[H,W]`` segment ids as a COCO panoptic PNG."""
    Image.fromarray(id2rgb(np.asarray(pan)).astype(np.uint8)).save(path)


def segment_stats(pan: np.ndarray) -> Dict[int, Tuple[int, list]]:
    """``{segment id: (area, [x, y, w, h])}`` of every non-VOID id in ``pan`` (vectorised)."""
    pan = np.asarray(pan)
    flat = pan.ravel()
    if flat.size and flat.min() >= 0 and flat.max() < 2**16:  # small ids: count, no sort
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        areas = counts[ids]
        position = np.zeros(len(counts), dtype=np.int64)
        position[ids] = np.arange(len(ids))
        inverse = position[flat]
    else:
        ids, inverse, areas = np.unique(flat, return_inverse=True, return_counts=True)
    h, w = pan.shape
    ys = np.repeat(np.arange(h), w)
    xs = np.tile(np.arange(w), h)
    n = len(ids)
    x0 = np.full(n, w); y0 = np.full(n, h); x1 = np.full(n, -1); y1 = np.full(n, -1)
    np.minimum.at(x0, inverse, xs); np.minimum.at(y0, inverse, ys)
    np.maximum.at(x1, inverse, xs); np.maximum.at(y1, inverse, ys)
    return {
        int(i): (int(a), [int(a0), int(b0), int(a1 - a0 + 1), int(b1 - b0 + 1)])
        for i, a, a0, b0, a1, b1 in zip(ids, areas, x0, y0, x1, y1)
        if i != 0
    }


def attach_stats(pan: np.ndarray, segments) -> list:
    """``segments`` with ``area`` and ``bbox`` set from the id map ``pan``; segments without a
    pixel are left out."""
    stats = segment_stats(pan)
    out = []
    for seg in segments:
        if seg["id"] in stats:
            seg["area"], seg["bbox"] = stats[seg["id"]]
            out.append(seg)
    return out


def index_images(image_dir: Path) -> Dict[str, Path]:
    """``{file stem: path}`` of every image file under ``image_dir`` (recursively)."""
    index: Dict[str, Path] = {}
    for p in sorted(Path(image_dir).rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            index.setdefault(p.stem, p)
    return index
