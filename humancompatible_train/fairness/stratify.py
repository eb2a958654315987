r"""Stratified batches: every batch carries the dataset's group proportions.

:class:`StratifiedBatchSampler` first gives every group :math:`g` (with :math:`n_g` of the
:math:`N` rows, share :math:`p_g = n_g/N`) a number of places :math:`a_g` per epoch, then
splits them over the epoch's :math:`T` batches as :math:`\lfloor a_g/T \rfloor` or
:math:`\lceil a_g/T \rceil` per batch. The extra places are dealt round-robin across batches,
group after group, so batch sizes differ by at most one.

**Last partial batch** (``drop_last``):

* ``False`` (default): :math:`T = \lceil N/B \rceil` batches for batch size :math:`B` and
  :math:`a_g = n_g`: every row once per epoch, no ragged last batch -- all batches have
  :math:`\lfloor N/T \rfloor` or :math:`\lceil N/T \rceil \le B` rows, and group :math:`g`
  has :math:`\lfloor n_g/T \rfloor` or :math:`\lceil n_g/T \rceil` of them.
* ``True``: :math:`T = \lfloor N/B \rfloor` batches of exactly :math:`B` rows, :math:`a_g`
  the largest-remainder rounding of :math:`T B p_g`; group :math:`g` has
  :math:`\lfloor p_g B \rfloor` or :math:`\lceil p_g B \rceil` rows in each batch, and the
  :math:`N - TB` rows left out differ from epoch to epoch.

Either way each batch holds the dataset's proportions to within one sample per group.

**Groups too small** to appear in every batch (:math:`a_g < T`), ``small_groups``:

* ``"oversample"`` (default): the group gets one place per batch; when it has fewer than
  :math:`T` members they are drawn with replacement beyond the first pass (each appears at
  least once per epoch, some twice or more; every other row as the policy above says). The
  batches then hold a few more rows than above.
* ``"error"``: raise a ``ValueError`` naming the group and its size;
* ``"allow"``: it appears in only :math:`a_g` batches.

Several attributes (an ``(N, A)`` array) are stratified by their intersections. Rows are
reshuffled every epoch with the generator ``numpy.random.default_rng([seed, epoch])``: the
epoch counter advances by one per pass and :meth:`StratifiedBatchSampler.set_epoch` sets it,
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .._apportion import largest_remainder
from .._validation import check_bool, check_choice, check_int, fail
from ._checks import Shown, kind

__all__ = ["StratifiedBatchSampler", "create_stratified_dataloaders", "create_dataloaders"]

logger = logging.getLogger("humancompatible_train")
_POLICIES = ("oversample", "error", "allow")


def _as_array(groups: Any) -> np.ndarray:
    try:
        g = np.asarray(groups.detach().cpu() if isinstance(groups, torch.Tensor) else groups)
    except (TypeError, ValueError):
        raise fail("groups", "an array of group values, shape (N,) or (N, attributes)",
                   kind(groups)) from None
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    if g.ndim not in (1, 2):
        raise fail("groups", "shape (N,) or (N, attributes)", g.shape)
    if g.dtype == object:
        missing = np.array([v is None or (isinstance(v, float) and math.isnan(v))
                            for v in g.ravel()], dtype=bool).reshape(g.shape)
    elif g.dtype.kind in "fc":
        missing = ~np.isfinite(g)
    else:
        missing = np.zeros(g.shape, dtype=bool)
    if missing.any():
        rows = np.flatnonzero(missing.any(axis=1) if g.ndim == 2 else missing)
        first = g[rows[0]]
        first = first.tolist() if isinstance(first, (np.ndarray, np.generic)) else first
        raise ValueError(f"groups: expected a group value for every row, got {first!r} at "
                         f"rows {rows[:10].tolist()}")
    return g


def _strata(g: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """(stratum id per row, the group value(s) of every stratum)."""
    if g.dtype != object:
        if g.ndim == 2:  # several attributes: their combinations are the strata
            values, ids = np.unique(g, axis=0, return_inverse=True)
            return ids.reshape(-1), [tuple(v.tolist()) for v in values]
        values, ids = np.unique(g, return_inverse=True)
        return ids.reshape(-1), values.tolist()
    keys = [tuple(r) for r in g.tolist()] if g.ndim == 2 else g.tolist()
    try:
        values = sorted(set(keys))
    except TypeError:
        kinds = sorted({type(v).__name__ for k in keys for v in (k if g.ndim == 2 else (k,))})
        raise fail("groups", "values of one comparable kind (all numbers or all strings)",
                   Shown(f"a mix of {kinds}")) from None
    index = {v: i for i, v in enumerate(values)}
    return np.array([index[k] for k in keys], dtype=np.int64), values


class StratifiedBatchSampler(Sampler[list[int]]):
    """Batches with the dataset's group proportions (see the module for the policies).

    Args:
        groups: group value per row (N,), or one column per attribute (N, A) for
            intersections (any values of one kind: ids, strings, floats such as a column of
            ``X``; None, NaN and infinities are refused).
        batch_size: the batch size :math:`B`.
        seed: seeds the per-epoch generators.
        small_groups: ``"oversample"``, ``"error"`` or ``"allow"``.
        drop_last: ``False``: :math:`\\lceil N/B \rceil` balanced batches of at most :math:`B`
            rows; ``True``: :math:`\\lfloor N/B \rfloor` batches of exactly :math:`B` rows.
    """

    def __init__(self, groups: Any, batch_size: int, *, seed: int = 0,
                 small_groups: str = "oversample", drop_last: bool = False) -> None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
        small_groups = check_choice("small_groups", small_groups, _POLICIES)
        seed = check_int("seed", seed, minimum=0)
        drop_last = check_bool("drop_last", drop_last)
        raw = _as_array(groups)
        n = len(raw)
        if n == 0:
            raise ValueError("groups: expected at least one row, got none")
        if drop_last and n < batch_size:
            raise ValueError(f"batch_size: drop_last=True needs at least one full batch, got "
                             f"batch_size={batch_size} for {n} rows")
        self.strata, self.group_values = _strata(raw)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.num_batches = n // self.batch_size if drop_last else math.ceil(n / self.batch_size)
        self.members = [np.flatnonzero(self.strata == s) for s in range(len(self.group_values))]
        self.small_groups = small_groups
        self.seed = int(seed)
        self.epoch = 0
        sizes = np.array([len(m) for m in self.members], dtype=np.int64)
        T = self.num_batches
        if drop_last:
            places = largest_remainder(sizes * (T * self.batch_size / n), T * self.batch_size)
        else:
            places = sizes.copy()
        small = [s for s in range(len(sizes)) if places[s] < T]
        if small and small_groups == "error":
            raise ValueError(
                "groups: " + ", ".join(
                    f"group {self.group_values[s]!r} has {sizes[s]} rows"
                    + (f" ({places[s]} places per epoch)" if drop_last else "")
                    for s in small)
                + f", fewer than the {T} batches of an epoch; use small_groups='oversample' "
                "or 'allow', or a larger batch_size"
            )
        if small and small_groups == "oversample":
            places[small] = T
            logger.info("StratifiedBatchSampler: oversampling %s to appear in each of %d "
                        "batches", [self.group_values[s] for s in small], T)
        self.places = places
        self.quotas = self._quotas(places)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of epoch ``epoch`` for the next pass."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def state_dict(self) -> dict[str, int]:
        """The epoch of the next pass and the seed, with the sizes they apply to (for
        checkpoints: a resumed run sees the batches an uninterrupted one would)."""
        return {"epoch": self.epoch, "seed": self.seed, "num_rows": len(self.strata),
                "num_batches": self.num_batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` of a sampler over the same rows and batch size; checked
        before anything changes."""
        keys = ["epoch", "num_batches", "num_rows", "seed"]
        if not isinstance(state, Mapping) or sorted(map(str, state)) != keys:
            raise fail("state", f"a dict with the keys {keys}",
                       sorted(map(str, state)) if isinstance(state, Mapping) else state)
        epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        seed = check_int("state['seed']", state["seed"], minimum=0)
        for key, mine in (("num_rows", len(self.strata)), ("num_batches", self.num_batches)):
            if check_int(f"state[{key!r}]", state[key], minimum=0) != mine:
                raise fail(f"state[{key!r}]", f"{mine} (this sampler's)", state[key])
        self.epoch, self.seed = epoch, seed

    def _quotas(self, places: np.ndarray) -> np.ndarray:
        """(S, T) places per group and batch: floor/ceil of a_g / T, extras spread."""
        T = self.num_batches
        quotas = np.zeros((len(places), T), dtype=np.int64)
        offset = 0
        for s, a in enumerate(places):
            base, extra = divmod(int(a), T)
            quotas[s] = base
            # Start each group's extras where the previous group's ended: balanced sizes.
            quotas[s, (offset + np.arange(extra)) % T] += 1
            offset = (offset + extra) % T
        return quotas

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        T = self.num_batches
        parts: list[list[np.ndarray]] = [[] for _ in range(T)]
        for s, m in enumerate(self.members):
            need = int(self.places[s])
            pool = rng.permutation(m)
            if need > len(pool):
                pool = np.concatenate([pool, rng.choice(m, need - len(pool))])
            pool = pool[:need]
            cuts = np.cumsum(self.quotas[s])[:-1]
            for t, chunk in enumerate(np.split(pool, cuts)):
                parts[t].append(chunk)
        for t in range(T):
            yield rng.permutation(np.concatenate(parts[t])).tolist()


def _tensor(name: str, x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    try:
        return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x),
                                                                                dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise fail(name, "a numeric array", kind(x)) from None


def _pairs(names: tuple[str, ...], arrays: tuple[Any, ...]) -> list[torch.Tensor]:
    """Features and labels as tensors, with one label per row of the features."""
    out = [_tensor(n, a) for n, a in zip(names, arrays)]
    for (xn, X), (yn, y) in zip(zip(names[::2], out[::2]), zip(names[1::2], out[1::2])):
        if X.dim() != 2:
            raise fail(xn, "a 2-D array (rows, features)", Shown(f"shape {tuple(X.shape)}"))
        if y.dim() > 2 or (y.dim() == 2 and y.shape[1] != 1) or y.shape[:1] != X.shape[:1]:
            raise fail(yn, f"{X.shape[0]} labels, shape ({X.shape[0]},) or ({X.shape[0]}, 1) "
                       f"(one per row of {xn})", Shown(f"shape {tuple(y.shape)}"))
    for xn, X in zip(names[2::2], out[2::2]):
        if X.shape[1] != out[0].shape[1]:
            raise fail(xn, f"{out[0].shape[1]} columns (as {names[0]})", X.shape[1])
    return out


def _protected(name: str, X: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """The protected columns as integer ids: finite whole numbers, never rounded."""
    g = X[:, cols]
    bad = ~torch.isfinite(g) | (g != g.round())
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}[:, {cols[col]}] (protected_attr_idx): expected whole-number "
                         f"group ids, got {g[row, col].item():g} at row {row}")
    return g.long()


def create_stratified_dataloaders(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, *,
    protected_attr_idx: int | Sequence[int] = 0, batch_size_train: int = 256,
    batch_size_eval: int = 1024, seed: int = 0, small_groups: str = "oversample",
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """The fairness_training small-batch streaming example's helper: stratified training and
    validation loaders yielding ``(x, y)``.

    The groups are the values of column ``protected_attr_idx`` of ``X`` (finite whole
    numbers; anything else, NaN included, is refused, not rounded), or the intersections of
    several columns when it is a sequence. The training loader uses
    :class:`StratifiedBatchSampler` (``seed``, ``small_groups``, ``drop_last``; reshuffled
    every epoch); the validation loader is stratified too, with every row exactly once per
    pass (``small_groups="allow"``), so each validation batch also has the proportions.
    """
    Xt, yt, Xv, yv = _pairs(("X_train", "y_train", "X_val", "y_val"),
                            (X_train, y_train, X_val, y_val))
    batch_size_eval = check_int("batch_size_eval", batch_size_eval, minimum=1)
    cols = [protected_attr_idx] if isinstance(protected_attr_idx, (int, np.integer)) \
        else list(protected_attr_idx)
    for c in cols:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) \
                or not -Xt.shape[1] <= c < Xt.shape[1]:
            raise fail("protected_attr_idx", f"column indices of X_train (0..{Xt.shape[1] - 1})",
                       protected_attr_idx)
    sampler = StratifiedBatchSampler(_protected("X_train", Xt, cols), batch_size_train,
                                     seed=seed, small_groups=small_groups, drop_last=drop_last)
    train = DataLoader(TensorDataset(Xt, yt), batch_sampler=sampler)
    val_sampler = StratifiedBatchSampler(_protected("X_val", Xv, cols), batch_size_eval,
                                         seed=seed, small_groups="allow")
    val = DataLoader(TensorDataset(Xv, yv), batch_sampler=val_sampler)
    return train, val


def create_dataloaders(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, X_test: Any, y_test: Any, *,
    batch_size_train: int = 256, batch_size_eval: int = 1024, seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The fairness_training small-batch streaming example's helper: a shuffled training
    loader (seeded), validation and test loaders in order, all yielding ``(x, y)``; no
    stratification (e.g. streaming inference batches)."""
    Xt, yt, Xv, yv, Xs, ys = _pairs(("X_train", "y_train", "X_val", "y_val", "X_test",
                                     "y_test"), (X_train, y_train, X_val, y_val, X_test, y_test))
    batch_size_train = check_int("batch_size_train", batch_size_train, minimum=1)
    batch_size_eval = check_int("batch_size_eval", batch_size_eval, minimum=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    train = DataLoader(TensorDataset(Xt, yt), batch_size=batch_size_train, shuffle=True,
                       generator=gen)
    val = DataLoader(TensorDataset(Xv, yv), batch_size=batch_size_eval)
    test = DataLoader(TensorDataset(Xs, ys), batch_size=batch_size_eval)
    return train, val, test


def proportions(strata: Sequence[int] | np.ndarray) -> np.ndarray:
    """Share of each stratum (used by the tests and the docs)."""
    counts = np.bincount(np.asarray(strata))
    return counts / counts.sum()
