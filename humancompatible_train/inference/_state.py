"""The registry of FairInference's state: named fields packed in one float64 vector.

Every field is declared once (name, shape, kind, whether :meth:`reset` zeroes it) and that
declaration drives everything else: the views the wrapper exposes (``fi.count``), ``reset``,
the named, typed entries of ``state_dict()`` and the checks ``load_state_dict`` runs before
it changes anything. One vector, because serving reads the whole state into Python floats
once per call and writes it back once, after every check has passed (validate, then
mutate), which costs far less than one tensor operation per field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Field", "Layout"]

_KINDS = ("real", "nonneg", "count", "int", "bool")


@dataclass(frozen=True)
class Field:
    """One named part of the state.

    ``kind``: ``"real"`` (finite), ``"nonneg"`` (finite, >= 0), ``"count"`` (a non-negative
    whole number kept as float64), ``"int"`` (a non-negative whole number saved as int64),
    ``"bool"`` (saved as bool). ``reset``: zeroed by ``reset()`` (the serving state) or kept
    (what ``calibrate`` fitted).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    reset: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return {"int": torch.int64, "bool": torch.bool}.get(self.kind, torch.float64)


class Layout:
    """Offsets of the fields in the flat vector, and the conversions to and from it."""

    def __init__(self, fields: Iterable[Field]) -> None:
        self.fields = tuple(fields)
        self.slices: dict[str, slice] = {}
        start = 0
        for f in self.fields:
            if f.kind not in _KINDS:
                raise ValueError(f"field {f.name}: unknown kind {f.kind!r}")
            self.slices[f.name] = slice(start, start + f.size)
            start += f.size
        self.size = start
        self.by_name = {f.name: f for f in self.fields}
        self.reset_slices = [self.slices[f.name] for f in self.fields if f.reset]

    def view(self, flat: Tensor, name: str) -> Tensor:
        return flat[self.slices[name]].view(self.by_name[name].shape)

    def save(self, flat: Tensor, destination: dict[str, Any], prefix: str) -> None:
        """Named copies with their natural dtypes (a saved dict never changes afterwards)."""
        for f in self.fields:
            destination[prefix + f.name] = self.view(flat, f.name).detach().to(f.dtype,
                                                                                copy=True)

    def read(self, state: Mapping[str, Any], prefix: str, current: Tensor, strict: bool,
             missing: list[str]) -> Tensor:
        """The flat vector that loading ``state`` would give, after checking every entry;
        raises a ValueError naming the first bad entry (nothing is changed by this call).
        Absent entries keep their current values (and are reported in ``missing`` when
        ``strict``)."""
        new = current.detach().clone()
        for f in self.fields:
            key = prefix + f.name
            if key not in state:
                if strict:
                    missing.append(key)
                continue
            new[self.slices[f.name]] = _checked(key, state[key], f).reshape(-1).to(new)
        return new


def _checked(key: str, value: Any, f: Field) -> Tensor:
    where = "state_dict: "
    if not isinstance(value, Tensor) or value.is_complex():
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{where}{key}: expected a real tensor of shape {f.shape}, got {got}")
    if tuple(value.shape) != f.shape:
        raise ValueError(f"{where}{key}: expected shape {f.shape} (this wrapper's size), got "
                         f"{tuple(value.shape)}")
    if f.kind == "bool":
        if value.dtype != torch.bool:
            raise ValueError(f"{where}{key}: expected a bool tensor, got {value.dtype}")
        return value.to(torch.float64)
    v = value.detach().to(torch.float64)
    bad = ~torch.isfinite(v)
    if f.kind != "real":
        bad |= v < 0
    if f.kind in ("count", "int"):
        bad |= v != v.round()
    if bool(bad.any()):
        what = {"real": "finite values", "nonneg": "finite values >= 0",
                "count": "whole numbers >= 0", "int": "whole numbers >= 0"}[f.kind]
        raise ValueError(f"{where}{key}: expected {what}, got {value.reshape(-1).tolist()}")
    return v
