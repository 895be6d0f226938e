"""Lightning callbacks, one per file: :class:`HeatMapFigures` (heat-map figures for every logger) and
:class:`InferenceRecord` (what predict and export read from a checkpoint)."""

from ceod.training.callbacks.heat_figures import HeatMapFigures
from ceod.training.callbacks.inference_record import InferenceRecord

__all__ = ["HeatMapFigures", "InferenceRecord"]
