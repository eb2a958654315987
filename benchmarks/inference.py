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
    sums, counts = np.zeros(2), np.zeros(2)
    worst, wall = 0.0, 0.0
    for i in range(0, len(z), batch):
        t0 = time.perf_counter()
        q = fi.adjust(zt[i:i + batch], gt[i:i + batch])
        wall += time.perf_counter() - t0
        qn = q.numpy()
        out[i:i + batch] = qn
        gi = g[i:i + batch]
        np.add.at(sums, gi, qn)
        np.add.at(counts, gi, 1)
        if counts.all():
            m = sums / counts
            worst = max(worst, abs(m[1] - m[0]))
    return out, worst, wall


def pooled(q: np.ndarray, g: np.ndarray) -> float:
    return abs(q[g == 1].mean() - q[g == 0].mean())


def accuracy(q: np.ndarray, y: np.ndarray) -> float:
    return float(((q >= 0) == (y > 0.5)).mean())


def offline(z: np.ndarray, g: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    sol = project_cells(torch.tensor(z), torch.tensor(g), 1, 2, EPS, bounds)
    return sol.q.numpy()


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
        print(f"  {'setting':<11} {'order':<12} {'batch':>5} {'pooled':>7} {'max prefix':>10} "
              f"{'acc':>6} {'vs raw':>7} {'vs offline':>10} {'first100':>8} {'mean|adj|':>9} "
              f"{'samples/s':>10}")
        for setting in ("default", "calibrated", "per_batch=False"):
            for oname in orders:
                for batch in batches:
                    idx = order(oname, z, g, batch)
                    zs, gs, ys = z[idx], g[idx], y[idx]
                    if setting == "per_batch=False" and batch >= B_TAU:
                        continue  # the option only concerns small batches
                    fi = FairInference(fairness_tolerance=EPS, b_tau=B_TAU, eta_0=ETA0,
                                       prediction_bounds=bounds,
                                       per_batch=setting != "per_batch=False")
                    if setting == "calibrated":
                        fi.calibrate_scores(z_val, g_val)
                    q, worst, wall = serve(fi, zs, gs, batch)
                    acc = accuracy(q, ys)
                    first = accuracy(q[:100], ys[:100]) - accuracy(q_off[idx][:100], ys[:100])
                    print(f"  {setting:<11.11} {oname:<12} {batch:5d} {pooled(q, gs):7.4f} "
                          f"{worst:10.4f} {acc:6.4f} {100 * (acc - acc_raw):+7.2f} "
                          f"{100 * (acc - acc_off):+10.2f} {100 * first:+8.1f} "
                          f"{np.abs(q - zs).mean():9.3f} {len(z) / wall:10,.0f}")


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
        accuracy_table(model, d, (1, 16, 64), ("adversarial",), ("±2",))
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
