"""Procedural outdoor scenes written in exact COCO panoptic format: the built-in default dataset.

Each image is a cartoon landscape: sky above an irregular horizon, an optional jagged mountain
band, and ground made of grass, a perspective road and water (a lake, a river or a distant sea).
Things stand where they belong (cars on the road, boats on water, persons on grass, birds in the
sky), shrink towards the horizon, are drawn far-to-near so that near ones occlude far ones, and
often touch or overlap instances of their own class. Thing colours come from one distribution for
every class and carry texture and noise, so the class has to be read from the shape and the
place. Some images hold no things; some hold a flock of tiny birds labelled as one crowd segment.

Two scene styles (:data:`SCENES`): ``"close"`` (the default) shows the scenes from nearer, with
things twice as large as in ``"wide"`` and between a tenth and a half of the image side, so that
every thing spans two or more cells of P3 (stride 8) at 128 px; ``"wide"`` is the first version,
whose distant things shrink to a few pixels (at 256 px the median thing is about 12 px, 1.5
cells of P3) and which a CPU run of minutes does not learn to detect.

Every image is rendered from its own generator, seeded from ``(seed, split, index)``, so the files
are byte-identical for a given seed whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import copy
import json
import math
import multiprocessing as mp
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from spatialflow.data.panoptic_io import segment_stats, write_panoptic_png
from spatialflow.errors import InputError

SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60], "supercategory": "person"},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142], "supercategory": "vehicle"},
    {"id": 9, "name": "boat", "isthing": 1, "color": [0, 0, 192], "supercategory": "vehicle"},
    {"id": 16, "name": "bird", "isthing": 1, "color": [165, 42, 42], "supercategory": "animal"},
    {"id": 149, "name": "road", "isthing": 0, "color": [128, 64, 128], "supercategory": "ground"},
    {"id": 155, "name": "water", "isthing": 0, "color": [73, 77, 174], "supercategory": "water"},
    {"id": 187, "name": "sky", "isthing": 0, "color": [70, 130, 180], "supercategory": "sky"},
    {"id": 192, "name": "mountain", "isthing": 0, "color": [64, 170, 64], "supercategory": "solid"},
    {"id": 193, "name": "grass", "isthing": 0, "color": [152, 251, 152], "supercategory": "plant"},
]
PERSON, CAR, BOAT, BIRD = 1, 3, 9, 16
ROAD, WATER, SKY, MOUNTAIN, GRASS = 149, 155, 187, 192, 193
THING_IDS = (PERSON, CAR, BOAT, BIRD)
_SPLIT_KEY = {"train": 0, "val": 1}
_STEM = re.compile(r"^\d{12}\.(jpg|png)$")


@dataclass(frozen=True)
class SceneStyle:
    """How near the scenes are seen: things are ``zoom`` times their size in the wide scenes,
    between ``min_frac`` and ``max_frac`` of the image side; ``whole_boats`` checks that a boat's
    bow and stern, not only its keel, lie over water (large boats must not overhang the shore);
    an image with water holds ``boat_groups`` (a ``[low, high)`` range) groups of boats."""
    zoom: float = 1.0
    min_frac: float = 0.0
    max_frac: float = math.inf
    whole_boats: bool = False
    boat_groups: tuple = (0, 3)  # [low, high) groups of boats on water


#: "wide" is the first version (landscapes seen from afar; at 256 px the median thing is about
#: 12 px, 1.5 cells of P3); "close" (the default) shows the same scenes from nearer
SCENES = {"wide": SceneStyle(), "close": SceneStyle(2.0, 0.1, 0.5, whole_boats=True,
                                                      boat_groups=(1, 4))}


def scene_style(scene: str) -> SceneStyle:
    """The :class:`SceneStyle` named ``scene``; an unknown name is an ``InputError``."""
    if scene not in SCENES:
        raise InputError(f"unknown synthetic scene style {scene!r} (valid: {', '.join(SCENES)})")
    return SCENES[scene]


# --- geometry primitives, evaluated on a local grid (ys: [h,1], xs: [1,w] pixel centres) -------
def _disk(ys, xs, cy, cx, r):
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def _ellipse(ys, xs, cy, cx, ry, rx):
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


def _capsule(ys, xs, p0, p1, r):
    """Pixels within ``r`` of the segment p0-p1 (points are (y, x))."""
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((ys - p0[0]) * dy + (xs - p0[1]) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return (ys - p0[0] - t * dy) ** 2 + (xs - p0[1] - t * dx) ** 2 <= r * r


def _rrect(ys, xs, y0, x0, y1, x1, r):
    """Rounded rectangle with corner radius ``r``."""
    r = min(r, (y1 - y0) / 2, (x1 - x0) / 2)
    dy = np.maximum(np.abs(ys - (y0 + y1) / 2) - ((y1 - y0) / 2 - r), 0)
    dx = np.maximum(np.abs(xs - (x0 + x1) / 2) - ((x1 - x0) / 2 - r), 0)
    return dy * dy + dx * dx <= r * r


def _convex(ys, xs, pts):
    """Inside of a convex polygon given as (y, x) vertices in either winding order."""
    pos = neg = True
    for (y0, x0), (y1, x1) in zip(pts, pts[1:] + pts[:1]):
        cross = (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)
        pos, neg = pos & (cross >= 0), neg & (cross <= 0)
    return pos | neg


def _local(sc, y0, x0, y1, x1):
    """Clipped integer pixel box around a float box -> (iy0, ix0, ys, xs), or None if empty."""
    iy0, ix0 = max(0, math.floor(y0)), max(0, math.floor(x0))
    iy1, ix1 = min(sc.H, math.ceil(y1) + 1), min(sc.W, math.ceil(x1) + 1)
    if iy1 <= iy0 or ix1 <= ix0:
        return None
    ys = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5
    return iy0, ix0, ys, xs


def _random_color(rng):
    """One colour distribution shared by all thing classes (it may resemble stuff colours)."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.95), rng.uniform(0.2, 0.95))
    return np.array(rgb, np.float32) * 255


def _jitter(rng, rgb, amount=12.0):
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


# --- the shape painters: each returns [(mask, rgb), ...] drawn in order on the local grid ----------
def _car(ys, xs, cx, yb, L, d, rgb):
    r = 0.12 * L
    top = yb - r - 0.16 * L
    body = _rrect(ys, xs, top, cx - L / 2, yb - 0.4 * r, cx + L / 2, 0.06 * L + 0.5)
    ct, cb = top - 0.17 * L, top + 0.5
    cabin = _convex(ys, xs, [(cb, cx - d * 0.3 * L), (cb, cx + d * 0.24 * L),
                             (ct, cx + d * 0.1 * L), (ct, cx - d * 0.2 * L)])
    wt, wb = ct + 0.04 * L, top - 0.02 * L
    window = _convex(ys, xs, [(wb, cx - d * 0.25 * L), (wb, cx + d * 0.18 * L),
                              (wt, cx + d * 0.08 * L), (wt, cx - d * 0.17 * L)])
    wheels = _disk(ys, xs, yb - r, cx - 0.3 * L, r) | _disk(ys, xs, yb - r, cx + 0.3 * L, r)
    glass = 0.35 * rgb + np.float32(0.65 * 200)
    return [(body, rgb), (cabin, rgb * 0.85), (window & (L > 14), glass), (wheels, rgb * 0.2 + 25)]


def _boat(ys, xs, cx, yb, L, d, rgb, rgb2, sail):
    hh = 0.2 * L
    hull = _convex(ys, xs, [(yb - hh, cx - L / 2), (yb - hh, cx + L / 2),
                            (yb, cx + d * 0.3 * L), (yb, cx - d * 0.36 * L)])
    deck = yb - hh
    if not sail:  # motor boat: a cabin box on the hull
        xa, xb = sorted((cx - d * 0.25 * L, cx + d * 0.08 * L))
        cabin = _rrect(ys, xs, deck - 0.18 * L, xa, deck + 0.5, xb, 0.03 * L + 0.5)
        return [(hull, rgb), (cabin, rgb2)]
    mtop = deck - 0.8 * L
    mast = _capsule(ys, xs, (deck, cx), (mtop, cx), max(0.6, 0.025 * L))
    canvas = _convex(ys, xs, [(mtop + 0.05 * L, cx + d), (deck - 0.06 * L, cx + d),
                              (deck - 0.06 * L, cx + d * 0.42 * L)])
    return [(hull, rgb), (mast, rgb * 0.5), (canvas, rgb2)]


def _bird(ys, xs, cx, cy, S, d, up, rgb):
    body = _ellipse(ys, xs, cy, cx, 0.07 * S + 0.5, 0.2 * S + 0.5)
    head = _disk(ys, xs, cy - 0.04 * S, cx + d * 0.2 * S, 0.065 * S + 0.5)
    w = 0.05 * S + 0.5
    wings = np.zeros(np.broadcast(ys, xs).shape, bool)
    for side in (-1, 1):
        elbow = (cy - up * 0.2 * S, cx + side * 0.25 * S)
        tip = (cy - up * 0.28 * S + 0.12 * S, cx + side * 0.5 * S)
        wings |= _capsule(ys, xs, (cy, cx), elbow, w) | _capsule(ys, xs, elbow, tip, 0.7 * w)
    return [(wings, rgb * 0.85), (body, rgb), (head, rgb * 1.1)]


def _person(ys, xs, cx, yb, Hp, rgb, skin):
    hr = 0.1 * Hp
    neck, hip, bw = yb - Hp + 2 * hr, yb - 0.45 * Hp, 0.11 * Hp + 0.3
    torso = _capsule(ys, xs, (neck + bw, cx), (hip, cx), bw)
    arms = (_capsule(ys, xs, (neck + bw, cx - bw), (hip + bw * 0.3, cx - 1.5 * bw), 0.35 * bw + 0.3)
            | _capsule(ys, xs, (neck + bw, cx + bw), (hip + bw * 0.3, cx + 1.5 * bw), 0.35 * bw + 0.3))
    legs = (_capsule(ys, xs, (hip, cx - 0.4 * bw), (yb - 0.4 * bw, cx - 0.8 * bw), 0.4 * bw + 0.3)
            | _capsule(ys, xs, (hip, cx + 0.4 * bw), (yb - 0.4 * bw, cx + 0.8 * bw), 0.4 * bw + 0.3))
    head = _disk(ys, xs, yb - Hp + hr, cx, hr + 0.3)
    return [(legs, rgb * 0.65), (torso | arms, rgb), (head, skin)]


class _Scene:
    """Per-image state: size, horizon, stuff map, noise fields, road parameters."""

    def __init__(self, rng, H, W, style: "SceneStyle"):
        self.H, self.W, self.s = H, W, min(H, W) / 256.0
        # thing sizes: ``zoom`` x their size in the wide scenes, within [min_px, max_px]
        self.style = style
        self.zoom, self.min_px, self.max_px = (style.zoom, style.min_frac * min(H, W),
                                               style.max_frac * min(H, W))
        self.Y = np.arange(H, dtype=np.float32)[:, None] + 0.5
        self.X = np.arange(W, dtype=np.float32)[None, :] + 0.5
        self.hi = rng.standard_normal((H, W), dtype=np.float32)
        self.hi3 = rng.standard_normal((3, H, W), dtype=np.float32)
        self.mid, self.lo = self.smooth(rng, 6), self.smooth(rng, 40)
        self.road = None

    def smooth(self, rng, cell):
        """Smooth noise: a coarse Gaussian grid upsampled bicubically (std about 1)."""
        cell = max(2.0, cell * self.s)
        grid = rng.standard_normal((int(self.H / cell) + 2, int(self.W / cell) + 2)).astype(np.float32)
        return np.asarray(Image.fromarray(grid).resize((self.W, self.H), Image.BICUBIC)) * 1.6

    def size(self, wide, floor=0.0):
        """A thing's size in pixels: ``zoom`` times ``wide`` (its size in the wide scenes), at
        least ``floor`` and the scene's ``min_px``, at most ``max_px``."""
        return self.clamp(self.zoom * wide, floor)

    def clamp(self, px, floor=0.0):
        """``px`` limited to the scene's thing sizes (and at least ``floor``)."""
        return min(max(px, floor, self.min_px), self.max_px)

    def depth(self, y, x):
        """Ground depth of a point: 0 at the horizon, 1 at the bottom edge."""
        h = float(self.hz[min(max(int(x), 0), self.W - 1)])
        return float(np.clip((y - h) / max(self.H - h, 1.0), 0, 1))

    def road_at(self, y):
        """Centre and width of the road at row ``y`` (scalars or arrays)."""
        r = self.road
        t = (y - r["y0"]) / max(self.H - r["y0"], 1.0)
        centre = r["vx"] + (r["bx"] - r["vx"]) * t + r["curve"] * t * (1 - t)
        return centre, r["wf"] + (r["wn"] - r["wf"]) * t, t

    def on(self, cat, pts):
        """True when every in-image point lies on stuff ``cat`` (and at least one is inside)."""
        inside = 0
        for y, x in pts:
            yi, xi = int(math.floor(y)), int(math.floor(x))
            if 0 <= yi < self.H and 0 <= xi < self.W:
                if self.sem[yi, xi] != cat:
                    return False
                inside += 1
        return inside > 0

    def sample(self, rng, cat):
        """A random pixel (y, x) of stuff ``cat`` or None."""
        idx = np.flatnonzero(self.sem.ravel() == cat)
        if idx.size == 0:
            return None
        i = int(idx[rng.integers(idx.size)])
        return i // self.W + rng.random(), i % self.W + rng.random()


# --- stuff layout and appearance ---------------------------------------------------------------
def _layout(rng, sc):
    H, W, s, Y, X = sc.H, sc.W, sc.s, sc.Y, sc.X
    xs = X[0]
    hz = np.full(W, H * rng.uniform(0.28, 0.5), np.float32)
    for k in range(1, 4):
        f, ph = rng.uniform(0.3, 1.5) * k, rng.uniform(0, 2 * np.pi)
        hz += rng.uniform(0, 0.035) * H / k * np.sin(2 * np.pi * f * xs / W + ph)
    sc.hz, sc.mheight = hz, np.zeros(W, np.float32)
    ground = Y >= hz
    sem = np.where(ground, GRASS, SKY).astype(np.uint8)
    if rng.random() < 0.55:  # a mountain band of 1-3 jagged peaks between sky and ground
        height = np.zeros(W, np.float32)
        for _ in range(rng.integers(1, 4)):
            px, ph, pw = rng.uniform(-0.1, 1.1) * W, rng.uniform(0.06, 0.26) * H, rng.uniform(0.15, 0.5) * W
            height = np.maximum(height, ph * (1 - np.abs(xs - px) / pw))
        walk = np.cumsum(rng.normal(0, 0.9 * s, W)).astype(np.float32)
        walk -= np.linspace(walk[0], walk[-1], W, dtype=np.float32)
        walk += 2 * s * np.sin(xs * rng.uniform(0.2, 0.5) / s + rng.uniform(0, 6))
        height = np.where(height > 0, np.clip(height + walk, 0, hz - 0.06 * H), 0)
        sc.mheight = height.astype(np.float32)
        sem[(Y >= hz - height) & ~ground & (height >= 1)] = MOUNTAIN
    sc.tmap = np.clip((Y - hz) / np.maximum(H - hz, 1), 0, 1)
    if rng.random() < 0.65:  # road: a band narrowing towards a vanishing point on the horizon
        vx = rng.uniform(0.15, 0.85) * W
        sc.road = dict(vx=vx, bx=vx + rng.uniform(-0.35, 0.35) * W, curve=rng.uniform(-0.4, 0.4) * W,
                       wf=rng.uniform(1.5, 4) * s, wn=rng.uniform(0.5, 1.1) * W,
                       y0=float(hz[min(int(vx), W - 1)]))
    kind = rng.choice(4, p=[0.4, 0.25, 0.2, 0.15])  # none, lake, sea, river
    water = np.zeros((H, W), bool)
    if kind == 1:
        away = sc.road["bx"] if sc.road else rng.uniform(0, W)
        lx = away + rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * W
        lx = lx if 0.05 * W < lx < 0.95 * W else 2 * away - lx
        h0 = float(hz[int(np.clip(lx, 0, W - 1))])
        ly = h0 + rng.uniform(0.3, 0.75) * (H - h0)
        rx = rng.uniform(0.12, 0.35) * W
        ry = min(rx * rng.uniform(0.3, 0.5), 0.95 * (ly - h0))
        theta = np.arctan2((Y - ly) / ry, (X - lx) / rx)
        edge = np.ones_like(theta)
        for k in range(2, 6):
            edge += rng.uniform(0, 0.07) * np.sin(k * theta + rng.uniform(0, 6))
        dist = np.sqrt(((X - lx) / rx) ** 2 + ((Y - ly) / ry) ** 2)
        water = ground & (dist - edge + 0.05 * sc.mid < 0) & (sc.tmap > 0.03)
    elif kind == 2:
        shore = hz + (H - hz) * rng.uniform(0.12, 0.35) * (1 + 0.2 * np.sin(xs / W * 7 + rng.uniform(0, 6)))
        water = ground & (Y - shore + 1.5 * s * sc.mid < 0)
        if sc.road:
            sc.road["y0"] = float(shore[min(int(sc.road["vx"]), W - 1)])
    elif kind == 3:
        yc = hz + rng.uniform(0.25, 0.6) * (H - hz) + rng.uniform(0, 0.08) * H * np.sin(
            2 * np.pi * rng.uniform(0.5, 1.5) * xs / W + rng.uniform(0, 6))
        half = (yc - hz) * rng.uniform(0.08, 0.18) + s
        water = ground & (np.abs(Y - yc) - half + 1.5 * s * sc.mid < 0)
    sem[water] = WATER
    if sc.road:
        centre, width, t = sc.road_at(Y)
        road = ground & (t >= 0) & (np.abs(X - centre) < width / 2)
        sem[road & ~water if kind == 2 else road] = ROAD
    sc.sem = sem


def _paint_stuff(rng, sc):
    """Textured colours of the stuff regions -> float32 [3, H, W] (channels first: fast numpy)."""
    H, Y, X, sem, hi = sc.H, sc.Y, sc.X, sc.sem, sc.hi
    mood = rng.choice(3, p=[0.7, 0.15, 0.15])  # day, dusk, overcast
    top = _jitter(rng, [[60, 120, 215], [70, 70, 140], [140, 148, 160]][mood], 20)[:, None, None]
    low = _jitter(rng, [[180, 205, 235], [240, 160, 110], [200, 204, 210]][mood], 15)[:, None, None]
    f = np.clip(Y / max(float(sc.hz.min()), 1.0), 0, 1)[None] ** 0.8
    cloud = np.clip(sc.smooth(rng, 24) - rng.uniform(0.3, 1.8), 0, 1) * 0.8
    img = (top + (low - top) * f) * (1 - cloud) + (low * 0.3 + 175) * cloud
    haze = 0.5 * (1 - sc.tmap) ** 8  # aerial perspective: ground fades into the horizon colour

    def fill(m, rgb, shade, noise, fade=None):
        a = haze[m] if fade is None else fade
        img[:, m] = (rgb[:, None] * shade[m] + noise * hi[m]) * (1 - a) + low[:, 0] * a

    m = sem == MOUNTAIN
    if m.any():
        base = _jitter(rng, [[110, 120, 140], [120, 100, 80], [70, 100, 70], [100, 95, 125]][rng.integers(4)])
        frac = np.clip((Y - (sc.hz - sc.mheight)) / np.maximum(sc.mheight, 1), 0, 1)
        fill(m, base, 1.15 - 0.35 * frac + 0.08 * sc.mid, 6, 0.25)
        snow = m & (frac < 0.18) & (sc.mheight > 0.15 * H)
        img[:, snow] = 230 + 10 * hi[snow]
    hsv = rng.uniform(0.2, 0.33), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.75)
    m = sem == GRASS
    fill(m, _jitter(rng, np.array(colorsys.hsv_to_rgb(*hsv)) * 255, 8), 1 + 0.15 * sc.lo + 0.08 * sc.mid, 14)
    flowers = m & (hi > 2.7)
    img[:, flowers] = _jitter(rng, [235, 225, 120], 20)[:, None]
    hsv = rng.uniform(0.5, 0.62), rng.uniform(0.35, 0.8), rng.uniform(0.4, 0.75)
    ripple = np.sin(rng.uniform(6, 12) / (sc.tmap + 0.06) + 2 * sc.mid) > 0.75
    fill(sem == WATER, _jitter(rng, np.array(colorsys.hsv_to_rgb(*hsv)) * 255, 8),
         1 + 0.25 * ripple.astype(np.float32) + 0.05 * sc.lo, 5)
    if sc.road:
        m = sem == ROAD
        fill(m, _jitter(rng, [105, 105, 108], 8) * rng.uniform(0.7, 1.3), 1 + 0.06 * sc.mid, 8)
        centre, width, t = sc.road_at(Y)
        off = np.abs(X - centre)
        dash = (off < np.maximum(0.5, 0.015 * width)) & (np.modf(3.0 / np.abs(t + 0.08))[0] < 0.5)
        marks = m & (dash | ((off > 0.43 * width) & (off < 0.455 * width)))
        img[:, marks] = _jitter(rng, [[235, 235, 230], [230, 200, 60]][rng.integers(2)], 10)[:, None]
    return img


# --- things ------------------------------------------------------------------------------------
def _thing(rng, sc, out, cat, box, painter, *args, crowd=False):
    """Evaluate a painter in its box and append the textured thing to ``out``."""
    loc = _local(sc, *box)
    if loc is None:
        return
    y0, x0, ys, xs = loc
    shape = (ys.shape[0], xs.shape[1])
    mask, col = np.zeros(shape, bool), np.zeros((3,) + shape, np.float32)
    for m, rgb in painter(ys, xs, *args):
        m = np.broadcast_to(m, shape)
        mask |= m
        col[:, m] = rgb[:, None]
    if not mask.any():
        return
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind, a, th = rng.integers(4), rng.uniform(0.1, 0.3), rng.uniform(0, np.pi)
    u = yy * np.sin(th) + xx * np.cos(th)
    if kind == 1:  # stripes
        shade = 1 + a * np.sign(np.sin(2 * np.pi * u / (rng.uniform(2.5, 7) * sc.s + 1)))
    elif kind == 2:  # gradient
        shade = 1 + 2 * a * (u - u.mean()) / (np.ptp(u) + 1)
    elif kind == 3:  # speckle
        shade = 1 + a * np.sign(sc.hi[y0:y0 + h, x0:x0 + w]) * (np.abs(sc.hi[y0:y0 + h, x0:x0 + w]) > 1)
    else:
        shade = np.ones_like(u)
    shade *= 1.08 - 0.16 * yy / max(h - 1, 1)  # light from above
    col = col * shade + rng.uniform(0, 14) * sc.hi3[:, y0:y0 + h, x0:x0 + w]
    bottom = y0 + int(np.flatnonzero(mask.any(1))[-1])
    out.append(dict(cat=cat, crowd=crowd, y0=y0, x0=x0, mask=mask, color=col, key=bottom))


def _place_cars(rng, sc, out):
    kind, d = rng.choice(3, p=[0.45, 0.3, 0.25]), rng.choice([-1, 1])  # single, convoy, row
    for _ in range(6):
        yb = sc.road["y0"] + rng.uniform(0.1, 1.0) * (sc.H - sc.road["y0"])
        centre, w, _ = sc.road_at(yb)
        L = sc.size(w * (rng.uniform(0.2, 0.3) if kind == 2 else rng.uniform(0.22, 0.42)), 7 * sc.s)
        lane = rng.uniform(-1, 1) * max(0.0, w / 2 - 0.55 * L) / w
        cars = [(centre + lane * w, yb, L)]
        for _ in range(rng.integers(1, 4) if kind else 0):
            cx, y, l = cars[-1]
            if kind == 1:  # convoy: same lane, further away, partly hidden by the car in front
                y2 = y - rng.uniform(0.15, 0.35) * l
                c2, w2, _ = sc.road_at(y2)
                cars.append((c2 + lane * w2, y2, sc.clamp(l * w2 / sc.road_at(y)[1], 7 * sc.s)))
            else:  # a row bumper to bumper
                l2 = l * rng.uniform(0.9, 1.1)
                x2 = cx + d * (l + l2) / 2 * rng.uniform(0.85, 1.0)
                cars.append((x2, y + rng.uniform(-0.03, 0.03) * l, l2))
        ok = []
        for c in cars:  # keep the group up to its first car that would leave the road
            if not sc.on(ROAD, [(c[1] - 1, c[0] + f * c[2]) for f in (-0.35, 0, 0.35)]):
                break
            ok.append(c)
        if ok:
            for cx, y, l in ok:
                _thing(rng, sc, out, CAR, (y - 0.45 * l - 1, cx - l / 2 - 1, y + 1, cx + l / 2 + 1),
                       _car, cx, y, l, d, _random_color(rng))
            return


def _afloat(sc, x, y, length):
    """Whether a boat at ``x`` with its keel at ``y`` lies on water: its keel, and with
    ``whole_boats`` the water just under its deck at bow and stern."""
    pts = [(y + 0.5, x + f * length) for f in (-0.36, 0, 0.3)]
    if sc.style.whole_boats:
        pts += [(y - 0.2 * length + 1.5, x + f * length) for f in (-0.5, 0.5)]
    return sc.on(WATER, pts)


def _place_boats(rng, sc, out):
    n, d = 1 + (rng.random() < 0.35), rng.choice([-1, 1])
    for _ in range(8):
        p = sc.sample(rng, WATER)
        if p is None:
            return
        yb, cx = p
        L = sc.size(sc.depth(yb, cx) * rng.uniform(0.2, 0.4) * sc.W, 8 * sc.s)
        boats = [(cx, yb, L)] + [(cx + d * rng.uniform(0.5, 0.9) * L, yb + rng.uniform(-0.05, 0.05) * L,
                                  L * rng.uniform(0.8, 1.1))] * (n - 1)
        if all(_afloat(sc, *b) for b in boats):
            for x, y, l in boats:
                _thing(rng, sc, out, BOAT, (y - 1.05 * l - 1, x - l / 2 - 1, y + 1, x + l / 2 + 1), _boat,
                       x, y, l, d, _random_color(rng), _random_color(rng), rng.random() < 0.7)
            return


def _place_persons(rng, sc, out):
    n = rng.choice([1, 1, 2, 3, 4])
    for _ in range(8):
        p = sc.sample(rng, GRASS)
        if p is None:
            return
        yb, cx = p
        Hp = sc.size(sc.depth(yb, cx) * rng.uniform(0.25, 0.45) * sc.H, 8 * sc.s)
        group, x = [], cx
        for _ in range(n):
            h = Hp * rng.uniform(0.85, 1.1)
            group.append((x, yb + rng.uniform(-0.04, 0.04) * Hp, h))
            x += rng.uniform(0.2, 0.32) * Hp
        if all(sc.on(GRASS, [(y + 0.5, x - 0.1 * h), (y + 0.5, x + 0.1 * h)]) for x, y, h in group):
            skin = _jitter(rng, [[230, 190, 160], [170, 120, 90], [110, 75, 55]][rng.integers(3)], 10)
            for x, y, h in group:
                _thing(rng, sc, out, PERSON, (y - h - 1, x - 0.3 * h - 1, y + 1, x + 0.3 * h + 1),
                       _person, x, y, h, _random_color(rng), skin)
            return


def _place_birds(rng, sc, out):
    for _ in range(8):
        p = sc.sample(rng, SKY)
        if p is None:
            return
        cy, cx = p
        S = sc.size(sc.s * math.exp(rng.uniform(math.log(12), math.log(60))))
        birds = [(cx, cy, S)]
        if rng.random() < 0.35:  # two overlapping birds
            sx = rng.choice([-1, 1])
            x2, y2 = cx + sx * rng.uniform(0.3, 0.7) * S, cy + rng.uniform(-0.25, 0.25) * S
            birds.append((x2, y2, S * rng.uniform(0.8, 1.2)))
        if all(sc.on(SKY, [(y + fy * b, x + fx * b) for fy in (-0.4, 0, 0.4) for fx in (-0.55, 0.55)])
               for x, y, b in birds):
            for x, y, b in birds:
                _thing(rng, sc, out, BIRD, (y - 0.45 * b, x - 0.6 * b, y + 0.45 * b, x + 0.6 * b), _bird,
                       x, y, b, rng.choice([-1, 1]), rng.uniform(-0.6, 1.0), _random_color(rng))
            return


def _flock(ys, xs, members, rgb):
    m = np.zeros(np.broadcast(ys, xs).shape, bool)
    for cx, cy, S, up in members:
        for side in (-1, 1):
            m |= _capsule(ys, xs, (cy, cx), (cy - up * 0.3 * S, cx + side * 0.5 * S), 0.6)
    return [(m, rgb)]


def _place_flock(rng, sc, out):
    """A flock of many tiny birds: one crowd segment of category bird."""
    p = sc.sample(rng, SKY)
    if p is None:
        return
    cy, cx = p
    rx, ry = rng.uniform(0.08, 0.18) * sc.W, rng.uniform(0.03, 0.08) * sc.H
    members = []
    for _ in range(rng.integers(15, 45)):
        a, r = rng.uniform(0, 2 * np.pi), math.sqrt(rng.random())
        x, y, S = cx + r * rx * math.cos(a), cy + r * ry * math.sin(a), max(3.0, rng.uniform(3, 6) * sc.s)
        if sc.on(SKY, [(y - S / 2, x - S / 2), (y + S / 2, x + S / 2)]):
            members.append((x, y, S, rng.uniform(0.3, 1.0)))
    if len(members) >= 8:
        pad = 4 * sc.s
        _thing(rng, sc, out, BIRD, (cy - ry - pad, cx - rx - pad, cy + ry + pad, cx + rx + pad),
               _flock, members, _random_color(rng) * 0.6, crowd=True)


def _hw(size):
    if isinstance(size, (list, tuple)) and len(size) == 2:
        H, W = size
    else:
        H = W = size
    for v in (H, W):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 32 <= v <= 8192:
            raise InputError(f"synthetic image size must be an int from 32 to 8192 "
                             f"(or a pair of them), got {size!r}")
    return int(H), int(W)


def render_scene(rng: np.random.Generator, size, scene: str = "close"):
    """Render one scene with ``rng``; pure, no I/O.

    ``size`` is an int (square image) or ``(height, width)``. Returns ``(image uint8[H,W,3],
    pan_ids int32[H,W], segments_info)`` where ``segments_info`` lists ``{id, category_id, area,
    bbox, iscrowd}`` (COCO xywh bbox, exact pixel area) for every id of ``pan_ids``, sorted by
    id. Stuff segments have id ``category_id * 1000``, thing instances ``category_id * 1000 + k``.
    """
    H, W = _hw(size)
    sc = _Scene(rng, H, W, scene_style(scene))
    _layout(rng, sc)
    img = _paint_stuff(rng, sc)
    things = []
    if rng.random() >= 0.1:  # ~10% of the images hold no things at all
        present = {c: (sc.sem == c).sum() > 0.01 * H * W for c in (ROAD, WATER, GRASS, SKY)}
        groups = ([(_place_cars, rng.integers(1, 4))] if sc.road and present[ROAD] else []) + [
            (_place_boats, rng.integers(*sc.style.boat_groups) if present[WATER] else 0),
            (_place_persons, rng.integers(0, 3) if present[GRASS] else 0),
            (_place_birds, rng.integers(0, 3) if present[SKY] else 0),
            (_place_flock, int(rng.random() < 0.14) if present[SKY] else 0)]
        for place, count in groups:
            for _ in range(count):
                place(rng, sc, things)
    things.sort(key=lambda t: t["key"])  # far (high on screen) to near: near ones occlude
    min_area = max(6, round(6 * sc.s * sc.s), round((sc.min_px / 2) ** 2))
    alive = list(range(len(things)))
    while True:  # drop instances that occlusion leaves tiny; their pixels go back to what is below
        inst = np.zeros((H, W), np.int32)
        for k in alive:
            t = things[k]
            h, w = t["mask"].shape
            inst[t["y0"]:t["y0"] + h, t["x0"]:t["x0"] + w][t["mask"]] = k + 1
        area = np.bincount(inst.ravel(), minlength=len(things) + 1)
        small = [k for k in alive if area[k + 1] < min_area]
        if not small:
            break
        alive = [k for k in alive if k not in small]
    lut, count, kinds = np.zeros(len(things) + 1, np.int32), {}, {}
    for k in alive:
        t = things[k]
        h, w = t["mask"].shape
        img[:, t["y0"]:t["y0"] + h, t["x0"]:t["x0"] + w][:, t["mask"]] = t["color"][:, t["mask"]]
        count[t["cat"]] = count.get(t["cat"], 0) + 1
        lut[k + 1] = t["cat"] * 1000 + count[t["cat"]]
        kinds[int(lut[k + 1])] = (t["cat"], int(t["crowd"]))
    pan = np.where(inst > 0, lut[inst], sc.sem.astype(np.int32) * 1000)
    segments = []
    for sid, (area, bbox) in segment_stats(pan).items():  # sorted by id
        cat, crowd = kinds.get(sid, (sid // 1000, 0))
        segments.append(dict(id=sid, category_id=cat, area=area, bbox=bbox, iscrowd=crowd))
    img += rng.uniform(2, 7) * sc.hi3
    image = np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0))
    return image, pan, segments


# --- writing the dataset -----------------------------------------------------------------------
def _job(args):
    """Render and write one image; returns its COCO records (run in worker processes)."""
    out, split, index, image_id, size, seed, scene = args
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEY[split], index)))
    img, pan, segments = render_scene(rng, size, scene)
    stem = f"{image_id:012d}"
    Image.fromarray(img).save(os.path.join(out, split, stem + ".jpg"), quality=92)
    write_panoptic_png(os.path.join(out, f"panoptic_{split}", stem + ".png"), pan)
    instances = []
    for sg in segments:
        if sg["category_id"] in THING_IDS:
            rle = mask_utils.encode(np.asfortranarray((pan == sg["id"]).astype(np.uint8)))
            instances.append(dict(image_id=image_id, category_id=sg["category_id"], bbox=list(sg["bbox"]),
                                  area=sg["area"], iscrowd=sg["iscrowd"],
                                  segmentation={"size": [int(v) for v in rle["size"]],
                                                "counts": rle["counts"].decode("ascii")}))
    H, W = pan.shape
    image = {"id": image_id, "file_name": stem + ".jpg", "width": W, "height": H}
    ann = {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
    return split, image, ann, instances


def make_synthetic(out, num_train=200, num_val=50, size=128, seed=0, workers=None, progress=True,
                   scene: str = "close") -> dict:
    """Write a synthetic dataset in COCO panoptic layout under ``out`` and return its paths.

    Layout: ``out/{train,val}/*.jpg``, ``out/panoptic_{train,val}/*.png``,
    ``out/panoptic_{train,val}.json`` and ``out/instances_{train,val}.json`` (things only, RLE
    masks). The same arguments and seed give byte-identical files for any ``workers`` (default
    ``min(2, cpu count)``; 1 renders in this process). Files of an earlier run left in these
    folders are removed. Returns ``{"root", "size", "seed", "splits": {split: {"image_dir",
    "panoptic_json", "panoptic_dir", "instances_json", "num_images"}}}``.
    """
    H, W = _hw(size)
    scene_style(scene)  # an unknown style fails before any file is touched
    for name, v in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InputError(f"{name} must be a non-negative integer, got {v!r}")
    out = Path(out)
    splits = {"train": int(num_train), "val": int(num_val)}
    for split in splits:
        for folder in (out / split, out / f"panoptic_{split}"):
            folder.mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                if _STEM.match(f.name) and f.is_file():
                    f.unlink()
    size_arg = H if H == W else [H, W]
    jobs, next_id = [], 1
    for split, n in splits.items():
        for i in range(n):
            jobs.append((str(out), split, i, next_id, size_arg, int(seed), scene))
            next_id += 1
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(jobs) // 4))
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), disable=not progress, desc="synthetic", unit="img")
    records = {split: ([], [], []) for split in splits}
    if workers == 1:
        results = map(_job, jobs)
        pool = None
    else:
        # never a plain fork: forking a process that runs threads (a Jupyter kernel, torch's
        # thread pool, tqdm's monitor) can leave a child blocked on a lock another thread held
        # (a notebook's data step hung so, now and then); the fork server is a fresh process
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods()
                             else "spawn")
        pool = ctx.Pool(workers)
        results = pool.imap(_job, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
    try:
        for split, image, ann, instances in results:
            records[split][0].append(image)
            records[split][1].append(ann)
            records[split][2].extend(instances)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    things = [copy.deepcopy(c) for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    result = {"root": str(out), "size": size_arg, "seed": int(seed), "scene": scene, "splits": {}}
    for split, (images, anns, instances) in records.items():
        info = {"description": "SpatialFlow Workbench synthetic scenes", "version": "1.0",
                "split": split, "seed": int(seed), "size": size_arg, "scene": scene}
        licenses = [{"id": 1, "name": "Procedurally generated, public domain", "url": ""}]
        pan = {"info": info, "licenses": licenses, "images": images, "annotations": anns,
               "categories": copy.deepcopy(SYNTHETIC_CATEGORIES)}
        for i, a in enumerate(instances, 1):
            a["id"] = i
        det = {"info": info, "licenses": licenses, "images": images, "annotations": instances,
               "categories": things}
        for name, obj in ((f"panoptic_{split}.json", pan), (f"instances_{split}.json", det)):
            with open(out / name, "w") as f:
                json.dump(obj, f)
        result["splits"][split] = {
            "image_dir": str(out / split), "panoptic_json": str(out / f"panoptic_{split}.json"),
            "panoptic_dir": str(out / f"panoptic_{split}"),
            "instances_json": str(out / f"instances_{split}.json"), "num_images": len(images)}
    return result


def data_stats(out) -> dict:
    """Statistics of a dataset written by :func:`make_synthetic` (read from its panoptic JSONs).

    Returns ``{split: {"images", "segments": {name: {"isthing", "normal", "crowd"}},
    "images_without_things", "thing_sqrt_area_min", "thing_sqrt_area_max",
    "thing_scale_ratio", "stuff_classes_present", "thing_classes_present"}}`` for each split
    whose ``panoptic_<split>.json`` exists (sqrt areas over non-crowd things; None if none).
    """
    out, result = Path(out), {}
    for split in ("train", "val"):
        path = out / f"panoptic_{split}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
            cats = {c["id"]: c for c in data["categories"]}
            counts = {c["name"]: {"isthing": int(c["isthing"]), "normal": 0, "crowd": 0}
                      for c in sorted(cats.values(), key=lambda c: c["id"])}
            roots, empty, present = [], 0, set()
            for ann in data["annotations"]:
                has_thing = False
                for sg in ann["segments_info"]:
                    cat = cats[sg["category_id"]]
                    crowd = bool(sg.get("iscrowd", 0))
                    counts[cat["name"]]["crowd" if crowd else "normal"] += 1
                    present.add(cat["name"])
                    has_thing |= bool(cat["isthing"])
                    if cat["isthing"] and not crowd:
                        roots.append(math.sqrt(sg["area"]))
                empty += not has_thing
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not a COCO panoptic JSON ({e})") from None
        lo, hi = (min(roots), max(roots)) if roots else (None, None)
        result[split] = {
            "images": len(data["images"]), "segments": counts, "images_without_things": empty,
            "thing_sqrt_area_min": lo, "thing_sqrt_area_max": hi,
            "thing_scale_ratio": hi / lo if roots else None,
            "stuff_classes_present": sum(1 for n, c in counts.items() if not c["isthing"] and n in present),
            "thing_classes_present": sum(1 for n, c in counts.items() if c["isthing"] and n in present)}
    if not result:
        raise InputError(f"{out}: no panoptic_train.json or panoptic_val.json found")
    return result


def format_data_stats(summary: dict) -> str:
    """Render :func:`data_stats`'s result as a small text table (one column per split)."""
    splits = list(summary)

    def num(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    rows = [("images", [str(summary[s]["images"]) for s in splits]),
            ("images without things", [str(summary[s]["images_without_things"]) for s in splits]),
            ("stuff / thing classes", [f"{summary[s]['stuff_classes_present']} / "
                                       f"{summary[s]['thing_classes_present']}" for s in splits]),
            ("thing sqrt(area) min-max", [f"{num(summary[s]['thing_sqrt_area_min'])}-"
                                          f"{num(summary[s]['thing_sqrt_area_max'])}" for s in splits]),
            ("thing scale ratio", [num(summary[s]["thing_scale_ratio"]) for s in splits]),
            ("segments (normal/crowd)", ["" for _ in splits])]
    names = list(summary[splits[0]]["segments"]) if splits else []
    for name in names:
        kind = "thing" if summary[splits[0]]["segments"][name]["isthing"] else "stuff"
        cells = []
        for s in splits:
            c = summary[s]["segments"].get(name, {"normal": 0, "crowd": 0})
            cells.append(f"{c['normal']}/{c['crowd']}" if kind == "thing" else str(c["normal"]))
        rows.append((f"  {name} ({kind})", cells))
    width = max(len(r[0]) for r in rows)
    cols = [max([len(s)] + [len(r[1][i]) for r in rows]) for i, s in enumerate(splits)]
    lines = [" ".ljust(width) + "  " + "  ".join(s.rjust(c) for s, c in zip(splits, cols))]
    for label, vals in rows:
        lines.append(label.ljust(width) + "  " + "  ".join(v.rjust(c) for v, c in zip(vals, cols)))
    return "\n".join(lines)
