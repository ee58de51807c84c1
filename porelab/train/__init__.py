"""Training: ``fit`` (the loop), ``TrainConfig`` and ``Sample``."""

from porelab.train.config import Sample, TrainConfig
from porelab.train.loop import COLLAPSED_LOSS, fit, validation_batches

__all__ = ["COLLAPSED_LOSS", "Sample", "TrainConfig", "fit", "validation_batches"]
