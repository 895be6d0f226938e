"""ceod — Cross-Entropy Overlap Distance training for industrial defect classifiers.

Importing ``ceod`` imports neither Lightning nor Hydra: the pure-torch pieces
(:mod:`ceod.cam`, :mod:`ceod.loss`) can be reused in any training loop.
"""

__version__ = "0.1.0"
