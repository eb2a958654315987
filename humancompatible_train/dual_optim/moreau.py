r"""Moreau-envelope smoothing of the primal problem: a wrapper of any ``torch.optim`` optimizer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .._validation import check_int, check_real, fail

__all__ = ["MoreauEnvelope"]


@contextmanager
def swapped_gradients(params: Sequence[Tensor], grads: Sequence[Tensor]) -> Iterator[None]:
    """Within the block each ``params[i].grad`` is ``grads[i]``; afterwards (even on an error)
    every ``.grad`` is the tensor it was before, untouched: a wrapped optimizer sees modified
    gradients while the user's stay as they were."""
    found = [p.grad for p in params]
    try:
        for p, g in zip(params, grads):
            p.grad = g
        yield
    finally:
        for p, g in zip(params, found):
            p.grad = g


class MoreauEnvelope(torch.optim.Optimizer):
    r"""Wraps a primal optimizer so that it descends the Moreau-smoothed (proximal) objective.

    With an anchor :math:`z` per parameter (:math:`z_0 = x_0`), each :meth:`step` hands the
    wrapped optimizer the gradient of :math:`F(x) + \tfrac{\mu}{2}\|x - z\|^2`,

    .. math::

        g_t \leftarrow \nabla F(x_t) + \mu\,(x_t - z_t), \qquad
        x_{t+1} = \texttt{optimizer.step}(g_t),

    and every ``every``-th step moves the anchor towards the new iterate,

    .. math::

        z_{t+1} = (1 - \beta)\, z_t + \beta\, x_{t+1}.

    This is the smoothing of the smoothed proximal ALM of Zhang & Luo (SIAM J. Optim. 2020;
    Math. Program. 2022), used in the SSL-ALM of arXiv 2504.07607: the proximal term damps the
    oscillation of the primal iterates of a Lagrangian method. :math:`F` is whatever the
    gradients come from (usually the Lagrangian of a dual optimizer).

    * The wrapped optimizer's ``param_groups`` *are* this object's (the same list): learning-
      rate schedulers built on the wrapper act on the inner optimizer.
    * ``.grad`` is left as found: the smoothed gradient is a temporary the inner optimizer sees
      during its step; afterwards every parameter's ``.grad`` is the same tensor with the same
      values as before.
    * Parameters without a gradient (``grad is None``) are skipped, as torch optimizers do.
    * :math:`\mu = 0` skips the smoothing entirely: bit for bit the wrapped optimizer.
    * :meth:`state_dict` holds the inner optimizer's state dict, the anchors :math:`z` (copies)
      and the step counter; it loads with ``torch.load(weights_only=True)``.

    Example::

        primal = MoreauEnvelope(torch.optim.Adam(model.parameters(), 1e-3), mu=2.0, beta=0.5)
        for x, s, y in loader:
            primal.zero_grad()
            dual.forward_update(loss_fn(model(x), y), gap(model(x), s) - 0.05).backward()
            primal.step()

    Departure from humancompatible-train 0.4.2: its anchor moves from the iterate *before* the
    step, it adds the smoothing term into ``.grad`` and leaves it there, it crashes on a
    parameter without a gradient and its state is not checkpointed.

    Args:
        optimizer: the primal optimizer to wrap.
        mu: smoothing weight :math:`\mu \ge 0`.
        beta: anchor step :math:`\beta \in [0, 1]`.
        every: the anchor moves after every ``every``-th step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, mu: float = 2.0, beta: float = 0.5,
                 every: int = 1) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise fail("optimizer", "a torch.optim.Optimizer", type(optimizer).__name__)
        self.mu = check_real("mu", mu, low=0.0)
        self.beta = check_real("beta", beta, low=0.0, high=1.0)
        self.every = check_int("every", every, minimum=1)
        self.optimizer = optimizer
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self._building = True
        # torch.optim.Optimizer sets up hooks and the step wrapper; its own groups are then
        # replaced by the inner optimizer's list so that both always agree.
        super().__init__(params, {})
        self._building = False
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.state = defaultdict(dict)
        self._step_count = 0
        for p in params:
            self.state[p]["z"] = p.detach().clone()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._building:
            super().add_param_group(param_group)
        else:
            self.optimizer.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim.Optimizer keeps only defaults, state and param_groups: a copy would lose
        # the inner optimizer and the hyperparameters. A learning-rate scheduler's wrapper of
        # ``step`` on the instance is left out, as torch does (it pickles by qualified name).
        state = dict(self.__dict__)
        state.pop("step", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _anchors(self, params: list[Tensor]) -> list[Tensor]:
        """The parameters' anchors, in order; a parameter added to the inner optimizer later
        gets its anchor here."""
        anchors = []
        state = self.state
        for p in params:
            entry = state[p]
            z = entry.get("z")
            if z is None:
                z = entry["z"] = p.detach().clone()
            anchors.append(z)
        return anchors

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One step of the wrapped optimizer on the smoothed gradient; then the anchor moves
        when due. ``closure`` (re-evaluating the model) works as for torch optimizers."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        for p in params:  # before any anchor is created
            if p.grad is not None and p.grad.is_sparse:
                raise fail("MoreauEnvelope.step: gradient", "dense gradients",
                           "a sparse gradient")
        anchors = self._anchors(params)
        if self.mu != 0.0:
            with_grad, found, zs = [], [], []
            for p, z in zip(params, anchors):
                if p.grad is not None:
                    with_grad.append(p)
                    found.append(p.grad)
                    zs.append(z)
        if self.mu != 0.0 and with_grad:
            smoothed = torch._foreach_add(found, with_grad, alpha=self.mu)
            torch._foreach_add_(smoothed, zs, alpha=-self.mu)
            # The inner optimizer sees the smoothed gradients; afterwards (even on an error)
            # every .grad is the tensor it was (swapped_gradients, inlined: this is per step).
            try:
                for p, g in zip(with_grad, smoothed):
                    p.grad = g
                self.optimizer.step()
            finally:
                for p, g in zip(with_grad, found):
                    p.grad = g
        else:
            self.optimizer.step()
        self._step_count += 1
        if self._step_count % self.every == 0 and self.beta != 0.0:
            torch._foreach_lerp_(anchors, params, self.beta)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def anchors(self) -> list[Tensor]:
        """The anchors :math:`z` (copies), in parameter order."""
        return [self.state[p]["z"].clone() for p in self._params()]

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Inner state dict, anchors (copies), step counter and hyperparameters."""
        return {
            "inner": self.optimizer.state_dict(),
            "anchors": [self.state[p]["z"].detach().clone() for p in self._params()],
            "step": self._step_count,
            "mu": self.mu, "beta": self.beta, "every": self.every,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore inner optimizer, anchors and counter; checks everything before any change."""
        try:
            inner, anchors = state_dict["inner"], state_dict["anchors"]
            step = state_dict["step"]
            hyper = (state_dict["mu"], state_dict["beta"], state_dict["every"])
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from MoreauEnvelope.state_dict() with keys "
                       "'inner', 'anchors', 'step', 'mu', 'beta', 'every'",
                       type(state_dict).__name__) from None
        params = self._params()
        if not isinstance(anchors, (list, tuple)) or len(anchors) != len(params):
            raise fail("state_dict['anchors']", f"{len(params)} tensors (one per parameter)",
                       f"{len(anchors) if isinstance(anchors, (list, tuple)) else anchors}")
        for i, (p, z) in enumerate(zip(params, anchors)):
            if not isinstance(z, Tensor) or z.shape != p.shape:
                got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                raise fail(f"state_dict['anchors'][{i}]", f"a tensor of shape {tuple(p.shape)}",
                           got)
            if not bool(torch.isfinite(z).all()):
                raise fail(f"state_dict['anchors'][{i}]", "finite values", "non-finite values")
        mu = check_real("state_dict['mu']", hyper[0], low=0.0)
        beta = check_real("state_dict['beta']", hyper[1], low=0.0, high=1.0)
        every = check_int("state_dict['every']", hyper[2], minimum=1)
        step = check_int("state_dict['step']", step, minimum=0)
        self.optimizer.load_state_dict(inner)  # raises, changing nothing, on a mismatch
        with torch.no_grad():
            for p, z in zip(params, anchors):
                self.state[p]["z"] = z.detach().to(device=p.device, dtype=p.dtype).clone()
        self.mu, self.beta, self.every, self._step_count = mu, beta, every, step
