"""Fair inference on streams: exact per-batch projection and online primal-dual correction."""

from .model import FairModel, FairTrainer, project_batch
from .wrapper import FairInference

__all__ = ["FairInference", "FairModel", "FairTrainer", "project_batch"]
