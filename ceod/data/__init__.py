"""Datasets and DataModules. Submodules import Lightning; ``ceod.data.synthetic`` needs only numpy/PIL."""
