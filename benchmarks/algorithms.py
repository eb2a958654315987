"""Every dual algorithm on a small suite of constrained problems, with the peers where they
implement the same method.

    python benchmarks/algorithms.py [--problems qp np_logreg qp_eq dp_adult] [--steps N]

Problems (all full batch, float64, so runs are deterministic and references exact):

* ``qp``: min 1/2 ||x - a||^2 s.t. A x <= b (3 variables, 2 of 3 constraints active);
* ``qp_eq``: the same objective with two equality constraints;
* ``np_logreg``: Neyman--Pearson (rate-constrained) logistic regression on 3,000 rows of the
  bundled Adult data: min the logistic loss on the positives (plus 0.005 ||w||^2, so that the
  optimum is attained) s.t. the logistic loss on the negatives <= 0.3 (convex);
* ``dp_adult``: demographic parity on the same rows: min the logistic loss s.t.
  |mean p(sex=1) - mean p(sex=0)| <= 0.02 as two inequalities (not convex: SLSQP's local
  solution is printed for context, not as a certified optimum).

References come from scipy's SLSQP. For each algorithm the script prints the final objective,
its distance to the reference, the worst violation, and the steps to feasibility (first step
from which the worst violation stays <= 1e-4). ``AdaptiveDual`` enters the suite with
``offset=0``: its default offset keeps an inequality a few noise standard deviations inside
the feasible set on purpose, a margin for noisy batches that these deterministic problems do
not need (its defaults are printed on a line of their own, for context, and are not counted
in the "within 1e-3" line). With the ``compare`` extra installed
(humancompatible-train 0.4.2, cooper-optim 1.0.1), the peers' implementations of the same
methods run with the same hyperparameters, and the largest difference between the two
trajectories (parameters and multipliers over all steps, relative to their size where it
exceeds 1) is printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

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

FEASIBLE = 1e-4
F64 = torch.float64


@dataclass
class Problem:
    name: str
    x0: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]
    cons: Callable[[torch.Tensor], torch.Tensor]   # c(x), <= 0 or = 0
    is_ineq: bool
    primal_lr: float
    x_star: np.ndarray
    f_star: float
    convex: bool
    # SSG's own primal schedule (initial step, exponential decay): its O(1/sqrt(T)) rate
    # needs a step that both travels far enough and ends below the feasibility tolerance.
    ssg: tuple[float, float] = (0.1, 0.996)

    @property
    def m(self) -> int:
        return int(self.cons(self.x0).numel())

    def violation(self, x: torch.Tensor) -> float:
        c = self.cons(x)
        return float(c.max().clamp(min=0) if self.is_ineq else c.abs().max())


def _slsqp(loss, cons, x0, is_ineq):
    """Reference optimum with scipy (float64, gradients by autograd)."""
    def f(z):
        t = torch.tensor(z, requires_grad=True)
        v = loss(t)
        v.backward()
        return v.item(), t.grad.numpy().copy()

    def g(z):
        return -cons(torch.tensor(z)).numpy() if is_ineq else cons(torch.tensor(z)).numpy()

    def gjac(z):
        jac = torch.autograd.functional.jacobian(cons, torch.tensor(z)).numpy()
        return -jac if is_ineq else jac

    res = minimize(f, x0.numpy(), jac=True, method="SLSQP", tol=1e-12,
                   constraints=[{"type": "ineq" if is_ineq else "eq", "fun": g, "jac": gjac}],
                   options={"maxiter": 1000})
    return res.x, float(res.fun)


def qp(kind: str) -> Problem:
    A = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, -1.0]], dtype=F64)
    if kind == "ineq":
        A, b, a = A, torch.tensor([1.0, 0.5, 5.0], dtype=F64), torch.full((3,), 2.0, dtype=F64)
    else:
        A, b, a = A[:2], torch.tensor([1.0, -0.5], dtype=F64), torch.tensor(
            [0.3, 2.0, -1.0], dtype=F64)

    def loss(x):
        return 0.5 * ((x - a) ** 2).sum()

    def cons(x):
        return A @ x - b

    x0 = torch.zeros(3, dtype=F64)
    xs, fs = _slsqp(loss, cons, x0, kind == "ineq")
    return Problem("qp" if kind == "ineq" else "qp_eq", x0, loss, cons, kind == "ineq", 0.1,
                   xs, fs, True, ssg=(0.1, 0.996) if kind == "ineq" else (0.3, 0.998))


def _adult(n=3000):
    from humancompatible_train.datasets import load_adult

    split = load_adult(seed=0).train
    X = torch.cat([split.X[:n].to(F64), torch.ones(n, 1, dtype=F64)], dim=1)
    return X, split.y[:n, 0].to(F64), split.groups()[:n]


def np_logreg() -> Problem:
    X, y, _ = _adult()
    pos, neg = X[y == 1], X[y == 0]
    softplus = torch.nn.functional.softplus

    def loss(w):  # logistic loss on the positives (misses), ridge-regularised
        return softplus(-(pos @ w)).mean() + 0.005 * (w * w).sum()

    def cons(w):  # logistic loss on the negatives (false alarms) <= 0.3
        return (softplus(neg @ w).mean() - 0.3).reshape(1)

    x0 = torch.zeros(X.shape[1], dtype=F64)
    xs, fs = _slsqp(loss, cons, x0, True)
    return Problem("np_logreg", x0, loss, cons, True, 0.5, xs, fs, True, ssg=(1.0, 0.998))


def dp_adult() -> Problem:
    X, y, s = _adult()
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def loss(w):
        return bce(X @ w, y)

    def cons(w):
        p = torch.sigmoid(X @ w)
        gap = p[s == 1].mean() - p[s == 0].mean()
        return torch.stack([gap - 0.02, -gap - 0.02])

    x0 = torch.zeros(X.shape[1], dtype=F64)
    xs, fs = _slsqp(loss, cons, x0, True)
    return Problem("dp_adult", x0, loss, cons, True, 0.5, xs, fs, False, ssg=(1.0, 0.998))


PROBLEMS = {"qp": lambda: qp("ineq"), "qp_eq": lambda: qp("eq"), "np_logreg": np_logreg,
            "dp_adult": dp_adult}


# ------------------------------------------------------------------ methods
# A method builds (step, duals) for a problem: step() does one training step of the two-line
# loop (or its documented variant) and duals() reads the multipliers.

def two_line(dual_factory, wrap=None, order="dual_first", schedule=None, ssg=False):
    def build(pb: Problem, x: torch.Tensor):
        opt = torch.optim.SGD([x], lr=pb.ssg[0] if ssg else pb.primal_lr)
        if ssg:
            schedule_ = torch.optim.lr_scheduler.ExponentialLR(opt, pb.ssg[1])
        primal = wrap(opt) if wrap else opt
        dual = dual_factory(pb)
        sched = schedule_ if ssg else (schedule(primal) if schedule else None)

        def step():
            primal.zero_grad()
            loss, c = pb.loss(x), pb.cons(x)
            if order == "dual_first":
                dual.forward_update(loss, c).backward()
            else:  # simultaneous: Lagrangian at lambda_t, then the dual step
                dual.forward(loss, c).backward()
                dual.step(c)
            primal.step()
            if sched:
                sched.step()
        return step, lambda: dual.duals
    return build


def coordinated(kind, dual_factory):
    def build(pb: Problem, x: torch.Tensor):
        # Optimistic steps 2g_t - g_{t-1}: stable at about half the plain step (OGDA's bound).
        opt = torch.optim.SGD([x], lr=pb.primal_lr / (2 if kind is Optimistic else 1))
        dual = dual_factory(pb)
        coord = kind(opt, dual)

        def closure():
            return pb.loss(x), pb.cons(x)

        def step():
            if kind is Extragradient:
                coord.roll(closure)
            else:
                coord.zero_grad()
                coord.forward_update(*closure()).backward()
                coord.step()
        return step, lambda: dual.duals
    return build


def pbm_constraints(pb: Problem):
    """PBM handles c <= 0 only: an equality h = 0 enters as h <= 0 and -h <= 0."""
    return pb if pb.is_ineq else Problem(pb.name, pb.x0, pb.loss,
                                         lambda x: torch.cat([pb.cons(x), -pb.cons(x)]),
                                         True, pb.primal_lr, pb.x_star, pb.f_star, pb.convex,
                                         pb.ssg)


def ours() -> dict[str, Callable]:
    def alm(pb):
        return ALM(pb.m, lr=0.5, is_ineq=pb.is_ineq, dtype=F64)

    out = {
        "ALM": two_line(alm),
        "ALM (hpr, penalty 1)": two_line(lambda pb: ALM(pb.m, lr=1.0, penalty=1.0,
                                                        augmentation="hpr", is_ineq=pb.is_ineq,
                                                        dtype=F64)),
        "PrimalDual": two_line(lambda pb: PrimalDual(pb.m, eta_0=1.0, decay="constant",
                                                     is_ineq=pb.is_ineq, dtype=F64)),
        "iALM": two_line(lambda pb: iALM(pb.m, lr=0.5, sigma=1.001, beta_max=2.0, gamma=10.0,
                                         is_ineq=pb.is_ineq, dtype=F64)),
        "PBM": "pbm",
        "SSG": two_line(lambda pb: SSG(pb.m, tol=0.0 if pb.is_ineq else 5e-5,
                                       is_ineq=pb.is_ineq, dtype=F64), ssg=True),
        "Moreau(ALM)": two_line(alm, wrap=lambda o: MoreauEnvelope(o, mu=1.0, beta=0.5)),
        "Extragradient(ALM)": coordinated(Extragradient, alm),
        "Optimistic(ALM)": coordinated(Optimistic, alm),
        "nuPI": two_line(nupi()),
        # The offset is a margin for noisy constraints, kept on purpose inside the feasible
        # set; these problems have no noise, so the suite measures it at 0 (the defaults
        # are printed apart, for context).
        "AdaptiveDual (offset 0)": two_line(lambda pb: AdaptiveDual(
            pb.m, offset=0.0, is_ineq=pb.is_ineq, dtype=F64)),
    }
    return out


def nupi(init_xi: str = "first"):
    """Our nuPI at the suite's step (its default gains kappa_p 10, kappa_i 1, nu 0.9)."""
    return lambda pb: nuPI(pb.m, lr=0.5, init_xi=init_xi, is_ineq=pb.is_ineq, dtype=F64)


def run(pb: Problem, build, steps: int):
    if build == "pbm":
        pb2 = pbm_constraints(pb)
        build = two_line(lambda p: PBM(p.m, lr=0.5, penalty_update="const", init_penalty=1.0,
                                       anneal_dual=False, anneal_penalty=False, dtype=F64))
        return run(pb2, build, steps)
    x = pb.x0.clone().requires_grad_(True)
    step, duals = build(pb, x)
    feasible_since, xs, lams = None, [], []
    t0 = time.perf_counter()
    for t in range(steps):
        step()
        v = pb.violation(x.detach())
        feasible_since = (t + 1 if feasible_since is None else feasible_since) \
            if v <= FEASIBLE else None
        xs.append(x.detach().clone())
        lams.append(duals())
    per_step = (time.perf_counter() - t0) / steps
    f = float(pb.loss(x.detach()))
    return {"f": f, "gap": f - pb.f_star, "viol": pb.violation(x.detach()),
            "feasible": feasible_since, "dist": float(np.abs(x.detach().numpy()
                                                             - pb.x_star).max()),
            "xs": xs, "lams": lams, "ms": per_step * 1e3}


def report(name: str, r: dict) -> None:
    feas = "never" if r["feasible"] is None else str(r["feasible"])
    f = f"{r['f']:.6f}" if abs(r["f"]) < 1e6 else f"{r['f']:.2e} (diverged)"
    print(f"  {name:34s} f {f}  f-f* {r['gap']:+.1e}  |x-x*| {r['dist']:.1e}  "
          f"viol {r['viol']:.1e}  feasible from {feas:>5s}  {r['ms']:.2f} ms/step")


def trajectory_gap(a: dict, b: dict) -> tuple[float, float]:
    """The largest difference of iterates and of multipliers over all steps, relative to
    their size where it exceeds 1 (so that two runs that diverge alike compare as alike)."""
    def gap(ps, qs):
        return max(float(((p - q).abs() / torch.maximum(p.abs(), q.abs()).clamp(min=1.0))
                         .max()) for p, q in zip(ps, qs))
    return gap(a["xs"], b["xs"]), gap(a["lams"], b["lams"])


# ------------------------------------------------------------------ peers
def peers() -> dict[str, tuple[str, Callable, str]]:
    """name -> (our method it implements, builder, what to expect of the trajectories)."""
    out: dict[str, tuple[str, Callable, str]] = {}
    try:
        from humancompatible.train.dual_optim import ALM as HALM
        from humancompatible.train.dual_optim import PBM as HPBM
        from humancompatible.train.dual_optim import SSG as HSSG
        from humancompatible.train.dual_optim import MoreauEnvelope as HMoreau
        from humancompatible.train.dual_optim import iALM as HiALM
        from humancompatible.train.dual_optim import nuPI as HnuPI
    except ImportError:
        HALM = None
    if HALM is not None:
        def halm(pb):
            return HALM(pb.m, lr=0.5, is_ineq=pb.is_ineq, dual_range=(-1e9, 1e9))

        out["hct ALM"] = ("ALM", two_line(_cast(halm)), "same maths")
        out["hct iALM"] = ("iALM", two_line(_cast(lambda pb: HiALM(
            pb.m, beta=0.5, sigma=1.001, gamma=10.0, is_ineq=pb.is_ineq,
            dual_range=(-1e9, 1e9)))), "differs: grows beta after every call and pairs "
            "lambda_{k+1} with beta_k in the Lagrangian")
        out["hct iALM (sigma 1)"] = ("iALM (sigma 1)", two_line(_cast(lambda pb: HiALM(
            pb.m, beta=0.5, sigma=1.0, gamma=10.0, is_ineq=pb.is_ineq,
            dual_range=(-1e9, 1e9)))), "same maths")
        out["hct SSG"] = ("SSG", two_line(_cast(lambda pb: HSSG(pb.m, constraint_tol=0.0)),
                                          ssg=True),
                          "same maths on inequality problems; the peer keeps no multipliers, "
                          "ours report the switch in them")
        out["hct Moreau(ALM)"] = ("Moreau(ALM)", two_line(
            _cast(halm), wrap=lambda o: HMoreau(o, mu=1.0, beta=0.5)),
            "differs: the peer moves the anchor from the iterate before the step")
        out["hct PBM"] = ("PBM (forward, then step)", ("pbm", two_line(_cast(
            lambda pb: HPBM(pb.m, gamma=0.5, penalty_update="const",
                            init_duals=torch.ones(pb.m), init_penalties=1.0,
                            gamma_annealing=False, penalty_annealing=False)))),
            "same maths (ours in the peer's order: Lagrangian at the previous lambda, p)")
        # The peer's gains are ours times the step: ki = lr kappa_i, kp = lr kappa_p.
        out["hct nuPI"] = ("nuPI (init_xi zero)", two_line(_cast(lambda pb: HnuPI(
            pb.m, nu=0.9, ki=0.5, kp=5.0, is_ineq=pb.is_ineq, dual_range=(-1e9, 1e9)))),
            "differs unless the clamp erases the first step: its average starts at 0 as "
            "init_xi='zero', but that step leaves out the proportional term kp (1 - nu) c_0")
    try:
        import cooper  # noqa: F401

        out["Cooper simultaneous (SGD dual)"] = ("ALM (forward, then step)",
                                                 _cooper("simultaneous"), "same maths")
        out["Cooper alternating dual-primal"] = ("ALM", _cooper("alternating"), "same maths")
        out["Cooper extrapolation (ExtraSGD)"] = ("Extragradient(ALM)", _cooper("extra"),
                                                  "same maths")
        out["Cooper nuPI (init SGD)"] = (
            "nuPI (forward, then step)", _cooper("nupi-sgd"),
            "differs, a peer bug: documented as xi_0 = c_0 (ours), but 1.0.1 stores xi_0 = 0 "
            "after its plain first step")
        out["Cooper nuPI (init ZEROS)"] = ("nuPI (init_xi zero, forward, then step)",
                                           _cooper("nupi-zeros"), "same maths")
    except ImportError:
        pass
    return out


def _cast(factory):
    """The peers build float32 multipliers: ours are float64 here, so theirs are cast."""
    def build(pb):
        dual = factory(pb)
        for g in dual.param_groups:
            for p in g["params"]:
                p.data = p.data.to(F64)
            if "momentum_buffer" in g:
                g["momentum_buffer"] = g["momentum_buffer"].to(F64)
        return dual
    return build


def _cooper(kind: str):
    import cooper

    def build(pb: Problem, x: torch.Tensor):
        ctype = cooper.ConstraintType.INEQUALITY if pb.is_ineq else cooper.ConstraintType.EQUALITY

        class CMP(cooper.ConstrainedMinimizationProblem):
            def __init__(self):
                super().__init__()
                mult = cooper.multipliers.DenseMultiplier(num_constraints=pb.m, dtype=F64)
                self.c = cooper.Constraint(ctype, formulation_type=cooper.formulations.Lagrangian,
                                           multiplier=mult)

            def compute_cmp_state(self):
                return cooper.CMPState(loss=pb.loss(x), observed_constraints={
                    self.c: cooper.ConstraintState(violation=pb.cons(x))})

        cmp = CMP()
        if kind == "extra":
            from cooper.optim.torch_optimizers import ExtraSGD

            primal = ExtraSGD([x], lr=pb.primal_lr)
            dual = ExtraSGD(cmp.dual_parameters(), lr=0.5, maximize=True)
            co = cooper.optim.ExtrapolationConstrainedOptimizer(cmp, primal, dual)
        else:
            primal = torch.optim.SGD([x], lr=pb.primal_lr)
            if kind.startswith("nupi"):
                from cooper.optim.torch_optimizers.nupi_optimizer import nuPIInitType

                # Gains as float64 tensors: the peer makes float32 ones of Python floats.
                dual = cooper.optim.nuPI(
                    cmp.dual_parameters(), lr=0.5, Kp=torch.tensor(10.0, dtype=F64),
                    Ki=torch.tensor(1.0, dtype=F64), ema_nu=0.9, maximize=True,
                    init_type=nuPIInitType.SGD if kind == "nupi-sgd" else nuPIInitType.ZEROS)
            else:
                dual = torch.optim.SGD(cmp.dual_parameters(), lr=0.5, maximize=True)
            cls = cooper.optim.AlternatingDualPrimalOptimizer if kind == "alternating" else \
                cooper.optim.SimultaneousOptimizer
            co = cls(cmp, primal, dual)
        mult = cmp.c.multiplier
        return (lambda: co.roll()), (lambda: mult.weight.detach().reshape(-1).clone())
    return build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", choices=sorted(PROBLEMS),
                    default=["qp", "qp_eq", "np_logreg", "dp_adult"])
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mine = ours()
    theirs = peers()
    print(f"torch {torch.__version__}, 1 thread, full batch, float64, {args.steps} steps; "
          f"feasible = worst violation <= {FEASIBLE:g}")
    for name in args.problems:
        pb = PROBLEMS[name]()
        kind = "convex" if pb.convex else "not convex: SLSQP local solution"
        print(f"\n{pb.name} ({kind}): f* = {pb.f_star:.6f}, m = {pb.m}")
        results = {k: run(pb, b, args.steps) for k, b in mine.items()}
        for k, r in results.items():
            report(k, r)
        report("AdaptiveDual() defaults (context)", run(pb, two_line(
            lambda p: AdaptiveDual(p.m, is_ineq=p.is_ineq, dtype=F64)), args.steps))
        if "ALM" in results:
            results["ALM (forward, then step)"] = run(
                pb, two_line(lambda p: ALM(p.m, lr=0.5, is_ineq=p.is_ineq, dtype=F64),
                             order="simultaneous"), args.steps)
        if "hct iALM (sigma 1)" in theirs:
            results["iALM (sigma 1)"] = run(pb, two_line(lambda p: iALM(
                p.m, lr=0.5, sigma=1.0, gamma=10.0, is_ineq=p.is_ineq, dtype=F64)), args.steps)
        if "hct nuPI" in theirs:
            results["nuPI (init_xi zero)"] = run(pb, two_line(nupi("zero")), args.steps)
        if "Cooper nuPI (init SGD)" in theirs:
            results["nuPI (forward, then step)"] = run(
                pb, two_line(nupi(), order="simultaneous"), args.steps)
            results["nuPI (init_xi zero, forward, then step)"] = run(
                pb, two_line(nupi("zero"), order="simultaneous"), args.steps)
        if "hct PBM" in theirs:
            results["PBM (forward, then step)"] = run(pbm_constraints(pb), two_line(
                lambda p: PBM(p.m, lr=0.5, penalty_update="const", init_penalty=1.0,
                              anneal_dual=False, anneal_penalty=False, dtype=F64),
                order="simultaneous"), args.steps)
        for peer, (same_as, build, expect) in theirs.items():
            if peer == "hct SSG" and not pb.is_ineq:
                continue
            if isinstance(build, tuple):  # PBM: equalities as two inequalities
                r = run(pbm_constraints(pb), build[1], args.steps)
            else:
                r = run(pb, build, args.steps)
            report(peer, r)
            dx, dl = trajectory_gap(results[same_as], r)
            if peer == "hct SSG":
                dl = 0.0  # the peer's multipliers are always 0: compare the iterates
            verdict = "identical" if dx == 0 and dl == 0 else (
                "same to float tolerance" if max(dx, dl) < 1e-9 else "different")
            print(f"      vs ours {same_as}: max |dx| {dx:.1e}, max |dlambda| {dl:.1e} "
                  f"(relative above 1) -> "
                  f"{verdict} ({expect})")
        if pb.convex:
            bad = [k for k, r in results.items() if k in mine
                   and not (abs(r["gap"]) <= 1e-3 and r["viol"] <= FEASIBLE)]
            print(f"  within 1e-3 of f* and feasible to {FEASIBLE:g}: "
                  f"{'all' if not bad else 'all but ' + ', '.join(bad)}")


if __name__ == "__main__":
    main()
