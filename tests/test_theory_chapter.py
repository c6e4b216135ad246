"""The theory chapter's page: the derivation as it is displayed (bnlib.theory_derivation), the CNN comparison's
summaries (bnlib.theory_cnn), the verification table (bnlib.theory_checks) and the figures (bnlib.theory_plots),
on known answers and small synthetic inputs."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import sympy as sp
import torch

from bnlib import config, models, plots, theory, theory_checks, theory_cnn, theory_derivation, theory_plots
from bnlib.theory import a, a_perp, beta, m, q, r

matplotlib.use("Agg")


def small_fonts(fig) -> list[str]:
    """Every text of ``fig`` drawn below ``plots.MIN_FONT`` (tick labels, legends, titles included)."""
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    return [f"{t.get_text()!r} at {t.get_fontsize()}" for t in texts if t.get_fontsize() < plots.MIN_FONT]


# ----------------------------------------------------------------------------- the derivation as displayed

def test_step_one_shows_the_batch_statistics_and_confirms_them():
    values = theory_derivation.sums_and_losses()
    assert values["statistics_checked"] == "yes"
    assert values["eq_stats"] == (r"\mu_B = \frac{w^{\top}\!S_x}{n}, \qquad \sigma_B^2 = \frac{w^{\top}\!S_{xx}w}{n} - "
                                  r"\frac{\left(w^{\top}\!S_x\right)^{2}}{n^{2}}")
    # without BN the loss is v^2 w'Sxx w / 2 + c v w'Sx + n c^2 / 2 - v w'Syx - c S_y
    for term in (r"\frac{v^{2} w^{\top}\!S_{xx}w}{2}", r"c v w^{\top}\!S_x", r"\frac{c^{2} n}{2}",
                 r"- v w^{\top}\!S_{yx}"):
        assert term in values["eq_loss_none"]
    assert values["eq_loss_bn"].startswith(r"L_{\mathrm{BN}}(\theta; B) = ")
    assert r"\sigma^{2}_{B}" in values["eq_loss_bn"]


def test_step_two_shows_the_textbook_gradient_without_bn_and_confirms_the_q_forms():
    values = theory_derivation.influence_vectors()
    assert values["compact_checked"] == "yes"
    textbook = r * sp.Matrix([beta * a, beta * a_perp, a, 1])  # residual times features
    assert values["eq_delta_none"] == r"\Delta_{\mathrm{none}} = " + sp.latex(textbook)
    assert values["eq_delta_bn"].endswith(r", \qquad q = \sqrt{\frac{m-1}{m+a^2}}")
    assert set(theory_derivation.own_and_coupling()) == {"eq_own", "eq_coupling"}


def test_the_displayed_offset_is_the_derived_one():
    assert theory_derivation.offset_matches()
    # A at m = 2, a = 0, beta = 1: 2 (1 - sqrt(1/2))
    shown = theory_derivation.offset_shown().subs(q, theory.Q_OF_M_A).subs({m: 2, a: 0, beta: 1})
    assert float(shown) == pytest.approx(2 - np.sqrt(2))
    values = theory_derivation.amplification_equations()
    assert values["offset_checked"] == "yes"
    assert {name for name in values if name.startswith("eq_")} == {
        "eq_influences", "eq_limit_far", "eq_limit_large", "eq_limit_mean", "eq_limit_typical", "eq_window_quadratic",
        "eq_window_large", "eq_typical_threshold"}


def test_displayed_wraps_only_the_equations():
    wrapped = theory_derivation.displayed({"eq_x": r"x^2", "x_checked": "yes"})
    assert wrapped["x_checked"] == "yes" and wrapped["eq_x"].data == r"x^2"
    assert theory_derivation.yes_no(False) == "NO"


def test_default_numbers_known_answers():
    values = theory_derivation.default_numbers(128, 8.0, 1.0, 1.0)
    defaults = (values["m_default"], values["a_default"], values["beta_default"], values["r_default"])
    assert defaults == (128, 8.0, 1.0, 1.0)
    # far outlier: rho -> beta sqrt(m) / (|r| sqrt(1 + beta^2)) = sqrt(128 / 2) = 8, amplified while |r| < 8
    assert values["rho_far"] == pytest.approx(8.0) and values["residual_far_max"] == pytest.approx(8.0)
    assert values["rho_mean_large"] == pytest.approx(np.sqrt(1.25))  # sqrt(1 + beta^2 / (4 r^2))
    assert values["window_side_ratio"] == pytest.approx((1 + np.sqrt(2)) ** 2)
    assert values["window_side_ratio_exact"] == "2⋅√2 + 3"
    assert values["window_lower"] < 0 < values["window_upper"]
    assert values["rho_default"] == pytest.approx(float(theory.amplification(128, 8.0, slope=1.0, residual=1.0)))
    # a typical-label outlier (r = beta a) sits on the large-batch window's upper end at a*
    threshold = values["typical_threshold"]
    assert float(theory.window(1e12, threshold, 1.0)[1]) == pytest.approx(threshold, rel=1e-5)


def test_relative_to_large_batch_grows_like_root_m_for_a_far_outlier():
    relative = theory_derivation.relative_to_large_batch(np.array([4.0, 16.0, theory_derivation.LARGE_BATCH]),
                                                         1000.0, 1.0, 1.0)
    assert relative[2] == 1.0
    assert relative[1] / relative[0] == pytest.approx(2.0, rel=0.01)  # sqrt(16 / 4) while m << a^2
    near = theory_derivation.relative_to_large_batch(np.array([64.0, 4096.0]), 0.5, 1.0, 1.0)
    assert np.allclose(near, 1.0, atol=0.01)  # a^2 << m: settled


# ----------------------------------------------------------------------------- verification table

def test_verification_rows_and_values():
    errors = {"general_batch": 3.2e-12, "matched_none": 4.6e-9}
    assert theory_checks.verification_rows(errors) == [("general closed form, BN", "3.2e-12"),
                                                       ("A1–A4 closed form, no norm", "4.6e-09")]
    assert theory_checks.verification_values(errors) == {"error_general_batch": "3e-12", "error_matched_none": "5e-09",
                                                         "error_max": "5e-09"}
    assert set(theory_checks.VERIFICATION_CHECKS) == set(theory_checks.verify_against_autograd(1))


# ----------------------------------------------------------------------------- the CNN comparison

def layers(*per_layer_max):
    """One (samples, 2 channels) array per layer whose largest channel is the given per-sample values."""
    return [np.stack([np.asarray(v, dtype=float), np.zeros(len(v))], 1) for v in per_layer_max]


def test_distance_summary_compares_canaries_with_test_images():
    squared = {"canaries": layers([0.5, 0.5, 0.5], [2.0, 2.0, 10.0]), "test images": layers([4.0] * 3, [8.0] * 3)}
    values = theory_cnn.distance_summary(squared, (4, 8, 16))
    assert values["canary_a2"] == "0.50, 2.00" and values["inlier_a2"] == "4.00, 8.00"
    assert values["canary_vs_inlier"] == "smaller than"
    assert values["canary_a2_high"] == pytest.approx(8.4)  # 90 % quantile of (2, 2, 10)
    assert values["toy_regime"].startswith("could grow")  # 8.4 >= the smallest batch size 4
    assert theory_cnn.distance_summary(squared, (16, 32))["toy_regime"].startswith("should barely change")
    overlapping = {"canaries": layers([1.0] * 3, [3.0] * 3), "test images": layers([2.0] * 3, [2.0] * 3)}
    assert theory_cnn.distance_summary(overlapping, (4,))["canary_vs_inlier"] == "comparable to"
    far = {"canaries": layers([20.0] * 3), "test images": layers([1.0] * 3)}
    assert theory_cnn.distance_summary(far, (4,))["canary_vs_inlier"] == "larger than"


def test_ratio_summary_reads_the_batch_size_closest_to_the_chapters():
    ratio = np.array([[1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [4.0, 6.0, 5.0]])  # (S, K)
    values = theory_cnn.ratio_summary(ratio, (4, 8, 16), batch_size=10)
    assert values["cnn_ratio_m"] == 8 and values["cnn_ratio"] == pytest.approx(2.0)
    assert values["cnn_ratio_low"] == pytest.approx(2.0) and values["cnn_ratio_high"] == pytest.approx(2.0)
    assert (values["cnn_ratio_min"], values["cnn_ratio_max"]) == (pytest.approx(2.0), pytest.approx(5.0))
    measured = {"batch": {"outlier": ratio * 3.0}, "none": {"outlier": np.full((3, 3), 3.0)}}
    assert np.allclose(theory_cnn.amplification_ratios(measured), ratio)
    assert theory_cnn.amplification_ratios({"batch": measured["batch"]}) is None


def power_law(sizes, exponents):
    """(S, K) values c_k m^e_k: their log-log slopes are the exponents."""
    return np.stack([(k + 1.0) * np.asarray(sizes, dtype=float) ** e for k, e in enumerate(exponents)], 1)


def test_slopes_words_rows_and_metric():
    sizes = (4, 8, 16, 32)
    measured = {"batch": {"outlier": power_law(sizes, [0.5, 0.4, 0.6, 0.5])},
                "none": {"outlier": power_law(sizes, [0.0, 0.01, -0.01, 0.0])}}
    per_canary = theory_cnn.slopes(measured, sizes)
    assert np.allclose(per_canary["batch"], [0.5, 0.4, 0.6, 0.5])
    assert np.allclose(per_canary["none"], [0, 0.01, -0.01, 0])
    assert theory_cnn.trend_word({"ci95": [0.1, 0.3]}) == "grows with m"
    assert theory_cnn.trend_word({"ci95": [-0.3, -0.1]}) == "shrinks with m"
    assert theory_cnn.trend_word({"ci95": [-0.1, 0.1]}) == "shows no trend we can detect"
    summary = {"batch": {"mean": 0.5, "ci95": [0.37, 0.63], "n": 4},
               "none": {"mean": 0.0, "ci95": [-0.01, 0.01], "n": 4}}
    values = theory_cnn.slope_values(summary)
    assert values == {"slope_batch": 0.5, "slope_batch_low": 0.37, "slope_batch_high": 0.63,
                      "slope_batch_verdict": "grows with m", "slope_none": 0.0, "slope_none_low": -0.01,
                      "slope_none_high": 0.01, "slope_none_verdict": "shows no trend we can detect"}
    assert theory_cnn.slope_rows(summary, {"batch": "BN", "none": "no norm"}) == [
        ("BN", "0.500", "[0.370, 0.630]", "4"), ("no norm", "0.000", "[-0.010, 0.010]", "4")]
    metrics, p_value = theory_cnn.slope_metric(per_canary, summary, seed=3)
    entry = metrics[theory_cnn.METRIC]
    assert p_value < 0.01 and entry["p_value"] == p_value
    assert entry["batch"]["mean"] == 0.5 and "(seed 3)" in entry["description"]


def tiny_cnns(norms=("batch", "none")) -> theory_cnn.TrainedCNNs:
    generator = torch.Generator().manual_seed(0)
    networks = {}
    for norm in norms:
        torch.manual_seed(1)
        networks[norm] = models.build("small_cnn", norm, 1, 8, 3, width=2)
    x = torch.randn(40, 1, 8, 8, generator=generator)
    return theory_cnn.TrainedCNNs(networks, x[:30], torch.randint(0, 3, (30,), generator=generator), x[30:34] * 5,
                                  torch.randint(0, 3, (4,), generator=generator), x[34:])


def test_distances_and_influence_of_tiny_networks():
    cnns = tiny_cnns()
    squared = theory_cnn.canary_and_test_distances(cnns)
    assert list(squared) == ["canaries", "test images"]
    bn_layers = sum(isinstance(module, torch.nn.BatchNorm2d) for module in cnns.networks["batch"].modules())
    assert len(squared["canaries"]) == bn_layers and squared["canaries"][0].shape == (4, 2)
    assert squared["test images"][0].shape == (4, 2)  # as many test images as canaries
    assert theory_cnn.canary_and_test_distances(tiny_cnns(("none",))) == {}
    _, params = config.load("smoke", extras=theory.ChapterParams, cnn_batch_sizes="3,5", cnn_batches=2)
    measured = theory_cnn.influence_by_batch_size(cnns, params, seed=0)
    assert set(measured) == {"batch", "none"} and measured["batch"]["outlier"].shape == (2, 2)
    assert np.all(measured["none"]["outlier"] > 0)


# ----------------------------------------------------------------------------- the far-outlier check (can fail)

def test_first_bn_a2_is_the_first_layer_of_the_standardized_distances():
    cnns = tiny_cnns()
    network, reference = cnns.networks["batch"], cnns.inlier_x
    expected = theory_checks.squared_standardized_distances(network, reference, cnns.canary_x)[0].max(1)
    assert np.allclose(theory_cnn.first_bn_a2(network, reference)(cnns.canary_x), expected, rtol=1e-5)


def test_synthetic_outliers_sit_at_the_asked_a2():
    cnns = tiny_cnns()
    network = cnns.networks["batch"]
    x, a2 = theory_cnn.synthetic_outliers(network, cnns.inlier_x, cnns.canary_x, 500.0)
    assert np.allclose(a2, 500.0, rtol=1e-3) and x.shape == cnns.canary_x.shape
    assert np.allclose(theory_cnn.first_bn_a2(network, cnns.inlier_x)(x), 500.0, rtol=1e-3)
    with pytest.raises(ValueError, match="'target_a2'"):
        theory_cnn.synthetic_outliers(network, cnns.inlier_x, cnns.canary_x * 0, 500.0)


def test_the_toy_predicts_a_square_root_for_far_outliers_and_nothing_near_the_mean():
    """Known answers of the toy: far outliers (a² >> m) have influence ~ sqrt(m) (slope -> 1/2); samples near the
    inlier mean have none (slope ~ 0); the prediction is the least-squares slope of the closed form."""
    sizes = (8, 16, 32, 64, 128)
    slopes = theory_cnn.predicted_slopes(sizes, np.array([1e6, 1e4, 0.25]))
    assert slopes[0] == pytest.approx(0.5, abs=0.01) and 0.45 < slopes[1] < 0.5 and abs(slopes[2]) < 0.02
    values = theory.numeric_influence("batch", np.array(sizes, dtype=float), 100.0)
    assert slopes[1] == pytest.approx(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def test_without_norm_the_slope_is_zero_by_definition():
    """The no-norm comparison is a one-sample test: a sample's counterfactual influence without BN is its own
    gradient, whatever its batch-mates, so the slope against m is 0 (up to rounding) for any outlier."""
    cnns = tiny_cnns()
    x, _ = theory_cnn.synthetic_outliers(cnns.networks["batch"], cnns.inlier_x, cnns.canary_x, 500.0)
    measured = theory_checks.cnn_influence_by_batch_size(cnns.networks["none"], cnns.inlier_x, cnns.inlier_y, x,
                                                         cnns.canary_y, (3, 6, 12), 4, seed=0)
    assert np.allclose(theory_checks.log_log_slopes((3, 6, 12), measured["outlier"]), 0.0, atol=1e-5)


def test_far_outlier_check_on_tiny_networks_and_its_reading():
    cnns = tiny_cnns()
    _, params = config.load("smoke", extras=theory.ChapterParams, cnn_batch_sizes="3,6,12", cnn_batches=3)
    check = theory_cnn.far_outlier_check(cnns, params, seed=0, targets=(200.0, 2000.0))
    assert check["measured"].shape == (6,) and np.allclose(check["a2"], np.repeat([200.0, 2000.0], 3), rtol=1e-3)
    assert np.allclose(check["predicted"], theory_cnn.predicted_slopes((3, 6, 12), check["a2"]))
    values = theory_cnn.far_outlier_values(check)
    assert values["far_n"] == 6 and values["far_slope"] == pytest.approx(check["measured"].mean())
    with pytest.raises(ValueError, match="'batch'"):
        theory_cnn.far_outlier_check(tiny_cnns(("none",)), params, seed=0)

    def reading(mean, low, high, predicted, p_zero):
        return theory_cnn.far_outlier_values({
            "measured_summary": {"mean": mean, "ci95": [low, high], "n": 6}, "difference": {"mean": mean - predicted},
            "predicted_mean": predicted, "a2": np.array([1e3]), "against_zero_p": p_zero,
            "against_prediction_p": 0.5, "seconds": 1.0})["far_verdict"]

    assert reading(0.45, 0.4, 0.5, 0.47, 1e-4).startswith("the measured slope agrees")
    assert reading(0.62, 0.57, 0.66, 0.47, 1e-4).endswith("the theory fails this check")
    assert reading(0.02, -0.05, 0.09, 0.47, 0.5).endswith("the theory fails")
    assert reading(-0.3, -0.4, -0.2, 0.47, 1e-3).startswith("the slope is negative")
    assert reading(0.2, -0.1, 0.6, 0.47, 0.2).startswith("inconclusive")


# ----------------------------------------------------------------------------- figures

@pytest.fixture
def params():
    return config.load("smoke", extras=theory.ChapterParams)[1]


def test_panels_figure_is_column_wide_and_readable(params):
    fig = theory_plots.panels_figure(params, 64, 8.0)
    assert len(fig.axes) == 3 and fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    assert not small_fonts(fig)
    assert fig.axes[0].get_title() == "amplification, m = 64"
    plt.close(fig)
    assert theory_plots.panels_png(params, 8, 2.0, dpi=20).startswith(b"\x89PNG")


def test_live_panels_redraw_when_a_slider_moves(params):
    import ipywidgets as widgets

    m_slider = widgets.IntSlider(value=8, min=2, max=64)
    a_slider = widgets.FloatSlider(value=2.0, min=0.0, max=10.0)
    box = theory_plots.live_panels(params, m_slider, a_slider)
    picture = box.children[1]
    assert list(box.children[0].children) == [m_slider, a_slider]
    before = picture.value
    m_slider.value = 32
    assert picture.value != before and bytes(picture.value).startswith(b"\x89PNG")
    after_m = picture.value
    a_slider.value = 6.0
    assert picture.value != after_m


def test_the_other_theory_figures_are_readable():
    trend = theory_plots.batch_size_trend(1.0, 1.0)
    assert len(trend.axes[0].lines) == len(theory_derivation.TREND_DISTANCES) + 1
    squared = {"canaries": layers([0.5, 1.0], [1.0, 2.0]), "test images": layers([2.0, 3.0], [1.0, 4.0])}
    distances = theory_plots.distances_figure(squared)
    sizes = (4, 8)
    measured = {"batch": {"outlier": power_law(sizes, [0.5, 0.4]), "inlier": power_law(sizes, [0.1, 0.1])},
                "none": {"outlier": power_law(sizes, [0.0, 0.0]), "inlier": power_law(sizes, [0.0, 0.0])}}
    cnn = theory_plots.cnn_influence_figure(measured, sizes, theory_cnn.amplification_ratios(measured))
    for fig in (trend, distances, cnn):
        assert fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES) and not small_fonts(fig)
        plt.close(fig)
