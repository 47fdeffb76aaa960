"""``Instances``: per-image fields of equal length (boxes, classes, scores, ...)."""
from __future__ import annotations

import itertools
from typing import Any

import torch

__all__ = ["Instances"]


class Instances:
    """Fields that all have the same length N, plus the ``image_size`` (h, w) they refer to.

    ``inst.gt_boxes = Boxes(...)``, ``inst.gt_classes = tensor[N]``; indexing with a
    slice, a bool mask or an index tensor indexes every field.
    """

    def __init__(self, image_size: tuple[int, int], **kwargs: Any) -> None:
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        if name == "_fields" or name not in self._fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances (fields: {list(self.__dict__.get('_fields', {}))}).")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        n = len(value)
        if self._fields and n != len(self):
            raise ValueError(f"Adding a field '{name}' of length {n} to Instances of length {len(self)}.")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> Instances:
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v.to(*args, **kwargs) if hasattr(v, "to") else v)
        return ret

    def __getitem__(self, item: Any) -> Instances:
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError("Instances index out of range!")
            item = slice(item, None, len(self)) if item >= 0 else slice(item, item + 1 or None)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __iter__(self):
        raise NotImplementedError("Instances is not iterable; index it or read its fields.")

    @staticmethod
    def cat(instance_lists: list[Instances]) -> Instances:
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances.")
        image_size = instance_lists[0].image_size
        ret = Instances(image_size)
        for k in instance_lists[0]._fields:
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            out: Any
            if isinstance(v0, torch.Tensor):
                out = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                out = list(itertools.chain(*values))
            elif hasattr(type(v0), "cat"):
                out = type(v0).cat(values)
            else:
                raise ValueError(f"Unsupported type {type(v0)} for concatenation")
            ret.set(k, out)
        return ret

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        return (
            f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )
