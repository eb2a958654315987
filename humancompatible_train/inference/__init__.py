"""Fair inference on streams: every call keeps the pooled group means of everything served
within ε (and large batches their own), with prediction bounds inside the projection."""

from .model import FairModel, FairTrainer, project_batch
from .wrapper import FairInference

__all__ = ["FairInference", "FairModel", "FairTrainer", "project_batch"]
