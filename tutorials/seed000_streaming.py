"""Seed 000's small-batch inference example, adapted to humancompatible_train.

Train with large batches through the exact per-batch projection (hard constraints), then
serve a stream of small batches through FairInference. Only the imports and names changed
(see docs/inference.md); set HCT_TUTORIAL_QUICK=1 for a short run.
"""

import logging
import os

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

from humancompatible_train.inference import FairModel, FairTrainer

logging.basicConfig(level=logging.INFO, format="%(message)s")
log = logging.getLogger("seed000")
QUICK = os.environ.get("HCT_TUTORIAL_QUICK") == "1"

# -----------------------------------------------------------------------------
# Generate synthetic data (seed 000's generator)
# -----------------------------------------------------------------------------
np.random.seed(42)
n_samples, n_features = (6000 if QUICK else 20000), 20
protected = np.random.binomial(1, 0.3, n_samples)
X_features = np.random.randn(n_samples, n_features - 1)
X_features[:, 0] += 0.3 * protected
logits = X_features[:, 0] + X_features[:, 1] + 0.5 * protected
y = (logits + np.random.randn(n_samples) * 0.5 > 0).astype(np.float32)
X = np.hstack([protected.reshape(-1, 1), X_features]).astype(np.float32)
log.info("Dataset: %d samples, Group 0: %d, Group 1: %d", n_samples, (1 - protected).sum(),
         protected.sum())

# Train/val/test split: 60/20/20 (seed 000 uses sklearn's train_test_split)
perm = np.random.RandomState(42).permutation(n_samples)
tr, va, te = np.split(perm, [int(0.6 * n_samples), int(0.8 * n_samples)])
X_train, y_train, X_val, y_val, X_test, y_test = X[tr], y[tr], X[va], y[va], X[te], y[te]

batch_size_train = 2000 if not QUICK else 1000
batch_size_inference = 64
b_tau = batch_size_train
fairness_tolerance = 0.05
eta_0 = 0.5


def loader(Xs, ys, batch, shuffle=False):
    ds = torch.utils.data.TensorDataset(torch.tensor(Xs), torch.tensor(ys))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=shuffle)


torch.manual_seed(0)
train_loader = loader(X_train, y_train, batch_size_train, shuffle=True)
val_loader = loader(X_val, y_val, batch_size_train)

model = FairModel(
    input_dim=X.shape[1], hidden_dims=[64, 32], output_dim=1, protected_attr_idx=0,
    prediction_bounds=(-10.0, 10.0), fairness_tolerance=fairness_tolerance, b_tau=b_tau,
    eta_0=eta_0, fairness_metric="mean_pred",
)
criterion = nn.BCEWithLogitsLoss()
optimizer = optim.Adam(model.parameters(), lr=0.001 if not QUICK else 0.003)
trainer = FairTrainer(model, criterion, optimizer, early_stopping_patience=15)
history = trainer.fit(train_loader, val_loader, epochs=30 if not QUICK else 10, verbose=1,
                      log_interval=10)

for batch in (1, 4, 16, 64):
    test_loader_small = loader(X_test, y_test, batch)
    metrics = trainer.evaluate(test_loader_small, reset_before=True)
    log.info("batch %2d: test loss %.4f  weighted avg gap %.4f  pooled gap %.4f  "
             "lambda max %.3f  mean sq. adjustment %.3f", batch, metrics["test_loss"],
             metrics["weighted_avg_fairness_gap"], metrics["pooled_aggregate_gap"],
             metrics["lambda_max"], metrics["mean_squared_adjustment"])
    assert metrics["pooled_aggregate_gap"] <= fairness_tolerance + 0.005

stats = model.get_aggregate_fairness_stats(loader(X_test, y_test, batch_size_inference),
                                           reset_before=True)
log.info("Aggregate Fairness Gap: %.4f (target %.2f), satisfied: %s", stats["aggregate_gap"],
         fairness_tolerance, stats["aggregate_gap"] <= fairness_tolerance)
log.info("Lambda max: %.4f  Total samples: %d, Num batches: %d", stats["lambda_max"],
         stats["total_samples"], stats["num_batches"])
