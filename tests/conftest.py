"""Shared fixtures: the real COCO sample in ../shared and small hand-made panoptic data sets."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from panopticapi.utils import id2rgb

ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_panoptic_sample"

TINY_CATEGORIES = [
    {"id": 7, "name": "ball", "isthing": 1, "color": [200, 30, 30], "supercategory": "toy"},
    {"id": 3, "name": "box", "isthing": 1, "color": [30, 200, 30], "supercategory": "toy"},
    {"id": 20, "name": "floor", "isthing": 0, "color": [90, 90, 90], "supercategory": "ground"},
    {"id": 11, "name": "wall", "isthing": 0, "color": [200, 200, 150], "supercategory": "wall"},
]


@pytest.fixture(scope="session")
def coco_sample():
    """The two real COCO val images with panoptic ground truth (skipped without ../shared)."""
    if not (COCO_SAMPLE / "panoptic.json").is_file():
        pytest.skip(f"COCO panoptic sample not present at {COCO_SAMPLE}")
    return COCO_SAMPLE


def tiny_scene(h=40, w=48, crowd=True):
    """A hand-made panoptic id map and segments: wall above floor, two touching boxes, a ball,
    an optional crowd of balls and a VOID strip."""
    pan = np.zeros((h, w), np.int64)
    pan[: h // 2] = 1100            # wall
    pan[h // 2:] = 2000             # floor
    pan[24:34, 4:14] = 301          # box 1
    pan[24:34, 14:22] = 302         # box 2, touching box 1
    pan[6:14, 30:38] = 701          # ball
    segs = [
        {"id": 1100, "category_id": 11, "iscrowd": 0},
        {"id": 2000, "category_id": 20, "iscrowd": 0},
        {"id": 301, "category_id": 3, "iscrowd": 0},
        {"id": 302, "category_id": 3, "iscrowd": 0},
        {"id": 701, "category_id": 7, "iscrowd": 0},
    ]
    if crowd:
        pan[30:38, 34:46] = 799
        segs.append({"id": 799, "category_id": 7, "iscrowd": 1})
    pan[:, -1] = 0                  # VOID column
    for s in segs:
        ys, xs = np.nonzero(pan == s["id"])
        s["area"] = int(len(ys))
        s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)]
    return pan, segs


def write_tiny_dataset(root: Path, n: int = 3, image_ext: str = ".jpg"):
    """Write ``n`` tiny scenes in the make-data layout (``root/train`` etc.); returns paths."""
    img_dir, png_dir = root / "train", root / "panoptic_train"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        pan, segs = tiny_scene(crowd=(i % 2 == 0))
        colors = {s["id"]: rng.integers(0, 255, 3) for s in segs}
        rgb = np.zeros(pan.shape + (3,), np.uint8)
        for sid, c in colors.items():
            rgb[pan == sid] = c
        name = f"{i:04d}"
        Image.fromarray(rgb).save(img_dir / (name + image_ext))
        Image.fromarray(id2rgb(pan).astype(np.uint8)).save(png_dir / (name + ".png"))
        images.append({"id": i + 1, "file_name": name + image_ext, "height": pan.shape[0],
                       "width": pan.shape[1]})
        anns.append({"image_id": i + 1, "file_name": name + ".png", "segments_info": segs})
    js = root / "panoptic_train.json"
    js.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": TINY_CATEGORIES}))
    return img_dir, js, png_dir


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_tiny_dataset(tmp_path)


# --- short training runs (tests/test_train.py, tests/test_faults.py) -------------------------
#: overrides of tiny-cpu for runs of a few iterations on 8 synthetic images of 128 px
FAST = ["data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.synthetic.size=128",
        "data.min_size=[128]", "data.max_size=128", "data.test_size=128", "data.num_workers=0",
        "train.batch_size=2", "train.base_batch_size=2", "train.log_every=5",
        "train.warmup_iters=5", "train.checkpoint_every=1000"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """8 train + 2 val synthetic images of 128 px (one set per test module)."""
    from spatialflow.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, 8, 2, 128, 0, workers=1, progress=False)
    return root


def fast(data_root, *extra):
    """The tiny-cpu config with :data:`FAST` on ``data_root``, then ``extra`` overrides."""
    from spatialflow.config import load_config

    return load_config("tiny-cpu", FAST + [f"data.root={data_root}", *extra])


def free_port() -> int:
    """A free TCP port on localhost (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def _private_cpu_step_cache(tmp_path_factory):
    """Runs that measure their CPU step format remember it in a cache of this session, not in
    the user's ``~/.cache/spatialflow``."""
    import os

    old = os.environ.get("SPATIALFLOW_CACHE")
    os.environ["SPATIALFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("SPATIALFLOW_CACHE", None)
    else:
        os.environ["SPATIALFLOW_CACHE"] = old
