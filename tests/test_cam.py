"""CAM heatmaps of the cls and stuff heads (viz.cam, pytorch-grad-cam; paper Fig. 5)."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from spatialflow.config import load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.model import build_model
from viz import cam as C

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)      # 4 things, 5 stuff
NO_FLOWS = [f"model.flows.{f}=false" for f in
            ("reg_to_cls", "reg_to_stuff", "reg_to_thing", "stuff_to_thing")]
# the toy scene: a bright box (thing 0) in the upper part, stuff 0 above row SPLIT, stuff 1 below
SIZE, (Y0, Y1, X0, X1), SPLIT = 128, (16, 56, 56, 106), 72


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: much faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(*overrides):
    torch.manual_seed(0)
    return build_model(load_config("tiny-cpu", list(overrides)), CATS)


def toy_scene():
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, SIZE, SIZE, generator=g) * 0.1
    img[:, :SPLIT] += torch.tensor([0.2, 0.3, 0.6])[:, None, None]
    img[:, SPLIT:] += torch.tensor([0.3, 0.5, 0.2])[:, None, None]
    img[:, Y0:Y1, X0:X1] = torch.tensor([0.95, 0.9, 0.2])[:, None, None]
    sem = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    sem[SPLIT:] = 1
    sem[Y0:Y1, X0:X1] = CATS.other_index
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    mask[0, Y0:Y1, X0:X1] = 1
    target = {"boxes": torch.tensor([[X0, Y0, X1, Y1]], dtype=torch.float32),
              "labels": torch.tensor([0]), "masks": mask, "sem_seg": sem}
    return img, target


@pytest.fixture(scope="module")
def trained():
    """A tiny model overfitted for 60 SGD steps on the toy scene (left in training mode)."""
    model = tiny().train()
    image, target = toy_scene()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(60):
        losses = model([image], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    opt.zero_grad()
    return model, image


def hooks_left(model):
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
            or m._backward_pre_hooks]


# --- shapes, ranges, levels ------------------------------------------------------------------
@pytest.mark.parametrize("head, levels", [("cls", 5), ("stuff", 3)])
@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_shape_range_and_levels(head, levels, method):
    model = tiny()
    image = torch.rand(3, 100, 120)                    # padded to 128 x 128 inside, cropped back
    cam = C.compute_cam(model, image, head, method=method)
    assert cam.shape == (100, 120) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0.99 and cam.std() > 0.01
    per = C.compute_cam(model, image, head, method=method, per_level=True)
    assert len(per) == levels
    assert all(p.shape == (100, 120) and p.dtype == np.float32 for p in per)
    assert all(p.min() >= 0 and p.max() <= 1 for p in per)
    assert per[0].max() > 0.99                         # P3 always has a map
    if head == "cls":  # P7 of a 128 px image is 1 x 1: min-max normalisation makes it 0
        assert per[-1].max() == 0


def test_per_level_maps_match_single_level_cams_of_the_naive_baseline():
    """Without sub-networks the stuff head reads P3-P5 made by three separate FPN convs, run
    top-down (P5 first): each level's map equals the library's CAM with that conv alone."""
    from pytorch_grad_cam import GradCAM

    model = tiny("model.subnets=false")
    image = torch.rand(3, 128, 128)
    target = C.stuff_target(model, image, 1)
    per = C.compute_cam(model, image, "stuff", target, per_level=True)
    for level, conv in enumerate(model.backbone.fpn.layer_blocks[:3]):
        with GradCAM(C.StuffLogits(model), [conv]) as cam:
            ref = cam(image[None], [target])[0]
        assert ref.max() > 0.99 and np.allclose(per[level], ref, atol=1e-4), level


def test_target_layers_are_the_last_tower_stages():
    model = tiny()
    assert C.cls_target_layer(model) == [model.subnets.cls_tower[-1]]
    assert C.stuff_target_layer(model) == [model.subnets.stuff_tower[-1]]
    naive = tiny("model.subnets=false")
    layers = C.stuff_target_layer(naive)
    assert layers == list(naive.backbone.fpn.layer_blocks[:3])   # the convs making P3-P5


@pytest.mark.parametrize("overrides", [["model.subnets=false"], NO_FLOWS,
                                       ["model.flows.reg_to_cls=false"]])
def test_variants_without_subnets_or_flows(overrides):
    model = tiny(*overrides).train()
    image = torch.rand(3, 128, 128)
    for head, levels in (("cls", 5), ("stuff", 3)):
        per = C.compute_cam(model, image, head, per_level=True)
        assert len(per) == levels and all(p.shape == (128, 128) for p in per)
        cam = C.compute_cam(model, image, head)
        assert cam.shape == (128, 128) and 0 <= cam.min() and cam.max() <= 1 and cam.std() > 0
    assert model.training and not hooks_left(model)


# --- the model is left as it was ----------------------------------------------------------
def test_modes_grads_and_hooks_restored():
    model = tiny().train()
    model.backbone.body.eval()                         # a mixed train/eval state
    modes = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    model.subnets.cls_tower[0].conv.weight.requires_grad_(False)
    requires["subnets.cls_tower.0.conv.weight"] = False
    marker = torch.ones_like(model.head.classification_head.cls_logits.weight)
    model.head.classification_head.cls_logits.weight.grad = marker
    with torch.no_grad():                               # gradients are enabled inside
        for head in ("cls", "stuff"):
            for method in ("gradcam", "eigencam"):
                assert C.compute_cam(model, torch.rand(3, 128, 128), head, method=method).max() > 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
    assert model.head.classification_head.cls_logits.weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters()
               if n != "head.classification_head.cls_logits.weight")
    assert not hooks_left(model)


def test_hooks_released_and_mode_restored_when_the_target_fails():
    model = tiny().train()

    def bad_target(output):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        C.compute_cam(model, torch.rand(3, 128, 128), "cls", bad_target)
    assert model.training and not hooks_left(model)


def test_inference_mode_and_bad_arguments_are_refused():
    model = tiny()
    image = torch.rand(3, 128, 128)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        C.compute_cam(model, image)
    with pytest.raises(ValueError, match="head"):
        C.compute_cam(model, image, "thing")
    with pytest.raises(ValueError, match="method"):
        C.compute_cam(model, image, method="scorecam")
    with pytest.raises(ValueError, match="image"):
        C.compute_cam(model, image[None])


# --- targets -----------------------------------------------------------------------------
def test_targets_read_the_wrapped_outputs():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert C.ClassScoreTarget(1, top_k=2)(scores).item() == pytest.approx(1.6)
    assert C.ClassScoreTarget(0, top_k=None)(scores).item() == pytest.approx(1.2)
    assert C.ClassScoreTarget(0, top_k=50)(scores).item() == pytest.approx(1.2)
    assert C.DetectionTarget(2, 1)(scores).item() == pytest.approx(0.7)
    model = tiny().eval()
    x = torch.rand(2, 3, 100, 128)
    with torch.no_grad():
        cls = C.ClsScores(model)(x)
        stuff = C.StuffLogits(model)(x)
        _, feats, towers = model.features(list(x))
        ref = model.head.classification_head(towers["cls"]).sigmoid()
    assert cls.shape == (2, 9 * sum(f.shape[-2] * f.shape[-1] for f in feats), CATS.num_things)
    assert torch.allclose(cls, ref) and 0 <= cls.min() and cls.max() <= 1
    assert stuff.shape == (2, CATS.num_sem_classes, 100, 128)
    # an image padded by the caller, with its true size given, gives the same outputs
    padded = torch.nn.functional.pad(x, (0, 0, 0, 28))
    with torch.no_grad():
        assert torch.allclose(C.ClsScores(model, image_size=(100, 128))(padded), cls, atol=1e-5)
        assert torch.allclose(C.StuffLogits(model, image_size=(100, 128))(padded), stuff,
                              atol=1e-5)


# --- a briefly trained model: heatmaps that mean something -------------------------------------
def test_cls_cam_is_on_the_object(trained):
    model, image = trained
    inside = np.zeros((SIZE, SIZE), bool)
    inside[Y0:Y1, X0:X1] = True
    yy, xx = np.mgrid[:SIZE, :SIZE]
    gap = np.maximum(np.maximum(Y0 - yy, yy - Y1 + 1), np.maximum(X0 - xx, xx - X1 + 1))
    far = gap > 24                                     # > 24 px away from the box
    cam = C.compute_cam(model, image, "cls", C.ClassScoreTarget(CATS.thing_index(1)))
    assert cam.std() > 0.1
    # the heat is on the object: its peak inside the box, the box 8x hotter than far away
    # (after 60 steps 10-29x for the initial weights of seeds 0, 3 and 4; 7-33x after 30)
    assert inside[np.unravel_index(cam.argmax(), cam.shape)]
    assert cam[inside].mean() > max(0.3, 8 * cam[far].mean()), (cam[inside].mean(),
                                                                 cam[far].mean())
    assert model.training
    from spatialflow.engine.predict import Predictor
    same = C.compute_cam(Predictor(model, CATS), image, "cls",
                         C.ClassScoreTarget(CATS.thing_index(1)))   # a Predictor: its model
    assert np.allclose(same, cam, atol=1e-5) and model.training


def test_stuff_cam_is_on_the_stuff_region(trained):
    model, image = trained
    below = C.compute_cam(model, image, "stuff", 1)     # stuff index 1: the lower region
    above = C.compute_cam(model, image, "stuff", 0)
    assert below[SPLIT:].mean() > max(0.3, 2 * below[:SPLIT].mean())
    assert above[:SPLIT].mean() > max(0.3, 2 * above[SPLIT:].mean())
    mask = C.stuff_target(model, image, 1).mask.numpy()
    assert mask[SPLIT + 4:].mean() > 0.9 and mask[:SPLIT - 4].mean() < 0.1


def test_detection_target_of_a_returned_detection(trained):
    model, image = trained
    model.eval()
    with torch.no_grad():
        det = model([image])[0]
    model.train()
    box, label, score = det["boxes"][0], int(det["labels"][0]), float(det["scores"][0])
    assert label == 0 and score > 0.5
    idx = C.detection_anchor_index(model, image, box, label, score)
    with torch.no_grad():
        assert C.ClsScores(model.eval())(image[None])[0, idx, label].item() == pytest.approx(
            score, abs=1e-5)
    model.train()
    with pytest.raises(ValueError, match="no anchor"):
        C.detection_anchor_index(model, image, [1.0, 2.0, 3.0, 4.0], label)
    # only the detection's own FPN level gets a gradient: the other per-level maps are zero,
    # which also checks that the per-level maps come out in P3..P7 order
    per_level_anchors = np.cumsum([9 * (SIZE // s) ** 2 for s in (8, 16, 32, 64, 128)])
    level = int(np.searchsorted(per_level_anchors, idx, side="right"))
    per = C.compute_cam(model, image, "cls", C.DetectionTarget(idx, label), per_level=True)
    assert per[level].max() > 0.99
    assert all(p.max() == 0 for i, p in enumerate(per) if i != level)
    cam = C.compute_cam(model, image, "cls", C.DetectionTarget(idx, label))
    cy, cx = int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)
    assert cam[cy - 5:cy + 5, cx - 5:cx + 5].mean() > cam.mean()


# --- pictures ----------------------------------------------------------------------------------
def test_overlay_and_flows_figure():
    image = torch.rand(3, 128, 128)
    cam = np.zeros((128, 128), np.float32)
    cam[:, 64:] = 1
    over = C.cam_overlay(image, cam)
    assert over.shape == (128, 128, 3) and over.dtype == np.uint8
    # jet: red where the map is hot, blue where it is cold
    assert over[:, 64:, 0].mean() > over[:, :64, 0].mean() + 50
    assert over[:, :64, 2].mean() > over[:, 64:, 2].mean() + 50
    models = {"with flows": tiny(), "without flows": tiny(*NO_FLOWS)}
    fig = C.flows_comparison_figure(image, models, CATS, thing_class=3, stuff_class=149)
    assert isinstance(fig, Figure) and len(fig.axes) == 7  # 6 panels and the colour bar
    assert fig.axes[6].get_ylabel() == C.CAM_SCALE == "CAM, each map scaled to [0, 1]"
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["image", "cls CAM: car", "stuff CAM: road"]
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["with flows", "without flows"]
    assert all(not hooks_left(m) for m in models.values())
    fig = C.levels_figure(image, models["with flows"], "stuff", 0, title="stuff head")
    assert [ax.get_title() for ax in fig.axes] == ["combined", "P3", "P4", "P5", ""]
    assert fig.axes[-1].get_ylabel() == C.CAM_SCALE
    assert fig._suptitle.get_text() == "stuff head"
    assert len(C.levels_figure(image, models["with flows"], "cls").axes) == 7
    # where the object is: the ground truth's outline of each class, dashed, on every CAM
    pan = np.zeros((128, 128), np.int32)
    pan[:64] = 1
    pan[80:100, 20:60] = 2
    segments = [{"id": 1, "category_id": 149}, {"id": 2, "category_id": 3}]
    assert C.class_mask(pan, segments, 3).sum() == 20 * 40
    fig = C.flows_comparison_figure(image, models, CATS, 3, 149, ground_truth=(pan, segments))
    outlined = [len(ax.collections) > 0 for ax in fig.axes[:6]]
    assert outlined == [False, True, True, False, True, True]
    assert "dashed white: the class in the ground truth" in fig._suptitle.get_text()
    fig = C.levels_figure(image, models["with flows"], "stuff", 0,
                          outline=C.class_mask(pan, segments, 149))
    assert all(len(ax.collections) > 0 for ax in fig.axes[:4])


def test_largest_classes_picks_the_largest_thing_and_stuff():
    from spatialflow.data.categories import CategoryMap
    from viz.cam import largest_classes

    cats = CategoryMap.from_coco([{"id": 1, "name": "a", "isthing": 1},
                                  {"id": 2, "name": "b", "isthing": 1},
                                  {"id": 7, "name": "sky", "isthing": 0},
                                  {"id": 8, "name": "road", "isthing": 0}])
    segs = [{"id": 1, "category_id": 1, "area": 30}, {"id": 2, "category_id": 2, "area": 20},
            {"id": 3, "category_id": 2, "area": 20}, {"id": 4, "category_id": 7, "area": 5},
            {"id": 5, "category_id": 8, "area": 9}, {"id": 6, "category_id": 99, "area": 999}]
    assert largest_classes(segs, cats) == (2, 8)  # two instances of 2 outweigh one of 1
    assert largest_classes(segs[3:5], cats) == (None, 8)
    assert largest_classes([], cats) == (None, None)


def test_cam_examples_finds_items_with_a_thing_and_stuff():
    from viz.cam import cam_examples

    segs = [[{"category_id": 149, "area": 5}],                                      # stuff only
            [{"category_id": 3, "area": 5}, {"category_id": 149, "area": 9}],
            [{"category_id": 1, "area": 1}, {"category_id": 3, "area": 2},
             {"category_id": 187, "area": 9}]]
    ds = type("DS", (), {"categories": CATS, "annotation": lambda self, i: {"segments_info":
                                                                             segs[i]},
                         "__len__": lambda self: len(segs)})()
    assert cam_examples(ds, 5) == [(1, 3, 149), (2, 3, 187)]
    assert cam_examples(ds, 1) == [(1, 3, 149)]
