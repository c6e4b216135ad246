"""The theory chapter's derivation as its page shows it: the LaTeX of every expression sympy derives, step by
step, sympy's confirmation of each hand-written form the page displays, and the numbers its text quotes at the
chapter's defaults.

The algebra itself is :mod:`bnlib.theory`; this module only writes it out, so that the notebook holds the
narrative and one call per step. Each step returns ``{glue name: value}``: LaTeX (a string) for every name that
starts with ``eq_`` (:func:`displayed` wraps those for myst-nb's ``glue:math``), and ``"yes"`` / ``"NO"`` for
each sympy check the prose quotes, so that a failed check shows on the page instead of being hidden.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sympy as sp

from . import theory
from .theory import a, beta, m, q, r

# the batch sizes of the chapter's curve "BN influence against m, relative to m -> oo"
TREND_BATCH_SIZES = np.unique(np.geomspace(2, 4096, 200).round())
TREND_DISTANCES = (0.5, 1.0, 3.0, 10.0, 30.0)  # its outlier distances a
LARGE_BATCH = 1e9  # m standing for m -> oo in numeric evaluations


def yes_no(confirmed: bool) -> str:
    """How the page reports a sympy check: ``yes``, or a loud ``NO``."""
    return "yes" if confirmed else "NO"


def displayed(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every ``eq_*`` LaTeX string wrapped in ``IPython.display.Math`` (for ``glue:math``)."""
    from IPython.display import Math

    return {name: Math(value) if name.startswith("eq_") else value for name, value in values.items()}


def sums_and_losses() -> dict[str, str]:
    """Step 1: the batch statistics and the sum-reduced losses in terms of the five sums of a batch.

    Keys: ``eq_stats`` (mu_B and sigma_B^2 as the page writes them, with w^T S_x, w^T S_xx w as symbols),
    ``eq_loss_bn`` (:func:`theory.bn_loss_from_statistics` in mu_B, sigma_B^2, w^T S_yx), ``eq_loss_none``
    (:func:`theory.batch_loss` without BN, the same symbols substituted) and ``statistics_checked``: whether the
    shown mean and variance are :func:`theory.batch_statistics` (sympy).
    """
    n = sp.Symbol("n", positive=True)
    sum_x = sp.Matrix(sp.symbols("S_{x1} S_{x2}", real=True))
    sum_xx = sp.Matrix(2, 2, lambda i, j: sp.Symbol(f"S_{{xx{min(i, j) + 1}{max(i, j) + 1}}}", real=True))
    sum_yx = sp.Matrix(sp.symbols("S_{yx1} S_{yx2}", real=True))
    sums = theory.BatchSums(n, sum_x, sum_xx, sp.Symbol("S_y", real=True), sum_yx)
    mean, variance = theory.batch_statistics(sums)
    w = sp.Matrix([theory.w1, theory.w2])
    linear, quadratic, label_sum = (w.T * sum_x)[0], (w.T * sum_xx * w)[0], (w.T * sum_yx)[0]
    w_sx, w_sxx_w, w_syx = sp.symbols(r"w^{\top}\!S_x w^{\top}\!S_{xx}w w^{\top}\!S_{yx}")
    mean_shown, variance_shown = w_sx / n, w_sxx_w / n - w_sx**2 / n**2
    names = {w_sx: linear, w_sxx_w: quadratic, w_syx: label_sum}
    checked = all(sp.simplify(shown.subs(names) - derived) == 0
                  for shown, derived in ((mean_shown, mean), (variance_shown, variance)))
    mu_b, sigma2_b = sp.symbols(r"\mu_B \sigma_B^2")
    bn_loss = theory.bn_loss_from_statistics(n, mu_b, sigma2_b, w_syx, sums.sum_y)
    none_loss = theory.batch_loss("none", sums).xreplace({value: key for key, value in names.items()})
    return {
        "statistics_checked": yes_no(checked),
        "eq_stats": r"\mu_B = " + sp.latex(mean_shown) + r", \qquad \sigma_B^2 = " + sp.latex(variance_shown),
        "eq_loss_bn": r"L_{\mathrm{BN}}(\theta; B) = " + sp.latex(bn_loss),
        "eq_loss_none": r"L_{\mathrm{none}}(\theta; B) = " + sp.latex(none_loss),
    }


def influence_vectors() -> dict[str, str]:
    """Step 2: the influence vector under A1-A4, as derived and in q-notation, with and without BN; and
    ``compact_checked``, whether the q-forms equal the derived ones (:func:`theory.compact_matches`)."""
    return {
        "eq_delta_bn_derived": r"\Delta_{\mathrm{BN}} = " + sp.latex(theory.matched_influence_vector("batch")),
        "eq_delta_bn": (r"\Delta_{\mathrm{BN}} = " + sp.latex(theory.compact_influence_vector("batch"))
                        + r", \qquad q = \sqrt{\frac{m-1}{m+a^2}}"),
        "eq_delta_none": r"\Delta_{\mathrm{none}} = " + sp.latex(theory.matched_influence_vector("none")),
        "compact_checked": yes_no(theory.compact_matches()),
    }


def own_and_coupling() -> dict[str, str]:
    """Step 3: with BN, the outlier's own gradient and the coupling (influence vector minus own gradient)."""
    return {
        "eq_own": r"\nabla_\theta \ell_o\big(\theta; B\big) = " + sp.latex(theory.compact_own_gradient()),
        "eq_coupling": r"\Delta_{\mathrm{BN}} - \nabla_\theta \ell_o = " + sp.latex(theory.compact_coupling()),
    }


def offset_shown() -> sp.Expr:
    """A, the v-entry of the BN influence vector at r = 0, as the page writes it (with 1 - q)."""
    return beta * m * (1 - q) - beta * a**2 * q


def offset_matches() -> bool:
    """Whether :func:`offset_shown` is the A of :func:`theory.window_quadratic` (sympy, m = 1 + k, k > 0)."""
    _, offset = theory.window_quadratic()
    k = sp.Symbol("k", positive=True)
    return sp.simplify((offset_shown() - offset).subs(q, theory.Q_OF_M_A).subs(m, 1 + k)) == 0


def amplification_equations() -> dict[str, str]:
    """Step 4: the two influences of an outlier along w, the limits of rho^2, the window of residuals where BN
    amplifies (as a quadratic in r and as m -> oo) and the typical-label threshold; ``offset_checked`` says
    whether sympy confirms the page's form of A (:func:`offset_matches`)."""
    quadratic_in_r, _ = theory.window_quadratic()
    compact_bn = theory.compact_influence_vector("batch")
    head_entry = compact_bn[2]  # A + a q r: the v-entry is affine in r
    influence_bn = sp.sqrt((theory.OFFSET + sp.diff(head_entry, r) * r) ** 2 + compact_bn[3] ** 2)
    limits = theory.limits()
    terms = [sp.factor(coefficient) for coefficient in quadratic_in_r.all_coeffs()]
    lower_far, upper_far = theory.large_batch_window()
    return {
        "offset_checked": yes_no(offset_matches()),
        "eq_influences": (r"\begin{aligned} I_{\mathrm{BN}} &= " + sp.latex(influence_bn) + r", \qquad A = "
                          + sp.latex(offset_shown()) + r" \\ I_{\mathrm{none}} &= "
                          + sp.latex(sp.factor(theory.matched_influence("none", True))) + r"\end{aligned}"),
        "eq_limit_far": r"\lim_{a\to\infty} \rho^2 = " + sp.latex(limits["far"]),
        "eq_limit_large": r"\lim_{m\to\infty} \rho^2 = " + sp.latex(limits["large_batch"]),
        "eq_limit_mean": (r"\begin{aligned} \lim_{a\to 0} \rho^2 &= " + sp.latex(limits["at_mean"]) + r" \\ &= "
                          + sp.latex(theory.at_mean_compact()) + r"\end{aligned}"),
        "eq_limit_typical": r"\lim_{a\to\infty} \rho^2\big|_{y_o = 0} = " + sp.latex(limits["far_typical_label"]),
        "eq_window_quadratic": (r"I_{\mathrm{BN}}^2 - I_{\mathrm{none}}^2 = " + r"\left(" + sp.latex(terms[0])
                                + r"\right) r^2 + " + sp.latex(terms[1]) + r"\, r + " + sp.latex(terms[2])),
        "eq_window_large": (r"\begin{aligned} r_+ &\;\xrightarrow[m\to\infty]{}\; " + sp.latex(upper_far)
                            + r" \\ r_- &\;\xrightarrow[m\to\infty]{}\; " + sp.latex(lower_far) + r"\end{aligned}"),
        "eq_typical_threshold": r"a^\ast = " + sp.latex(theory.typical_label_threshold()),
    }


def default_numbers(batch_size: int, distance: float, slope: float, residual: float) -> dict[str, Any]:
    """The numbers Proposition 1's text quotes, at the chapter's defaults (m, a, beta, r).

    Keys: the defaults themselves (``m_default``, ``a_default``, ``beta_default``, ``r_default``);
    ``rho_default`` (the amplification factor there), ``window_lower``/``window_upper`` (the window of
    residuals at that m and a), ``rho_far`` (a -> oo with the same |r|), ``residual_far_max`` (the largest
    |r| a far outlier is amplified with), ``rho_large`` (m -> oo), ``typical_threshold`` (a* at that beta),
    ``rho_mean_large`` (a -> 0, then m -> oo), ``window_side_ratio`` (|r_-| / r_+ as m -> oo at beta = 1) and
    ``window_side_ratio_exact`` (the same as a pretty-printed surd).
    """
    lower, upper = theory.window(batch_size, distance, slope)
    limits = theory.limits()
    side_ratio = theory.large_batch_window_side_ratio().subs(beta, 1)  # |r_-| / r_+ as m -> oo, beta = 1
    return {
        "m_default": batch_size, "a_default": distance, "r_default": residual, "beta_default": slope,
        "rho_default": float(theory.amplification(batch_size, distance, slope=slope, residual=residual)),
        "window_lower": float(lower), "window_upper": float(upper),
        "rho_far": float(sp.sqrt(limits["far"]).subs({m: batch_size, beta: slope, r: abs(residual)})),
        "rho_large": float(sp.sqrt(limits["large_batch"]).subs({a: distance, beta: slope, r: residual})),
        "residual_far_max": float(slope * np.sqrt(batch_size / (1 + slope**2))),
        "typical_threshold": float(theory.typical_label_threshold().subs(beta, slope)),
        "rho_mean_large": float(np.sqrt(1 + slope**2 / (4 * residual**2))),
        "window_side_ratio": float(side_ratio),
        "window_side_ratio_exact": sp.pretty(sp.radsimp(side_ratio), use_unicode=True),
    }


def relative_to_large_batch(batch_sizes: Any, along: float, slope: float, residual: float) -> np.ndarray:
    """The BN influence at each batch size over its large-batch value (m -> oo), for an outlier at distance
    ``along`` along w: how the toy's influence depends on m (the no-norm influence does not at all)."""
    return theory.numeric_influence("batch", batch_sizes, along, slope=slope, residual=residual) / \
        theory.numeric_influence("batch", LARGE_BATCH, along, slope=slope, residual=residual)
