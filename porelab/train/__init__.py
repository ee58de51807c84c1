"""Training: ``fit`` (the loop), ``TrainConfig`` and ``Sample``; the loop's callbacks in
:mod:`porelab.train.callbacks`."""

from porelab.train.callbacks import COLLAPSED_LOSS
from porelab.train.config import Sample, TrainConfig
from porelab.train.loop import fit, validation_batches

__all__ = ["COLLAPSED_LOSS", "Sample", "TrainConfig", "fit", "validation_batches"]
