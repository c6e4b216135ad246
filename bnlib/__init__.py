"""bnlib: measure how BatchNorm changes memorization, per-sample influence and membership leakage.

Modules: config, data, models, train, zoo, results, stats, plots, report, cli (and, per chapter,
memorization, influence, mia, theory, ablations).
"""

__version__ = "0.1.0"
