"""Per-step overhead of a dual optimizer against a plain training step.

MLP 64-32, batch 256, one thread; each repetition runs every variant once, in a shuffled order
(interleaved), so slow drifts of the machine hit all variants alike. Prints the median step
time of each variant and its ratio to the plain step measured in the same run, then each
algorithm's ratio to the ALM step of the same run (the overhead targets).

    python benchmarks/overhead.py [--reps 400] [--setting tensors basic-usage]

Two settings of the same step:

* ``tensors``: one fixed batch of 100 random features held in memory, the constraints a cheap
  function of the output -- the step at its smallest, where a dual optimizer's own cost shows
  most;
* ``basic-usage``: humancompatible-train's basic-usage loop as written, on the shipped Adult
  data (105 features): each step draws its batch from a shuffling ``DataLoader`` and the
  constraint is fairret's positive-rate gap minus 0.05 (``m`` > 1 repeats it with ``m``
  different weights).

"fixed penalty" computes the same constraint values and adds them with a fixed weight: the
cost of evaluating the constraints without any dual optimizer; the ratio to it is the dual
optimizer's own overhead.

With the ``compare`` extra installed, humancompatible-train's ALM and Cooper's simultaneous
Lagrangian are measured in the same run.
"""

from __future__ import annotations

import abc
import argparse
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from humancompatible_train.dual_optim import (
    ALM,
    PBM,
    SSG,
    AdaptiveDual,
    Extragradient,
    MoreauEnvelope,
    Optimistic,
    PrimalDual,
    iALM,
    nuPI,
)

EPS = 0.05
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_model(features: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
        torch.nn.ReLU(), torch.nn.Linear(32, 1),
    )


class Setting(abc.ABC):
    """Where a step's batch comes from and how its m constraint values are computed."""

    features: int

    @abc.abstractmethod
    def batches(self) -> Callable[[], Batch]:
        """A fresh source of (x, sens, y) batches, one per variant."""

    @abc.abstractmethod
    def constraints(self, logit: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        """The step's m constraint values (0-d for the basic-usage loop's single one)."""


class Tensors(Setting):
    def __init__(self, m: int) -> None:
        self.features = 100
        self.coef = torch.linspace(0.5, 1.5, m)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(256, self.features, generator=gen)
        y = (torch.rand(256, 1, generator=gen) < 0.5).float()
        # Two groups, one-hot as fairret takes them (30 % in the second).
        sens = torch.nn.functional.one_hot((torch.rand(256, generator=gen) < 0.3).long(), 2)
        self.batch = (x, sens.float(), y)

    def batches(self) -> Callable[[], Batch]:
        return lambda: self.batch

    def constraints(self, logit: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        # m differentiable constraints from the batch output; identical work for every method.
        return torch.sigmoid(logit).mean() * self.coef - 0.5


class BasicUsage(Setting):
    def __init__(self, m: int) -> None:
        from fairret.statistic import PositiveRate

        from humancompatible_train.datasets import load_adult

        self.data = load_adult().train.tensor_dataset()
        self.features = self.data[0][0].shape[0]
        self.statistic = PositiveRate()
        # m = 1 is the basic-usage loop's 0-d constraint; more repeat it with m weights.
        self.coef = None if m == 1 else torch.linspace(0.5, 1.5, m)

    def batches(self) -> Callable[[], Batch]:
        loader = torch.utils.data.DataLoader(
            self.data, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(0))
        it: Iterator[Batch] = iter(loader)

        def draw() -> Batch:
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader)
                return next(it)
        return draw

    def constraints(self, logit: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        stats = self.statistic(torch.sigmoid(logit), sens)
        gap = torch.abs(stats[0] - stats[1])
        return gap - EPS if self.coef is None else gap * self.coef - EPS


SETTINGS = {"tensors": Tensors, "basic-usage": BasicUsage}


def linear(lam: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """lam . c for a 1-D c, or a 0-d c (the basic-usage loop's single constraint) times
    lam's one entry."""
    return torch.dot(lam, c) if c.dim() else c * lam.view(())


def variants(setting: Setting, m: int) -> dict[str, Callable[[], None]]:
    bce = torch.nn.BCEWithLogitsLoss()
    cons = setting.constraints
    out: dict[str, Callable[[], None]] = {}
    # One model and one primal optimizer shared by every variant: separate copies sit at
    # different memory addresses, which alone made two identical plain steps differ by 1-2 %.
    model = make_model(setting.features)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def training_step(lagrangian):
        # Every variant is the same step around its own objective, drawing from its own
        # (identical) batch source; only what lagrangian(logit, sens, y) computes differs.
        draw = setting.batches()

        def step():
            x, sens, y = draw()
            opt.zero_grad()
            lagrangian(model(x), sens, y).backward()
            opt.step()
        return step

    def plain():
        return training_step(lambda o, s, y: bce(o, y))
    out["plain"] = plain()

    def penalty():
        # The same constraint values added with a fixed weight: what computing the
        # constraints costs by itself, without any dual optimizer.
        w = torch.full((m,), 0.01)
        return training_step(lambda o, s, y: bce(o, y) + linear(w, cons(o, s)))
    out["fixed penalty (no dual)"] = penalty()

    def hand_written():
        # The floor for any dual optimizer: projected dual ascent written inline, with no
        # input checks, no finiteness test and no state bookkeeping.
        lam = torch.zeros(m)

        def lagrangian(o, s, y):
            c = cons(o, s)
            lam.add_(c.detach(), alpha=0.01).clamp_(min=0.0)
            return bce(o, y) + linear(lam, c)
        return training_step(lagrangian)
    out["hand-written dual ascent"] = hand_written()

    def hand_written_checked():
        # The same, plus the two things a dual optimizer does by default: one read of the
        # constraint values to refuse NaN/Inf before any state changes, and a snapshot of
        # the multipliers for the Lagrangian (gradient accumulation). The floor for ours.
        lam = torch.zeros(m)

        def lagrangian(o, s, y):
            c = cons(o, s)
            cd = c.detach()
            if not math.isfinite(float(cd.sum() if m > 1 else cd)):
                raise ValueError("non-finite constraint")
            lam.add_(cd, alpha=0.01).clamp_(min=0.0)
            return bce(o, y) + linear(lam.clone(), c)
        return training_step(lagrangian)
    out["hand-written, NaN check + snapshot"] = hand_written_checked()

    def ours(cls, **kw):
        # Each variant builds its dual in its own scope, so the closure below cannot pick up
        # another variant's objects.
        dual = cls(m=m, is_ineq=True, **kw)
        return training_step(lambda o, s, y: dual.forward_update(bce(o, y), cons(o, s)))
    out["ours ALM"] = ours(ALM, lr=0.01)
    out["ours ALM (check_finite=False)"] = ours(ALM, lr=0.01, check_finite=False)
    out["ours PrimalDual"] = ours(PrimalDual, eta_0=0.5)
    # The algorithms of issue 16, each beside the ALM it should cost the same as: iALM's
    # Lagrangian is always augmented, so its reference is ALM with the quadratic term.
    out["ours ALM (quadratic)"] = ours(ALM, lr=0.01, penalty=0.01)
    out["ours iALM"] = ours(iALM, lr=0.01)
    out["ours PBM"] = ours(PBM, lr=0.9)
    out["ours SSG"] = ours(SSG)

    def wrapped_step(primal, dual):
        # The ALM step with the primal optimizer wrapped: ``primal`` has zero_grad and step,
        # ``dual`` forward_update (for Optimistic both are the wrapper).
        draw = setting.batches()

        def step():
            x, sens, y = draw()
            primal.zero_grad()
            o = model(x)
            dual.forward_update(bce(o, y), cons(o, sens)).backward()
            primal.step()
        return step

    # The smoothing inside the optimizer's step.
    out["ours Moreau(ALM)"] = wrapped_step(MoreauEnvelope(opt, mu=0.1, beta=0.5),
                                           ALM(m=m, lr=0.01, is_ineq=True))
    out["ours nuPI"] = ours(nuPI)
    out["ours AdaptiveDual"] = ours(AdaptiveDual)
    # The two-line loop, the extrapolation of the gradients inside the primal step.
    og = Optimistic(opt, ALM(m=m, lr=0.01, is_ineq=True))
    out["ours Optimistic(ALM)"] = wrapped_step(og, og)

    def extragradient():
        # Two evaluations of the model per step by design: its reference is two ALM steps.
        eg = Extragradient(opt, ALM(m=m, lr=0.01, is_ineq=True))
        draw = setting.batches()

        def step():
            x, sens, y = draw()

            def losses():
                o = model(x)
                return bce(o, y), cons(o, sens)
            eg.roll(losses)
        return step
    out["ours Extragradient(ALM)"] = extragradient()

    def partially_observed():
        # The machinery of indices= (checks, scatter, masks) on the same values as the ALM
        # step, every entry listed. Observing fewer entries would also compute fewer
        # constraints: the user's saving, not the optimizer's cost.
        dual = ALM(m=m, lr=0.01, is_ineq=True)
        listed = torch.arange(m)

        def lagrangian(o, s, y):
            return dual.forward_update(bce(o, y), cons(o, s).reshape(-1), indices=listed)
        return training_step(lagrangian)
    out["ours ALM, indices="] = partially_observed()

    try:
        from humancompatible.train.dual_optim import ALM as PeerALM

        out["humancompatible-train ALM"] = ours(PeerALM, lr=0.01)
    except ImportError:
        pass

    def cooper_variant():
        import cooper

        class CMP(cooper.ConstrainedMinimizationProblem):
            def __init__(self):
                super().__init__()
                mult = cooper.multipliers.DenseMultiplier(num_constraints=m)
                self.c = cooper.Constraint(cooper.ConstraintType.INEQUALITY,
                                           formulation_type=cooper.formulations.Lagrangian,
                                           multiplier=mult)

            def compute_cmp_state(self, x, sens, y):
                o = model(x)
                return cooper.CMPState(
                    loss=bce(o, y),
                    observed_constraints={self.c: cooper.ConstraintState(
                        violation=cons(o, sens).reshape(-1))})

        cmp = CMP()
        dual_opt = torch.optim.SGD(cmp.dual_parameters(), lr=0.01, maximize=True)
        coop = cooper.optim.SimultaneousOptimizer(cmp, opt, dual_opt)
        draw = setting.batches()

        def cooper_step():
            x, sens, y = draw()
            coop.roll(compute_cmp_state_kwargs={"x": x, "sens": sens, "y": y})
        return cooper_step

    try:
        out["Cooper simultaneous"] = cooper_variant()
    except ImportError:
        pass
    if m == 1:
        out.update(fairness_variants(training_step, bce))
    # A second, identical plain step: its ratio to the first shows the noise floor of this
    # run that every ratio above carries.
    out["plain (second copy)"] = plain()
    return out


def fairness_variants(training_step: Callable, bce: torch.nn.Module
                      ) -> dict[str, Callable[[], None]]:
    """The basic-usage example's constraint (positive-rate gap of two groups minus 0.05),
    four ways, with the same ALM: written by hand in tensor operations, through fairret's
    statistic, through ``FairnessConstraint`` (default checks: one value read on CPU), and
    fairret's NormLoss (a fixed penalty, no dual optimizer)."""
    from fairret.loss import NormLoss
    from fairret.statistic import PositiveRate

    from humancompatible_train.fairness import FairnessConstraint

    def hand_gap(o, s):
        p = torch.sigmoid(o)
        rate = (s * p).sum(0) / s.sum(0)
        return (rate[0] - rate[1]).abs() - EPS

    statistic = PositiveRate()

    def fairret_gap(o, s):
        rate = statistic(torch.sigmoid(o), s)
        return (rate[0] - rate[1]).abs() - EPS

    fc = FairnessConstraint("PositiveRate", 2, mode="abs_diff", eps=EPS)

    def with_alm(gap):
        dual = ALM(m=1, lr=0.01, is_ineq=True)
        return training_step(lambda o, s, y: dual.forward_update(bce(o, y), gap(o, s)))

    norm = NormLoss(PositiveRate())
    return {
        FAIR_HAND: with_alm(hand_gap),
        "ALM + fairret PositiveRate gap": with_alm(fairret_gap),
        FAIR_OURS: with_alm(lambda o, s: fc(o, s).values),
        "fairret NormLoss (weight 1, no dual)": training_step(
            lambda o, s, y: bce(o, y) + norm(o, s)),
    }


FAIR_HAND = "ALM + hand-written PR gap"
# (variant, reference, how many reference steps one step of the variant stands for).
AGAINST = [("ours PBM", "ours ALM", 1), ("ours SSG", "ours ALM", 1),
           ("ours Moreau(ALM)", "ours ALM", 1), ("ours iALM", "ours ALM (quadratic)", 1),
           ("ours PrimalDual", "ours ALM", 1), ("ours nuPI", "ours ALM", 1),
           ("ours AdaptiveDual", "ours ALM", 1), ("ours Optimistic(ALM)", "ours ALM", 1),
           ("ours Extragradient(ALM)", "ours ALM", 2),
           ("ours ALM, indices=", "ours ALM", 1),
           ("ours ALM", "hand-written, NaN check + snapshot", 1)]
FAIR_OURS = "ALM + FairnessConstraint"


def measure(steps: dict[str, Callable[[], None]], reps: int, warmup: int,
            rng: random.Random) -> dict[str, float]:
    """Median seconds per step of each variant, repetitions interleaved."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(warmup):
        for f in steps.values():
            f()
    order = list(steps.items())
    for _ in range(reps):
        # A fresh order every round: no variant always runs right after the same one.
        rng.shuffle(order)
        for k, f in order:
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(ts) for k, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--setting", nargs="+", choices=sorted(SETTINGS),
                    default=["tensors", "basic-usage"])
    ap.add_argument("--m", type=int, nargs="+", default=[1, 100, 10_000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    print(f"torch {torch.__version__}, 1 thread, MLP 64-32, batch 256, "
          f"median of {args.reps} interleaved repetitions")
    for name in args.setting:
        for m in args.m:
            setting = SETTINGS[name](m)
            med = measure(variants(setting, m), args.reps, args.warmup, rng)
            base, pen = med["plain"], med["fixed penalty (no dual)"]
            print(f"\nsetting {name} ({setting.features} features), m = {m}")
            for k, t in med.items():
                print(f"  {k:36s} {t * 1e6:9.1f} us   {t / base:5.3f}x plain   "
                      f"{t / pen:5.3f}x fixed penalty")
            # Each algorithm against the ALM step it should cost the same as, both medians
            # from this run (iALM's Lagrangian is augmented: its reference is ALM's).
            print("  per step, against the reference measured in this run:")
            for ours_, ref, times in AGAINST:
                label = ref if times == 1 else f"{times} x {ref}"
                print(f"    {ours_:34s} / {label:36s} {med[ours_] / (times * med[ref]):6.3f}x")
            if FAIR_OURS in med:
                print(f"    {FAIR_OURS:34s} / {FAIR_HAND:36s} "
                      f"{med[FAIR_OURS] / med[FAIR_HAND]:6.3f}x")
            print(f"    {'plain (second copy)':34s} / {'plain':36s} "
                  f"{med['plain (second copy)'] / base:6.3f}x  (this run's noise floor)")


if __name__ == "__main__":
    main()
