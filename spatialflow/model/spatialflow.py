"""SpatialFlow: RetinaNet with thing and stuff sub-networks, spatial flows and two more heads.

``model(images, targets)`` in training returns the losses of eq (6); in eval mode it returns,
per image, the raw outputs the panoptic merge needs (boxes, scores, contiguous labels, mask
probabilities pasted at the image size and the stuff map at the image size). Built with
``panoptic=False`` it is RetinaNet with or without the reg->cls flow (Table XII): cls and reg
losses in training, boxes, scores and labels in eval mode.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from spatialflow.config import PAD_MULTIPLE, Config, ModelConfig
from spatialflow.data.categories import IGNORE_INDEX, CategoryMap
from spatialflow.model.backbone import build_backbone
from spatialflow.model.detection import anchor_generator
from spatialflow.model.inputs import batch_images, pad_target
from spatialflow.model.heads import StuffHead, ThingHead, detection_head
from spatialflow.model.seeding import model_seed, part
from spatialflow.model.subnets import SubNetworks
from spatialflow.model.masks import paste_mask_crops, stuff_map

ImageInput = Union[ImageList, torch.Tensor, Sequence[torch.Tensor]]


def stuff_loss(logits: torch.Tensor, sem_seg: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over each image's valid pixels (255 ignored), averaged over images."""
    per_pixel = F.cross_entropy(logits, sem_seg, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (sem_seg != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
    return (per_pixel.flatten(1).sum(1) / valid).mean()


class SpatialFlow(RetinaNet):
    """The SpatialFlow network (paper Fig. 2): backbone + FPN, four sub-networks with spatial
    flows (:class:`SubNetworks`), RetinaNet's cls / reg heads, a Mask R-CNN thing head and a
    Panoptic FPN stuff head.

    Inherits RetinaNet's anchor matching (IoU 0.5 / 0.4), focal + box losses and detection
    post-processing (score > ``score_thresh``, per-class NMS, top ``detections_per_img``).

    Args:
        backbone: ``BackboneWithFPN`` giving ``p3..p7``.
        subnets: the :class:`SubNetworks`.
        num_things: thing classes (contiguous ids ``0..T-1``).
        num_sem_classes: stuff classes + 1 ('other').
        stuff_loss_weight: lambda of eq (6).
        size_divisibility: images are padded to a multiple of this: 32 (P5's stride; the
            anchors sit at each level's true stride) or a multiple of it (runs trained before
            the anchors did say 128 in their config).
        panoptic: ``False``: the detector alone (no thing or stuff tower or head; ``subnets``
            built with ``panoptic=False``; ``num_sem_classes`` unused).
    """

    def __init__(self, backbone: nn.Module, subnets: SubNetworks, num_things: int,
                 num_sem_classes: int, anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
                 box_loss: str = "l1", stuff_loss_weight: float = 0.25,
                 stuff_head_channels: int = 128, mask_head_channels: Optional[int] = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.4,
                 detections_per_img: int = 100, topk_candidates: int = 1000,
                 size_divisibility: int = PAD_MULTIPLE,
                 image_mean: Sequence[float] = (0.485, 0.456, 0.406),
                 image_std: Sequence[float] = (0.229, 0.224, 0.225), panoptic: bool = True):
        if size_divisibility <= 0 or size_divisibility % PAD_MULTIPLE:
            raise ValueError(f"size_divisibility must be a multiple of {PAD_MULTIPLE} (the "
                             f"stride of P5), got {size_divisibility}")
        channels = backbone.out_channels
        anchors = anchor_generator(anchor_sizes)
        with part("head"):  # each part from its own seeded generator (model.seeding)
            head = detection_head(channels, anchors.num_anchors_per_location()[0], num_things,
                                  box_loss)
        super().__init__(backbone, num_things, anchor_generator=anchors, head=head,
                         score_thresh=score_thresh, nms_thresh=nms_thresh,
                         detections_per_img=detections_per_img, fg_iou_thresh=0.5,
                         bg_iou_thresh=0.4, topk_candidates=topk_candidates)
        del self.transform  # images arrive resized and batched (spatialflow.data)
        if subnets.panoptic != panoptic:
            raise ValueError(f"panoptic={panoptic} with sub-networks built for "
                             f"panoptic={subnets.panoptic}")
        self.subnets, self.panoptic = subnets, panoptic
        self.thing_head = self.stuff_head = None
        if panoptic:
            with part("thing_head"):
                self.thing_head = ThingHead(channels, num_things, mask_head_channels or channels)
            with part("stuff_head"):
                self.stuff_head = StuffHead(channels, num_sem_classes, stuff_head_channels)
        # thing-head training RoIs: a detection is a positive when IoU >= 0.5 with a GT box
        self.mask_roi_matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.stuff_loss_weight = stuff_loss_weight
        self.size_divisibility = size_divisibility
        self.num_things, self.num_sem_classes = num_things, num_sem_classes
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), False)

    # ----------------------------------------------------------------------------------------
    def _image_list(self, images: ImageInput) -> ImageList:
        if isinstance(images, ImageList):
            return images
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        return batch_images(list(images), self.size_divisibility)

    def normalize(self, images: ImageList) -> torch.Tensor:
        """ImageNet mean/std normalisation; the padding stays 0."""
        x = (images.tensors - self.image_mean) / self.image_std
        for i, (h, w) in enumerate(images.image_sizes):
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
        return x

    def features(self, images: ImageInput):
        """``(ImageList, FPN features [P3..P7], sub-network outputs)``."""
        images = self._image_list(images)
        feats = list(self.backbone(self.normalize(images)).values())
        return images, feats, self.subnets(feats)

    def run_heads(self, images: ImageInput):
        """Backbone, sub-networks, cls / reg / stuff heads and anchors: ``(ImageList, FPN
        features, sub-network outputs, {"cls_logits", "bbox_regression"}, anchors, stuff
        logits)`` (stuff logits ``None`` for a detector alone)."""
        images, feats, towers = self.features(images)
        head_outputs = {"cls_logits": self.head.classification_head(towers["cls"]),
                        "bbox_regression": self.head.regression_head(towers["reg"])}
        anchors = self.anchor_generator(images, feats)
        stuff = self.stuff_head(towers["stuff"]) if self.panoptic else None
        return images, feats, towers, head_outputs, anchors, stuff

    def detect(self, head_outputs, anchors, features, image_sizes) -> List[Dict[str, torch.Tensor]]:
        """Decode boxes: RetinaNet's post-processing on outputs split per level."""
        per_level = [f.shape[-2] * f.shape[-1] * self.anchor_generator.num_anchors_per_location()[0]
                     for f in features]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return self.postprocess_detections(split, split_anchors, image_sizes)

    def mask_rois(self, detections, targets):
        """Thing-head training RoIs: this step's detections (no gradient) plus the GT boxes;
        the positives (IoU >= 0.5) with the index of their GT instance."""
        rois, matched = [], []
        for det, t in zip(detections, targets):
            gt = t["boxes"]
            if gt.numel() == 0:
                rois.append(gt.new_zeros((0, 4)))
                matched.append(torch.zeros(0, dtype=torch.int64, device=gt.device))
                continue
            boxes = torch.cat([det["boxes"].detach(), gt])
            idx = self.mask_roi_matcher(box_iou(gt, boxes))
            keep = idx >= 0
            rois.append(boxes[keep])
            matched.append(idx[keep])
        return rois, matched

    # ----------------------------------------------------------------------------------------
    def forward(self, images: ImageInput, targets: Optional[List[Dict]] = None,
                output_sizes: Optional[Sequence[Sequence[int]]] = None,
                mask_score_thresh: float = 0.0, dense_masks: bool = True):
        """Training: ``{"loss_cls", "loss_reg", "loss_thing", "loss_stuff"}`` whose sum is the
        L of eq (6) (``loss_stuff`` already carries lambda). Eval: one dict per image with
        ``boxes`` (xyxy), ``scores`` (descending), ``labels`` (contiguous thing ids), ``masks``
        (``float[M,1,H,W]`` probabilities of the first ``M`` detections: those scoring at least
        ``mask_score_thresh``, all of them by default) and ``sem_seg`` (``long[H,W]``: the stuff
        map, per pixel the stuff head's highest class, ``S`` = 'other'), in the pixels of the
        input image, or of ``output_sizes[i] = (H, W)`` when given (e.g. the original size of a
        resized image: boxes are scaled and masks pasted at that size). The panoptic merge uses
        no mask of a detection below its ``mask_conf``: with ``mask_score_thresh = mask_conf``
        the thing head skips those detections. With ``dense_masks=False`` the masks come as a
        :class:`~spatialflow.model.masks.BoxMasks` (each inside its box, no zeros around it: what
        the merge needs, faster to make and to merge).

        A detector alone (``panoptic=False``) gives ``{"loss_cls", "loss_reg"}`` in training
        and ``boxes``, ``scores`` and ``labels`` in eval mode."""
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        images, feats, towers, head_outputs, anchors, stuff_logits = self.run_heads(images)
        sizes = images.image_sizes
        if self.training:
            ph, pw = images.tensors.shape[-2:]
            targets = [pad_target(t, ph, pw) for t in targets]
            det_losses = self.compute_loss(targets, head_outputs, anchors)
            if not self.panoptic:  # RetinaNet's loss: L_cls + L_reg
                return {"loss_cls": det_losses["classification"],
                        "loss_reg": det_losses["bbox_regression"]}
            with torch.no_grad():
                detached = {k: v.detach() for k, v in head_outputs.items()}
                detections = self.detect(detached, anchors, feats, sizes)
            rois, matched = self.mask_rois(detections, targets)
            mask_logits = self.thing_head(towers["thing"], rois, sizes)
            # eq (6): L = L_cls + L_reg + L_thing + lambda * L_stuff
            return {"loss_cls": det_losses["classification"],
                    "loss_reg": det_losses["bbox_regression"],
                    "loss_thing": self.thing_loss(mask_logits, rois, matched, targets),
                    "loss_stuff": self.stuff_loss_weight * self.semantic_loss(stuff_logits,
                                                                              targets)}

        detections = self.detect(head_outputs, anchors, feats, sizes)
        if not self.panoptic:
            if output_sizes is not None:
                for det, size, out_size in zip(detections, sizes, output_sizes):
                    det["boxes"] = resize_boxes(det["boxes"], size, tuple(out_size))
            return detections
        with_mask = [int((d["scores"] >= mask_score_thresh).sum()) for d in detections]
        masks = self.mask_probs(towers["thing"], [d["boxes"][:m] for d, m in zip(detections,
                                                                                  with_mask)],
                                [d["labels"][:m] for d, m in zip(detections, with_mask)], sizes)
        for i, (det, probs, (h, w)) in enumerate(zip(detections, masks, sizes)):
            logits = stuff_logits[i:i + 1, :, :h, :w]
            if output_sizes is not None and tuple(output_sizes[i]) != (h, w):
                oh, ow = (int(v) for v in output_sizes[i])
                det["boxes"] = resize_boxes(det["boxes"], (h, w), (oh, ow))
                logits = F.interpolate(logits, size=(oh, ow), mode="bilinear",
                                       align_corners=False)
                h, w = oh, ow
            det.update(self.image_output(det["boxes"], probs, logits[0], (h, w), dense_masks))
        return detections

    @staticmethod
    def image_output(boxes: torch.Tensor, mask_probs: torch.Tensor, stuff_scores: torch.Tensor,
                     size: Sequence[int], dense_masks: bool = True) -> Dict[str, object]:
        """The last step of inference for one image of ``size = (H, W)``, shared by
        :meth:`forward` and test-time augmentation: ``masks``, the ``[K,1,28,28]`` mask
        probabilities pasted into the first ``K`` of ``boxes`` (a
        :class:`~spatialflow.model.masks.BoxMasks`, or its dense ``float[K,1,H,W]`` form), and
        ``sem_seg``, the stuff map of ``stuff_scores`` (``[S+1,H,W]`` logits or probabilities)."""
        masks = paste_mask_crops(mask_probs, boxes[:len(mask_probs)], size)
        return {"masks": masks.dense() if dense_masks else masks,
                "sem_seg": stuff_map(stuff_scores)}

    def thing_loss(self, mask_logits: torch.Tensor, rois: List[torch.Tensor],
                   matched: List[torch.Tensor], targets: List[Dict]) -> torch.Tensor:
        """L_thing: Mask R-CNN's mask loss per image (``rois`` and the index of their GT
        instance, :meth:`mask_rois`), averaged over images as the other terms, so that a batch
        split across processes gives the same gradient."""
        per_image = mask_logits.split([len(r) for r in rois])
        return torch.stack([
            maskrcnn_loss(lg, [r], [t["masks"]], [t["labels"]], [i])
            for lg, r, t, i in zip(per_image, rois, targets, matched)]).mean()

    def semantic_loss(self, stuff_logits: torch.Tensor, targets: List[Dict]) -> torch.Tensor:
        """L_stuff (without lambda): :func:`stuff_loss` against the targets' ``sem_seg``."""
        return stuff_loss(stuff_logits, torch.stack([t["sem_seg"] for t in targets]))

    def mask_probs(self, thing_features, boxes: List[torch.Tensor], labels: List[torch.Tensor],
                   image_sizes) -> List[torch.Tensor]:
        """The thing head's 28x28 mask probabilities (``float[K,1,28,28]`` per image) of the
        class ``labels`` inside ``boxes`` (pixels of the batched images)."""
        return maskrcnn_inference(self.thing_head(thing_features, boxes, image_sizes), labels)

    @torch.no_grad()
    def raw_outputs(self, images: ImageInput):
        """Eval-mode pieces before masks are pasted, for test-time augmentation:
        ``(image sizes, thing-tower features, detections, stuff logits)``; detections in the
        pixels of the (resized) input images, stuff logits at the padded batch size (thing
        features empty and stuff logits ``None`` for a detector alone)."""
        images, feats, towers, head_outputs, anchors, stuff_logits = self.run_heads(images)
        detections = self.detect(head_outputs, anchors, feats, images.image_sizes)
        return images.image_sizes, towers["thing"], detections, stuff_logits

def build_model(config: Union[Config, ModelConfig],
                categories: Union[CategoryMap, Sequence[dict]], infer=None,
                data=None) -> SpatialFlow:
    """A :class:`SpatialFlow` (the detector alone with ``model.panoptic: false``) for
    ``categories`` (a :class:`CategoryMap`, or the plain COCO category list of a panoptic
    JSON: ``[{"id", "name", "isthing"}, ...]``) from a
    :class:`Config` (or its ``model`` part plus optional ``infer`` and ``data`` parts: the
    detection thresholds and ``data.size_divisibility``, the padding).

    Each part's initial weights come from a generator seeded by one draw of torch's global
    generator and the part's name (:mod:`spatialflow.model.seeding`): under the same global
    seed, two variants start from the same weights in every part they both have."""
    if not isinstance(categories, CategoryMap):
        categories = CategoryMap.from_coco(list(categories), source="build_model(categories=...)")
    if isinstance(config, Config):
        config, infer, data = config.model, config.infer, config.data
    m = config
    kwargs = {}
    if data is not None:
        kwargs["size_divisibility"] = data.size_divisibility
    if infer is not None:
        kwargs.update(score_thresh=infer.score_thresh, nms_thresh=infer.nms_thresh,
                      detections_per_img=infer.detections_per_img)
    with model_seed():  # one draw of the global generator seeds every part by its name
        with part("backbone"):
            backbone = build_backbone(m.backbone, m.fpn_channels, m.backbone_norm, m.pretrained,
                                      m.freeze_stem)
        subnets = SubNetworks(m.fpn_channels, m.flows, m.subnets, m.cls_stages, m.reg_stages,
                              m.stuff_stages, m.thing_stages, m.tower_norm, m.dcn, m.dcn_towers,
                              m.panoptic)
        return SpatialFlow(backbone, subnets, categories.num_things, categories.num_sem_classes,
                           anchor_sizes=m.anchor_sizes, box_loss=m.box_loss,
                           stuff_loss_weight=m.stuff_loss_weight,
                           stuff_head_channels=m.stuff_head_channels,
                           mask_head_channels=m.mask_head_channels, panoptic=m.panoptic,
                           **kwargs)
