"""The SpatialFlow network: shapes, flow switches, ablation variants, backbone options, training."""

import warnings

import pytest
import torch
import torchvision
from torchvision.ops import DeformConv2d, box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from spatialflow.config import load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.errors import InputError
from spatialflow.model import build_model
from spatialflow.model.backbone import build_backbone

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)      # 4 things, 5 stuff
T, S1 = CATS.num_things, CATS.num_sem_classes


def tiny(*overrides):
    torch.manual_seed(0)
    return build_model(load_config("tiny-cpu", list(overrides)), CATS)


def toy_batch(n=2, size=128):
    """Images with two coloured boxes each and matching targets (masks, sem_seg)."""
    g = torch.Generator().manual_seed(1)
    images, targets = [], []
    for i in range(n):
        img = torch.rand(3, size, size, generator=g) * 0.2
        sem = torch.zeros(size, size, dtype=torch.int64)
        sem[size // 2:] = 1
        boxes, masks = [], []
        for k, (y, x, h, w) in enumerate([(20, 20, 40, 50), (70 + 4 * i, 60, 36, 30)]):
            m = torch.zeros(size, size, dtype=torch.uint8)
            m[y:y + h, x:x + w] = 1
            img[k % 3, y:y + h, x:x + w] = 0.9
            sem[m.bool()] = CATS.other_index
            boxes.append([x, y, x + w, y + h])
            masks.append(m)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor([0, 2]), "masks": torch.stack(masks),
                        "sem_seg": sem})
    return images, targets


# --- shapes ----------------------------------------------------------------------------------
COCO_LIKE = CategoryMap.from_coco(
    [{"id": i + 1, "name": f"thing{i}", "isthing": 1} for i in range(80)]
    + [{"id": 100 + i, "name": f"stuff{i}", "isthing": 0} for i in range(53)])
CITY_LIKE = CategoryMap.from_coco(
    [{"id": i + 1, "name": f"thing{i}", "isthing": 1} for i in range(8)]
    + [{"id": 100 + i, "name": f"stuff{i}", "isthing": 0} for i in range(11)])


@pytest.mark.parametrize("preset, cats", [
    ("tiny-cpu", CATS), ("r50-coco", COCO_LIKE), ("r101-coco", COCO_LIKE),
    ("r101-dcn-coco", COCO_LIKE), ("r50-cityscapes", CITY_LIKE)])
def test_shapes_per_level_and_head(preset, cats):
    cfg = load_config(preset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights
        model = build_model(cfg, cats).eval()
    C = cfg.model.fpn_channels
    images = [torch.rand(3, 128, 160), torch.rand(3, 100, 128)]
    with torch.no_grad():
        batch, feats, towers = model.features(images)
        assert batch.tensors.shape == (2, 3, 128, 160)        # padded to a multiple of 32
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
        assert all(f.shape[:2] == (2, C) and f.dtype == torch.float32 for f in feats)
        for name, levels in (("cls", 5), ("reg", 5), ("stuff", 3), ("thing", 3)):
            assert [tuple(t.shape) for t in towers[name]] == [tuple(f.shape) for f in feats[:levels]]
        cls = model.head.classification_head(towers["cls"])
        reg = model.head.regression_head(towers["reg"])
        anchors = sum(9 * f.shape[-2] * f.shape[-1] for f in feats)
        assert cls.shape == (2, anchors, cats.num_things) and reg.shape == (2, anchors, 4)
        assert model.stuff_head(towers["stuff"]).shape == (2, cats.num_sem_classes, 128, 160)
        boxes = [torch.tensor([[10.0, 10, 60, 50], [0, 0, 128, 100]]), torch.zeros(0, 4)]
        assert model.thing_head(towers["thing"], boxes, batch.image_sizes).shape == (
            2, cats.num_things, 28, 28)
        model.score_thresh = 0.0                               # force 100 detections
        out = model(images)
    for o, (h, w) in zip(out, [(128, 160), (100, 128)]):
        k = len(o["boxes"])
        assert k == cfg.infer.detections_per_img
        assert o["boxes"].shape == (k, 4) and o["scores"].shape == (k,)
        assert o["labels"].dtype == torch.int64 and int(o["labels"].max()) < cats.num_things
        assert o["masks"].shape == (k, 1, h, w) and o["masks"].dtype == torch.float32
        assert 0 <= float(o["masks"].min()) and float(o["masks"].max()) <= 1
        assert o["sem_seg"].shape == (h, w) and o["sem_seg"].dtype == torch.int64
        assert 0 <= int(o["sem_seg"].min()) and int(o["sem_seg"].max()) < cats.num_sem_classes
    # the stuff map is the argmax of the stuff head's logits (= of its probabilities) in the
    # image's pixels; compared with the logits, since with random weights the probabilities are
    # near-uniform and softmax's rounding can tie two classes whose logits differ
    for i, (o, (h, w)) in enumerate(zip(out, [(128, 160), (100, 128)])):
        logits = model.stuff_head(towers["stuff"])[i, :, :h, :w]
        assert torch.equal(o["sem_seg"], logits.argmax(0))
        top2 = logits.softmax(0).topk(2, dim=0).values
        clear = top2[0] - top2[1] > 1e-6                   # no rounding tie in the probabilities
        assert torch.equal(o["sem_seg"][clear], logits.softmax(0).argmax(0)[clear])
        assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()


def test_training_returns_the_four_losses_of_eq6():
    model = tiny().train()
    images, targets = toy_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_reg", "loss_thing", "loss_stuff"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    half = tiny("model.stuff_loss_weight=0.25").train()(images, targets)["loss_stuff"]
    full = tiny("model.stuff_loss_weight=1.0").train()(images, targets)["loss_stuff"]
    assert torch.allclose(full * 0.25, half)                   # lambda scales L_stuff
    with pytest.raises(ValueError, match="targets"):
        model(images)


def test_images_without_things_train():
    model = tiny().train()
    images, targets = toy_batch()
    for t in targets:
        t["boxes"], t["labels"] = t["boxes"][:0], t["labels"][:0]
        t["masks"] = t["masks"][:0]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert losses["loss_thing"].item() == 0.0 and losses["loss_reg"].item() == 0.0


# --- flow switches ---------------------------------------------------------------------------
def grads_into(model, loss_name, module):
    """Whether ``loss_name`` alone sends a non-zero gradient into ``module``'s parameters."""
    model.train().zero_grad()
    images, targets = toy_batch()
    model(images, targets)[loss_name].backward()
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("flow, loss, tower, others_off", [
    ("reg_to_cls", "loss_cls", "reg_tower", []),
    ("reg_to_stuff", "loss_stuff", "reg_tower", []),
    ("reg_to_thing", "loss_thing", "reg_tower", ["reg_to_stuff"]),
    ("stuff_to_thing", "loss_thing", "stuff_tower", []),
])
def test_each_flow_switch_changes_the_graph(flow, loss, tower, others_off):
    off = [f"model.flows.{o}=false" for o in others_off]
    on_model = tiny(*off)
    assert grads_into(on_model, loss, getattr(on_model.subnets, tower))
    off_model = tiny(*off, f"model.flows.{flow}=false")
    assert getattr(off_model.subnets, flow) is None
    assert not grads_into(off_model, loss, getattr(off_model.subnets, tower))


def test_no_flows_keeps_tasks_apart():
    model = tiny(*[f"model.flows.{f}=false" for f in
                   ("reg_to_cls", "reg_to_stuff", "reg_to_thing", "stuff_to_thing")])
    for loss in ("loss_cls", "loss_stuff", "loss_thing"):
        assert not grads_into(model, loss, model.subnets.reg_tower)
    assert grads_into(model, "loss_reg", model.subnets.reg_tower)


def test_cls_flows_control_of_fig4():
    model = tiny("model.flows.source=cls")
    assert grads_into(model, "loss_stuff", model.subnets.cls_tower)
    assert not grads_into(model, "loss_stuff", model.subnets.reg_tower)
    assert grads_into(model, "loss_reg", model.subnets.cls_tower)   # cls -> reg flow
    assert not grads_into(model, "loss_cls", model.subnets.reg_tower)


def test_naive_baseline_has_no_thing_or_stuff_towers():
    model = tiny("model.subnets=false")
    names = [n for n, _ in model.named_parameters()]
    for part in ("stuff_tower", "thing_tower", "reg_to_stuff", "reg_to_thing", "stuff_to_thing"):
        assert not any(part in n for n in names), part
    assert any("cls_tower" in n for n in names) and any("reg_tower" in n for n in names)
    assert not grads_into(model, "loss_stuff", model.subnets.reg_tower)
    full = sum(p.numel() for p in tiny().parameters())
    assert sum(p.numel() for p in model.parameters()) < full


def test_stage_counts_are_configurable():
    model = tiny("model.stuff_stages=2", "model.thing_stages=3", "model.cls_stages=3")
    assert (len(model.subnets.stuff_tower), len(model.subnets.thing_tower),
            len(model.subnets.cls_tower), len(model.subnets.reg_tower)) == (2, 3, 3, 4)
    assert len(model.subnets.reg_to_stuff) == 2 and len(model.subnets.reg_to_cls) == 3
    images, targets = toy_batch(1)
    sum(model.train()(images, targets).values()).backward()


def test_dcn_variant_eq4():
    model = tiny("model.dcn=true")
    st = model.subnets
    for tower in (st.cls_tower, st.stuff_tower, st.thing_tower):
        assert all(isinstance(s.conv, DeformConv2d) for s in tower)
    assert not any(isinstance(s.conv, DeformConv2d) for s in st.reg_tower)
    # the reg features steer the offsets: psi_offset learns from the cls loss, and once it is
    # no longer zero (its initialisation) the cls loss reaches the reg tower through it
    assert not grads_into(model, "loss_cls", st.reg_tower)
    assert all(s.psi_offset.weight.grad.abs().sum() > 0 for s in st.cls_tower)
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert grads_into(model, "loss_cls", st.reg_tower)
    no_flow = tiny("model.dcn=true", "model.flows.reg_to_cls=false")
    grads_into(no_flow, "loss_cls", no_flow.subnets.reg_tower)
    torch.optim.SGD(no_flow.parameters(), lr=0.01).step()
    assert not grads_into(no_flow, "loss_cls", no_flow.subnets.reg_tower)
    only_stuff = tiny("model.dcn=true", "model.dcn_towers=[stuff]").subnets
    assert isinstance(only_stuff.stuff_tower[0].conv, DeformConv2d)
    assert not isinstance(only_stuff.cls_tower[0].conv, DeformConv2d)


def test_giou_box_loss_option():
    model = tiny("model.box_loss=giou").train()
    images, targets = toy_batch()
    assert model.head.regression_head._loss_type == "giou"
    assert torch.isfinite(model(images, targets)["loss_reg"])


# --- backbone ----------------------------------------------------------------------------
def test_backbone_options(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = build_backbone("resnet18", 32, "frozen_bn", freeze_stem=True)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.body.modules())
    assert not bb.body.conv1.weight.requires_grad and bb.body.layer1[0].conv1.weight.requires_grad
    with pytest.warns(UserWarning, match="frozen BatchNorm without pretrained"):
        build_backbone("resnet18", 32, "frozen_bn")
    # pretrained weights come from a local file only
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    bb = build_backbone("resnet18", 32, "frozen_bn", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(bb.body.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert torch.equal(bb.body.bn1.running_var, ref.bn1.running_var)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(InputError, match=r"r34.pth .*do not fit.*unexpected: layer1.2"):
        build_backbone("resnet18", 32, "frozen_bn", pretrained=str(tmp_path / "r34.pth"))
    odd = dict(ref.state_dict(), **{"conv1.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(odd, tmp_path / "odd.pth")  # same names, another shape: named, not torch's dump
    with pytest.raises(InputError, match=r"another shape.*conv1.weight \(64, 3, 5, 5\) vs "
                                         r"\(64, 3, 7, 7\)"):
        build_backbone("resnet18", 32, "frozen_bn", pretrained=str(tmp_path / "odd.pth"))
    with pytest.raises(InputError, match="not found"):
        build_backbone("resnet18", 32, "frozen_bn", pretrained=str(tmp_path / "none.pth"))


def test_resnet10_is_torchvisions_resnet_with_one_block_a_stage():
    bb = build_backbone("resnet10", 32, "gn")
    assert [len(getattr(bb.body, f"layer{k}")) for k in range(1, 5)] == [1, 1, 1, 1]
    assert isinstance(bb.body.layer2[0], torchvision.models.resnet.BasicBlock)
    feats = bb(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2),
                                                           (1, 1)]
    assert all(f.shape[1] == 32 for f in feats.values())
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        build_backbone("resnet9", 32, "gn")


# --- it learns -------------------------------------------------------------------------------
def test_overfits_two_synthetic_images(tmp_path):
    """The tiny preset drives all four losses down on two synthetic images and then finds
    their objects (every GT box matched by a detection of its class with IoU > 0.5)."""
    from spatialflow.data.coco_panoptic import CocoPanopticDataset
    from spatialflow.model.inputs import collate_panoptic
    from spatialflow.data.synthetic import make_synthetic

    make_synthetic(tmp_path, num_train=6, num_val=1, size=128, seed=1, workers=1, progress=False)
    ds = CocoPanopticDataset.from_root(tmp_path, "train")
    items = [it for it in (ds[i] for i in range(len(ds))) if len(it[1]["labels"]) >= 2][:2]
    assert len(items) == 2
    images, targets = collate_panoptic(items)
    torch.manual_seed(0)
    model = build_model(load_config("tiny-cpu"), ds.categories).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    first = None
    for step in range(100):  # (every loss at most 0.31x its first value by then, seeds 0-2)
        losses = model(images, targets)
        first = first or {k: v.item() for k, v in losses.items()}
        opt.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    last = {k: v.item() for k, v in model(images, targets).items()}
    for k in first:
        assert last[k] < 0.6 * first[k], (k, first[k], last[k])
    model.eval()
    with torch.no_grad():
        out = model(images)
    for o, t in zip(out, targets):
        iou = box_iou(t["boxes"], o["boxes"])
        same = t["labels"][:, None] == o["labels"][None, :]
        assert ((iou > 0.5) & same).any(dim=1).all(), (iou.max(1), o["labels"], t["labels"])


def test_outputs_at_another_size():
    model = tiny().eval()
    model.score_thresh = 0.0
    image = torch.rand(3, 96, 128)
    with torch.no_grad():
        small = model([image])[0]
        big = model([image], output_sizes=[(192, 256)])[0]
        boxed = model([image], output_sizes=[(192, 256)], dense_masks=False)[0]
    assert big["masks"].shape[-2:] == (192, 256) and big["sem_seg"].shape == (192, 256)
    assert len(big["masks"]) > 0 and torch.equal(boxed["masks"].dense(), big["masks"])
    assert torch.allclose(big["boxes"], small["boxes"] * 2)
    assert torch.equal(big["labels"], small["labels"])
    # the stuff map of the logits upsampled bilinearly agrees with the small one
    assert (big["sem_seg"][::2, ::2] == small["sem_seg"]).float().mean() > 0.9


def test_paste_masks_matches_torchvision():
    """paste_masks, and paste_mask_crops made dense, give torchvision's paste_masks_in_image
    values exactly (in-image boxes, boxes on the border, thin and one-pixel boxes, one outside
    the image, none at all)."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from spatialflow.model.masks import paste_mask_crops, paste_masks

    g = torch.Generator().manual_seed(0)
    h, w = 90, 130
    xy = torch.rand(40, 2, generator=g) * torch.tensor([w, h])
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 60], 1)
    boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clamp(max=w), boxes[:, 1::2].clamp(max=h)
    boxes[:5] = torch.tensor([[0.0, 0, w, h], [w - 1, h - 1, w, h], [5, 5, 5.2, 40],
                              [0, 0, 0.5, 0.5], [w + 20, 10, w + 40, 30]])
    masks = torch.rand(40, 1, 28, 28, generator=g)
    inside = torch.arange(40) != 4  # torchvision fails on a box outside the image: all zero
    expected = torch.zeros(40, 1, h, w)
    expected[inside] = paste_masks_in_image(masks[inside], boxes[inside], (h, w), padding=1)
    assert torch.equal(paste_masks(masks, boxes, (h, w)), expected)
    crops = paste_mask_crops(masks, boxes, (h, w))
    assert torch.equal(crops.dense(), expected) and crops.crops[4].numel() == 0
    # each crop covers its box: the pasted mask is zero outside it
    for i, (crop, (y, x)) in enumerate(zip(crops.crops, crops.origins)):
        outside = expected[i, 0].clone()
        outside[y:y + crop.shape[0], x:x + crop.shape[1]] = 0
        assert not outside.any()
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, 1, h, w)
