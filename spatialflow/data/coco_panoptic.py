"""COCO panoptic datasets (COCO, Cityscapes converted to COCO panoptic, the synthetic data).

``CocoPanopticDataset[i]`` returns ``(image float[3,H,W] in [0, 1], target)`` with

===================== ========================================================================
``boxes``             ``float32[N,4]`` xyxy of the non-crowd things (right/bottom exclusive)
``labels``            ``int64[N]`` contiguous thing ids (:class:`CategoryMap`)
``masks``             ``uint8[N,H,W]`` instance masks
``segment_ids``       ``int64[N]`` their ids in the panoptic PNG
``crowd_*``           the same four fields for crowd segments (not trained on)
``sem_seg``           ``int64[H,W]``: stuff index ``0..S-1``, ``S`` = 'other' (any thing,
                      crowd included), 255 = ignore (VOID)
``image_id``          the JSON's image id
``file_name``         the image path
``orig_size``/``size`` ``int64[2]`` (H, W) before / after the transforms
``skipped``           list of messages of unreadable items replaced by this one
                      (``on_error="skip"`` only; empty otherwise)
===================== ========================================================================
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from spatialflow.data.categories import IGNORE_INDEX, CategoryMap
from spatialflow.data.panoptic_io import (attach_stats, exif_orientation, index_images,
                                          load_json, read_image, read_panoptic_png)
from spatialflow.data.transforms import INSTANCE_FIELDS, boxes_from_masks
from spatialflow.errors import DatasetError


def check_segment_ids(present: Iterable[int], segments: Sequence[dict],
                      source: str = "panoptic PNG") -> None:
    """Raise :class:`DatasetError` naming ``source`` when the ids ``present`` in a panoptic PNG
    (0, VOID, is ignored) and the ids of its ``segments_info`` differ: an id of the PNG that
    is not listed, or a listed segment without a pixel."""
    present = {int(i) for i in present} - {0}
    listed = {int(s["id"]) for s in segments}
    unknown = sorted(present - listed)
    if unknown:
        raise DatasetError(f"{source}: PNG segment id(s) {unknown[:10]} are not in segments_info")
    empty = sorted(listed - present)
    if empty:
        raise DatasetError(f"{source}: segments_info id(s) {empty[:10]} have no pixel in the PNG")


def panoptic_to_target(pan: np.ndarray, segments: Sequence[dict], categories: CategoryMap,
                       source: str = "panoptic PNG") -> dict:
    """Targets (instance masks, ``sem_seg``) of one panoptic id map and its ``segments_info``.

    Raises :class:`DatasetError` (naming ``source``) when a PNG id is not in ``segments_info``
    or a listed segment has no pixel.
    """
    pan = np.asarray(pan)
    ids, inverse = np.unique(pan, return_inverse=True)
    inverse = inverse.reshape(pan.shape)
    by_id = {int(s["id"]): s for s in segments}
    check_segment_ids(ids.tolist(), segments, source)

    sem_lut = np.full(len(ids), IGNORE_INDEX, np.int64)
    groups = {"": ([], [], []), "crowd_": ([], [], [])}  # inverse index, label, segment id
    for k, sid in enumerate(ids.tolist()):
        if sid == 0:
            continue
        seg = by_id[sid]
        cat = seg["category_id"]
        sem_lut[k] = categories.semantic_index(cat)
        if categories.is_thing(cat):
            group = groups["crowd_" if seg.get("iscrowd", 0) else ""]
            group[0].append(k)
            group[1].append(categories.thing_index(cat))
            group[2].append(sid)

    h, w = pan.shape
    target = {"sem_seg": torch.from_numpy(sem_lut[inverse])}
    for prefix, (ks, labels, sids) in groups.items():
        if ks:
            masks = torch.from_numpy(inverse[None] == np.asarray(ks)[:, None, None]).to(torch.uint8)
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        target[prefix + "masks"] = masks
        target[prefix + "labels"] = torch.as_tensor(labels, dtype=torch.int64)
        target[prefix + "segment_ids"] = torch.as_tensor(sids, dtype=torch.int64)
        target[prefix + "boxes"] = boxes_from_masks(masks)
    return target


def target_to_panoptic(target: dict, categories: CategoryMap,
                       segments_info: Optional[Sequence[dict]] = None) -> Tuple[np.ndarray, list]:
    """Rebuild ``(panoptic id map, segments_info)`` from a target's masks and ``sem_seg``.

    Instances keep their ``segment_ids``; each stuff class takes the id of its segment in
    ``segments_info`` when given (COCO has at most one segment per stuff class and image), else a
    fresh id. Pixels of 'other' not covered by any mask, and ignored pixels, are VOID (0).
    """
    sem = target["sem_seg"].numpy()
    pan = np.zeros(sem.shape, np.int64)
    stuff_seg = {}
    for s in segments_info or ():
        if not categories.is_thing(s["category_id"]):
            stuff_seg.setdefault(s["category_id"], int(s["id"]))
    out, used = [], set(int(i) for i in target["segment_ids"]) | set(
        int(i) for i in target["crowd_segment_ids"])
    next_id = max(used | set(stuff_seg.values()) | {0}) + 1
    for idx in np.unique(sem).tolist():
        if idx >= categories.num_stuff:  # 'other' or ignore
            continue
        cat = categories.stuff_id(idx)
        sid = stuff_seg.get(cat)
        if sid is None:
            sid, next_id = next_id, next_id + 1
        pan[sem == idx] = sid
        out.append({"id": sid, "category_id": cat, "iscrowd": 0})
    for prefix, crowd in (("", 0), ("crowd_", 1)):
        for mask, label, sid in zip(target[prefix + "masks"], target[prefix + "labels"],
                                    target[prefix + "segment_ids"]):
            pan[mask.numpy().astype(bool)] = int(sid)
            out.append({"id": int(sid), "category_id": categories.thing_id(int(label)),
                        "iscrowd": crowd})
    return pan, attach_stats(pan, out)


def image_stems(file_name: str, image_id) -> List[str]:
    """File stems under which an image may be found, best first: the JSON's ``file_name``;
    for Cityscapes, whose official converter (``createPanopticImgs``) writes
    ``<id>_gtFine_leftImg8bit.png`` for the image ``<id>_leftImg8bit.png`` of
    ``leftImg8bit/<split>/<city>/``, that name and ``<image id>_leftImg8bit`` (as detectron2
    finds them)."""
    stem = Path(file_name).stem
    stems = [stem]
    if stem.endswith("_gtFine_leftImg8bit"):
        stems.append(stem[:-len("_gtFine_leftImg8bit")] + "_leftImg8bit")
    if isinstance(image_id, str):
        stems.append(f"{image_id}_leftImg8bit")
    return list(dict.fromkeys(stems))


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_image_id(value) -> bool:
    """COCO image ids are integers, Cityscapes' are strings."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_file_name(value) -> bool:
    return isinstance(value, str) and value.strip() != "" and "\x00" not in value


def _segment_fault(seg, seen: set, categories: CategoryMap) -> Optional[str]:
    """What is wrong with one ``segments_info`` entry (``None`` when it is fine)."""
    if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
        return "a segment lacks 'id' or 'category_id'"
    sid, cat = seg["id"], seg["category_id"]
    if not _is_positive_int(sid) or sid >= 256**3:
        return (f"segment id {sid!r} is invalid (expected an integer in 1..{256**3 - 1}; "
                f"0 is VOID)")
    if isinstance(cat, bool) or not isinstance(cat, int) or cat not in categories:
        return f"segment id {sid} has category_id {cat!r}, which is not in 'categories'"
    if sid in seen:
        return f"segment id {sid} appears twice in segments_info"
    if seg.get("iscrowd", 0) not in (0, 1):  # True and False compare equal to 1 and 0
        return f"segment id {sid} has iscrowd={seg['iscrowd']!r}, expected 0 or 1"
    return None


class CocoPanopticDataset(torch.utils.data.Dataset):
    """A COCO panoptic dataset: images, panoptic PNGs and their JSON.

    Args:
        image_dir: folder of the images (searched recursively by file stem when the JSON's
            ``file_name`` is not found as is, so any extension and city sub-folders work).
        panoptic_json: COCO panoptic JSON (``images``, ``annotations``, ``categories``).
        panoptic_dir: folder of the panoptic PNGs named in ``annotations[].file_name``.
        transforms: joint transform ``(image, target) -> (image, target)``, see
            :mod:`spatialflow.data.transforms`.
        on_error: ``"raise"`` (default) fails on the first bad item with a message naming the
            file and the fault; ``"skip"`` warns, leaves the item out (faults found when opening)
            or serves the next good item instead (faults found when reading), and counts them in
            :attr:`skipped`.
        check_files: check at opening that every image and PNG exists.

    JSON-level faults (malformed file, categories without ``isthing``, ``images`` or
    ``annotations`` that are not lists, entries of ``images`` without a valid ``id``,
    ``file_name``, ``height`` or ``width``, duplicate image ids) always raise
    :class:`DatasetError`. Faults of one image's annotation (invalid or duplicate segment ids,
    unknown ``category_id``, ``iscrowd`` other than 0/1, a second annotation of the same image,
    missing files) follow ``on_error``. Whatever the input, opening and reading raise
    :class:`DatasetError` and no other exception (the reader is fuzzed with random valid and
    broken data sets in ``tests/test_robust_inputs.py``).
    """

    def __init__(self, image_dir, panoptic_json, panoptic_dir,
                 transforms: Optional[Callable] = None, on_error: str = "raise",
                 check_files: bool = True, cache: bool = False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.image_dir, self.panoptic_dir = Path(image_dir), Path(panoptic_dir)
        self.panoptic_json = Path(panoptic_json)
        self.transforms, self.on_error = transforms, on_error
        # cache: each item decoded once (image and targets before the transforms), then read
        # from memory (the process's own: each DataLoader worker holds its own copy)
        self.cache: Optional[dict] = {} if cache else None
        self.skipped: List[str] = []
        for d, what in ((self.image_dir, "image folder"), (self.panoptic_dir, "panoptic PNG folder")):
            if not d.is_dir():
                raise DatasetError(f"{d}: {what} not found")
        data = load_json(self.panoptic_json, required=("images", "annotations", "categories"))
        try:
            self.categories = CategoryMap.from_coco(data["categories"],
                                                    source=str(self.panoptic_json))
        except DatasetError:
            raise
        except (TypeError, ValueError, KeyError, OverflowError) as e:  # e.g. a colour of text
            raise DatasetError(f"{self.panoptic_json}: invalid 'categories' "
                               f"({type(e).__name__}: {e})") from None
        self.records = self._index(data, check_files)
        if not self.records:
            raise DatasetError(f"{self.panoptic_json}: no usable image"
                               + (f" ({len(self.skipped)} skipped)" if self.skipped else ""))

    # opening ---------------------------------------------------------------------------
    def _fault(self, msg: str):
        if self.on_error == "raise":
            raise DatasetError(msg)
        warnings.warn(f"skipping: {msg}", stacklevel=3)
        self.skipped.append(msg)

    def _index(self, data: dict, check_files: bool) -> list:
        src = str(self.panoptic_json)
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise DatasetError(f"{src}: '{key}' must be a list, got "
                                   f"{type(data[key]).__name__}")
        images = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise DatasetError(f"{src}: images[{i}] needs 'id' and 'file_name'")
            image_id = im["id"]
            if not _is_image_id(image_id):
                raise DatasetError(f"{src}: images[{i}] has invalid id {image_id!r} (expected an "
                                   f"integer or a string)")
            if image_id in images:
                raise DatasetError(f"{src}: image id {image_id} appears twice in 'images'")
            if not _is_file_name(im["file_name"]):
                raise DatasetError(f"{src}: image id {image_id} has invalid file_name "
                                   f"{im['file_name']!r}")
            for key in ("height", "width"):
                value = im.get(key)
                if value is not None and not _is_positive_int(value):
                    raise DatasetError(f"{src}: image id {image_id} has invalid {key} {value!r} "
                                       f"(expected a positive integer)")
            images[image_id] = im
        stem_index = None  # built on first need: stem -> path of every image under image_dir
        records, annotated = [], set()
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or any(
                    k not in ann for k in ("image_id", "file_name", "segments_info")):
                raise DatasetError(f"{src}: annotations[{i}] needs 'image_id', 'file_name' and "
                                   f"'segments_info'")
            image_id = ann["image_id"]
            if not _is_image_id(image_id):
                raise DatasetError(f"{src}: annotations[{i}] has invalid image_id {image_id!r} "
                                   f"(expected an integer or a string)")
            where = f"{src}: image id {image_id}"
            if image_id not in images:
                self._fault(f"{where}: annotation for an image not in 'images'")
                continue
            if image_id in annotated:
                self._fault(f"{where}: more than one annotation (annotations[{i}] left out)")
                continue
            annotated.add(image_id)
            bad = None
            if not _is_file_name(ann["file_name"]):
                bad = f"{where}: invalid panoptic PNG file_name {ann['file_name']!r}"
            elif not isinstance(ann["segments_info"], list):
                bad = (f"{where}: segments_info must be a list, got "
                       f"{type(ann['segments_info']).__name__}")
            segments, seen = [], set()
            for seg in ann["segments_info"] if bad is None else ():
                bad = _segment_fault(seg, seen, self.categories)
                if bad:
                    bad = f"{where}: {bad}"
                    break
                seen.add(seg["id"])
                segments.append(seg)
            if bad:
                self._fault(bad)
                continue
            im = images[image_id]
            image_path = self.image_dir / im["file_name"]
            if not image_path.is_file():  # another extension, or in a sub-folder (Cityscapes)
                if stem_index is None:
                    stem_index = index_images(self.image_dir)
                found = (stem_index.get(stem) for stem in image_stems(im["file_name"], image_id))
                image_path = next((path for path in found if path is not None), image_path)
            png_path = self.panoptic_dir / ann["file_name"]
            if check_files:
                if not image_path.is_file():
                    self._fault(f"{image_path}: image file not found (image id {image_id})")
                    continue
                if not png_path.is_file():
                    self._fault(f"{png_path}: panoptic PNG not found (image id {image_id})")
                    continue
            records.append({"image_id": image_id, "image_path": image_path, "png_path": png_path,
                            "height": im.get("height"), "width": im.get("width"),
                            "segments_info": segments})
        for image_id in images.keys() - annotated:
            self._fault(f"{src}: image id {image_id} ({images[image_id]['file_name']}) has no "
                        f"annotation")
        return records

    # reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def annotation(self, idx: int) -> dict:
        """The JSON record of item ``idx`` (image id, paths, ``segments_info``)."""
        return self.records[idx]

    def load(self, idx: int) -> Tuple[np.ndarray, np.ndarray, dict]:
        """Raw ``(image uint8[H,W,3], panoptic ids int64[H,W], record)`` of item ``idx``.

        The image is read as :func:`~spatialflow.data.panoptic_io.read_image` reads it (EXIF
        orientation applied), so its panoptic PNG must have the size of the turned image.
        Raises :class:`DatasetError` naming the file when the image or PNG cannot be read or
        their sizes differ (from each other or from the JSON's ``height``/``width``)."""
        rec = self.records[idx]
        image = read_image(rec["image_path"])
        pan = read_panoptic_png(rec["png_path"])
        if image.shape[:2] != pan.shape:
            hint = ""
            if pan.shape == image.shape[:2][::-1] and exif_orientation(rec["image_path"]) > 4:
                hint = ("; the image is turned by its EXIF orientation tag, which is applied "
                        "when reading, but its PNG is not")
            raise DatasetError(f"{rec['png_path']}: size {pan.shape[1]}x{pan.shape[0]} differs "
                               f"from its image {rec['image_path']} "
                               f"({image.shape[1]}x{image.shape[0]}; image id "
                               f"{rec['image_id']}){hint}")
        if (rec["height"] is not None and rec["width"] is not None
                and (rec["height"], rec["width"]) != pan.shape):
            raise DatasetError(f"{rec['image_path']}: size {image.shape[1]}x{image.shape[0]} "
                               f"differs from the JSON's {rec['width']}x{rec['height']} "
                               f"(image id {rec['image_id']})")
        return image, pan, rec

    def decoded(self, idx: int) -> Tuple[torch.Tensor, dict]:
        """Item ``idx`` before the transforms: ``(image uint8[3,H,W], target)``; from memory
        when the data set caches (``cache=True``; ``sem_seg`` is held as uint8 there when its
        values fit)."""
        if self.cache is not None and idx in self.cache:
            img, target = self.cache[idx]
            img, target = img.clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                        for k, v in target.items()}
            target["sem_seg"] = target["sem_seg"].to(torch.int64)
            return img, target
        image, pan, rec = self.load(idx)
        target = panoptic_to_target(pan, rec["segments_info"], self.categories,
                                    source=f"{rec['png_path']} (image id {rec['image_id']})")
        target["image_id"] = rec["image_id"]
        target["file_name"] = str(rec["image_path"])
        target["orig_size"] = torch.tensor(pan.shape, dtype=torch.int64)
        target["size"] = torch.tensor(pan.shape, dtype=torch.int64)
        img = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        if self.cache is not None:
            held = dict(target)
            if held["sem_seg"].numel() == 0 or int(held["sem_seg"].max()) <= 255:
                held["sem_seg"] = held["sem_seg"].to(torch.uint8)
            self.cache[idx] = (img, {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                     for k, v in held.items()})
        return img, target

    def _read(self, idx: int):
        img, target = self.decoded(idx)
        img = img.to(torch.float32).div_(255.0)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target

    def __getitem__(self, idx: int):
        if self.on_error == "raise":
            img, target = self._read(idx)
            target["skipped"] = []
            return img, target
        skipped = []
        for k in range(len(self)):
            try:
                img, target = self._read((idx + k) % len(self))
            except DatasetError as e:
                warnings.warn(f"skipping: {e}", stacklevel=2)
                skipped.append(str(e))
                self.skipped.append(str(e))
                continue
            target["skipped"] = skipped
            return img, target
        raise DatasetError(f"{self.panoptic_json}: no item could be read ({len(skipped)} bad)")

    # construction helpers --------------------------------------------------------------
    @classmethod
    def from_root(cls, root, split: str = "train", **kwargs) -> "CocoPanopticDataset":
        """Open ``split`` of a dataset folder in one of these layouts:

        - ``spatialflow make-data``: ``root/{split}/``, ``root/panoptic_{split}.json``,
          ``root/panoptic_{split}/``
        - COCO: ``root/{split}2017/``, ``root/annotations/panoptic_{split}2017.json``,
          ``root/annotations/panoptic_{split}2017/``
        - Cityscapes after ``cityscapesscripts``' ``createPanopticImgs``:
          ``root/leftImg8bit/{split}/``, ``root/gtFine/cityscapes_panoptic_{split}.json``,
          ``root/gtFine/cityscapes_panoptic_{split}/`` (or the ``_trainId`` variant)
        """
        root = Path(root)
        layouts = [
            (root / split, root / f"panoptic_{split}.json", root / f"panoptic_{split}"),
            (root / f"{split}2017", root / "annotations" / f"panoptic_{split}2017.json",
             root / "annotations" / f"panoptic_{split}2017"),
            (root / "leftImg8bit" / split, root / "gtFine" / f"cityscapes_panoptic_{split}.json",
             root / "gtFine" / f"cityscapes_panoptic_{split}"),
            (root / "leftImg8bit" / split,
             root / "gtFine" / f"cityscapes_panoptic_{split}_trainId.json",
             root / "gtFine" / f"cityscapes_panoptic_{split}_trainId"),
        ]
        for image_dir, js, png_dir in layouts:
            if js.is_file():
                return cls(image_dir, js, png_dir, **kwargs)
        tried = ", ".join(str(js) for _, js, _ in layouts)
        raise DatasetError(f"{root}: no panoptic JSON for split '{split}' (looked for {tried})")


def count_skipped(targets: Sequence[dict]) -> int:
    """Number of unreadable items that were replaced to fill this batch (``on_error="skip"``)."""
    return sum(len(t.get("skipped", ())) for t in targets)


__all__ = ["CocoPanopticDataset", "DatasetError", "check_segment_ids", "count_skipped",
           "panoptic_to_target", "target_to_panoptic", "INSTANCE_FIELDS"]
