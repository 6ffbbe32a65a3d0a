"""Configuration: small dataclasses, named presets (YAML files in ``spatialflow/presets``), and
YAML load / save with ``key.path=value`` overrides.

``load_config("tiny-cpu", ["model.flows.reg_to_cls=false"])`` gives a :class:`Config`; a YAML
file may name a preset to start from with ``preset: NAME``. Unknown keys and values of the wrong
type are rejected with a :class:`~spatialflow.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

import yaml

from spatialflow.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
#: the overrides that switch every spatial flow off; with ``model.subnets=true`` they give the
#: paper's sub-networks without flows, with ``model.subnets=false`` its naive baseline
#: (Table V). The studies and the benchmark build their rows from these.
NO_FLOWS = ("model.flows.reg_to_cls=false", "model.flows.reg_to_stuff=false",
            "model.flows.reg_to_thing=false", "model.flows.stuff_to_thing=false")
#: images are padded to a multiple of this: the stride of P5, the coarsest level that the stuff
#: head (P3-P5 summed at 1/4 scale) and the thing head read; the anchors sit at each level's
#: true stride (``model.detection``), so P6 and P7 need no padding of their own
PAD_MULTIPLE = 32
BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d")


@dataclass
class FlowConfig:
    """The spatial information flows of eq (3); each can be switched off on its own.

    ``source = "cls"`` is the control experiment of the paper's Fig. 4: the flows then carry
    the cls tower's features (to the reg, stuff and thing towers) instead of the reg tower's.
    """
    reg_to_cls: bool = True  # between the two detection towers (cls -> reg when source=cls)
    reg_to_stuff: bool = True
    reg_to_thing: bool = True
    stuff_to_thing: bool = True  # the semantic flow (zeta)
    source: str = "reg"  # "reg" (spatial flows) or "cls" (the cls-flows control of Fig. 4)


@dataclass
class ModelConfig:
    """Network architecture (paper Section III)."""
    backbone: str = "resnet50"  # resnet10/18/34/50/101, resnext101_32x8d
    # false: RetinaNet alone (cls and reg towers, the reg->cls flow by switch; Table XII)
    panoptic: bool = True
    pretrained: Optional[str] = None  # local path to backbone weights; never downloaded
    backbone_norm: str = "frozen_bn"  # "frozen_bn" (paper), "bn" or "gn" (training from scratch)
    freeze_stem: bool = False  # freeze conv1 (useful with pretrained weights)
    fpn_channels: int = 256
    subnets: bool = True  # false: the naive baseline of III-A (heads directly on P3-P5)
    cls_stages: int = 4
    reg_stages: int = 4
    stuff_stages: int = 4  # Table VIII (0: the stuff head reads P3-P5)
    thing_stages: int = 1  # Table VII (0: the thing head reads P3-P5)
    tower_norm: bool = False  # GroupNorm after each tower conv
    dcn: bool = False  # eq (4): modulated deformable convs in the cls, stuff and thing towers
    dcn_towers: List[str] = field(default_factory=lambda: ["cls", "stuff", "thing"])
    flows: FlowConfig = field(default_factory=FlowConfig)
    anchor_sizes: List[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # P3-P7
    box_loss: str = "l1"  # "l1" (the authors') or "giou"
    stuff_head_channels: int = 128
    mask_head_channels: Optional[int] = None  # None: fpn_channels
    stuff_loss_weight: float = 0.25  # lambda of eq (6)


@dataclass
class SyntheticConfig:
    """The built-in synthetic data set, generated when ``data.root`` is not set."""
    num_train: int = 2000
    num_val: int = 100
    size: int = 128
    seed: int = 0
    scene: str = "close"  # "close" (things large enough to learn in minutes) or "wide" (v1)


@dataclass
class DataConfig:
    """Data set and augmentation."""
    root: Optional[str] = None  # a make-data, COCO or Cityscapes folder; None: synthetic
    train_split: str = "train"
    val_split: str = "val"
    min_size: List[int] = field(default_factory=lambda: [800])  # shorter edge in training
    max_size: Optional[int] = 1333
    size_sample: str = "choice"  # "choice" of min_size, or "range" [min, max]
    scale_range: Optional[List[float]] = None  # random rescale, e.g. [0.5, 2.0] (Cityscapes)
    crop_size: Optional[List[int]] = None  # [height, width]
    flip: bool = True
    test_size: int = 800  # shorter edge at evaluation
    size_divisibility: int = PAD_MULTIPLE  # images are padded to a multiple of this
    num_workers: int = 2
    # hold the training images decoded in memory after their first read (each loader process
    # its own copy; about 290 MB for the 2000 synthetic images of 128 px), so later epochs
    # skip the JPEG / PNG decoding
    cache: bool = False
    on_error: str = "raise"  # or "skip" bad items with a warning
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    """Optimisation (paper IV-B-1): SGD, warm-up, step decay."""
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adamw" (converges sooner from scratch)
    batch_size: int = 8
    lr: float = 0.005  # for batch_size images; scaled linearly with the batch size
    base_batch_size: int = 8
    epochs: int = 20
    # lr x0.1 at these fractions of the schedule (paper: epochs 16 and 19 of 20)
    milestones: List[float] = field(default_factory=lambda: [0.8, 0.95])
    max_iters: Optional[int] = None  # overrides epochs when set
    warmup_iters: int = 500
    momentum: float = 0.9
    weight_decay: float = 0.0001
    clip_grad: Optional[float] = None
    # non-finite (NaN / Inf) steps skipped before the run stops with a checkpoint
    max_bad_steps: int = 10
    # mixed precision: float16 with loss scaling on CUDA; on a CPU bfloat16 where it is faster
    # (measured, see cpu_tune; without measuring: with AMX only); float32 elsewhere
    amp: bool = True
    # on a CPU, allow the channels_last memory format (the default where nothing is measured)
    channels_last: bool = True
    # on a CPU, a run of 200+ iterations in one process times float32 / bfloat16 (with amp)
    # and NCHW / channels_last (with channels_last) on its first batch and trains in the
    # fastest (spatialflow.engine.cpu_step; remembered per machine in ~/.cache/spatialflow)
    cpu_tune: bool = True
    seed: int = 0
    log_every: int = 20
    eval_every: Optional[int] = None  # iterations; None: at the end
    checkpoint_every: int = 500


@dataclass
class InferConfig:
    """Detection post-processing and the panoptic merge thresholds (paper IV-B-2)."""
    score_thresh: float = 0.05
    nms_thresh: float = 0.4
    detections_per_img: int = 100
    mask_conf: float = 0.37
    overlap: float = 0.37
    stuff_area: int = 4900
    box_fill: float = 0.6
    box_fill_enabled: bool = True
    # test-time augmentation (paper Tables II, III): [shorter edge, longer-edge cap] per scale,
    # e.g. [[1000, 1500], [1200, 1800], [1400, 2100]]; empty: data.test_size only
    tta_scales: List[List[int]] = field(default_factory=list)
    tta_flip: bool = False  # also run each scale on the horizontally flipped image


@dataclass
class Config:
    """A whole run: model, data, training and inference settings."""
    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# ---------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _merge(obj, data, prefix: str = ""):
    """Return a copy of dataclass ``obj`` with the nested dict ``data`` applied."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, "
                          f"got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, full + ".")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(obj, **changes)


def _check(cfg: Config) -> Config:
    """Reject impossible values, naming the key."""
    def need(ok, key, what):
        if not ok:
            raise ConfigError(f"config key '{key}': {what}")

    t, i, d, m = cfg.train, cfg.infer, cfg.data, cfg.model
    need(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    need(t.base_batch_size >= 1, "train.base_batch_size", "must be >= 1")
    need(t.max_iters is None or t.max_iters >= 1, "train.max_iters", "must be >= 1")
    need(t.epochs >= 1, "train.epochs", "must be >= 1")
    need(all(0 < x < 1 for x in t.milestones), "train.milestones", "must be fractions in (0, 1)")
    need(t.warmup_iters >= 0, "train.warmup_iters", "must be >= 0")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.optimizer in ("sgd", "adamw"), "train.optimizer", "must be 'sgd' or 'adamw'")
    need(0 <= t.momentum < 1, "train.momentum", f"must be in [0, 1), got {t.momentum}")
    need(t.clip_grad is None or t.clip_grad > 0, "train.clip_grad", "must be > 0 (or null)")
    need(t.max_bad_steps >= 0, "train.max_bad_steps", "must be >= 0")
    for k in ("log_every", "checkpoint_every"):
        need(getattr(t, k) >= 1, f"train.{k}", f"must be >= 1, got {getattr(t, k)}")
    need(t.eval_every is None or t.eval_every >= 1, "train.eval_every", "must be >= 1 (or null)")
    for k in ("score_thresh", "nms_thresh", "mask_conf", "overlap", "box_fill"):
        v = getattr(i, k)
        need(0.0 <= v <= 1.0, f"infer.{k}", f"must be in [0, 1], got {v}")
    need(i.stuff_area >= 0, "infer.stuff_area", "must be >= 0")
    need(i.detections_per_img >= 1, "infer.detections_per_img", "must be >= 1")
    need(all(len(x) == 2 and min(x) > 0 for x in i.tta_scales), "infer.tta_scales",
         f"needs [shorter edge, longer-edge cap] pairs of positive sizes, got {i.tta_scales}")
    need(m.fpn_channels >= 1, "model.fpn_channels", "must be >= 1")
    need(not m.tower_norm or m.fpn_channels % 8 == 0, "model.fpn_channels",
         f"must be a multiple of 8 with model.tower_norm (GroupNorm), got {m.fpn_channels}")
    need(m.backbone in BACKBONES, "model.backbone", f"must be one of {', '.join(BACKBONES)}")
    need(m.backbone_norm in ("frozen_bn", "bn", "gn"), "model.backbone_norm",
         "must be 'frozen_bn', 'bn' or 'gn'")
    for k in ("cls_stages", "reg_stages"):
        need(getattr(m, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(m, k)}")
    for k in ("stuff_stages", "thing_stages"):
        need(getattr(m, k) >= 0, f"model.{k}", f"must be >= 0, got {getattr(m, k)}")
    need(set(m.dcn_towers) <= {"cls", "stuff", "thing"}, "model.dcn_towers",
         "may hold 'cls', 'stuff', 'thing'")
    need(m.flows.source in ("reg", "cls"), "model.flows.source", "must be 'reg' or 'cls'")
    need(len(m.anchor_sizes) == 5 and min(m.anchor_sizes) > 0, "model.anchor_sizes",
         "needs 5 positive sizes (P3-P7)")
    need(m.box_loss in ("l1", "giou"), "model.box_loss", "must be 'l1' or 'giou'")
    need(m.stuff_head_channels >= 4, "model.stuff_head_channels", "must be >= 4")
    need(m.mask_head_channels is None or m.mask_head_channels >= 1, "model.mask_head_channels",
         "must be >= 1 (or null)")
    need(m.stuff_loss_weight >= 0, "model.stuff_loss_weight", "must be >= 0")
    need(d.min_size and all(s > 0 for s in d.min_size), "data.min_size", "must be positive sizes")
    need(d.size_sample in ("choice", "range"), "data.size_sample", "must be 'choice' or 'range'")
    need(d.size_sample != "range" or len(d.min_size) == 2, "data.min_size",
         "needs [min, max] with size_sample 'range'")
    need(d.on_error in ("raise", "skip"), "data.on_error", "must be 'raise' or 'skip'")
    need(d.scale_range is None or (len(d.scale_range) == 2 and 0 < d.scale_range[0]
                                   <= d.scale_range[1]), "data.scale_range", "must be [lo, hi]")
    need(d.crop_size is None or (len(d.crop_size) == 2 and min(d.crop_size) > 0),
         "data.crop_size", "must be [height, width]")
    need(d.size_divisibility >= PAD_MULTIPLE and d.size_divisibility % PAD_MULTIPLE == 0,
         "data.size_divisibility", f"must be a multiple of {PAD_MULTIPLE} (the stride of P5), "
         f"got {d.size_divisibility}")
    need(d.test_size >= 1, "data.test_size", f"must be >= 1, got {d.test_size}")
    need(d.max_size is None or d.max_size >= 1, "data.max_size", "must be >= 1 (or null)")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    s = d.synthetic
    need(s.num_train >= 1 and s.num_val >= 1, "data.synthetic", "needs >= 1 train and val image")
    need(s.size >= 32, "data.synthetic.size", f"must be >= 32, got {s.size}")
    need(s.scene in ("close", "wide"), "data.synthetic.scene", f"must be 'close' or 'wide', got {s.scene!r}")
    return cfg


def list_presets() -> List[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _from_yaml(path: Path) -> Config:
    """A config file, starting from the preset its ``preset:`` key names (if any)."""
    data = _read_yaml(path)
    base = data.pop("preset", None)
    cfg = load_config(str(base)) if base is not None else Config()
    return _merge(cfg, data)


def parse_override(text: str):
    """``'a.b.c=value'`` -> ``(['a', 'b', 'c'], value)`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(name_or_path: Union[str, Path, None] = "tiny-cpu",
                overrides: Sequence[str] = ()) -> Config:
    """A :class:`Config` from a preset name or a YAML file, then ``key.path=value`` overrides.

    A YAML file may start from a preset with a top-level ``preset: NAME`` key.
    """
    cfg = Config()
    if name_or_path is not None:
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            cfg = _from_yaml(path)
        else:
            name = str(name_or_path)
            preset = PRESET_DIR / f"{name}.yaml"
            if not preset.is_file():
                raise ConfigError(f"unknown preset '{name}' (presets: {', '.join(list_presets())})")
            cfg = dataclasses.replace(_from_yaml(preset), name=name)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: Sequence[str] = (),
                    allowed: Optional[Sequence[str]] = None) -> Config:
    """``cfg`` with ``key.path=value`` overrides (text, as ``--set`` gives them) applied and
    checked; ``allowed``: key prefixes that may change (e.g. ``("infer.",)`` for a trained
    model), others are refused."""
    for text in overrides:
        keys, value = parse_override(text)
        cfg = update_config(cfg, {".".join(keys): value}, allowed, check=False)
    return _check(cfg)


def update_config(cfg: Config, changes: Mapping[str, object],
                  allowed: Optional[Sequence[str]] = None, check: bool = True) -> Config:
    """``cfg`` with ``{"infer.mask_conf": 0.5, ...}`` (dotted keys, Python values: no text
    round trip) applied, type-checked and (``check``) checked as a whole, as
    :func:`apply_overrides` does; ``allowed``: key prefixes that may change."""
    for name, value in changes.items():
        if allowed is not None and not any(name == a or name.startswith(a) for a in allowed):
            raise ConfigError(f"config key '{name}' cannot change here (only "
                              f"{', '.join(a + '*' if a.endswith('.') else a for a in allowed)})")
        nested = value
        for k in reversed(name.split(".")):
            nested = {k: nested}
        cfg = _merge(cfg, nested)
    return _check(cfg) if check else cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain data (for YAML and checkpoints)."""
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict) -> Config:
    """Inverse of :func:`config_to_dict`, with the same checks as :func:`load_config`."""
    return _check(_merge(Config(), data))


def save_config(cfg: Config, path) -> None:
    """Write ``cfg`` as YAML; :func:`load_config` of that file gives the same config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
