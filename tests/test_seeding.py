"""Paired initial weights: variants built under one seed start equal in every part they share."""

import pytest
import torch

from spatialflow.config import NO_FLOWS, load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.model import build_model
from spatialflow.model.seeding import model_seed, part, part_seed
from spatialflow.model.subnets import SubNetworks

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)


def state(seed, *overrides):
    torch.manual_seed(seed)
    model = build_model(load_config("tiny-cpu", list(overrides)), CATS)
    after = torch.rand(3)  # where the global generator stands after the build
    return model.state_dict(), after


def shared(a, b):
    return [k for k in a if k in b and a[k].shape == b[k].shape]


@pytest.mark.parametrize("variant", [
    ("model.subnets=false",) + NO_FLOWS,                 # Table V: naive baseline
    ("model.subnets=true",) + NO_FLOWS,                  # + sub-networks
    ("model.flows.reg_to_stuff=false",),                 # Table IX: one flow fewer
    ("model.stuff_stages=2",),                           # Table VIII: fewer stages
])
def test_a_variant_starts_from_the_weights_of_its_reference_in_every_shared_part(variant):
    ref, ref_after = state(3)
    var, var_after = state(3, *variant)
    keys = shared(ref, var)
    assert len(keys) < len(ref) or len(keys) < len(var)  # the variant does differ
    assert any(k.startswith("subnets.") for k in keys) and any(k.startswith("head.") for k in keys)
    different = [k for k in keys if not torch.equal(ref[k], var[k])]
    assert different == []
    assert torch.equal(ref_after, var_after)  # the build drew the same from the global generator


def test_fewer_stages_are_the_first_stages_of_more():
    ref, _ = state(3)
    short, _ = state(3, "model.stuff_stages=2")
    assert "subnets.stuff_tower.2.conv.weight" in ref and "subnets.stuff_tower.2.conv.weight" \
        not in short
    assert torch.equal(ref["subnets.stuff_tower.1.conv.weight"],
                       short["subnets.stuff_tower.1.conv.weight"])


def test_another_seed_gives_other_weights_and_parts_differ_from_each_other():
    a, _ = state(3)
    b, _ = state(4)
    assert not torch.equal(a["backbone.body.conv1.weight"], b["backbone.body.conv1.weight"])
    assert not torch.equal(a["subnets.cls_tower.0.conv.weight"], b["subnets.cls_tower.0.conv.weight"])
    # two towers of the same shape are not drawn from the same stream
    assert not torch.equal(a["subnets.cls_tower.0.conv.weight"], a["subnets.reg_tower.0.conv.weight"])
    # and the parts keep the distributions of their constructors (RetinaNet's std 0.01)
    assert a["subnets.cls_tower.0.conv.weight"].std().item() == pytest.approx(0.01, rel=0.1)


def test_part_seed_is_fixed_and_part_is_a_no_op_outside_a_model_seed():
    assert part_seed(0, "head") == part_seed(0, "head") != part_seed(0, "thing_head")
    assert 0 <= part_seed(12345, "subnets.cls_tower") < 2 ** 63
    torch.manual_seed(0)
    with part("anything"):
        x = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(x, torch.rand(2))
    # inside: the caller's generator goes on as if the block drew nothing
    with model_seed(7):
        torch.manual_seed(0)
        with part("a"):
            inside = torch.rand(2)
        after = torch.rand(2)
        with part("a"):
            assert torch.equal(torch.rand(2), inside)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(2))


def test_sub_networks_built_alone_draw_from_the_global_generator():
    torch.manual_seed(0)
    a = SubNetworks(32).state_dict()
    torch.manual_seed(0)
    b = SubNetworks(32).state_dict()
    torch.manual_seed(1)
    c = SubNetworks(32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cls_tower.0.conv.weight"], c["cls_tower.0.conv.weight"])
