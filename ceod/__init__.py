"""ceod — Cross-Entropy Overlap Distance training for industrial defect classifiers.

Importing ``ceod`` imports neither Lightning nor Hydra: the pure-torch pieces
(:mod:`ceod.core.cam`, :mod:`ceod.core.losses.ceod`) can be reused in any training loop.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

CONF_DIR = _Path(__file__).resolve().parents[1] / "conf"  # the Hydra config tree (python -m ceod.train's)
