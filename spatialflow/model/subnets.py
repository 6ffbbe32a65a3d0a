"""The four parallel sub-networks and the spatial information flows (paper III-B, III-C).

For every FPN level ``i`` and stage ``j`` (tower weights shared across levels, as in RetinaNet):

    P_reg[i,j]   = phi(P_reg[i,j-1])                                      eq (1)
    P_cls[i,j]   = phi(P_cls[i,j-1]   + psi(P_reg[i,j]))                  eq (3)  reg_to_cls
    P_stuff[i,j] = phi(P_stuff[i,j-1] + psi(P_reg[i,j]))                  eq (3)  reg_to_stuff
    P_thing[i,1] = phi(P_i + zeta(P_stuff[i,last]) + psi(P_reg[i,last]))  eq (3)  stuff_to_thing,
                                                                                  reg_to_thing
and with deformable convolutions (eq 4) the flows steer the offsets instead of being added:
``P_cls[i,j] = phi_dcn(P_cls[i,j-1], psi_offset(P_reg[i,j] + P_cls[i,j-1]))``.

All four towers run on P3-P5; P6 and P7 carry only the cls and reg towers. Without sub-networks
(the naive baseline of III-A) the thing and stuff heads read P3-P5 directly, and a thing or
stuff tower of 0 stages (the first rows of Tables VII and VIII) passes ``P_i`` on: no flow
goes into it, as it has no stage to receive one. With ``flows.source = "cls"`` (the control of
Fig. 4) the cls tower advances first and its features flow to the reg, stuff and thing towers
instead. With ``panoptic=False`` only the cls and reg towers (and the reg->cls flow) are built:
RetinaNet with or without the flow (Table XII).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn
from torchvision.ops import DeformConv2d

from spatialflow.config import FlowConfig
from spatialflow.model.seeding import part

SEG_LEVELS = 3  # P3-P5 feed the thing and stuff towers


def _init(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def adaptation_conv(channels: int) -> nn.Conv2d:
    """psi / zeta: the 3x3 adaptation conv of a flow."""
    return _init(nn.Conv2d(channels, channels, 3, padding=1))


class Stage(nn.Module):
    """phi: a 3x3 conv (optionally GroupNorm) followed by ReLU.

    With ``deformable=True`` the conv is a modulated ``DeformConv2d`` whose offsets and masks come
    from ``psi_offset`` (a 3x3 conv, zero-initialised so training starts from a regular conv).
    """

    def __init__(self, channels: int, norm: bool = False, deformable: bool = False):
        super().__init__()
        self.deformable = deformable
        if deformable:
            self.conv = DeformConv2d(channels, channels, 3, padding=1)
            _init(self.conv)
            self.psi_offset = nn.Conv2d(channels, 3 * 9, 3, padding=1)  # 2x9 offsets + 9 masks
            nn.init.zeros_(self.psi_offset.weight)
            nn.init.zeros_(self.psi_offset.bias)
        else:
            self.conv = _init(nn.Conv2d(channels, channels, 3, padding=1))
        self.norm = nn.GroupNorm(32 if channels % 32 == 0 else 8, channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, offset_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.deformable:
            om = self.psi_offset(x if offset_input is None else offset_input)
            x = self.conv(x, om[:, :18], om[:, 18:].sigmoid())
        else:
            x = self.conv(x)
        return torch.relu(self.norm(x))


def _tower(channels: int, stages: int, norm: bool, deformable: bool) -> nn.ModuleList:
    return nn.ModuleList(Stage(channels, norm, deformable) for _ in range(stages))


class SubNetworks(nn.Module):
    """The cls, reg, stuff and thing sub-networks with switchable spatial flows.

    ``forward(features)`` takes ``[P3, ..., P7]`` and returns ``{"cls": [5 maps], "reg": [5],
    "stuff": [3], "thing": [3]}`` (``"stuff"`` and ``"thing"`` empty with ``panoptic=False``).
    """

    def __init__(self, channels: int, flows: FlowConfig = FlowConfig(), subnets: bool = True,
                 cls_stages: int = 4, reg_stages: int = 4, stuff_stages: int = 4,
                 thing_stages: int = 1, norm: bool = False, dcn: bool = False,
                 dcn_towers=("cls", "stuff", "thing"), panoptic: bool = True):
        super().__init__()
        subnets = subnets and panoptic
        self.flows, self.subnets, self.panoptic = flows, subnets, panoptic
        dcn_on = set(dcn_towers) if dcn else set()
        # each tower and flow from its own seeded generator (spatialflow.model.seeding)
        with part("subnets.cls_tower"):
            self.cls_tower = _tower(channels, cls_stages, norm, "cls" in dcn_on)
        with part("subnets.reg_tower"):
            self.reg_tower = _tower(channels, reg_stages, norm, False)
        src, dst = self._source, self._detection_peer

        def flow_convs(target: nn.ModuleList, on: bool) -> Optional[nn.ModuleList]:
            # psi for each stage of ``target`` that has a source stage; none with DCN (the
            # source then only steers the offsets) or when the flow is off
            if not on or not len(target):  # off, or a tower of 0 stages
                return None
            n = min(len(src), len(target))
            if target[0].deformable:
                return nn.ModuleList(nn.Identity() for _ in range(n))
            return nn.ModuleList(adaptation_conv(channels) for _ in range(n))

        with part("subnets.reg_to_cls"):
            self.reg_to_cls = flow_convs(dst, flows.reg_to_cls)
        self.stuff_tower = self.thing_tower = None
        self.reg_to_stuff = self.reg_to_thing = self.stuff_to_thing = None
        if subnets:
            with part("subnets.stuff_tower"):
                self.stuff_tower = _tower(channels, stuff_stages, norm, "stuff" in dcn_on)
            with part("subnets.thing_tower"):
                self.thing_tower = _tower(channels, thing_stages, norm, "thing" in dcn_on)
            with part("subnets.reg_to_stuff"):
                self.reg_to_stuff = flow_convs(self.stuff_tower, flows.reg_to_stuff)
            thing = len(self.thing_tower) > 0  # 0 stages: no flow into the thing tower
            if thing and flows.reg_to_thing and not self.thing_tower[0].deformable:
                with part("subnets.reg_to_thing"):
                    self.reg_to_thing = adaptation_conv(channels)  # psi
            elif thing and flows.reg_to_thing:
                self.reg_to_thing = nn.Identity()
            if thing and flows.stuff_to_thing:
                with part("subnets.stuff_to_thing"):
                    self.stuff_to_thing = adaptation_conv(channels)  # zeta

    @property
    def _source(self) -> nn.ModuleList:
        """The tower whose features flow to the others (reg; cls in the Fig. 4 control)."""
        return self.reg_tower if self.flows.source == "reg" else self.cls_tower

    @property
    def _detection_peer(self) -> nn.ModuleList:
        return self.cls_tower if self.flows.source == "reg" else self.reg_tower

    @staticmethod
    def _flow_stage(stage: Stage, x, source, psi):
        """One stage of a receiving tower: eq (3) adds psi(source) to the input, eq (4) feeds
        ``source + x`` to psi_offset; with no flow, plain phi(x)."""
        if psi is None or source is None:
            return stage(x)
        if stage.deformable:
            return stage(x, offset_input=source + x)
        return stage(x + psi(source))

    def _level(self, p: torch.Tensor, with_seg: bool) -> Dict[str, torch.Tensor]:
        src_tower, peer_tower = self._source, self._detection_peer
        src, peer = p, p
        stuff = p if (with_seg and self.subnets) else None
        n = max(len(src_tower), len(peer_tower), len(self.stuff_tower or ()))
        for j in range(n):
            src_j = None
            if j < len(src_tower):  # the sending tower advances first (eq 1)
                src = src_j = src_tower[j](src)
            if j < len(peer_tower):  # reg_to_cls (cls -> reg with source "cls")
                psi = self.reg_to_cls[j] if self.reg_to_cls is not None and j < len(
                    self.reg_to_cls) else None
                peer = self._flow_stage(peer_tower[j], peer, src_j, psi)
            if stuff is not None and j < len(self.stuff_tower):  # reg_to_stuff
                psi = self.reg_to_stuff[j] if self.reg_to_stuff is not None and j < len(
                    self.reg_to_stuff) else None
                stuff = self._flow_stage(self.stuff_tower[j], stuff, src_j, psi)
        cls, reg = (peer, src) if self.flows.source == "reg" else (src, peer)
        out = {"cls": cls, "reg": reg}
        if with_seg:
            if stuff is None:  # naive baseline: the heads read the FPN level itself
                out["stuff"], out["thing"] = p, p
            else:
                out["stuff"], out["thing"] = stuff, self._thing(p, stuff, src)
        return out

    def _thing(self, p, stuff, src):
        if not len(self.thing_tower):  # 0 stages: P_i itself
            return p
        # eq (3): P_thing[i,1] = phi(P_i + zeta(P_stuff[i,last]) + psi(P_reg[i,last]))
        x = p if self.stuff_to_thing is None else p + self.stuff_to_thing(stuff)
        first = self.thing_tower[0]
        if self.reg_to_thing is None:
            x = first(x)
        elif first.deformable:  # eq (4): psi_offset(P_reg[i,last] + P_i)
            x = first(x, offset_input=src + p)
        else:
            x = first(x + self.reg_to_thing(src))
        for stage in self.thing_tower[1:]:
            x = stage(x)
        return x

    def forward(self, features: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        out: Dict[str, List[torch.Tensor]] = {"cls": [], "reg": [], "stuff": [], "thing": []}
        for i, p in enumerate(features):
            for k, v in self._level(p, self.panoptic and i < SEG_LEVELS).items():
                out[k].append(v)
        return out
