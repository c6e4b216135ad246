"""bnlib: measure how BatchNorm changes memorization, per-sample influence and membership leakage.

Modules, from the data to the book:
    config (profiles, validation, the compared norms and comparisons) · data · models · train · runs (one
    cached training run) · ensemble (K models at once) · zoo (zoo members as tasks) · engine (the same tasks
    on a Dask cluster) · population (one population per norm, the three comparisons) · results (cache
    policy, summaries) · stats · verdict (cluster bootstrap, power, Holm, verdict words) · plots · report ·
    book · cli; per chapter: memorization, influence (with the per-sample gradient engine in
    ``bnlib.persample``), mia, theory (theory_checks, theory_plots), ablations, dp.
"""

__version__ = "0.1.0"
