"""The training-step profile: every part of a step is found, backward included, and the model is
left as it was."""

import torch

from spatialflow.benchmark.profile import (DATA, OPTIMIZER, OTHER, PARTS, format_profile,
                                           part_ranges, profile_training)

from conftest import FAST


def test_profile_of_a_training_step_names_every_part(data_root):
    result = profile_training(overrides=[*FAST, "train.log_every=1"], steps=2, warmup=1,
                              threads=1, data_root=data_root)
    parts = {p["part"]: p for p in result["parts"]}
    no_gradient = {"anchors", "detections for the thing head (decode, NMS)",
                   "thing-head RoIs (matching)"}
    for name, _ in PARTS:
        assert parts[name]["ms"] > 0, name
        if name not in no_gradient:
            assert parts[f"{name} (backward)"]["ms"] > 0, name
    assert parts[OPTIMIZER]["ms"] > 0 and parts[DATA]["ms"] > 0 and OTHER in parts
    assert parts.get("backward, unattributed", {"share": 0})["share"] < 0.02
    assert abs(sum(p["share"] for p in result["parts"]) - 1) < 1e-6
    assert result["rois_per_step"] > 0 and result["step_ms"] > 0 and result["ops"]
    assert any(o["op"] == "aten::convolution_backward" for o in result["ops"])
    text = format_profile(result)
    assert "| thing head: RoIAlign (backward) |" in text and "a fresh model" in text


def test_part_ranges_leave_the_model_as_it_was():
    from spatialflow.config import load_config
    from spatialflow.model import build_model

    cats = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    model = build_model(load_config("tiny-cpu"), cats)
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks)  # noqa: E731
                        for m in model.modules())
    own = set(model.__dict__)
    with part_ranges(model):
        assert hooks() > 0 and "compute_loss" in model.__dict__
        model.eval()(torch.rand(1, 3, 64, 64))
    assert hooks() == 0 and set(model.__dict__) == own
