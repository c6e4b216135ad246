"""bnlib: measure how BatchNorm changes memorization, per-sample influence and membership leakage.

Modules, from the data to the book:
    config (profiles, validation, the compared norms and comparisons) · data · models · train · runs (one
    cached training run) · ensemble (K models at once) · zoo (zoo members as tasks) · engine (the same tasks
    on a Dask cluster) · population (one population per norm, the three comparisons) · results (cache
    policy, summaries) · stats · verdict (paired t on model pairs, equivalence, power, the book family,
    verdict words) · plots · report · book · cli · chapter (what every chapter notebook does: set-up,
    parameters cell, glue, summary).

Per chapter, the measurement (in the cache keys of what it computes) apart from its reading (tables, glue,
figures, headline metrics; free to change without re-training anything). The reading modules are named in one
place, ``results.READING_MODULES`` and ``results.READING_SUFFIXES`` (``*_chapter``, ``*_report``, ``*_plots``):
``results.code_of`` never puts them in a key nor follows imports through them, and no measuring module imports
one (tests/test_cache_keys.py):
    data_and_models: runs → data_and_models_chapter
    memorization: memorization, population → memorization_chapter
    influence: influence (with the per-sample gradient engine in ``bnlib.persample``) → influence_chapter,
        influence_plots
    membership_inference: mia (mia_attacks, mia_eval) → mia_chapter, mia_summary, mia_plots
    theory: theory, theory_checks → theory_derivation, theory_cnn, theory_plots
    ablations: ablations → ablation_report
    what_to_do: dp → dp_tradeoff
"""

__version__ = "0.1.0"
