"""Multi-scale + flip test-time augmentation (paper Tables II and III)."""

import pytest
import torch
import torch.nn.functional as F

from spatialflow.config import ConfigError, InferConfig, load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from dataclasses import replace

from spatialflow.engine.predict import (Predictor, augmentations, flip_boxes, merge_kwargs,
                                        prepare_image)
from spatialflow.panoptic import merge_outputs
from spatialflow.model import build_model

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(load_config("tiny-cpu"), CATS).eval()
    m.score_thresh = 0.0  # random weights: keep every candidate so there is something to pool
    m.detections_per_img = 30
    return m


def predictor(model, infer, test_size=800, max_size=1333):
    """A predictor of ``model`` with ``infer``, keeping every candidate as the model fixture
    does (the predictor sets its detection thresholds on the model)."""
    return Predictor(model, CATS, replace(infer, score_thresh=0.0, detections_per_img=30),
                     test_size, max_size)


def image(h=96, w=128, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_augmentations_list_every_scale_and_flip():
    assert augmentations(InferConfig(), 256, 512) == [(256, 512, False)]
    assert augmentations(InferConfig(tta_flip=True), 256, 512) == [(256, 512, False),
                                                                   (256, 512, True)]
    infer = InferConfig(tta_scales=[[64, 100], [96, 200]], tta_flip=True)
    assert augmentations(infer, 256, 512) == [(64, 100, False), (64, 100, True),
                                              (96, 200, False), (96, 200, True)]


def test_flip_boxes_mirrors_and_is_its_own_inverse():
    boxes = torch.tensor([[0.0, 1.0, 10.0, 5.0], [90.0, 2.0, 100.0, 9.0]])
    assert torch.equal(flip_boxes(boxes, 100), torch.tensor([[90.0, 1.0, 100.0, 5.0],
                                                             [0.0, 2.0, 10.0, 9.0]]))
    assert torch.equal(flip_boxes(flip_boxes(boxes, 100), 100), boxes)


def test_one_pass_equals_plain_inference(model):
    """A single scale without flip is the model's own eval output (same boxes, masks, stuff)."""
    x = image(72, 100)
    infer = InferConfig(tta_scales=[[96, 400]])
    tta = predictor(model, infer).tta(x)
    with torch.no_grad():
        plain = model([prepare_image(x, 96, 400)], output_sizes=[(72, 100)])[0]
    assert len(plain["boxes"]) > 0
    for k in ("boxes", "scores", "masks"):
        assert tta[k].shape == plain[k].shape
        assert torch.allclose(tta[k], plain[k], atol=1e-5), k
    assert torch.equal(tta["labels"], plain["labels"])
    assert torch.equal(tta["sem_seg"], plain["sem_seg"])


def test_flip_tta_is_mirror_symmetric(model):
    """With flip TTA, the prediction for a mirrored image is the mirrored prediction."""
    x = image()
    infer = InferConfig(tta_flip=True)
    a = predictor(model, infer, 96, None).tta(x)
    b = predictor(model, infer, 96, None).tta(x.flip(-1))
    assert (b["sem_seg"].flip(-1) == a["sem_seg"]).float().mean() > 0.999
    assert torch.allclose(b["scores"], a["scores"], atol=1e-6)
    assert torch.allclose(flip_boxes(b["boxes"], 128), a["boxes"], atol=1e-4)
    # the masks, but for boxes at the left or right edge: torchvision's pasting (whose values
    # paste_masks keeps) widens each box by one mask pixel a side (28 -> 30) and rounds its
    # corners toward zero, so a box reaching past x = 0 once widened is pasted one pixel
    # narrower than its mirror reaching past the right edge
    from torchvision.models.detection.roi_heads import expand_boxes

    pasted = expand_boxes(a["boxes"], 30 / 28)
    inner = (pasted[:, 0] > 0) & (pasted[:, 2] < 128)
    assert inner.sum() >= 10
    assert torch.allclose(b["masks"].flip(-1)[inner], a["masks"][inner], atol=1e-5)


def test_multi_scale_flip_averages_stuff_and_pools_detections(model):
    x = image(80, 120, seed=3)
    infer = InferConfig(tta_scales=[[64, 400], [112, 400]], tta_flip=True)
    out = predictor(model, infer).tta(x)
    passes = []
    with torch.no_grad():
        for short, cap, flip in augmentations(infer, 0, None):
            z = prepare_image(x, short, cap)
            o = model([z.flip(-1) if flip else z])[0]
            sizes, _, _, logits = model.raw_outputs([z.flip(-1) if flip else z])
            logits = logits[:1, :, :sizes[0][0], :sizes[0][1]]
            logits = logits.flip(-1) if flip else logits
            sem = F.interpolate(logits, size=(80, 120), mode="bilinear")[0].softmax(0)
            passes.append((o, sem))
    # the stuff map is that of the passes' mean stuff probabilities
    mean = torch.stack([s for _, s in passes]).mean(0)
    assert out["sem_seg"].shape == (80, 120)
    assert (out["sem_seg"] == mean.argmax(0)).float().mean() > 0.999
    # detections: at most detections_per_img, each one found by some pass, the best one kept
    pooled = torch.cat([o["scores"] for o, _ in passes])
    assert 0 < len(out["scores"]) <= model.detections_per_img
    assert torch.isin(out["scores"], pooled).all()
    assert out["scores"][0] == pooled.max()
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    assert out["masks"].shape == (len(out["scores"]), 1, 80, 120)
    assert out["masks"].min() >= 0 and out["masks"].max() <= 1


def test_the_predictor_uses_tta_when_asked(model):
    x = image(64, 64, seed=5)
    infer = InferConfig(tta_flip=True, stuff_area=0)
    result = predictor(model, infer, 64)(x, raw=True)
    out, pan, segments = result["raw"], result["panoptic"], result["segments_info"]
    assert torch.equal(out["sem_seg"], predictor(model, infer, 64).tta(x)["sem_seg"])
    assert pan.shape == (64, 64) and segments


def test_tta_scales_are_checked():
    with pytest.raises(ConfigError, match="infer.tta_scales"):
        load_config("tiny-cpu", ["infer.tta_scales=[[800]]"])
    with pytest.raises(ConfigError, match="infer.tta_scales"):
        load_config("tiny-cpu", ["infer.tta_scales=[[800, -1]]"])
    cfg = load_config("tiny-cpu", ["infer.tta_scales=[[200, 300], [256, 400]]",
                                   "infer.tta_flip=true"])
    assert cfg.infer.tta_scales == [[200, 300], [256, 400]] and cfg.infer.tta_flip


@pytest.mark.parametrize("tta", [False, True])
def test_masks_of_usable_detections_only_give_the_same_result(model, tta):
    """With ``mask_conf``, the thing head runs on the detections the merge can use only: their
    masks, and so the panoptic result, are those of the full output."""
    x = image(72, 100, seed=7)
    infer = InferConfig(tta_flip=tta, stuff_area=0)
    full = predictor(model, infer, 96).raw(x)
    assert len(full["masks"]) == len(full["scores"]) > 4
    assert (full["scores"][:-1] >= full["scores"][1:]).all()
    infer.mask_conf = float(full["scores"][len(full["scores"]) // 2])  # about half the detections
    result = predictor(model, infer, 96)(x, raw=True)
    out, pan, segments = result["raw"], result["panoptic"], result["segments_info"]
    m = int((full["scores"] >= infer.mask_conf).sum())
    assert 0 < m == len(out["masks"]) < len(out["scores"])
    for k in ("boxes", "scores", "labels", "sem_seg"):
        assert torch.equal(out[k], full[k]), k
    assert torch.allclose(out["masks"], full["masks"][:m], atol=1e-6)
    full_pan, full_segments = merge_outputs(full, CATS, **merge_kwargs(infer))
    assert (pan == full_pan).all() and segments == full_segments
