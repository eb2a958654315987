"""
Small-Batch Fair Inference with Primal-Dual Algorithm
Train with large batches, deploy with streaming small batches.

The fairness_training small-batch streaming example, ported to humancompatible_train: only the
imports changed (see docs/inference.md for the mapping), and HCT_TUTORIAL_QUICK=1 selects a
short run (8,000 samples instead of 20,000) for the tests.
"""
import os

import numpy as np
import torch  # noqa: F401  (imported by the original example)
import torch.nn as nn
import torch.optim as optim
from sklearn.model_selection import train_test_split

from humancompatible_train.fairness import create_dataloaders, create_stratified_dataloaders
from humancompatible_train.inference import FairModel, FairTrainer

QUICK = os.environ.get("HCT_TUTORIAL_QUICK") == "1"

# -----------------------------------------------------------------------------
# Generate synthetic data
# -----------------------------------------------------------------------------
np.random.seed(42)
n_samples, n_features = (8000 if QUICK else 20000), 20
# Protected attribute (col 0): 30% in group 1
protected = np.random.binomial(1, 0.3, n_samples)
# Features with some correlation to protected attribute
X_features = np.random.randn(n_samples, n_features - 1)
X_features[:, 0] += 0.3 * protected
# Target with bias: group 1 more likely positive
logits = X_features[:, 0] + X_features[:, 1] + 0.5 * protected
y = (logits + np.random.randn(n_samples) * 0.5 > 0).astype(np.float32)
X = np.hstack([protected.reshape(-1, 1), X_features]).astype(np.float32)
print(f"Dataset: {n_samples} samples, Group 0: {(1-protected).sum()}, Group 1: {protected.sum()}")
print(f"Positive rate - Group 0: {y[protected==0].mean():.3f}, "
      f"Group 1: {y[protected==1].mean():.3f}")

# -----------------------------------------------------------------------------
# Train/val/test split
# -----------------------------------------------------------------------------
X_train, X_temp, y_train, y_temp = train_test_split(X, y, test_size=0.4, random_state=42)
X_val, X_test, y_val, y_test = train_test_split(X_temp, y_temp, test_size=0.5, random_state=42)

# -----------------------------------------------------------------------------
# Configuration
# -----------------------------------------------------------------------------
batch_size_train = 2000  # Large batches for training
batch_size_inference = 64  # Small batches for inference
b_tau = 2000
fairness_tolerance = 0.05
eta_0 = 0.5  # Initial dual step size. Increase for stricter compliance to constraints!

# Training dataloaders (large batches with stratification)
train_loader, val_loader = create_stratified_dataloaders(
    X_train, y_train, X_val, y_val,
    protected_attr_idx=0,
    batch_size_train=batch_size_train,
    batch_size_eval=batch_size_train
)

# Test dataloader (small batches - simulates streaming)
_, _, test_loader_small = create_dataloaders(
    X_train, y_train, X_val, y_val, X_test, y_test,
    batch_size_train=batch_size_train,
    batch_size_eval=batch_size_inference
)

# -----------------------------------------------------------------------------
# Create FairModel
# -----------------------------------------------------------------------------
model = FairModel(
    input_dim=X.shape[1],
    hidden_dims=[64, 32],
    output_dim=1,
    protected_attr_idx=0,
    prediction_bounds=(-10.0, 10.0),
    fairness_tolerance=fairness_tolerance,
    b_tau=b_tau,
    eta_0=eta_0,
    fairness_metric='mean_pred'
)

print(f"\nTraining: batch={batch_size_train} >= b_tau → HARD constraints")
print(f"Inference: batch={batch_size_inference} < b_tau → PRIMAL-DUAL algorithm")
print(f"Fairness tolerance (ε): {fairness_tolerance}, eta_0: {eta_0}")

# -----------------------------------------------------------------------------
# Train (large batches with hard constraints)
# -----------------------------------------------------------------------------
criterion = nn.BCEWithLogitsLoss()
optimizer = optim.Adam(model.parameters(), lr=0.001)
trainer = FairTrainer(model, criterion, optimizer, early_stopping_patience=15)

print("\n" + "="*60)
print("TRAINING (Large Batches - Hard Constraints)")
print("="*60)
history = trainer.fit(train_loader, val_loader, epochs=30, verbose=1, log_interval=10)

# -----------------------------------------------------------------------------
# Inference (small batches with primal-dual)
# -----------------------------------------------------------------------------
print("\n" + "="*60)
print("INFERENCE (Small Batches - Primal-Dual)")
print("="*60)

metrics = trainer.evaluate(test_loader_small)
stats = model.get_aggregate_fairness_stats(test_loader_small, reset_before=True)

print("\nResults:")
print(f" Test Loss: {metrics['test_loss']:.4f}")
print(f" Aggregate Fairness Gap: {stats['aggregate_gap']:.4f}")
print(f" Target ε: {fairness_tolerance}")
print(f" Constraint satisfied: {stats['aggregate_gap'] <= fairness_tolerance}")
print(f"\n Lambda max: {stats['lambda_max']:.4f}")
print(f" Total samples: {stats['total_samples']}, Num batches: {stats['num_batches']}")
