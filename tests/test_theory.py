"""The theory chapter's closed forms against torch autograd, their limits, and the chapter's parameters."""

import numpy as np
import pytest
import sympy as sp
import torch

from bnlib import config, plots, theory, theory_checks, theory_plots
from bnlib.theory import a, beta, m, r


def test_general_closed_forms_match_autograd_on_random_instances():
    errors = theory_checks.verify_against_autograd(instances=30, seed=1)
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.parametrize("norm", theory.NORMS)
@pytest.mark.parametrize("size", [3, 4, 17, 64])
def test_closed_form_matches_autograd_for_every_sample_of_a_batch(norm, size):
    generator = torch.Generator().manual_seed(size)
    x = 2.0 * torch.randn(size, 2, generator=generator, dtype=torch.float64) + 1.0  # not centered
    y = torch.randn(size, generator=generator, dtype=torch.float64)
    theta = (0.7, -1.3, 0.9, 0.2)
    network = theory_checks.toy_network(norm, theta[:2], theta[2], theta[3], epsilon=1e-5)
    for index in range(size):
        reference = theory_checks.toy_influence_by_autograd(network, x, y, index)
        closed = theory.closed_form_influence(norm, x.numpy(), y.numpy(), index, theta, 1e-5)
        assert closed == pytest.approx(reference, rel=1e-6)


def test_without_bn_the_influence_is_the_textbook_per_sample_gradient():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(9, generator=generator, dtype=torch.float64)
    network = theory_checks.toy_network("none", (0.4, 1.1), -0.8, 0.3)
    for index in range(9):
        per_sample = theory_checks.toy_per_sample_gradient_norm(network, x, y, index)
        assert theory_checks.toy_influence_by_autograd(network, x, y, index) == pytest.approx(per_sample, rel=1e-12)
        # closed form: |residual| * ||(v x, w^T x, 1)||
        residual = 0.3 + (-0.8) * (0.4 * x[index, 0] + 1.1 * x[index, 1]) - y[index]
        features = torch.cat([-0.8 * x[index], (0.4 * x[index, 0] + 1.1 * x[index, 1]).reshape(1),
                              torch.ones(1, dtype=torch.float64)])
        assert float(residual.abs() * features.norm()) == pytest.approx(per_sample, rel=1e-12)
    # and in the matched setting the closed form is r * (beta a, beta a_perp, a, 1)
    assert theory.matched_influence_vector("none") == r * sp.Matrix([beta * a, beta * theory.a_perp, a, 1])


def test_matched_setting_closed_forms_match_autograd():
    generator = torch.Generator().manual_seed(3)
    for size, along, across, slope, residual in [(4, 0.3, 0.0, 1.0, 1.0), (32, 8.0, 2.0, 0.5, -3.0),
                                                  (129, 20.0, -1.0, 2.0, 0.25), (512, 0.0, 3.0, 1.0, 1.0)]:
        x, y = theory_checks.matched_instance(size, along, across, slope, residual, generator)
        assert torch.allclose(x[:-1].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(x[:-1].T @ x[:-1] / (size - 1), torch.eye(2, dtype=torch.float64), atol=1e-12)
        for norm in theory.NORMS:
            network = theory_checks.toy_network(norm, (1.0, 0.0), slope, 0.0, theory.MATCHED_TORCH_EPS)
            reference = theory_checks.toy_influence_by_autograd(network, x, y, size - 1)
            assert float(theory.numeric_influence(norm, size, along, across, slope, residual)) == pytest.approx(
                reference, rel=1e-6)


def test_hand_written_q_forms_equal_the_derived_ones():
    assert theory.compact_matches()


def test_coupling_does_not_depend_on_the_label_and_holds_the_mean_shift():
    # with BN, coupling = influence - own gradient (checked by compact_matches): mean shift -beta a q, no r
    coupling = theory.compact_coupling()
    assert coupling[3] == -beta * a * theory.q
    assert all(sp.diff(entry, r) == 0 for entry in coupling)


def test_limits_known_answers():
    limits = theory.limits()
    assert sp.simplify(limits["far"] - beta**2 * m / (r**2 * (1 + beta**2))) == 0
    large = (a**2 + 1) * (beta**2 * (a**2 + 1) - 4 * a * beta * r + 4 * r**2) / (4 * r**2 * ((1 + beta**2) * a**2 + 1))
    assert sp.simplify(limits["large_batch"] - large) == 0
    assert sp.simplify(limits["far_typical_label"]) == 0
    at_mean = limits["at_mean"].subs({beta: 1, r: 1})
    assert sp.limit(at_mean, m, sp.oo) == sp.Rational(5, 4)  # rho^2 -> 1 + beta^2 / (4 r^2)


def test_limits_agree_with_the_numeric_closed_form():
    limits = theory.limits()
    values = {m: 64, beta: 0.7, r: 1.3}
    far = float(limits["far"].subs(values))
    assert float(theory.amplification(64, 1e6, slope=0.7, residual=1.3)) ** 2 == pytest.approx(far, rel=1e-4)
    large = float(limits["large_batch"].subs({a: 3.0, beta: 0.7, r: 1.3}))
    assert float(theory.amplification(1e10, 3.0, slope=0.7, residual=1.3)) ** 2 == pytest.approx(large, rel=1e-6)
    at_mean = float(limits["at_mean"].subs(values))
    assert float(theory.amplification(64, 1e-7, slope=0.7, residual=1.3)) ** 2 == pytest.approx(at_mean, rel=1e-6)


def test_window_is_where_the_ratio_crosses_one():
    for size, along, slope in [(2, 0.5, 1.0), (16, 3.0, 0.5), (128, 8.0, 1.0), (4096, 20.0, 2.0)]:
        lower, upper = theory.window(size, along, slope)
        assert lower < 0 < upper
        for end in (lower, upper):
            assert float(theory.amplification(size, along, slope=slope, residual=end)) == pytest.approx(1.0, abs=1e-9)
        assert theory.amplification(size, along, slope=slope, residual=0.5 * upper) > 1
        assert theory.amplification(size, along, slope=slope, residual=0.5 * lower) > 1
        assert theory.amplification(size, along, slope=slope, residual=2 * upper) < 1
        assert theory.amplification(size, along, slope=slope, residual=2 * lower) < 1
        symbolic = [float(root.subs(theory.q, theory.Q_OF_M_A).subs({m: size, a: along, beta: slope}))
                    for root in theory.amplification_window()]
        assert symbolic == pytest.approx([float(lower), float(upper)], rel=1e-9)


def test_large_batch_window_and_typical_label_threshold():
    lower, upper = theory.large_batch_window()
    root = sp.sqrt(1 + beta**2)
    assert sp.simplify(upper - (root - 1) * (1 + a**2) / (2 * a * beta)) == 0
    assert sp.simplify(lower + (root + 1) * (1 + a**2) / (2 * a * beta)) == 0
    numeric = theory.window(1e12, 5.0, 1.0)
    assert float(numeric[1]) == pytest.approx(float(upper.subs({a: 5, beta: 1})), rel=1e-6)
    threshold = float(theory.typical_label_threshold().subs(beta, 1))
    assert threshold == pytest.approx(np.sqrt((np.sqrt(2) - 1) / (3 - np.sqrt(2))), rel=1e-12)
    assert theory.amplification(1e12, threshold * 1.01, residual=threshold * 1.01) < 1
    assert theory.amplification(1e12, threshold * 0.99, residual=threshold * 0.99) > 1


def test_bn_influence_does_not_vanish_for_a_sample_the_fit_predicts():
    # r = 0: no influence without BN, but removing the sample still changes the batch statistics
    assert float(theory.numeric_influence("none", 128, 4.0, residual=0.0)) == 0.0
    assert float(theory.numeric_influence("batch", 128, 4.0, residual=0.0)) > 1.0


def test_params_validate_and_fail_fast():
    cfg, params = config.load("smoke", extras=theory.ChapterParams)
    assert params.frames == 4 and cfg.profile == "smoke"
    with pytest.raises(ValueError, match="outlier_angle"):
        config.load("quick", extras=theory.ChapterParams, outlier_angle=120)
    with pytest.raises(ValueError, match="slider_batch_sizes"):
        config.load("quick", extras=theory.ChapterParams, slider_batch_sizes="64,8")
    with pytest.raises(ValueError, match="frames"):
        config.load("quick", extras=theory.ChapterParams, frames=1)
    with pytest.raises(ValueError, match="norm"):
        theory.numeric_influence("group", 8, 1.0)


def test_offline_slider_has_no_outside_reference():
    import matplotlib

    matplotlib.use("Agg")
    _, params = config.load("smoke", extras=theory.ChapterParams)
    html = plots.offline_jshtml(theory_plots.slider_animation(params, [4, 64], [2.0, 2.0]), dpi=30)
    assert 'type="range"' in html and "font-awesome" not in html and "https://" not in html


def test_at_mean_limit_has_the_compact_form():
    k = sp.Symbol("k", positive=True)
    difference = (theory.limits()["at_mean"] - theory.at_mean_compact()).subs(m, 1 + k)
    assert sp.simplify(difference) == 0


def test_cnn_parameters_are_checked_against_the_data():
    cfg, params = config.load("smoke", extras=theory.ChapterParams, cnn_batch_sizes="4,1000")
    with pytest.raises(ValueError, match="cnn_batch_sizes"):
        theory.check_config(cfg, params)
    cfg, params = config.load("smoke", extras=theory.ChapterParams, cnn_batches=500)
    with pytest.raises(ValueError, match="cnn_batches"):
        theory.check_config(cfg, params)


def test_the_window_is_wider_beyond_the_extrapolation_by_one_plus_root_two_squared():
    """As m -> oo at beta = 1 the window's ends are -(√2 + 1) and √2 − 1 times (1 + a²)/(2a): |r_-|/r_+ = (1 + √2)²
    (the chapter once typed 1 + √2)."""
    ratio = theory.large_batch_window_side_ratio().subs(beta, 1)
    assert sp.simplify(ratio - (1 + sp.sqrt(2)) ** 2) == 0
    assert float(ratio) == pytest.approx(5.828427, rel=1e-6)
