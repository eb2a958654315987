"""Group membership in every accepted layout, reduced to one integer id per row."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Groups:
    """The groups of a fairness constraint: their names, and how rows map to them.

    Build with :meth:`named` (one attribute) or :meth:`intersections` (several attributes,
    whose value combinations become the groups, named ``"a&b"``).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]  # values per attribute (one entry for a single attribute)

    @classmethod
    def named(cls, names: Sequence[str] | int) -> Groups:
        if isinstance(names, int):
            names = [f"g{i}" for i in range(names)]
        names = tuple(str(n) for n in names)
        if len(names) < 2:
            raise ValueError(f"groups: expected at least 2 groups, got {list(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"groups: names must be unique, got {list(names)}")
        return cls(names, (len(names),))

    @classmethod
    def intersections(cls, attributes: Mapping[str, Sequence[str]]) -> Groups:
        values = [tuple(str(v) for v in vals) for vals in attributes.values()]
        if not values or any(len(v) < 1 for v in values):
            raise ValueError(f"attributes: expected each attribute to list its values, "
                             f"got {dict(attributes)!r}")
        names = [""]
        for vals in values:
            names = [f"{a}&{b}" if a else b for a in names for b in vals]
        if len(names) < 2:
            raise ValueError("attributes: their intersections give fewer than 2 groups")
        return cls(tuple(names), tuple(len(v) for v in values))

    @property
    def S(self) -> int:
        return len(self.names)

    def ids(self, sens: Tensor, arg: str = "sens") -> Tensor:
        """Integer group ids (N,) from a one-hot (N, S) float tensor, ids (N,), or one column
        of ids per attribute (N, A)."""
        if not isinstance(sens, Tensor):
            raise ValueError(f"{arg}: expected a tensor, got {type(sens).__name__}")
        if sens.is_floating_point() and sens.dim() == 2 and sens.shape[1] == self.S \
                and len(self.sizes) == 1:
            return sens.argmax(dim=1)
        ids = sens
        if ids.is_floating_point():
            ids = ids.round().long()
        if ids.dim() == 2 and ids.shape[1] == 1:
            ids = ids[:, 0]
        if ids.dim() == 2 and ids.shape[1] == len(self.sizes) and len(self.sizes) > 1:
            flat = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
            for a, size in enumerate(self.sizes):
                flat = flat * size + ids[:, a]
            ids = flat
        if ids.dim() != 1:
            raise ValueError(
                f"{arg}: expected one-hot (N, {self.S}) floats, group ids (N,) or one id "
                f"column per attribute (N, {len(self.sizes)}), got shape {tuple(sens.shape)}"
            )
        return ids

    def one_hot(self, sens: Tensor, dtype: torch.dtype, arg: str = "sens") -> Tensor:
        """(N, S) membership; a float (N, S) input is used as is (fairret's layout, which also
        allows soft memberships)."""
        if sens.is_floating_point() and sens.dim() == 2 and sens.shape[1] == self.S \
                and len(self.sizes) == 1:
            return sens.to(dtype)
        ids = self.ids(sens, arg)
        return torch.nn.functional.one_hot(ids.clamp(0, self.S - 1), self.S).to(dtype)

    def check_ids(self, ids: Tensor, arg: str = "sens") -> None:
        """Raise when an id is out of range (one host read)."""
        if ids.numel() and bool(((ids < 0) | (ids >= self.S)).any()):
            bad = sorted(set(ids[(ids < 0) | (ids >= self.S)].tolist()))
            raise ValueError(f"{arg}: group ids must lie in 0..{self.S - 1} "
                             f"({list(self.names)}), got {bad[:10]}")


def attribute_product(sizes: Sequence[int]) -> int:
    return math.prod(sizes)
