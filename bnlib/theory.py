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
import torch
from torch import nn

from . import influence as influence_lib
from . import plots

NORMS = ("batch", "none")

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
    """(4, 1) difference of the batch gradients with and without the sample (x, y): Definition 1 before the norm."""
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


def influence(norm: str, batch_size: Any, along: Any, across: Any = 0.0, slope: Any = 1.0,
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
        return influence("batch", batch_size, along, across, slope, residual) / influence(
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


# ----------------------------------------------------------------------------- the toy network in torch

def toy_network(norm: str, weight: Sequence[float], head: float, bias: float, epsilon: float = 1e-5) -> nn.Sequential:
    """The toy model as torch layers in float64: Linear(2, 1, no bias) -> BatchNorm1d(1, affine=False) or
    identity -> Linear(1, 1), in train mode (BN uses the batch's statistics)."""
    _check_norm(norm)
    unit = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    head_layer = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([list(weight)], dtype=torch.float64))
        head_layer.weight.fill_(head)
        head_layer.bias.fill_(bias)
    norm_layer = nn.BatchNorm1d(1, eps=epsilon, affine=False, dtype=torch.float64) if norm == "batch" else nn.Identity()
    return nn.Sequential(unit, norm_layer, head_layer).train()


def _summed_squared_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = 0.5 * ((model(x).squeeze(1) - y) ** 2).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def toy_influence_by_autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> float:
    """Definition 1 on the toy by brute force: the norm of the difference of two autograd gradients of the
    sum-reduced squared loss, on the batch (x (m, 2), y (m,)) and on the batch without sample ``index``.

    The parameter order is (w_1, w_2, v, c), as in the closed forms.
    """
    keep = torch.arange(len(y)) != index
    return float((_summed_squared_loss_gradient(model, x, y) - _summed_squared_loss_gradient(model, x[keep], y[keep]))
                 .norm())


def toy_per_sample_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> float:
    """The textbook per-sample gradient norm ||grad loss_i|| (sample ``index`` alone through the model)."""
    return float(_summed_squared_loss_gradient(model, x[index:index + 1], y[index:index + 1]).norm())


def matched_instance(batch_size: int, along: float, across: float, slope: float, residual: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch that satisfies A1-A2 exactly, with the outlier last.

    The m-1 inliers are random, then centered and whitened (mean 0, biased covariance I); their labels are
    slope * x_1 plus noise orthogonal to (1, x_1, x_2), so that their mean is 0 and their cross-moment with x
    is (slope, 0). The outlier is (along, across) with label slope * along - residual.

    Returns:
        x (m, 2) and y (m,) in float64.
    """
    if batch_size < 4:
        raise ValueError(f"Parameter 'batch_size' got {batch_size}; allowed: >= 4 (3 inliers are needed to "
                         "whiten 2-D inputs exactly).")
    inliers = torch.randn(batch_size - 1, 2, generator=generator, dtype=torch.float64)
    inliers = inliers - inliers.mean(0)
    covariance = inliers.T @ inliers / len(inliers)
    inliers = inliers @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T  # (m-1, 2), covariance I
    design = torch.cat([torch.ones(len(inliers), 1, dtype=torch.float64), inliers], 1)  # (m-1, 3)
    noise = torch.randn(len(inliers), generator=generator, dtype=torch.float64)
    noise = noise - design @ torch.linalg.lstsq(design, noise).solution
    labels = slope * inliers[:, 0] + noise
    x = torch.cat([inliers, torch.tensor([[along, across]], dtype=torch.float64)])
    y = torch.cat([labels, torch.tensor([slope * along - residual], dtype=torch.float64)])
    return x, y


# ----------------------------------------------------------------------------- the chapter's parameters

@dataclass(frozen=True)
class TheoryParams:
    """Parameters of the theory chapter (papermill), validated by ``config.load(..., extras=TheoryParams)``."""

    inlier_slope: float = field(default=1.0, metadata={
        "positive": True, "doc": "beta: slope of the inlier labels along the unit's weight (= fitted head weight)"})
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

    def check_against(self, cfg) -> None:
        """Fail fast when the CNN measurement asks for more than the data holds (``cfg``: ExperimentConfig)."""
        if max(self.cnn_batch_sizes) > cfg.n_train + 1:
            raise ValueError(f"Parameter 'cnn_batch_sizes' got {max(self.cnn_batch_sizes)}; allowed: at most "
                             f"n_train + 1 = {cfg.n_train + 1} (m - 1 inliers and one canary per batch).")
        if self.cnn_batches > cfg.n_canaries:
            raise ValueError(f"Parameter 'cnn_batches' got {self.cnn_batches}; allowed: at most n_canaries = "
                             f"{cfg.n_canaries} (one inserted canary per batch).")

    def components(self, distance: Any) -> tuple[Any, Any]:
        """(a along w, a_perp across w) of an outlier at ``distance`` in the direction ``outlier_angle``."""
        angle = math.radians(self.outlier_angle)
        return np.multiply(distance, math.cos(angle)), np.multiply(distance, math.sin(angle))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ----------------------------------------------------------------------------- figures for the sliders

def simulated_batch(batch_size: int, distance: float, slope: float, residual: float,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small 1-D batch as in A1-A2 (coordinate along w only): m-1 whitened inliers with labels
    slope * x + noise (noise uncorrelated with 1 and x), then the outlier (distance, slope * distance - residual).

    Returns:
        x (m,), y (m,); the outlier is last.
    """
    rng = np.random.default_rng(seed)
    inliers = rng.standard_normal(batch_size - 1)
    inliers = (inliers - inliers.mean()) / inliers.std() if batch_size > 2 else np.zeros(1)
    design = np.stack([np.ones_like(inliers), inliers], 1)  # (m-1, 2)
    noise = 0.3 * slope * rng.standard_normal(len(inliers))
    noise = noise - design @ np.linalg.lstsq(design, noise, rcond=None)[0]
    return np.append(inliers, distance), np.append(slope * inliers + noise, slope * distance - residual)


def draw_panels(axes: Sequence[Any], params: TheoryParams, batch_size: int, distance: float) -> None:
    """The three slider panels at (m, a): amplification curves over a, the amplification window in the
    (a, r) plane, and a simulated batch with the BN prediction line with and without the outlier."""
    curves, regimes, batch = axes
    for ax in axes:
        ax.clear()
    slope, residual = params.inlier_slope, params.outlier_residual
    grid = np.linspace(0.0, params.slider_max_distance, 400)[1:]  # a > 0 (a = 0 is the inlier mean)
    along, across = params.components(grid)
    colors = iter(("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"))
    for value in params.residual_curves:
        curves.plot(grid, amplification(batch_size, along, across, slope, value), color=next(colors, "0.4"),
                    label=f"r = {value:g}")
    curves.plot(grid, amplification(batch_size, along, across, slope, slope * along), "k--",
                label="label = inlier mean (r = βa)")
    curves.axhline(1.0, color="0.5", lw=0.8)
    curves.axvline(distance, color="#d62728", lw=1.0)
    curves.set(yscale="log", ylim=(0.03, 1000), xlabel="outlier distance a", ylabel="ρ = I_BN / I_none",
               title=f"amplification at m = {batch_size}")
    curves.legend(fontsize=7, loc="upper left", ncol=2)

    lower, upper = window(batch_size, grid, slope)
    lower_far, upper_far = window(1e9, grid, slope)
    regimes.fill_between(grid, lower, upper, color="#d62728", alpha=0.2, lw=0, label=f"BN amplifies (m = {batch_size})")
    regimes.plot(grid, lower_far, "k:", grid, upper_far, "k:", lw=1)
    regimes.plot([], [], "k:", label="window as m → ∞")
    regimes.plot(grid, slope * grid, "k--", lw=1, label="label = inlier mean")
    regimes.plot([distance], [residual], "o", color="#d62728")
    regimes.set(xlim=(0, params.slider_max_distance), ylim=(-3 * slope * params.slider_max_distance / 4,
                                                             slope * params.slider_max_distance / 2),
                xlabel="outlier distance a (along w)", ylabel="outlier residual r", title="where BN amplifies")
    regimes.legend(fontsize=7, loc="lower left")

    x, y = simulated_batch(batch_size, distance, slope, residual)
    mean, std = x.mean(), x.std()
    line = np.linspace(min(-3.0, x.min()) - 0.5, max(3.0, distance) + 0.5, 50)
    batch.plot(line, slope * line, color="#1f77b4", label="fit without the outlier (BN or none)")
    batch.plot(line, slope * (line - mean) / std, color="#d62728", label="BN with the outlier in the batch")
    batch.scatter(x[:-1], y[:-1], s=8, color="0.3", label=f"{batch_size - 1} inliers")
    batch.scatter(x[-1:], y[-1:], s=40, marker="*", color="#d62728", label="outlier")
    batch.set(xlabel="x along w", ylabel="y, f(x)", title=f"a batch: m = {batch_size}, a = {distance:.1f}")
    batch.legend(fontsize=7, loc="upper left")


def panels_png(params: TheoryParams, batch_size: int, distance: float, dpi: int = 80) -> bytes:
    """:func:`draw_panels` at (m, a) as PNG bytes, for an ``ipywidgets.Image`` (the live sliders): no Output
    widget is involved, which nbclient can deadlock on when a notebook is executed in batch (nbclient #312)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4))
    draw_panels(axes, params, batch_size, distance)
    fig.tight_layout()
    return plots.figure_png(fig, dpi)


def slider_animation(params: TheoryParams, batch_sizes: Sequence[int], distances: Sequence[float]):
    """A matplotlib animation whose frames are :func:`draw_panels` at (batch_sizes[k], distances[k]).

    ``to_jshtml()`` of it is a self-contained slider (inline JavaScript, frames as embedded PNGs).
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4))

    def frame(k: int) -> list:
        draw_panels(axes, params, int(batch_sizes[k]), float(distances[k]))
        fig.tight_layout()
        return []

    animation = FuncAnimation(fig, frame, frames=len(batch_sizes), blit=False)
    plt.close(fig)
    return animation


# ----------------------------------------------------------------------------- verification against autograd

def _relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-300)


def verify_against_autograd(instances: int, seed: int = 0) -> dict[str, float]:
    """Largest relative errors of the closed forms against torch autograd on random instances (float64).

    Keys:
        general_batch, general_none -- the general closed form (any batch of 3..40 samples, any sample of it,
            random theta, eps in [1e-5, 1]) vs :func:`toy_influence_by_autograd`.
        matched_batch, matched_none -- the A1-A4 closed forms vs autograd on :func:`matched_instance`
            batches (m in 4..512; BN with eps = 1e-12, as torch needs eps > 0: O(eps) against unit variance).
        none_is_per_sample_gradient -- without BN, the counterfactual influence vs the per-sample gradient norm.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))

    errors = {key: 0.0 for key in ("general_batch", "general_none", "matched_batch", "matched_none",
                                   "none_is_per_sample_gradient")}
    for _ in range(instances):
        size = int(torch.randint(3, 41, (1,), generator=generator))  # torch BN refuses a batch of 1
        x = uniform(0.1, 3.0) * torch.randn(size, 2, generator=generator, dtype=torch.float64) + torch.randn(
            2, generator=generator, dtype=torch.float64)
        y = torch.randn(size, generator=generator, dtype=torch.float64)
        theta = torch.randn(4, generator=generator, dtype=torch.float64).tolist()
        epsilon, index = 10 ** uniform(-5.0, 0.0), int(torch.randint(0, size, (1,), generator=generator))
        for norm in NORMS:
            network = toy_network(norm, theta[:2], theta[2], theta[3], epsilon)
            reference = toy_influence_by_autograd(network, x, y, index)
            closed = closed_form_influence(norm, x.numpy(), y.numpy(), index, theta, epsilon)
            errors[f"general_{norm}"] = max(errors[f"general_{norm}"], _relative_error(closed, reference))
            if norm == "none":
                per_sample = toy_per_sample_gradient_norm(network, x, y, index)
                errors["none_is_per_sample_gradient"] = max(errors["none_is_per_sample_gradient"],
                                                            _relative_error(reference, per_sample))
        size = int(torch.randint(4, 513, (1,), generator=generator))
        along, across, slope = uniform(0.0, 20.0), uniform(-5.0, 5.0), uniform(0.1, 3.0)
        residual = uniform(-5.0, 5.0)
        x, y = matched_instance(size, along, across, slope, residual, generator)
        for norm in NORMS:
            network = toy_network(norm, (1.0, 0.0), slope, 0.0, MATCHED_TORCH_EPS)
            reference = toy_influence_by_autograd(network, x, y, size - 1)
            closed = float(influence(norm, size, along, across, slope, residual))
            errors[f"matched_{norm}"] = max(errors[f"matched_{norm}"], _relative_error(closed, reference))
    return errors


# ----------------------------------------------------------------------------- the real CNN

def cnn_influence_by_batch_size(model: nn.Module, inlier_x: torch.Tensor, inlier_y: torch.Tensor,
                                outlier_x: torch.Tensor, outlier_y: torch.Tensor, batch_sizes: Sequence[int],
                                n_batches: int, inliers_measured: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Counterfactual influence (``bnlib.influence.counterfactual_influence``, train-mode BN, sum-reduced
    cross-entropy) of one outlier in a batch of m-1 random inliers, at each batch size m, at fixed weights.

    Outlier k (k < n_batches) is the same at every m; its batch-mates are drawn afresh for each m. The draws
    depend only on ``seed`` and the sizes, so two models measured with the same seed see the same batches.

    Args:
        inlier_x, inlier_y: (N, C, H, W), (N,) pool of inliers.
        outlier_x, outlier_y: (K, C, H, W), (K,) outliers, K >= n_batches.
        inliers_measured: inliers per batch whose influence is measured too (the first ones of the batch).

    Returns:
        ``outlier`` (S, n_batches): the outlier's influence; ``inlier`` (S, n_batches): the mean influence of
        ``inliers_measured`` inliers of the same batch; S = len(batch_sizes).
    """
    if n_batches > len(outlier_x):
        raise ValueError(f"Parameter 'cnn_batches' got {n_batches}; allowed: at most {len(outlier_x)} "
                         "(one inserted canary per batch).")
    if max(batch_sizes) > len(inlier_x) + 1:
        raise ValueError(f"Parameter 'cnn_batch_sizes' got {max(batch_sizes)}; allowed: at most {len(inlier_x) + 1}.")
    generator = torch.Generator().manual_seed(seed)
    outliers = torch.randperm(len(outlier_x), generator=generator)[:n_batches]
    device = next(model.parameters()).device
    result = {"outlier": np.zeros((len(batch_sizes), n_batches)), "inlier": np.zeros((len(batch_sizes), n_batches))}
    for s, size in enumerate(batch_sizes):
        measured = min(inliers_measured, size - 1)
        for k, outlier in enumerate(outliers.tolist()):
            mates = torch.randperm(len(inlier_x), generator=generator)[: size - 1]
            x = torch.cat([inlier_x[mates], outlier_x[outlier:outlier + 1]]).to(device)  # (m, C, H, W)
            y = torch.cat([inlier_y[mates], outlier_y[outlier:outlier + 1]]).to(device)
            values = influence_lib.counterfactual_influence(model, x, y, indices=[size - 1, *range(measured)])
            result["outlier"][s, k] = float(values[0])
            result["inlier"][s, k] = float(values[1:].mean())
    return result


def log_log_slopes(batch_sizes: Sequence[int], values: np.ndarray) -> np.ndarray:
    """Least-squares slope of log(value) against log(m) for each column of ``values`` (S, K); returns (K,)."""
    logs = np.log(np.asarray(batch_sizes, dtype=np.float64))
    centered = logs - logs.mean()
    return centered @ (np.log(values) - np.log(values).mean(0)) / (centered @ centered)


def squared_standardized_distances(model: nn.Module, reference_x: torch.Tensor,
                                   probe_x: torch.Tensor) -> list[np.ndarray]:
    """The toy's a^2 measured at every BatchNorm layer of a network: for each probe sample and channel, the
    mean over spatial positions of (z - mu)^2 / sigma^2, where z is the layer's input and mu, sigma^2 its
    per-channel mean and variance over ``reference_x`` (the inliers). This is how much the sample adds to the
    channel's batch variance, in units of one inlier's share (1 on average for an inlier).

    The forward passes run in eval mode (running statistics in the layers before), weights untouched.

    Returns:
        one (len(probe_x), C_l) array per BN layer, in forward order.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda module, args, output, k=k: inputs.__setitem__(k, args[0]))
             for k, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(reference_x)
            reference = dict(inputs)
            model(probe_x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    distances = []
    for k in range(len(layers)):
        ref, probe = reference[k].transpose(0, 1).flatten(1), inputs[k]  # (C, N*H*W), (P, C, H, W)
        mean, variance = ref.mean(1), ref.var(1, unbiased=False)  # (C,)
        shape = (1, -1) + (1,) * (probe.dim() - 2)
        squared = (probe - mean.reshape(shape)) ** 2 / variance.reshape(shape)
        distances.append(squared.flatten(2).mean(2).cpu().numpy() if probe.dim() > 2 else squared.cpu().numpy())
    return distances
