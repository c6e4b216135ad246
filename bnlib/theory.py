"""The theory chapter's model: closed forms (sympy) for the counterfactual per-step influence of one sample
with and without BatchNorm, the toy network (torch) they are checked against, and the chapter's parameters.

The toy model, with input x in R^2 and parameters theta = (w_1, w_2, v, c)::

    z = w^T x                                    one linear unit (no bias: BN would remove it)
    h = (z - mu_B) / sqrt(sigma_B^2 + eps)       norm = "batch": train-mode BN with the batch's mean and
                                                 biased variance, no affine part (the head absorbs it)
    h = z                                        norm = "none"
    f = v h + c                                  linear head
    loss_j = (f_j - y_j)^2 / 2                   squared loss, summed over the batch

Counterfactual per-step influence of sample i in batch B (the definition of ``bnlib.influence``)::

    I_i = || sum_{j in B} grad loss_j(theta; stats(B)) - sum_{j in B \\ i} grad loss_j(theta; stats(B \\ i)) ||_2

Why closed forms exist for any batch: the sum-reduced loss of a batch depends on the batch only through its
count n and the sums  S_x = sum x_j, S_xx = sum x_j x_j^T, S_y = sum y_j, S_yx = sum y_j x_j  (up to the
constant sum y_j^2 / 2, which has no gradient), because f is affine in x once the batch statistics are fixed
and those statistics are themselves functions of the sums. So L(theta; B) is one sympy expression in
(theta, eps, n, sums), its gradient is exact, and I_i is the norm of the difference of two such gradients:
one at the sums of B = rest + i, one at the sums of the rest.

Three uses of that expression:
    general   -- any rest-of-batch sums, any sample, any theta, eps > 0: lambdified and compared with torch
                 autograd on random instances (tests).
    matched   -- assumptions A1-A4 of the chapter (inliers centered and whitened, labels with slope beta along
                 w, theta at the inliers' least-squares fit w = e_1, v = beta, c = 0, eps -> 0); the sample is
                 an outlier at (a, a_perp) with residual r under the inlier fit: y = beta a - r. Closed forms
                 in (m, a, a_perp, beta, r), their ratio, limits and the window of r where BN amplifies.
    numeric   -- numpy functions of those closed forms for the chapter's curves and sliders.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import sympy as sp

from . import config

NORMS = config.COMPARED_NORMS

# ----------------------------------------------------------------------------- symbols

m = sp.Symbol("m", positive=True)  # batch size, the sample included
eps = sp.Symbol("epsilon", positive=True)  # BatchNorm's epsilon
w1, w2, v, c = sp.symbols("w_1 w_2 v c", real=True)
THETA = (w1, w2, v, c)
# matched setting: the outlier's coordinates along and across w, the inlier slope and the outlier's residual
a = sp.Symbol("a", nonnegative=True)
a_perp = sp.Symbol(r"a_\perp", real=True)
beta = sp.Symbol("beta", positive=True)
r = sp.Symbol("r", real=True)
q = sp.Symbol("q", positive=True)  # shorthand for sqrt((m - 1) / (m + a^2)), see Q_OF_M_A
Q_OF_M_A = sp.sqrt(m - 1) / sp.sqrt(m + a**2)


@dataclass(frozen=True)
class BatchSums:
    """Sufficient statistics of a batch for the toy model (count and sums over its samples).

    Attributes:
        count: number of samples n.
        sum_x: (2, 1) sum of inputs.  sum_xx: (2, 2) sum of x x^T.  sum_y: sum of labels.
        sum_yx: (2, 1) sum of y x.
    """

    count: sp.Expr
    sum_x: sp.Matrix
    sum_xx: sp.Matrix
    sum_y: sp.Expr
    sum_yx: sp.Matrix

    def with_sample(self, x: sp.Matrix, y: sp.Expr) -> BatchSums:
        """The sums of this batch with one more sample (x (2, 1), y)."""
        return BatchSums(self.count + 1, self.sum_x + x, self.sum_xx + x * x.T, self.sum_y + y, self.sum_yx + y * x)


def _weight() -> sp.Matrix:
    return sp.Matrix([w1, w2])


def batch_statistics(sums: BatchSums) -> tuple[sp.Expr, sp.Expr]:
    """Mean and biased variance of the pre-activation z = w^T x over a batch (what train-mode BN uses)."""
    w = _weight()
    mean = (w.T * sums.sum_x)[0] / sums.count
    variance = (w.T * (sums.sum_xx / sums.count - sums.sum_x * sums.sum_x.T / sums.count**2) * w)[0]
    return mean, variance


def batch_loss(norm: str, sums: BatchSums) -> sp.Expr:
    """Sum over the batch of (f_j - y_j)^2 / 2, minus the constant sum of y_j^2 / 2, as a function of theta.

    With BN, h_j = (w^T x_j - mean) / sqrt(variance + eps), so sum h_j = 0, sum h_j^2 = n var / (var + eps) and
    sum h_j y_j = (w^T S_yx - mean S_y) / sqrt(var + eps); without BN every sum is linear in S_x, S_xx, S_y, S_yx.
    """
    _check_norm(norm)
    w = _weight()
    n = sums.count
    if norm == "batch":
        mean, variance = batch_statistics(sums)
        return bn_loss_from_statistics(n, mean, variance, (w.T * sums.sum_yx)[0], sums.sum_y)
    sum_f2 = v**2 * (w.T * sums.sum_xx * w)[0] + 2 * v * c * (w.T * sums.sum_x)[0] + n * c**2
    sum_fy = v * (w.T * sums.sum_yx)[0] + c * sums.sum_y
    return sum_f2 / 2 - sum_fy


def bn_loss_from_statistics(n: sp.Expr, mean: sp.Expr, variance: sp.Expr, weighted_sum_yx: sp.Expr,
                            sum_y: sp.Expr) -> sp.Expr:
    """The BN batch loss of :func:`batch_loss` in terms of the batch's mean and variance of z and w^T S_yx."""
    scale = 1 / sp.sqrt(variance + eps)
    sum_f2 = v**2 * scale**2 * n * variance + n * c**2
    sum_fy = v * scale * (weighted_sum_yx - mean * sum_y) + c * sum_y
    return sum_f2 / 2 - sum_fy


def batch_gradient(norm: str, sums: BatchSums) -> sp.Matrix:
    """(4, 1) gradient over theta = (w_1, w_2, v, c) of the sum-reduced batch loss, through the batch statistics."""
    loss = batch_loss(norm, sums)
    return sp.Matrix([sp.diff(loss, parameter) for parameter in THETA])


def influence_vector(norm: str, rest: BatchSums, x: sp.Matrix, y: sp.Expr) -> sp.Matrix:
    """(4, 1) difference of the batch gradients with and without the sample (x, y): definition 3
    (``bnlib.persample``) before the norm."""
    return batch_gradient(norm, rest.with_sample(x, y)) - batch_gradient(norm, rest)


def own_gradient(norm: str, rest: BatchSums, x: sp.Matrix, y: sp.Expr) -> sp.Matrix:
    """(4, 1) gradient of the sample's own loss (f(x) - y)^2 / 2, at the statistics of the batch that holds it."""
    w = _weight()
    if norm == "batch":
        mean, variance = batch_statistics(rest.with_sample(x, y))
        prediction = v * ((w.T * x)[0] - mean) / sp.sqrt(variance + eps) + c
    else:
        prediction = v * (w.T * x)[0] + c
    loss = (prediction - y) ** 2 / 2
    return sp.Matrix([sp.diff(loss, parameter) for parameter in THETA])


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"Parameter 'norm' got {norm!r}; allowed values: {', '.join(map(repr, NORMS))}.")


# ----------------------------------------------------------------------------- general instances (for the tests)

REST_SYMBOLS = sp.symbols("S_x1 S_x2 S_xx11 S_xx12 S_xx22 S_y S_yx1 S_yx2", real=True)
SAMPLE_SYMBOLS = sp.symbols("x_1 x_2 y", real=True)
GENERAL_ARGUMENTS = (m, *REST_SYMBOLS, *SAMPLE_SYMBOLS, *THETA, eps)


def _general_rest() -> BatchSums:
    sx1, sx2, sxx11, sxx12, sxx22, sy, syx1, syx2 = REST_SYMBOLS
    return BatchSums(m - 1, sp.Matrix([sx1, sx2]), sp.Matrix([[sxx11, sxx12], [sxx12, sxx22]]), sy,
                     sp.Matrix([syx1, syx2]))


@functools.cache
def general_influence_function(norm: str) -> Callable[..., np.ndarray]:
    """numpy function of ``GENERAL_ARGUMENTS`` returning the (4,) influence vector for any instance.

    Arguments in order: m, the rest's sums (S_x1, S_x2, S_xx11, S_xx12, S_xx22, S_y, S_yx1, S_yx2), the
    sample (x_1, x_2, y), theta (w_1, w_2, v, c) and eps. Use :func:`instance_arguments` to build them.
    """
    x1, x2, y = SAMPLE_SYMBOLS
    vector = influence_vector(norm, _general_rest(), sp.Matrix([x1, x2]), y)
    return sp.lambdify(GENERAL_ARGUMENTS, list(vector), modules="numpy")


def instance_arguments(x: np.ndarray, y: np.ndarray, index: int, theta: Sequence[float],
                       epsilon: float) -> tuple[float, ...]:
    """``GENERAL_ARGUMENTS`` values for sample ``index`` of a batch x (m, 2), y (m,) at theta and eps."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rest = np.arange(len(y)) != index
    xr, yr = x[rest], y[rest]  # (m-1, 2), (m-1,)
    sxx = xr.T @ xr
    sums = (*xr.sum(0), sxx[0, 0], sxx[0, 1], sxx[1, 1], yr.sum(), *(yr @ xr))
    return (float(len(y)), *map(float, sums), float(x[index, 0]), float(x[index, 1]), float(y[index]),
            *map(float, theta), float(epsilon))


def closed_form_influence(norm: str, x: np.ndarray, y: np.ndarray, index: int, theta: Sequence[float],
                          epsilon: float) -> float:
    """Counterfactual influence of sample ``index`` from the lambdified general closed form."""
    return float(np.linalg.norm(general_influence_function(norm)(*instance_arguments(x, y, index, theta, epsilon))))


# ----------------------------------------------------------------------------- the matched setting (A1-A4)

def matched_rest() -> BatchSums:
    """A1-A2: m-1 inliers with mean 0, covariance I and labels of mean 0 and slope beta along w = e_1."""
    return BatchSums(m - 1, sp.zeros(2, 1), (m - 1) * sp.eye(2), sp.Integer(0), (m - 1) * sp.Matrix([beta, 0]))


MATCHED_TORCH_EPS = 1e-12  # torch refuses eps = 0; against the inliers' unit variance it changes I by O(1e-12)
MATCHED_THETA = {w1: 1, w2: 0, v: beta, c: 0}  # A3: the inliers' least-squares fit (exact as eps -> 0)


def matched_outlier() -> tuple[sp.Matrix, sp.Expr]:
    """The sample: input (a, a_perp), label beta a - r (r = its residual under the inlier fit)."""
    return sp.Matrix([a, a_perp]), beta * a - r


def _at_matched_point(expression: sp.Matrix, norm: str) -> sp.Matrix:
    expression = expression.subs(MATCHED_THETA)
    if norm == "batch":
        expression = expression.subs(eps, 0)  # A4; the general forms keep eps
    return expression.applyfunc(lambda e: sp.factor(sp.simplify(e)))


@functools.cache
def matched_influence_vector(norm: str) -> sp.Matrix:
    """(4, 1) influence vector of the outlier under A1-A4, derived (not typed in) from :func:`influence_vector`."""
    return _at_matched_point(influence_vector(norm, matched_rest(), *matched_outlier()), norm)


@functools.cache
def matched_own_gradient(norm: str) -> sp.Matrix:
    """(4, 1) the outlier's own loss gradient under A1-A4 (with BN: at the statistics of the batch holding it)."""
    return _at_matched_point(own_gradient(norm, matched_rest(), *matched_outlier()), norm)


def compact_influence_vector(norm: str) -> sp.Matrix:
    """The matched influence vector written by hand with q = sqrt((m-1)/(m+a^2)); :func:`compact_matches`
    checks with sympy that it equals the derived :func:`matched_influence_vector`."""
    _check_norm(norm)
    if norm == "none":
        return r * sp.Matrix([beta * a, beta * a_perp, a, 1])
    return sp.Matrix([0, r * beta * a_perp * q * m / (m + a**2), _head_weight_entry(), r - beta * a])


def _head_weight_entry() -> sp.Expr:
    """With BN, the v-entry of the matched influence vector: beta m (1 - q) - beta a^2 q + a r q, with
    m (1 - q) written as m (1 + a^2) / ((m + a^2)(1 + q)) so that it evaluates without cancellation at large m."""
    return beta * m * (1 + a**2) / ((m + a**2) * (1 + q)) - beta * a**2 * q + a * r * q


def compact_own_gradient() -> sp.Matrix:
    """With BN, the outlier's own gradient in q-notation (checked by :func:`compact_matches`)."""
    residual = r - beta * a * (1 - q)  # f(x_o) - y_o at the batch's statistics: f(x_o) = beta a q
    return residual * sp.Matrix([0, beta * a_perp * q * m / (m + a**2), a * q, 1])


def compact_coupling() -> sp.Matrix:
    """With BN, influence vector minus own gradient (the change of the inliers' gradients), in q-notation."""
    return sp.Matrix([0, beta**2 * a * a_perp * m * q * (1 - q) / (m + a**2),
                      beta * m * (1 - q) - beta * a**2 * q**2, -beta * a * q])


def compact_matches() -> bool:
    """Whether the hand-written q-forms equal the derived ones (sympy, with m = 1 + k, k > 0)."""
    k = sp.Symbol("k", positive=True)
    pairs = [(compact_influence_vector(n), matched_influence_vector(n)) for n in NORMS]
    pairs.append((compact_own_gradient(), matched_own_gradient("batch")))
    pairs.append((compact_coupling(), matched_influence_vector("batch") - matched_own_gradient("batch")))
    for compact, derived in pairs:
        difference = (compact.subs(q, Q_OF_M_A) - derived).subs(m, 1 + k)
        if any(sp.simplify(entry) != 0 for entry in difference):
            return False
    return True


def matched_influence(norm: str, along_only: bool = False) -> sp.Expr:
    """Closed form I(m, a, a_perp, beta, r) under A1-A4 in q-notation (a_perp = 0 if ``along_only``)."""
    vector = compact_influence_vector(norm)
    if along_only:
        vector = vector.subs(a_perp, 0)
    return sp.sqrt(sum(entry**2 for entry in vector))


def amplification_squared(along_only: bool = True) -> sp.Expr:
    """rho^2 = I_batch^2 / I_none^2 as a function of (m, a[, a_perp], beta, r), q substituted."""
    return (matched_influence("batch", along_only) ** 2 / matched_influence("none", along_only) ** 2).subs(q, Q_OF_M_A)


@functools.cache
def limits() -> dict[str, sp.Expr]:
    """Limits of rho^2 for an outlier along w (a_perp = 0), derived by sympy.

    Keys: ``far`` (a -> oo at fixed m, beta, r), ``large_batch`` (m -> oo at fixed a), ``at_mean``
    (a -> 0), ``far_typical_label`` (a -> oo with label 0, i.e. r = beta a).
    """
    rho2 = amplification_squared(True)
    return {
        "far": sp.simplify(sp.limit(rho2, a, sp.oo)),
        "large_batch": sp.factor(sp.simplify(sp.limit(rho2, m, sp.oo))),
        "at_mean": sp.simplify(sp.limit(rho2, a, 0)),
        "far_typical_label": sp.simplify(sp.limit(rho2.subs(r, beta * a), a, sp.oo)),
    }


OFFSET = sp.Symbol("A")  # with BN, the v-entry of the matched influence vector at r = 0


def window_quadratic() -> tuple[sp.Poly, sp.Expr]:
    """I_batch^2 - I_none^2 for an outlier along w, as a quadratic in r, and the A it is written with.

    Both influence vectors are affine in r: with BN the v-entry is A + a q r and the c-entry r - beta a, so
    I_batch^2 - I_none^2 is quadratic in r; its leading coefficient a^2 (q^2 - 1 - beta^2) is negative and its
    constant term A^2 + beta^2 a^2 positive, so it has one root on each side of 0.

    Returns:
        (the quadratic as a Poly in r with coefficients in A, a, q, beta; the expression of A in m, a, q, beta).
    """
    vector_bn = compact_influence_vector("batch").subs(a_perp, 0)
    head_entry = vector_bn[2]
    if sp.diff(head_entry, r, 2) != 0:
        raise AssertionError("the BN influence vector should be affine in r")
    difference = ((OFFSET + sp.diff(head_entry, r) * r) ** 2 + vector_bn[3] ** 2
                  - r**2 * (1 + (1 + beta**2) * a**2))
    return sp.Poly(sp.expand(difference), r), head_entry.subs(r, 0)


@functools.cache
def amplification_window() -> tuple[sp.Expr, sp.Expr]:
    """The residuals where BN amplifies (rho > 1) an outlier along w: r_minus < r < r_plus, at any m >= 2.

    Returns (r_minus, r_plus) in q-notation (substitute ``Q_OF_M_A`` for q to get functions of m, a, beta).
    """
    quadratic, offset = window_quadratic()
    second, first, zeroth = quadratic.all_coeffs()
    discriminant = sp.sqrt(sp.factor(first**2 - 4 * second * zeroth))
    roots = [(-first + sign * discriminant) / (2 * second) for sign in (1, -1)]  # second < 0: first root is lower
    return tuple(sp.simplify(root.subs(OFFSET, offset)) for root in roots)


def at_mean_compact() -> sp.Expr:
    """rho^2 for a sample at the inlier mean (a -> 0), by hand: 1 + beta^2 m (sqrt(m) - sqrt(m-1))^2 / r^2;
    the tests check it equals ``limits()["at_mean"]``."""
    return 1 + beta**2 * m * (sp.sqrt(m) - sp.sqrt(m - 1)) ** 2 / r**2


@functools.cache
def large_batch_window() -> tuple[sp.Expr, sp.Expr]:
    """The window's ends as m -> oo: r in (-(sqrt(1+beta^2)+1), sqrt(1+beta^2)-1) * (1+a^2) / (2 a beta)."""
    numerator, denominator = sp.fraction(sp.together(limits()["large_batch"] - 1))
    roots = sp.solve(sp.Eq(sp.expand(numerator), 0), r)
    lower, upper = sorted(roots, key=lambda root: float(root.subs({a: 2, beta: 1})))
    return sp.factor(lower), sp.factor(upper)


def large_batch_window_side_ratio() -> sp.Expr:
    """|r_-| / r_+ of the window as m -> oo, a function of beta only: how much wider the window is on the side
    where the label lies beyond the fit's extrapolation (r < 0) than on the other."""
    lower, upper = large_batch_window()
    return sp.simplify(-lower / upper)


@functools.cache
def typical_label_threshold() -> sp.Expr:
    """As m -> oo, the distance beyond which BN damps an outlier whose label is the inliers' mean label
    (then r = beta a): the positive root of beta a = r_plus(a)."""
    _, upper = large_batch_window()
    squared = sp.Symbol("a_squared", positive=True)
    equation = sp.expand((beta * a - upper) * 2 * a * beta).subs(a**2, squared)
    return sp.sqrt(sp.simplify(sp.solve(equation, squared)[0]))


# ----------------------------------------------------------------------------- numeric versions

@functools.cache
def _numeric(norm: str) -> Callable[..., np.ndarray]:
    return sp.lambdify((m, a, a_perp, beta, r), matched_influence(norm).subs(q, Q_OF_M_A), modules="numpy")


def numeric_influence(norm: str, batch_size: Any, along: Any, across: Any = 0.0, slope: Any = 1.0,
              residual: Any = 1.0) -> np.ndarray:
    """Matched-setting influence I (numpy, broadcasting) at batch size m, outlier coordinates (a, a_perp),
    inlier slope beta and residual r."""
    _check_norm(norm)
    batch_size, along, across, slope, residual = np.broadcast_arrays(
        *(np.asarray(value, dtype=np.float64) for value in (batch_size, along, across, slope, residual)))
    return np.asarray(_numeric(norm)(batch_size, along, across, slope, residual), dtype=np.float64)


def amplification(batch_size: Any, along: Any, across: Any = 0.0, slope: Any = 1.0, residual: Any = 1.0) -> np.ndarray:
    """rho = I_batch / I_none in the matched setting (numpy, broadcasting; inf where I_none = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return numeric_influence("batch", batch_size, along, across, slope, residual) / numeric_influence(
            "none", batch_size, along, across, slope, residual)


def window(batch_size: Any, along: Any, slope: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(r_minus, r_plus): BN amplifies an outlier along w with residual r iff r_minus < r < r_plus.

    The roots of :func:`window_quadratic`, computed from its coefficients in the cancellation-free form
    (the roots of :func:`amplification_window` lose digits at large m). At a = 0 every r amplifies: (-inf, inf).
    """
    batch_size, along, slope = np.broadcast_arrays(*(np.asarray(value, dtype=np.float64)
                                                     for value in (batch_size, along, slope)))
    share = np.sqrt((batch_size - 1) / (batch_size + along**2))  # q
    offset = (slope * batch_size * (1 + along**2) / ((batch_size + along**2) * (1 + share))
              - slope * along**2 * share)  # the v-entry at r = 0
    second = -along**2 * (1 + slope**2 - share**2)
    first = 2 * (offset * along * share - slope * along)
    zeroth = offset**2 + slope**2 * along**2
    with np.errstate(divide="ignore", invalid="ignore"):
        half = -(first + np.copysign(np.sqrt(first**2 - 4 * second * zeroth), first)) / 2
        roots = np.stack([half / second, zeroth / half])
    lower, upper = roots.min(0), roots.max(0)
    at_mean = along == 0
    return np.where(at_mean, -np.inf, lower), np.where(at_mean, np.inf, upper)


# ----------------------------------------------------------------------------- the chapter's parameters

@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the theory chapter (papermill), validated by ``config.load(..., extras=ChapterParams)``."""

    inlier_slope: float = field(default=1.0, metadata={
        "positive": True, "doc": "beta: slope of the inlier labels along the unit's weight (the fitted head weight)"})
    outlier_distance: float = field(default=8.0, metadata={
        "minimum": 0.0, "doc": "a: outlier's distance from the inlier mean, in inlier standard deviations"})
    outlier_residual: float = field(default=1.0, metadata={
        "doc": "r: the outlier's residual f(x_o) - y_o under the inlier fit"})
    outlier_angle: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "degrees between the outlier's direction and the unit's weight (0 to 90)"})
    residual_curves: tuple[float, ...] = field(default=(-2.0, -0.5, 0.5, 2.0), metadata={
        "doc": "residuals r drawn as amplification curves"})
    slider_batch_sizes: tuple[int, ...] = field(default=(2, 1024), metadata={
        "minimum": 2, "doc": "smallest and largest batch size m of the sliders"})
    slider_max_distance: float = field(default=20.0, metadata={
        "positive": True, "doc": "largest outlier distance a of the sliders"})
    frames: int = field(default=12, metadata={"minimum": 2, "doc": "frames of each static (website) slider"})
    verification_instances: int = field(default=200, metadata={
        "positive": True, "doc": "random instances checked against torch autograd"})
    cnn_batch_sizes: tuple[int, ...] = field(default=(8, 16, 32, 64, 128), metadata={
        "minimum": 2, "doc": "batch sizes at which the CNN's influence is measured"})
    cnn_batches: int = field(default=6, metadata={
        "positive": True, "doc": "outliers (one batch each) per batch size on the CNN"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(frames=4, verification_instances=20, cnn_batch_sizes=(4, 8, 16), cnn_batches=3),
        "quick": dict(),
        "paper": dict(cnn_batch_sizes=(8, 16, 32, 64, 128, 256, 512), cnn_batches=32, verification_instances=1000),
    }

    def __post_init__(self) -> None:
        if self.outlier_angle > 90:
            raise ValueError(f"Parameter 'outlier_angle' got {self.outlier_angle!r}; allowed: 0 to 90 (degrees).")
        if len(self.slider_batch_sizes) != 2 or self.slider_batch_sizes[0] >= self.slider_batch_sizes[1]:
            raise ValueError(f"Parameter 'slider_batch_sizes' got {self.slider_batch_sizes!r}; allowed: two "
                             "increasing integers >= 2 (smallest, largest), e.g. '2,1024'.")
        if len(set(self.cnn_batch_sizes)) < 2:
            raise ValueError(f"Parameter 'cnn_batch_sizes' got {self.cnn_batch_sizes!r}; allowed: at least two "
                             "distinct integers >= 2 (a trend needs two points).")

    def components(self, distance: Any) -> tuple[Any, Any]:
        """(a along w, a_perp across w) of an outlier at ``distance`` in the direction ``outlier_angle``."""
        angle = math.radians(self.outlier_angle)
        return np.multiply(distance, math.cos(angle)), np.multiply(distance, math.sin(angle))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_config(cfg, params: ChapterParams) -> None:
    """Fail fast when the CNN measurement asks for more than the data holds (``cfg``: ExperimentConfig)."""
    if max(params.cnn_batch_sizes) > cfg.n_train + 1:
        raise ValueError(f"Parameter 'cnn_batch_sizes' got {max(params.cnn_batch_sizes)}; allowed: at most "
                         f"n_train + 1 = {cfg.n_train + 1} (m - 1 inliers and one canary per batch).")
    if params.cnn_batches > cfg.n_canaries:
        raise ValueError(f"Parameter 'cnn_batches' got {params.cnn_batches}; allowed: at most n_canaries = "
                         f"{cfg.n_canaries} (one inserted canary per batch).")


# the theory chapter's parameter table: the experiment parameters its CNN measurement uses, and its own
SHOWN_PARAMETERS = ("profile", "batch_size", "arch", "width", "epochs", "seeds") + tuple(
    f.name for f in dataclasses.fields(ChapterParams))
