"""Category ids: the only place that maps dataset ids to the contiguous ids used in the model.

At every boundary (files, JSON, user-facing tables) the dataset's own category ids are used.
Inside the model, things are numbered ``0..T-1`` (box classifier and mask head channels) and the
semantic map ``sem_seg`` holds stuff classes ``0..S-1``, one extra 'other' class ``S`` that stands
for every thing pixel (Panoptic FPN's convention, paper IV-B-1) and ``255`` for ignored pixels.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Iterable, List, Mapping, Sequence

import numpy as np

from spatialflow.errors import DatasetError

IGNORE_INDEX = 255


def _fallback_color(cat_id: int) -> list:
    """A stable, well-spread colour for a category that has none in its JSON."""
    hue = (cat_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return [int(r * 255), int(g * 255), int(b * 255)]


def shorten(items: Sequence[str], limit: int = 6) -> str:
    """``"a, b, c"``, or the first ``limit`` items and ``"... (N more)"``."""
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass(frozen=True)
class CategoryMap:
    """Thing / stuff split and id mappings of one dataset, built from its COCO ``categories``.

    Use :meth:`from_coco`; ``thing_ids`` and ``stuff_ids`` are the dataset ids in ascending order,
    so contiguous id ``k`` of a thing is ``thing_ids[k]``.
    """

    categories: tuple
    thing_ids: tuple
    stuff_ids: tuple
    _by_id: Mapping[int, dict] = field(repr=False, compare=False)

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping], source: str = "categories") -> "CategoryMap":
        """Validate COCO panoptic category dicts (``id``, ``name``, ``isthing``, optional ``color``).

        ``source`` names the file the list came from, for error messages.
        """
        if not isinstance(categories, (list, tuple)) or not categories:
            raise DatasetError(f"{source}: 'categories' must be a non-empty list")
        cats, by_id = [], {}
        for i, c in enumerate(categories):
            if not isinstance(c, Mapping):
                raise DatasetError(f"{source}: categories[{i}] is not an object")
            for key in ("id", "name", "isthing"):
                if key not in c:
                    what = f"category id {c['id']}" if "id" in c else f"categories[{i}]"
                    raise DatasetError(
                        f"{source}: {what} has no '{key}' field (COCO panoptic categories need "
                        f"'id', 'name' and 'isthing')"
                    )
            cid = c["id"]
            if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < 256**3:
                raise DatasetError(f"{source}: categories[{i}] has invalid id {cid!r}")
            if cid in by_id:
                raise DatasetError(f"{source}: category id {cid} appears twice")
            if c["isthing"] not in (0, 1, True, False):
                raise DatasetError(
                    f"{source}: category id {cid} has isthing={c['isthing']!r}, expected 0 or 1"
                )
            color = c.get("color")
            if not (isinstance(color, (list, tuple)) and len(color) == 3):
                color = _fallback_color(cid)
            cat = {
                "id": cid,
                "name": str(c["name"]),
                "isthing": int(bool(c["isthing"])),
                "color": [int(v) for v in color],
                "supercategory": str(c.get("supercategory", "")),
            }
            cats.append(cat)
            by_id[cid] = cat
        cats.sort(key=lambda c: c["id"])
        things = tuple(c["id"] for c in cats if c["isthing"])
        stuff = tuple(c["id"] for c in cats if not c["isthing"])
        if len(stuff) + 1 >= IGNORE_INDEX:
            raise DatasetError(f"{source}: {len(stuff)} stuff classes do not fit the semantic map")
        return cls(tuple(cats), things, stuff, by_id)

    # sizes -------------------------------------------------------------------------------
    @property
    def num_things(self) -> int:
        return len(self.thing_ids)

    @property
    def num_stuff(self) -> int:
        return len(self.stuff_ids)

    @property
    def other_index(self) -> int:
        """The ``sem_seg`` value of thing pixels (the stuff head's extra 'other' class)."""
        return len(self.stuff_ids)

    @property
    def num_sem_classes(self) -> int:
        """Channels of the stuff head: the stuff classes plus 'other'."""
        return len(self.stuff_ids) + 1

    ignore_index = IGNORE_INDEX

    # lookups -----------------------------------------------------------------------------
    def __contains__(self, cat_id) -> bool:
        return cat_id in self._by_id

    def __getitem__(self, cat_id: int) -> dict:
        return self._by_id[cat_id]

    def is_thing(self, cat_id: int) -> bool:
        return bool(self._by_id[cat_id]["isthing"])

    def name(self, cat_id: int) -> str:
        return self._by_id[cat_id]["name"]

    def thing_index(self, cat_id: int) -> int:
        """Dataset id of a thing -> contiguous thing id ``0..T-1``."""
        return self.thing_ids.index(cat_id)

    def stuff_index(self, cat_id: int) -> int:
        """Dataset id of a stuff class -> its ``sem_seg`` value ``0..S-1``."""
        return self.stuff_ids.index(cat_id)

    def semantic_index(self, cat_id: int) -> int:
        """``sem_seg`` value of any category: its stuff index, or 'other' for a thing."""
        return self.other_index if self.is_thing(cat_id) else self.stuff_index(cat_id)

    def thing_id(self, index: int) -> int:
        """Contiguous thing id -> dataset id."""
        return self.thing_ids[index]

    def stuff_id(self, index: int) -> int:
        """``sem_seg`` value of a stuff class -> dataset id."""
        return self.stuff_ids[index]

    def label(self, cat_id: int) -> str:
        """``"<id> <name>"`` of a category, for messages."""
        return f"{cat_id} {self.name(cat_id)}"

    def describe(self, limit: int = 6) -> str:
        """``things (N): 1 person, 3 car, ...; stuff (M): ...`` (dataset ids and names, each
        list cut after ``limit`` entries), for messages."""
        return "; ".join(f"{kind} ({len(ids)}): {shorten([self.label(c) for c in ids], limit)}"
                         for kind, ids in (("things", self.thing_ids), ("stuff", self.stuff_ids)))

    def differences(self, other: "CategoryMap", limit: int = 6) -> List[str]:
        """What ``other`` (say, a model's categories) has that these (say, the data's) do
        not: classes missing here, extra classes here, a thing in one and stuff in the other,
        one id under other names; each list cut after ``limit`` entries. Empty when equal."""
        mine, theirs = set(self._by_id), set(other._by_id)
        out = []
        for what, ids, cats in (("missing here", theirs - mine, other),
                                ("only here", mine - theirs, self)):
            if ids:
                out.append(f"{what} ({len(ids)}): "
                           f"{shorten([cats.label(c) for c in sorted(ids)], limit)}")
        both = sorted(mine & theirs)
        flipped = [c for c in both if self.is_thing(c) != other.is_thing(c)]
        if flipped:
            out.append(f"thing in one, stuff in the other ({len(flipped)}): "
                       f"{shorten([self.label(c) for c in flipped], limit)}")
        renamed = [c for c in both if self.name(c) != other.name(c)]
        if renamed:
            out.append(f"other names ({len(renamed)}): " + shorten(
                [f"{c} {self.name(c)!r} here, {other.name(c)!r} there" for c in renamed], limit))
        return out

    def check_model(self, trained_on: "CategoryMap", data_name: str = "the data set",
                    model_name: str = "the model") -> None:
        """Raise :class:`~spatialflow.errors.InputError` unless a model trained on
        ``trained_on`` can be run and scored on data of these categories (the same thing and
        stuff ids); the message names the classes that differ (:meth:`differences`). The same
        ids under other names only warn."""
        from spatialflow.errors import InputError

        diffs = self.differences(trained_on)
        if (self.thing_ids, self.stuff_ids) != (trained_on.thing_ids, trained_on.stuff_ids):
            raise InputError(f"{data_name}: its categories are not those {model_name} was "
                             f"trained on (here: the data; there: the model): "
                             f"{'; '.join(diffs)}")
        if diffs:
            import warnings
            warnings.warn(f"{data_name}: the categories of {model_name} have the same ids but "
                          f"{'; '.join(diffs)}", stacklevel=2)

    def to_coco(self) -> list:
        """The categories as a COCO ``categories`` list (for writing JSON)."""
        return [dict(c) for c in self.categories]

    def thing_categories(self) -> list:
        """The thing categories only (COCO instances JSON for box AP)."""
        return [dict(c) for c in self.categories if c["isthing"]]

    def names(self, cat_ids: Sequence[int]) -> list:
        """The names of dataset ids ``cat_ids``."""
        return [self.name(c) for c in cat_ids]

    def colors(self) -> np.ndarray:
        """``uint8[max_id + 1, 3]`` colour table indexed by dataset id."""
        table = np.zeros((max(self._by_id) + 1, 3), np.uint8)
        for c in self.categories:
            table[c["id"]] = c["color"]
        return table
