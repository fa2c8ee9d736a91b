"""STAR remaining-length predictor: collection, training, baselines, evaluation, runtime.

The runtime entry point is `load_predictor(path=None)` (None = the shipped predictor).
"""

from starserve.predictor.runtime import RemainingLengthPredictor, load_predictor

__all__ = ["RemainingLengthPredictor", "load_predictor"]
