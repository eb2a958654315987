"""Group membership in every accepted layout, reduced to one ``(N, S)`` membership matrix.

Accepted layouts of ``sens`` for :math:`S` groups (one attribute) or the intersections of
attributes with :math:`k_1, \\dots, k_A` values (:math:`S = \\prod_a k_a`):

* integer (or bool) group ids, shape ``(N,)`` or ``(N, 1)``, each in ``0..S-1``;
* a membership ``(N, S)`` as fairret takes it: one-hot, or soft (or overlapping) weights in
  ``[0, 1]``, used as weights;
* for intersections: one integer id column per attribute, shape ``(N, A)``, or the
  attributes' one-hot blocks side by side as fairret takes them, shape ``(N, k_1 + ... + k_A)``.

Float ids are refused, not rounded (``0.4`` is no group): convert whole-number ids with
``.long()``. Shapes and dtypes are always checked; values (ids in range, weights in
``[0, 1]``, one-hot blocks) as ``validate`` says (see :mod:`._checks`: by default on CPU
tensors, where the read costs no device synchronisation).

The intersection of attribute values :math:`(v_1, \\dots, v_A)` has id
:math:`((v_1 k_2 + v_2) k_3 + v_3) \\dots` (row-major), and is named ``"v1&v2&..."``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_int, fail
from ._checks import Reads, Shown, check_validate, kind

__all__ = ["Groups", "GroupsLike"]

#: What the constructors of the fairness classes accept as ``groups``.
GroupsLike = Sequence[str] | int | Mapping[str, Sequence[str]]

_GROUPS_WHAT = "group names, a number of groups (an int >= 2) or {attribute: value names}"


def _names(values: object, arg: str) -> tuple[str, ...]:
    """Names from a sequence (strings are refused: ``"fm"`` is not two names)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise fail(arg, _GROUPS_WHAT, values)
    return tuple(str(v) for v in values)


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
        if isinstance(names, numbers.Integral) and not isinstance(names, bool):
            count = check_int(arg, names, minimum=2)
            names = [f"g{i}" for i in range(count)]
        if isinstance(names, bool):
            raise fail(arg, _GROUPS_WHAT, names)
        names = _names(names, arg)
        if len(names) < 2:
            raise fail(arg, "at least 2 groups", list(names))
        if len(set(names)) != len(names):
            raise fail(arg, "unique group names", list(names))
        return cls(names, (len(names),), ("group",), (names,))

    @classmethod
    def intersections(cls, attributes: Mapping[str, Sequence[str]], arg: str = "groups"
                      ) -> Groups:
        """Several attributes ``{attribute: value names}``: every combination is a group."""
        values = [_names(vals, f"{arg}[{attr!r}]") for attr, vals in attributes.items()]
        if not values or any(len(v) < 1 for v in values):
            raise fail(arg, "each attribute listing its values", dict(attributes))
        for attr, vals in zip(attributes, values):
            if len(set(vals)) != len(vals):
                raise fail(f"{arg}[{attr!r}]", "unique value names", list(vals))
        names = [""]
        for vals in values:
            names = [f"{a}&{b}" if a else b for a in names for b in vals]
        if len(names) < 2:
            raise fail(arg, "attributes whose intersections give at least 2 groups",
                       dict(attributes))
        return cls(tuple(names), tuple(len(v) for v in values),
                   tuple(str(a) for a in attributes), tuple(values))

    @property
    def S(self) -> int:
        """Number of groups."""
        return len(self.names)

    @property
    def is_intersectional(self) -> bool:
        return len(self.sizes) > 1

    # ------------------------------------------------------------------ memberships
    def one_hot(self, sens: Tensor, dtype: torch.dtype, arg: str = "sens",
                validate: bool | None = None) -> Tensor:
        """``(N, S)`` membership of ``dtype`` from any accepted layout (see the module); a
        membership given as ``(N, S)`` is used as is (soft weights too)."""
        reads = Reads(check_validate(validate), _device(sens, arg))
        member = self.membership(sens, dtype, reads, arg)
        reads.run()
        return member

    def ids(self, sens: Tensor, arg: str = "sens", validate: bool | None = None) -> Tensor:
        """Integer group ids ``(N,)`` from any accepted layout (a membership ``(N, S)`` gives
        each row its largest-weight group)."""
        reads = Reads(check_validate(validate), _device(sens, arg))
        integral = not (sens.is_floating_point() or sens.is_complex())
        if integral and (sens.dim() == 1 or (sens.dim() == 2 and sens.shape[1] == 1)):
            ids = sens.reshape(-1).long()
            self._check_ids(ids, reads, arg)
        elif integral and sens.dim() == 2 and len(self.sizes) > 1 \
                and sens.shape[1] == len(self.sizes):
            ids = self._from_columns(sens.long(), reads, arg)
        else:
            ids = self.membership(sens, torch.float32, reads, arg).argmax(dim=1)
        reads.run()
        return ids

    def membership(self, sens: Tensor, dtype: torch.dtype, reads: Reads, arg: str = "sens"
                   ) -> Tensor:
        """``(N, S)`` membership; value checks are registered with ``reads`` (not run)."""
        _device(sens, arg)
        A, S, width = len(self.sizes), self.S, sum(self.sizes)
        if sens.is_complex():
            raise self._layout_error(sens, arg)
        integral = not sens.is_floating_point()
        if sens.dim() == 1 or (sens.dim() == 2 and sens.shape[1] == 1):
            if not integral:
                raise fail(arg, f"integer group ids (N,) or a float membership (N, {S})",
                           Shown(f"{sens.dtype} values of shape {tuple(sens.shape)} (float ids "
                                 "are not rounded: convert whole-number ids with .long())"))
            ids = sens.reshape(-1).long()
            self._check_ids(ids, reads, arg)
            return self._onehot_ids(ids, dtype)
        if sens.dim() != 2:
            raise self._layout_error(sens, arg)
        cols = sens.shape[1]
        if integral and A > 1 and cols == A:
            return self._onehot_ids(self._from_columns(sens.long(), reads, arg), dtype)
        if cols == S:
            x = sens.to(dtype)
            reads.span(arg, x.detach(), 0.0, 1.0, "memberships",
                       hint=" (one-hot or soft weights)")
            if A > 1 and S == width:
                # (2, 2) attributes: 4 intersection columns or 2 + 2 attribute columns.
                # Side-by-side blocks sum to A per row, an intersection one-hot to 1.
                blocks = self._onehot_ids(self._decode_blocks(x), dtype)
                return torch.where(x.sum(1, keepdim=True) > 1.5, blocks, x)
            return x
        if A > 1 and cols == width:
            x = sens.to(dtype)
            self._check_blocks(x, reads, arg)
            return self._onehot_ids(self._decode_blocks(x), dtype)
        if A > 1 and cols == A:
            raise fail(arg, f"integer id columns (N, {A})",
                       Shown(f"{sens.dtype} columns (float ids are not rounded: convert "
                             "whole-number ids with .long())"))
        raise self._layout_error(sens, arg)

    def _layout_error(self, sens: Tensor, arg: str) -> ValueError:
        A, S, width = len(self.sizes), self.S, sum(self.sizes)
        extra = (f", integer id columns (N, {A}) or one-hot blocks side by side (N, {width})"
                 if A > 1 else "")
        return fail(arg, f"integer group ids (N,) or a membership (N, {S}){extra}",
                    Shown(f"shape {tuple(sens.shape)} ({sens.dtype})"))

    def _check_ids(self, ids: Tensor, reads: Reads, arg: str) -> None:
        S, names = self.S, list(self.names)

        def message() -> str:
            bad = sorted(set(ids[(ids < 0) | (ids >= S)].tolist()))
            return f"{arg}: expected group ids in 0..{S - 1} ({names}), got {bad[:10]}"

        reads.span(arg, ids, 0, S - 1, "group ids", message)

    def _from_columns(self, ids: Tensor, reads: Reads, arg: str) -> Tensor:
        if reads.enabled and ids.numel():
            upper = torch.tensor(self.sizes, device=ids.device)
            bad = ((ids < 0) | (ids >= upper)).any(1)
            sizes = dict(zip(self.attributes, self.sizes))

            def message() -> str:
                rows = sorted({tuple(r) for r in ids[bad].tolist()})
                return (f"{arg}: expected attribute ids in 0..k-1 for k = {sizes}, got rows "
                        f"{rows[:10]}")

            reads.flag(bad.any(), message)
        flat = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        for a, size in enumerate(self.sizes):
            flat = flat * size + ids[:, a]
        return flat

    def _check_blocks(self, x: Tensor, reads: Reads, arg: str) -> None:
        if not reads.enabled or x.numel() == 0:
            return
        reads.finite(arg, x.detach(), "memberships")
        ones = torch.stack([b.sum(1) for b in x.split(list(self.sizes), dim=1)], 1)
        bad = ((x != 0) & (x != 1)).any(1) | (ones != 1).any(1)
        sizes = dict(zip(self.attributes, self.sizes))

        def message() -> str:
            row = int(bad.nonzero()[0, 0])
            return (f"{arg}: expected one-hot blocks side by side (one 1 per attribute, sizes "
                    f"{sizes}), got {x[row].tolist()} at row {row}")

        reads.flag(bad.any(), message)

    def _decode_blocks(self, x: Tensor) -> Tensor:
        flat = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for block, size in zip(x.split(list(self.sizes), dim=1), self.sizes):
            flat = flat * size + block.argmax(dim=1)
        return flat

    def _onehot_ids(self, ids: Tensor, dtype: torch.dtype) -> Tensor:
        # Ids out of range (possible only when values are not read) belong to no group.
        return (ids.unsqueeze(1) == torch.arange(self.S, device=ids.device)).to(dtype)

    def marginal_index(self, attribute: str | int) -> tuple[int, list[int]]:
        """(position of the attribute, value id of that attribute for every group)."""
        if isinstance(attribute, str):
            if attribute not in self.attributes:
                raise fail("attribute", f"one of {list(self.attributes)}", attribute)
            a = self.attributes.index(attribute)
        else:
            a = check_int("attribute", attribute, minimum=0, maximum=len(self.sizes) - 1)
        inner = 1
        for size in self.sizes[a + 1:]:
            inner *= size
        return a, [(g // inner) % self.sizes[a] for g in range(self.S)]


def _device(sens: object, arg: str) -> torch.device:
    if not isinstance(sens, Tensor):
        raise fail(arg, "a tensor", kind(sens))
    return sens.device
