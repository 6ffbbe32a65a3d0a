import pytest

from spatialflow.config import (Config, config_from_dict, config_to_dict, list_presets,
                                load_config, save_config)
from spatialflow.errors import ConfigError


def test_presets_load():
    assert set(list_presets()) >= {"tiny-cpu", "r50-coco", "r101-coco", "r101-dcn-coco",
                                   "r50-cityscapes"}
    coco, city = load_config("r50-coco"), load_config("r50-cityscapes")
    assert (coco.train.lr, coco.train.batch_size, coco.model.stuff_loss_weight) == (0.005, 8, 0.25)
    assert (coco.infer.mask_conf, coco.infer.overlap, coco.infer.stuff_area,
            coco.infer.box_fill) == (0.37, 0.37, 4900, 0.6)
    assert (city.infer.overlap, city.infer.stuff_area, city.model.stuff_loss_weight) == (
        0.25, 2048, 1.0)
    dcn = load_config("r101-dcn-coco")
    assert dcn.model.dcn and dcn.model.backbone == "resnet101"  # inherited + overridden
    assert dcn.data.min_size == [400, 1400] and dcn.data.size_sample == "range"
    assert dcn.train.lr == coco.train.lr


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config("tiny-cpu", ["model.flows.reg_to_cls=false", "train.lr=0.02",
                                   "model.subnets=false", "data.root=/data/coco"])
    assert cfg.model.flows.reg_to_cls is False and cfg.model.flows.reg_to_stuff is True
    assert cfg.train.lr == 0.02 and cfg.model.subnets is False
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_yaml_file_with_base_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("preset: r50-coco\ntrain: {lr: 0.01}\n")
    cfg = load_config(p)
    assert cfg.train.lr == 0.01 and cfg.model.backbone == "resnet50"


@pytest.mark.parametrize("override, key", [
    ("model.flows.reg_to_foo=true", "model.flows.reg_to_foo"),
    ("train.lr=-0.1", "train.lr"),
    ("train.batch_size=two", "train.batch_size"),
    ("infer.overlap=1.5", "infer.overlap"),
    ("model.subnets=1", "model.subnets"),
    ("data.min_size=800", "data.min_size"),
    ("nonsense=1", "nonsense"),
    ("train.optimizer=adam", "train.optimizer"),
    ("train.lr=.inf", "train.lr"),                    # YAML's infinity
    ("train.lr=.nan", "train.lr"),
    ("infer.score_thresh=-0.01", "infer.score_thresh"),
    ("infer.mask_conf=1.01", "infer.mask_conf"),
    ("infer.stuff_area=-1", "infer.stuff_area"),
    ("model.cls_stages=0", "model.cls_stages"),
    ("model.thing_stages=-2", "model.thing_stages"),
    ("model.fpn_channels=7", "model.fpn_channels"),   # GroupNorm towers need a multiple of 8
    ("model.mask_head_channels=0", "model.mask_head_channels"),
    ("model.anchor_sizes=[32,64]", "model.anchor_sizes"),
    ("model.backbone=vgg16", "model.backbone"),
    ("model.flows.source=stuff", "model.flows.source"),
    ("train.momentum=1.5", "train.momentum"),
    ("train.clip_grad=0", "train.clip_grad"),
    ("train.max_bad_steps=-1", "train.max_bad_steps"),
    ("train.log_every=0", "train.log_every"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.milestones=[0.5,1.5]", "train.milestones"),
    ("data.test_size=0", "data.test_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.size_divisibility=48", "data.size_divisibility"),     # not a multiple of P5's stride
    ("data.size_divisibility=0", "data.size_divisibility"),
    ("data.crop_size=[0,10]", "data.crop_size"),
    ("data.scale_range=[2.0,0.5]", "data.scale_range"),
    ("data.synthetic.size=8", "data.synthetic.size"),
    ("data.synthetic.scene=far", "data.synthetic.scene"),
    ("model=3", "model"),                             # a mapping expected
    ("train.lr=[0.1]", "train.lr"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny-cpu", [override])


@pytest.mark.parametrize("text, key", [
    ("train: {lr: 0.01, speed: 3}\n", "train.speed"),          # unknown, nested
    ("model: {flows: {reg_to_cls: yes please}}\n", "model.flows.reg_to_cls"),
    ("infer: {tta_scales: [[800]]}\n", "infer.tta_scales"),
    ("data: {min_size: [800, -1]}\n", "data.min_size"),
    ("preset: tiny-cpu\ntrain: {batch_size: 0}\n", "train.batch_size"),
])
def test_bad_yaml_files_name_the_key(tmp_path, text, key, capsys):
    from spatialflow.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert key in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_yaml_cannot_run_code(tmp_path):
    """Configs are read with ``yaml.safe_load``: a Python tag is refused, never executed."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    text = f"!!python/object/apply:os.system ['touch {marker}']"
    assert load_config("tiny-cpu", [f"description={text}"]).description == text  # a string
    assert not marker.exists()


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_defaults_are_the_paper_values():
    c = Config()
    assert c.train.momentum == 0.9 and c.train.weight_decay == 1e-4
    assert c.infer.nms_thresh == 0.4 and c.infer.detections_per_img == 100
