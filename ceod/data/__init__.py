"""Datasets and DataModules. Submodules import Lightning; ``ceod.benchmarks.synthetic`` needs only numpy/PIL."""
