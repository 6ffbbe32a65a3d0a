"""Reading and writing the files of the COCO panoptic format (I/O at the edge, clear errors).

Panoptic PNGs hold one segment id per pixel as ``id = R + 256 G + 256^2 B`` (panopticapi's
``rgb2id`` / ``id2rgb``); id 0 is VOID.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps
from panopticapi.utils import id2rgb, rgb2id

from spatialflow.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def load_json(path, required: Iterable[str] = ()) -> dict:
    """Read a JSON object; a missing or unreadable file, bad JSON (not UTF-8, malformed, nested
    too deeply, a number too long to convert) or a missing top-level key is a
    :class:`DatasetError` naming the file. A UTF-8 byte-order mark is accepted."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: JSON file not found")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the JSON file ({e.strerror or e})") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})"
                           ) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise DatasetError(f"{path}: malformed JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts
        raise DatasetError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in required if k not in data]
    if missing:
        raise DatasetError(f"{path}: missing top-level key(s) {missing}")
    return data


#: Default pixel limit (width x height) of :func:`read_image` and :func:`read_panoptic_png`:
#: Pillow's decompression-bomb threshold ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89.5 M pixels)
#: as it was when this module was imported. Larger images are refused from their header, before
#: any pixel is decoded.
MAX_PIXELS: Optional[int] = Image.MAX_IMAGE_PIXELS

#: What a corrupt file can make Pillow's decoders raise (beyond ``OSError``, which covers
#: truncated files and unidentified formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  ZeroDivisionError, struct.error, Image.DecompressionBombError)

def _open_header(path: Path) -> Image.Image:
    """``Image.open`` (reads the header only) without Pillow's decompression-bomb warning; our
    own limit is checked next. Beyond Pillow's hard limit (twice ``MAX_IMAGE_PIXELS``) Pillow
    refuses the file itself, with a ``DecompressionBombError`` naming its size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _open_checked(path: Path, what: str, max_pixels: Optional[int] = MAX_PIXELS) -> Image.Image:
    """Open and decode an image file; a missing, corrupt, truncated or too large file is a
    :class:`DatasetError` naming it. The size is checked from the header, before decoding."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        im = _open_header(path)
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{path}: cannot decode {what} ({e or type(e).__name__})") from None
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise DatasetError(f"{path}: {what} of {w}x{h} pixels ({w * h:,}) exceeds the limit of "
                           f"{max_pixels:,} pixels (max_pixels)")
    if w < 1 or h < 1:
        im.close()
        raise DatasetError(f"{path}: {what} has no pixel ({w}x{h})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()  # decodes now: a truncated or corrupt file fails here, not later
    except _DECODE_ERRORS as e:
        im.close()
        raise DatasetError(f"{path}: cannot decode {what} ({e or type(e).__name__})") from None
    return im


_ORIENTATION = 0x0112  # the EXIF orientation tag


def exif_orientation(path) -> int:
    """The EXIF orientation tag (1-8) of an image file; 1 (upright) when it has none or cannot
    be read."""
    try:
        with _open_header(Path(path)) as im:
            value = im.getexif().get(_ORIENTATION, 1)
    except _DECODE_ERRORS:  # only a hint for error messages
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def read_image(path, max_pixels: Optional[int] = MAX_PIXELS, exif_transpose: bool = True
               ) -> np.ndarray:
    """``uint8[H,W,3]`` RGB from any format Pillow reads.

    Grayscale, bilevel, 16- and 32-bit integer, float, palette (with or without transparency),
    CMYK and RGBA images are converted: gray values go to all three channels, 16-bit values are
    scaled to 8 bits (65535 -> 255), 32-bit integer images are scaled likewise when their values
    exceed 255, float images are taken as [0, 1] when their values stay within it and as
    [0, 255] otherwise, and alpha is dropped.

    Args:
        path: the image file.
        max_pixels: refuse images of more than this many pixels (width x height), read from
            the header before anything is decoded; ``None`` = no limit of ours (Pillow's own
            decompression-bomb limit, ``2 * PIL.Image.MAX_IMAGE_PIXELS``, still holds).
            Default :data:`MAX_PIXELS`.
        exif_transpose: apply the EXIF orientation tag (as detectron2 does), so the array is
            the image as viewers show it; its size is then the rotated one.

    Raises:
        DatasetError: the file is missing, not an image, truncated or corrupt, or too large;
            the message names the file and the fault.
    """
    path = Path(path)
    im = _open_checked(path, "image", max_pixels)
    if exif_transpose:
        try:
            if im.getexif().get(_ORIENTATION, 1) in range(2, 9):
                im = ImageOps.exif_transpose(im)
        except _DECODE_ERRORS:  # a broken EXIF block: keep the pixels as stored
            pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode != "I" or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0,
                            neginf=0.0)
        scale = 255.0 if arr.size and arr.min() >= 0 and arr.max() <= 1.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's advice for palettes with transparency; alpha dropped
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_panoptic_png(path, max_pixels: Optional[int] = MAX_PIXELS) -> np.ndarray:
    """``int64[H,W]`` segment ids of a COCO panoptic PNG (RGB, ``id = R + 256 G + 256^2 B``).

    ``max_pixels`` as in :func:`read_image`. Raises :class:`DatasetError` naming the file when it
    is missing, corrupt, too large or not an RGB image."""
    path = Path(path)
    im = _open_checked(path, "panoptic PNG", max_pixels)
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
