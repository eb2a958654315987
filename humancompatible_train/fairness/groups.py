"""Group membership in every accepted layout, reduced to one integer id or one-hot row each.

Accepted layouts of ``sens`` for :math:`S` groups (one attribute) or the intersections of
attributes with :math:`k_1, \\dots, k_A` values (:math:`S = \\prod_a k_a`):

* integer group ids, shape ``(N,)`` or ``(N, 1)``;
* fairret's float ``(N, S)`` membership (one-hot; soft memberships are used as weights);
* for intersections: one id column per attribute, shape ``(N, A)``, or the attributes' one-hot
  blocks side by side as fairret takes them, shape ``(N, k_1 + ... + k_A)``.

The intersection of attribute values :math:`(v_1, \\dots, v_A)` has id
:math:`((v_1 k_2 + v_2) k_3 + v_3) \\dots` (row-major), and is named ``"v1&v2&..."``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Groups", "GroupsLike"]

#: What the constructors of the fairness classes accept as ``groups``.
GroupsLike = Sequence[str] | int | Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Groups:
    """The groups of a fairness constraint or metric: their names, and how rows map to them.

    Build with :meth:`named` (one attribute), :meth:`intersections` (several attributes, whose
    value combinations become the groups, named ``"a&b"``) or :meth:`parse` (either).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]  #: values per attribute (one entry for a single attribute)
    attributes: tuple[str, ...] = ("group",)  #: attribute names
    values: tuple[tuple[str, ...], ...] = ()  #: value names per attribute

    @classmethod
    def parse(cls, groups: GroupsLike, arg: str = "groups") -> Groups:
        """Groups from names, a number of groups, or ``{attribute: values}``."""
        if isinstance(groups, Groups):
            return groups
        if isinstance(groups, Mapping):
            return cls.intersections(groups, arg)
        return cls.named(groups, arg)

    @classmethod
    def named(cls, names: Sequence[str] | int, arg: str = "groups") -> Groups:
        """One attribute: ``names`` of its groups, or their number (named ``g0, g1, ...``)."""
        if isinstance(names, bool):
            raise ValueError(f"{arg}: expected group names or a number of groups, got {names!r}")
        if isinstance(names, int):
            names = [f"g{i}" for i in range(names)]
        if isinstance(names, str):
            raise ValueError(f"{arg}: expected a sequence of group names, got the string "
                             f"{names!r}")
        names = tuple(str(n) for n in names)
        if len(names) < 2:
            raise ValueError(f"{arg}: expected at least 2 groups, got {list(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"{arg}: names must be unique, got {list(names)}")
        return cls(names, (len(names),), ("group",), (names,))

    @classmethod
    def intersections(cls, attributes: Mapping[str, Sequence[str]], arg: str = "groups"
                      ) -> Groups:
        """Several attributes ``{attribute: value names}``: every combination is a group."""
        values = [tuple(str(v) for v in vals) for vals in attributes.values()]
        if not values or any(len(v) < 1 for v in values):
            raise ValueError(f"{arg}: expected each attribute to list its values, "
                             f"got {dict(attributes)!r}")
        for attr, vals in zip(attributes, values):
            if len(set(vals)) != len(vals):
                raise ValueError(f"{arg}: values of attribute {attr!r} must be unique, got "
                                 f"{list(vals)}")
        names = [""]
        for vals in values:
            names = [f"{a}&{b}" if a else b for a in names for b in vals]
        if len(names) < 2:
            raise ValueError(f"{arg}: the intersections of {dict(attributes)!r} give fewer "
                             "than 2 groups")
        return cls(tuple(names), tuple(len(v) for v in values),
                   tuple(str(a) for a in attributes), tuple(values))

    @property
    def S(self) -> int:
        """Number of groups."""
        return len(self.names)

    @property
    def is_intersectional(self) -> bool:
        return len(self.sizes) > 1

    def ids(self, sens: Tensor, arg: str = "sens") -> Tensor:
        """Integer group ids ``(N,)`` from any accepted layout (see the module).

        Ids out of range raise a ``ValueError`` on CPU tensors; on accelerators the check would
        synchronise with the host, so it is skipped there and such rows belong to no group.
        """
        if not isinstance(sens, Tensor):
            raise ValueError(f"{arg}: expected a tensor, got {type(sens).__name__}")
        A, S, width = len(self.sizes), self.S, sum(self.sizes)
        if sens.dim() == 2 and sens.shape[1] > 1:
            cols = sens.shape[1]
            if sens.is_floating_point() or sens.dtype == torch.bool:
                x = sens.to(torch.get_default_dtype()) if sens.dtype == torch.bool else sens
                if cols == S and A > 1 and cols == width:
                    # (2, 2) attributes: 4 intersection columns or 2 + 2 attribute columns.
                    # Side-by-side blocks sum to A per row, an intersection one-hot to 1.
                    return torch.where(x.sum(1) > 1.5, self._decode_blocks(x), x.argmax(1))
                if cols == S:
                    return x.argmax(dim=1)
                if A > 1 and cols == width:
                    return self._decode_blocks(x)
            if A > 1 and cols == A:
                return self._from_columns(sens.round().long() if sens.is_floating_point()
                                          else sens.long(), arg)
            if A == 1 and cols == S and not sens.is_floating_point():
                return sens.argmax(dim=1)
        elif sens.dim() == 1 or (sens.dim() == 2 and sens.shape[1] == 1):
            ids = sens.reshape(-1)
            ids = ids.round().long() if ids.is_floating_point() else ids.long()
            self._check_range(ids, torch.tensor(S, device=ids.device), arg)
            return ids
        extra = (f", one id column per attribute (N, {A}) or one-hot blocks side by side "
                 f"(N, {width})") if A > 1 else ""
        raise ValueError(f"{arg}: expected group ids (N,) or membership (N, {S}){extra}; got "
                         f"shape {tuple(sens.shape)} ({sens.dtype})")

    def _decode_blocks(self, x: Tensor) -> Tensor:
        flat = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for block, size in zip(x.split(list(self.sizes), dim=1), self.sizes):
            flat = flat * size + block.argmax(dim=1)
        return flat

    def _from_columns(self, ids: Tensor, arg: str) -> Tensor:
        self._check_range(ids, torch.tensor(self.sizes, device=ids.device), arg)
        flat = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        for a, size in enumerate(self.sizes):
            flat = flat * size + ids[:, a]
        return flat

    def _check_range(self, ids: Tensor, upper: Tensor, arg: str) -> None:
        if ids.device.type != "cpu" or ids.numel() == 0:
            return
        bad = (ids < 0) | (ids >= upper)
        if bad.dim() > 1:
            bad = bad.any(-1)
        if bool(bad.any()):
            rows = ids[bad].tolist()
            vals = sorted({tuple(r) if isinstance(r, list) else r for r in rows})
            if len(self.sizes) == 1:
                raise ValueError(f"{arg}: group ids must lie in 0..{self.S - 1} "
                                 f"({list(self.names)}), got {vals[:10]}")
            raise ValueError(f"{arg}: attribute ids must lie in 0..k-1 for k = "
                             f"{dict(zip(self.attributes, self.sizes))}, got rows {vals[:10]}")

    def one_hot(self, sens: Tensor, dtype: torch.dtype, arg: str = "sens") -> Tensor:
        """``(N, S)`` membership. A float ``(N, S)`` input is used as is (fairret's layout, which
        also allows soft memberships); ids out of range give an all-zero row (no group)."""
        if not isinstance(sens, Tensor):
            raise ValueError(f"{arg}: expected a tensor, got {type(sens).__name__}")
        if sens.is_floating_point() and sens.dim() == 2 and sens.shape[1] == self.S:
            x = sens.to(dtype)
            if len(self.sizes) > 1 and self.S == sum(self.sizes):
                blocks = self._onehot_ids(self._decode_blocks(x), dtype)
                return torch.where(x.sum(1, keepdim=True) > 1.5, blocks, x)
            return x
        return self._onehot_ids(self.ids(sens, arg), dtype)

    def _onehot_ids(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        return (ids.unsqueeze(1) == torch.arange(self.S, device=ids.device)).to(dtype)

    def marginal_index(self, attribute: str | int) -> tuple[int, list[int]]:
        """(position of the attribute, value id of that attribute for every group)."""
        if isinstance(attribute, str):
            if attribute not in self.attributes:
                raise ValueError(f"attribute: expected one of {list(self.attributes)}, got "
                                 f"{attribute!r}")
            a = self.attributes.index(attribute)
        else:
            if not 0 <= attribute < len(self.sizes):
                raise ValueError(f"attribute: expected an index in 0..{len(self.sizes) - 1}, "
                                 f"got {attribute!r}")
            a = int(attribute)
        inner = 1
        for size in self.sizes[a + 1:]:
            inner *= size
        return a, [(g // inner) % self.sizes[a] for g in range(self.S)]
