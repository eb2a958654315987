"""Stratified batches: every batch carries the dataset's group proportions.

:class:`StratifiedBatchSampler` splits an epoch into ``T = ceil(N / batch_size)`` batches and
gives group :math:`g` (with :math:`n_g` members) :math:`\\lfloor n_g/T \\rfloor` or
:math:`\\lceil n_g/T \\rceil` places in every batch, so each batch holds the dataset's
proportions to within one sample per group. The extra places are dealt round-robin across
batches, group after group, so batch sizes differ by at most one: there is no ragged last
batch, and every batch has ``floor(N/T)`` or ``ceil(N/T) <= batch_size`` rows (a few more
when small groups are oversampled).

A group with fewer members than batches cannot appear in every batch. ``small_groups``:

* ``"oversample"`` (default): its members are drawn with replacement to fill one place per
  batch (they then appear more than once per epoch; every other index exactly once);
* ``"error"``: raise a ``ValueError`` naming the group;
* ``"allow"``: it appears in only ``n_g`` batches.

Members are reshuffled every epoch from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

__all__ = ["StratifiedBatchSampler", "create_stratified_dataloaders", "create_dataloaders"]


def _strata(groups: Any) -> np.ndarray:
    g = np.asarray(groups.cpu() if isinstance(groups, torch.Tensor) else groups)
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    if g.ndim == 2:  # several attributes: their combinations are the strata
        _, g = np.unique(g, axis=0, return_inverse=True)
    if g.ndim != 1:
        raise ValueError(f"groups: expected shape (N,) or (N, attributes), got {g.shape}")
    _, ids = np.unique(g, return_inverse=True)
    return ids.reshape(-1)


class StratifiedBatchSampler(Sampler[list[int]]):
    """Batches with the dataset's group proportions (see the module for the policy).

    Args:
        groups: group id per row (N,), or one column per attribute (N, A) for intersections.
        batch_size: the largest batch size.
        seed: seeds the generator that reshuffles every epoch.
        small_groups: ``"oversample"``, ``"error"`` or ``"allow"``.
    """

    def __init__(self, groups: Any, batch_size: int, *, seed: int = 0,
                 small_groups: str = "oversample") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if small_groups not in ("oversample", "error", "allow"):
            raise ValueError(f"small_groups: expected 'oversample', 'error' or 'allow', "
                             f"got {small_groups!r}")
        raw = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
        self.strata = _strata(raw)
        n = len(self.strata)
        if n == 0:
            raise ValueError("groups: empty")
        self.batch_size = batch_size
        self.num_batches = math.ceil(n / batch_size)
        self.members = [np.flatnonzero(self.strata == s) for s in range(self.strata.max() + 1)]
        self.small_groups = small_groups
        labels = np.unique(raw if raw.ndim == 1 else raw.reshape(len(raw), -1), axis=0)
        small = [(labels[s].tolist(), len(m)) for s, m in enumerate(self.members)
                 if len(m) < self.num_batches]
        if small and small_groups == "error":
            raise ValueError(
                f"groups: {', '.join(f'group {g!r} has {k} rows' for g, k in small)}, fewer "
                f"than the {self.num_batches} batches of an epoch; use small_groups="
                "'oversample' or 'allow', or a larger batch_size"
            )
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.num_batches

    def _quotas(self) -> np.ndarray:
        """(S, T) places per group and batch: floor/ceil of n_g / T, extras spread."""
        T = self.num_batches
        quotas = np.zeros((len(self.members), T), dtype=np.int64)
        offset = 0
        for s, m in enumerate(self.members):
            n = len(m)
            if n < T and self.small_groups == "oversample":
                n = T
            base, extra = divmod(n, T)
            quotas[s] = base
            # Start each group's extras where the previous group's ended: balanced sizes.
            idx = (offset + np.arange(extra)) % T
            quotas[s, idx] += 1
            offset = (offset + extra) % T
        return quotas

    def __iter__(self) -> Iterator[list[int]]:
        quotas = self._quotas()
        T = self.num_batches
        parts: list[list[np.ndarray]] = [[] for _ in range(T)]
        for s, m in enumerate(self.members):
            need = int(quotas[s].sum())
            pool = self.rng.permutation(m)
            if need > len(pool):
                pool = np.concatenate([pool, self.rng.choice(m, need - len(pool))])
            cuts = np.cumsum(quotas[s])[:-1]
            for t, chunk in enumerate(np.split(pool, cuts)):
                parts[t].append(chunk)
        for t in range(T):
            batch = np.concatenate(parts[t])
            yield self.rng.permutation(batch).tolist()


def _tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x),
                                                                            dtype=dtype)


def create_stratified_dataloaders(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, *, protected_attr_idx: int = 0,
    batch_size_train: int = 256, batch_size_eval: int = 1024, seed: int = 0,
    small_groups: str = "oversample",
) -> tuple[DataLoader, DataLoader]:
    """Seed 000's helper: a training loader whose every batch has the training set's group
    proportions (groups from column ``protected_attr_idx`` of ``X``), and a validation loader
    in order, both yielding ``(x, y)``."""
    Xt, yt = _tensor(X_train), _tensor(y_train)
    groups = Xt[:, protected_attr_idx].round().long()
    sampler = StratifiedBatchSampler(groups, batch_size_train, seed=seed,
                                     small_groups=small_groups)
    train = DataLoader(TensorDataset(Xt, yt), batch_sampler=sampler)
    val = DataLoader(TensorDataset(_tensor(X_val), _tensor(y_val)), batch_size=batch_size_eval)
    return train, val


def create_dataloaders(
    X_train: Any, y_train: Any, X_val: Any, y_val: Any, X_test: Any, y_test: Any, *,
    batch_size_train: int = 256, batch_size_eval: int = 1024, seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Seed 000's helper: shuffled training loader, validation and test loaders in order."""
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(_tensor(X_train), _tensor(y_train)),
                       batch_size=batch_size_train, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(_tensor(X_val), _tensor(y_val)), batch_size=batch_size_eval)
    test = DataLoader(TensorDataset(_tensor(X_test), _tensor(y_test)),
                      batch_size=batch_size_eval)
    return train, val, test


def proportions(strata: Sequence[int] | np.ndarray) -> np.ndarray:
    """Share of each stratum (used by the tests and the docs)."""
    counts = np.bincount(np.asarray(strata))
    return counts / counts.sum()
