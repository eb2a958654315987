"""FairInference on the fairness_training small-batch streaming example: the promise, the
accuracy it costs, and its speed, against the offline exact projection and (when installed)
the original fairness_training system on the same streams.

Data as in that example (20,000 rows, 20 features, column 0 the protected attribute with a
30 % minority, the same generator and seed, 60/20/20 split with ``random_state=42``). The
model is an MLP 20-64-32-1 trained without any fairness term (BCE on logits); the wrapper
serves its logits with ε = 0.05, b_tau = 64, η0 = 0.5.

Streams: the 4,000 test rows served at batch sizes 1, 4, 16, 64, 256 in four orders:

* ``random``: the split's order;
* ``adversarial``: every row of group 0 first, then group 1;
* ``drifting``: the share of group 1 rises along the stream (from about 10 % to 50 %);
* ``composition``: batches alternate between the lower and the upper half of the scores
  (rows shuffled within each half), so a batch's group mix follows its scores: low batches
  mostly group 0, high ones with more of group 1 (the shape of the two-batch reproducer);
* ``sorted``: every row in order of its score, the extreme of that (a worst case: every
  prefix must stay balanced while the groups' prefix means drift apart).

Printed per stream: the pooled gap at the end, the largest pooled gap of any prefix once both
groups have been served, accuracy (decision: logit >= 0) and its difference from the
unadjusted model and from the offline exact projection of the whole test set, the mean
absolute adjustment, and samples per second. Settings: ``default``, ``calibrated``
(``calibrate`` on the validation split first) and ``per_batch=False``; bounds none, the
example's ±10 and a binding ±2. Then the per-call cost against the model's forward (one
thread, medians of interleaved calls, under ``flock /tmp/bench.lock``), and the original
system on the same streams when ``fairness_training`` imports (``pip install
.[compare]``).

    python benchmarks/inference.py            # everything (a few minutes)
    python benchmarks/inference.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import math
import statistics
import time
import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from sklearn.model_selection import train_test_split

from humancompatible_train._projection import project_cells
from humancompatible_train.inference import FairInference

EPS, B_TAU, ETA0 = 0.05, 64, 0.5
BATCHES = (1, 4, 16, 64, 256)
ORDERS = ("random", "adversarial", "drifting", "composition", "sorted")
BOUNDS = {"none": None, "±10": (-10.0, 10.0), "±2": (-2.0, 2.0)}


def data(n_samples: int) -> dict[str, np.ndarray]:
    """The fairness_training small-batch streaming example's generator and split."""
    np.random.seed(42)
    n_features = 20
    protected = np.random.binomial(1, 0.3, n_samples)
    X_features = np.random.randn(n_samples, n_features - 1)
    X_features[:, 0] += 0.3 * protected
    logits = X_features[:, 0] + X_features[:, 1] + 0.5 * protected
    y = (logits + np.random.randn(n_samples) * 0.5 > 0).astype(np.float32)
    X = np.hstack([protected.reshape(-1, 1), X_features]).astype(np.float32)
    X_train, X_temp, y_train, y_temp = train_test_split(X, y, test_size=0.4, random_state=42)
    X_val, X_test, y_val, y_test = train_test_split(X_temp, y_temp, test_size=0.5,
                                                    random_state=42)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "X_test": X_test, "y_test": y_test}


def train(d: dict[str, np.ndarray], epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 1))
    X, y = torch.tensor(d["X_train"]), torch.tensor(d["y_train"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(256):
            opt.zero_grad()
            loss_fn(model(X[idx]).squeeze(1), y[idx]).backward()
            opt.step()
    return model.eval()


def order(name: str, z: np.ndarray, g: np.ndarray, batch: int) -> np.ndarray:
    n = len(z)
    rng = np.random.default_rng(1)
    if name == "adversarial":
        return np.argsort(g, kind="stable")
    if name == "drifting":
        u = rng.uniform(size=n)
        key = np.where(g == 1, np.sqrt(u), u)  # group 1 ever denser later
        return np.argsort(key, kind="stable")
    if name == "composition":
        by_score = np.argsort(z, kind="stable")
        low, high = rng.permutation(by_score[:n // 2]), rng.permutation(by_score[n // 2:])
        chunks = [part[i:i + batch] for i in range(0, n // 2, batch) for part in (low, high)]
        return np.concatenate(chunks + [by_score[2 * (n // 2):]])
    if name == "sorted":
        return np.argsort(z, kind="stable")
    return np.arange(n)


def serve(fi: FairInference, z: np.ndarray, g: np.ndarray, batch: int
          ) -> tuple[np.ndarray, float, float]:
    """Serve the stream; returns the served scores, the largest prefix pooled gap once both
    groups are in, and the wall time of the adjustments."""
    zt, gt = torch.tensor(z), torch.tensor(g)
    out = np.empty_like(z)
    wall = 0.0
    for i in range(0, len(z), batch):
        t0 = time.perf_counter()
        q = fi.adjust(zt[i:i + batch], gt[i:i + batch])
        wall += time.perf_counter() - t0
        out[i:i + batch] = q.numpy()
    return out, prefix_gap(out, g, batch), wall


def prefix_gap(q: np.ndarray, g: np.ndarray, batch: int) -> float:
    """The largest pooled gap over the prefixes ending at batch boundaries (both groups in)."""
    ends = np.minimum(np.arange(batch, len(q) + batch, batch), len(q)) - 1
    sums = np.stack([np.cumsum(np.where(g == s, q, 0.0))[ends] for s in (0, 1)])
    counts = np.stack([np.cumsum(g == s)[ends] for s in (0, 1)])
    both = counts.all(0)
    if not both.any():
        return 0.0
    means = sums[:, both] / counts[:, both]
    return float(np.abs(means[1] - means[0]).max())


def pooled(q: np.ndarray, g: np.ndarray) -> float:
    return abs(q[g == 1].mean() - q[g == 0].mean())


def accuracy(q: np.ndarray, y: np.ndarray) -> float:
    return float(((q >= 0) == (y > 0.5)).mean())


def offline(z: np.ndarray, g: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    sol = project_cells(torch.tensor(z), torch.tensor(g), 1, 2, EPS, bounds)
    return sol.q.numpy()


def oracle(z: np.ndarray, g: np.ndarray, batch: int, per_batch: bool, iters: int = 40000
           ) -> np.ndarray:
    r"""The clairvoyant bound: the smallest (ℓ2) change of the whole stream such that *every
    prefix* ending at a batch boundary has its pooled gap within ε, and every batch with both
    groups and at least ``B_TAU`` rows (every such batch with ``per_batch``) its own gap:

    .. math:: \min_q \|q - z\|^2 \ \text{s.t.}\ |\bar q_{1,\le t} -
        \bar q_{0,\le t}| \le \varepsilon \ \forall t, \quad
        |\bar q_{1,b} - \bar q_{0,b}| \le \varepsilon \ (b \text{ large}).

    Any online method that keeps the same promise serves a feasible point of this problem, so
    its squared adjustment is at least this one's, whatever it knows; it also knows the whole
    future, which no online method does. Without bounds the rows of one (batch, group) cell
    move together, so the variables are the cells' cumulative adjustment masses (a chain:
    each constraint touches at most four of them). Solved by ADMM (Boyd et al., FnT ML
    2011; the OSQP splitting, Stellato et al., Math. Prog. Comp. 2020) with rows scaled to
    unit norm and one sparse factorisation; the returned stream is checked by the caller.
    """
    n = len(z)
    B = -(-n // batch)
    bidx = np.arange(n) // batch
    cnt, tot = np.zeros((B, 2)), np.zeros((B, 2))
    np.add.at(cnt, (bidx, g), 1)
    np.add.at(tot, (bidx, g), z)
    var = -np.ones((B, 2), dtype=np.int64)    # variable of the cell, -1 when empty
    prev = -np.ones((B, 2), dtype=np.int64)   # the group's variable before it
    last = -np.ones((B, 2), dtype=np.int64)   # the group's latest variable up to b
    cur, m = [-1, -1], 0
    for b in range(B):
        for s in (0, 1):
            if cnt[b, s] > 0:
                prev[b, s], var[b, s], cur[s] = cur[s], m, m
                m += 1
            last[b, s] = cur[s]
    # Objective: sum over cells of (mass_k - mass_prev)^2 / n_cell = n_cell * shift^2.
    pr, pc, pv = [], [], []
    for b, s in zip(*np.nonzero(var >= 0)):
        w, a, p = 1.0 / cnt[b, s], var[b, s], prev[b, s]
        pr.append(a), pc.append(a), pv.append(w)
        if p >= 0:
            pr += [p, a, p]
            pc += [p, p, a]
            pv += [w, -w, -w]
    P = sp.csc_matrix((pv, (pr, pc)), shape=(m, m))
    ar, ac, av, lo, hi = [], [], [], [], []

    def row(coef: dict[int, float], c: float) -> None:
        norm = math.sqrt(sum(v * v for v in coef.values()))
        for j, v in coef.items():
            ar.append(len(lo)), ac.append(j), av.append(v / norm)
        lo.append((-EPS - c) / norm)
        hi.append((EPS - c) / norm)

    R, N = np.cumsum(tot, 0), np.cumsum(cnt, 0)
    for b in range(B):
        if N[b].all():
            coef = {int(last[b, 1]): 1 / N[b, 1]}
            coef[int(last[b, 0])] = coef.get(int(last[b, 0]), 0.0) - 1 / N[b, 0]
            row(coef, R[b, 1] / N[b, 1] - R[b, 0] / N[b, 0])
        if cnt[b].all() and (per_batch or cnt[b].sum() >= B_TAU):
            coef = {}
            for s, sign in ((1, 1.0), (0, -1.0)):
                for j, v in ((var[b, s], sign), (prev[b, s], -sign)):
                    if j >= 0:
                        coef[int(j)] = coef.get(int(j), 0.0) + v / cnt[b, s]
            row(coef, tot[b, 1] / cnt[b, 1] - tot[b, 0] / cnt[b, 0])
    A = sp.csc_matrix((av, (ar, ac)), shape=(len(lo), m))
    lo_a, hi_a = np.array(lo), np.array(hi)
    # OSQP's step-size rule: every 200 iterations rho is rescaled by the balance of the
    # primal and dual residuals and the system refactorised.
    rho, sigma, alpha = 0.1, 1e-6, 1.6
    x, zc, y = np.zeros(m), np.zeros(len(lo)), np.zeros(len(lo))
    for it in range(iters):
        if it % 200 == 0:
            if it:
                Ax, Px, Aty = A @ x, P @ x, A.T @ y
                prim = np.abs(Ax - zc).max() / max(np.abs(Ax).max(), np.abs(zc).max(), 1e-12)
                dual = np.abs(Px + Aty).max() / max(np.abs(Px).max(), np.abs(Aty).max(), 1e-12)
                if prim < 1e-10 and dual < 1e-10:
                    break
                rho = float(np.clip(rho * math.sqrt(prim / max(dual, 1e-300)), 1e-6, 1e6))
            lu = spla.splu((P + sigma * sp.eye(m) + rho * (A.T @ A)).tocsc())
        xt = lu.solve(sigma * x + A.T @ (rho * zc - y))
        x = alpha * xt + (1 - alpha) * x
        zr = alpha * (A @ xt) + (1 - alpha) * zc
        zc_new = np.clip(zr + y / rho, lo_a, hi_a)
        y += rho * (zr - zc_new)
        zc = zc_new
    mass = np.where(var >= 0, x[var], 0.0)
    before = np.where(prev >= 0, x[prev], 0.0)
    shift = np.where(var >= 0, (mass - before) / np.maximum(cnt, 1), 0.0)
    return z + shift[bidx, g]


def accuracy_table(model: torch.nn.Module, d: dict[str, np.ndarray], batches: tuple[int, ...],
                   orders: tuple[str, ...], bounds_names: tuple[str, ...]) -> None:
    Xt = torch.tensor(d["X_test"])
    with torch.no_grad():
        z = model(Xt).squeeze(1).double().numpy()
        z_val = model(torch.tensor(d["X_val"])).squeeze(1).double()
    g = d["X_test"][:, 0].astype(np.int64)
    g_val = torch.tensor(d["X_val"][:, 0].astype(np.int64))
    y = d["y_test"]
    acc_raw = accuracy(z, y)
    print(f"\nTest rows {len(z)}; unadjusted: accuracy {acc_raw:.4f}, pooled gap "
          f"{pooled(z, g):.4f}")
    print("Accuracy differences are in points (x100); 'vs offline': against the exact "
          "projection of the whole test set (the best any stream could do).")
    for bname in bounds_names:
        bounds = BOUNDS[bname]
        q_off = offline(z, g, bounds)
        acc_off = accuracy(q_off, y)
        print(f"\nbounds {bname}: offline projection accuracy {acc_off:.4f} (pooled gap "
              f"{pooled(q_off, g):.4f}, mean |adj| {np.abs(q_off - z).mean():.3f})")
        oracles: dict[tuple[str, int, bool], np.ndarray] = {}
        if bounds is None:
            oracles = oracle_table(z, g, y, q_off, batches, orders, acc_off)
        print(f"  {'setting':<14} {'order':<12} {'batch':>5} {'pooled':>7} {'max prefix':>10} "
              f"{'acc':>6} {'vs raw':>7} {'vs offline':>10} {'first100':>8} {'vs oracle':>9} "
              f"{'f100 vs or':>10} {'sq/oracle':>9} {'mean|adj|':>9} {'samples/s':>10}")
        for setting in ("default", "calibrated", "per_batch=True"):
            per_batch = setting == "per_batch=True"
            for oname in orders:
                for batch in batches:
                    if per_batch and batch >= B_TAU:
                        continue  # the option only concerns small batches
                    idx = order(oname, z, g, batch)
                    zs, gs, ys = z[idx], g[idx], y[idx]
                    fi = FairInference(fairness_tolerance=EPS, b_tau=B_TAU, eta_0=ETA0,
                                       prediction_bounds=bounds, per_batch=per_batch)
                    if setting == "calibrated":
                        fi.calibrate_scores(z_val, g_val)
                    q, worst, wall = serve(fi, zs, gs, batch)
                    acc = accuracy(q, ys)
                    first = accuracy(q[:100], ys[:100])
                    vs_or = f100_or = sq_or = ""
                    q_or = oracles.get((oname, batch, per_batch))
                    if q_or is not None:
                        vs_or = f"{100 * (acc - accuracy(q_or, ys)):+.2f}"
                        f100_or = f"{100 * (first - accuracy(q_or[:100], ys[:100])):+.1f}"
                        sq_or = f"{((q - zs) ** 2).sum() / ((q_or - zs) ** 2).sum():.2f}"
                    first -= accuracy(q_off[idx][:100], ys[:100])
                    print(f"  {setting:<14} {oname:<12} {batch:5d} {pooled(q, gs):7.4f} "
                          f"{worst:10.4f} {acc:6.4f} {100 * (acc - acc_raw):+7.2f} "
                          f"{100 * (acc - acc_off):+10.2f} {100 * first:+8.1f} {vs_or:>9} "
                          f"{f100_or:>10} {sq_or:>9} {np.abs(q - zs).mean():9.3f} "
                          f"{len(z) / wall:10,.0f}")


def oracle_table(z: np.ndarray, g: np.ndarray, y: np.ndarray, q_off: np.ndarray,
                 batches: tuple[int, ...], orders: tuple[str, ...], acc_off: float
                 ) -> dict[tuple[str, int, bool], np.ndarray]:
    """The clairvoyant bound of every stream (no bounds), printed against the offline
    projection; the rows below compare each setting with it ('vs oracle': accuracy in
    points; 'f100 vs or': the first hundred predictions; 'sq/oracle': squared adjustment,
    at least 1 for any method that keeps the promise)."""
    print(f"  {'clairvoyant':<14} {'order':<12} {'batch':>5} {'max prefix':>10} {'acc':>6} "
          f"{'vs offline':>10} {'first100':>8} {'sum sq adj':>10}")
    found = {}
    for per_batch in (False, True):
        for oname in orders:
            for batch in batches:
                if per_batch and batch >= B_TAU:
                    continue
                idx = order(oname, z, g, batch)
                zs, gs, ys = z[idx], g[idx], y[idx]
                q = found[oname, batch, per_batch] = oracle(zs, gs, batch, per_batch)
                acc = accuracy(q, ys)
                first = accuracy(q[:100], ys[:100]) - accuracy(q_off[idx][:100], ys[:100])
                name = "per_batch=True" if per_batch else "promise"
                print(f"  {name:<14} {oname:<12} {batch:5d} {prefix_gap(q, gs, batch):10.5f} "
                      f"{acc:6.4f} {100 * (acc - acc_off):+10.2f} {100 * first:+8.1f} "
                      f"{((q - zs) ** 2).sum():10.1f}")
    return found


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """Timing runs never overlap with other timing runs on this machine."""
    with open("/tmp/bench.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timing(model: torch.nn.Module, batches: tuple[int, ...], reps: int, lock: bool = True
           ) -> None:
    print(f"\nPer-call cost (one thread, median of {reps} interleaved calls, after 100 "
          "warm-up; the wrapper's adjustment alone against the model's forward)")
    print(f"  {'batch':>5} {'forward':>10} {'FairInference':>14} {'ratio':>7} {'samples/s':>11}")
    gen = torch.Generator().manual_seed(0)
    with bench_lock() if lock else contextlib.nullcontext():
        for batch in batches:
            fi = FairInference(fairness_tolerance=EPS, b_tau=B_TAU, eta_0=ETA0)
            x = torch.randn(reps + 100, batch, 20, generator=gen)
            g = (torch.rand(reps + 100, batch, generator=gen) < 0.3).long()
            x[..., 0] = g.float()
            fwd, wrap = [], []
            with torch.no_grad():
                for i in range(reps + 100):
                    t0 = time.perf_counter()
                    z = model(x[i])
                    t1 = time.perf_counter()
                    fi.adjust(z, g[i])
                    t2 = time.perf_counter()
                    if i >= 100:
                        fwd.append(t1 - t0)
                        wrap.append(t2 - t1)
            f, w = statistics.median(fwd), statistics.median(wrap)
            print(f"  {batch:5d} {f * 1e6:7.1f} us {w * 1e6:11.1f} us {w / f:6.2f}x "
                  f"{batch / w:11,.0f}")


def original(model: torch.nn.Module, d: dict[str, np.ndarray], batches: tuple[int, ...],
             orders: tuple[str, ...], rows: int) -> None:
    try:
        from fairness_training import FairModel
    except ImportError:
        print("\nfairness_training is not installed: pip install '.[compare]' (it needs "
              "cvxpylayers) to run the original system on the same streams.")
        return
    Xt = torch.tensor(d["X_test"])
    with torch.no_grad():
        z = model(Xt).squeeze(1).double().numpy()
    g = d["X_test"][:, 0].astype(np.int64)
    y = d["y_test"]
    print(f"\nThe original fairness_training (FairModel.wrap, bounds ±10, ε {EPS}, b_tau "
          f"{B_TAU}, η0 {ETA0}) on the first {rows} rows of the same streams, beside "
          "FairInference with the same bounds")
    print(f"  {'system':<15} {'order':<12} {'batch':>5} {'pooled':>7} {'max prefix':>10} "
          f"{'acc':>6} {'mean|adj|':>9} {'ms/call':>8}")
    for oname in orders:
        for batch in batches:
            idx = order(oname, z, g, batch)[:rows]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                orig = FairModel.wrap(model, protected_attr_idx=0, input_dim=20,
                                      fairness_tolerance=EPS, prediction_bounds=(-10.0, 10.0),
                                      b_tau=B_TAU, eta_0=ETA0)
            orig.eval()
            out, sums, counts, worst, wall, failed = [], np.zeros(2), np.zeros(2), 0.0, 0.0, ""
            for i in range(0, rows, batch):
                xb = Xt[idx[i:i + batch]]
                t0 = time.perf_counter()
                try:
                    with torch.no_grad(), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        qb = orig(xb, inference=True).squeeze(1).double().numpy()
                except Exception as exc:  # the original cannot serve some batches
                    failed = type(exc).__name__
                    break
                wall += time.perf_counter() - t0
                out.append(qb)
                gb = g[idx[i:i + batch]]
                np.add.at(sums, gb, qb)
                np.add.at(counts, gb, 1)
                if counts.all():
                    worst = max(worst, abs(sums[1] / counts[1] - sums[0] / counts[0]))
            if failed:
                print(f"  {'original':<15} {oname:<12} {batch:5d}   fails ({failed})")
            else:
                q = np.concatenate(out)
                per_call = 1e3 * wall / math.ceil(rows / batch)
                print(f"  {'original':<15} {oname:<12} {batch:5d} {pooled(q, g[idx]):7.4f} "
                      f"{worst:10.4f} {accuracy(q, y[idx]):6.4f} "
                      f"{np.abs(q - z[idx]).mean():9.3f} {per_call:8.2f}")
            fi = FairInference(fairness_tolerance=EPS, b_tau=B_TAU, eta_0=ETA0,
                               prediction_bounds=(-10.0, 10.0))
            q, worst, wall = serve(fi, z[idx], g[idx], batch)
            print(f"  {'FairInference':<15} {oname:<12} {batch:5d} {pooled(q, g[idx]):7.4f} "
                  f"{worst:10.4f} {accuracy(q, y[idx]):6.4f} {np.abs(q - z[idx]).mean():9.3f} "
                  f"{1e3 * wall / math.ceil(rows / batch):8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: small data, few cases")
    ap.add_argument("--reps", type=int, default=2000, help="timed calls per batch size")
    ap.add_argument("--original-rows", type=int, default=1000,
                    help="test rows served through the original system per stream")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        d = data(3000)
        model = train(d, epochs=1)
        accuracy_table(model, d, (1, 16, 64), ("adversarial",), ("none", "±2"))
        timing(model, (1, 16, 64), min(args.reps, 50), lock=False)  # a smoke run: no figures
        original(model, d, (64,), ("random",), 128)
        return
    d = data(20000)
    model = train(d, epochs=10)
    print(f"torch {torch.__version__}, 1 thread; MLP 20-64-32-1 trained 10 epochs (BCE)")
    accuracy_table(model, d, BATCHES, ORDERS, tuple(BOUNDS))
    timing(model, BATCHES, args.reps)
    # Orders whose first rows hold both groups (the adversarial one starts with one group).
    original(model, d, BATCHES, ("random", "drifting"), args.original_rows)


if __name__ == "__main__":
    main()
