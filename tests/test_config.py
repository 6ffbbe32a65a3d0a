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
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("tiny-cpu", [override])


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
