"""The three influence definitions: fast paths against slow, obviously right references (loops of single
backward passes, two full batch gradients per sample), on MLPs and CNNs with and without BatchNorm, batch
sizes down to 2, float64; plus the no-BN identities, state restoration and input validation."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib import influence, influence_chapter, models, persample

DEFINITIONS = {
    "eval": (persample.eval_mode_grad_norms, persample.eval_mode_grad_norms_reference),
    "in_batch": (persample.in_batch_grad_norms, persample.in_batch_grad_norms_reference),
    "counterfactual": (persample.counterfactual_influence, persample.counterfactual_influence_reference),
}


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator, negative: bool = False) -> nn.Module:
    """Running statistics and affine parameters away from their initial values (eval mode then differs)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
            module.running_var.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5)
            if module.affine:
                sign = torch.where(torch.rand(channels, generator=generator) < 0.5, -1.0, 1.0) if negative else 1.0
                module.weight.data.copy_(sign * (torch.rand(channels, generator=generator) + 0.5))
                module.bias.data.copy_(torch.randn(channels, generator=generator))
    return model


def _model(arch: str, norm: str, size: int, seed: int = 0, negative: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = models.build(arch, norm, 1, size, 5, width=4).double()
    return _randomize_batchnorm(model, torch.Generator().manual_seed(seed), negative)


def _batch(m: int, size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(m, 1, size, size, generator=generator, dtype=torch.float64),
            torch.randint(0, 5, (m,), generator=generator))


def _assert_close(fast: torch.Tensor, reference: torch.Tensor, tolerance: float = 1e-9) -> None:
    assert fast.shape == reference.shape
    assert torch.all(reference > 0)
    assert float(((fast - reference).abs() / reference).max()) < tolerance


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("arch,norm,m,size", [
    ("small_cnn", "batch", 2, 16), ("small_cnn", "batch", 5, 19), ("small_cnn", "none", 3, 16),
    ("mlp", "batch", 3, 8), ("mlp", "batch", 6, 8), ("mlp", "none", 2, 8), ("vgg", "batch", 4, 16),
])
def test_fast_path_matches_the_reference(definition, arch, norm, m, size):
    fast, reference = DEFINITIONS[definition]
    model = _model(arch, norm, size)
    x, y = _batch(m, size)
    _assert_close(fast(model, x, y, method="fast"), reference(model, x, y))


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_small_chunks_and_negative_scales_change_nothing(definition):
    """Tiny memory bounds force chunking over seeds, samples and groups; negative BN scales take the
    min-pooling branch of the shared stem of the leave-one-out groups."""
    fast, reference = DEFINITIONS[definition]
    model = _model("small_cnn", "batch", 16, seed=3, negative=True)
    x, y = _batch(7, 16, seed=4)
    _assert_close(fast(model, x, y, method="fast", max_elements=600), reference(model, x, y))


def _custom_chain() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A conv bias before BN, a strided conv without pooling, a non-affine BN1d; and a batch for it."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6, bias=False), nn.BatchNorm1d(6, affine=False), nn.ReLU(), nn.Linear(6, 5),
    ).double()
    _randomize_batchnorm(model, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 11, 11, generator=generator, dtype=torch.float64)
    return model, x, torch.randint(0, 5, (5,), generator=generator)


def _both_strategies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_elements: int = 2 ** 12) -> tuple[
        torch.Tensor, torch.Tensor]:
    chain = persample.prepare_chain(model, x, "fast")
    with torch.no_grad():
        logits = persample.chain_forward(chain, x, "batch")
        structured = persample.in_batch_by_statistics(chain, logits, y, max_elements)
        per_loss = persample.in_batch_by_losses(chain, logits, y, range(len(y)), max_elements)
    return structured, per_loss


@pytest.mark.parametrize("size,m,seed,negative,max_elements", [
    (16, 6, 0, False, 2 ** 12), (19, 7, 3, True, 2 ** 12), (16, 9, 5, True, 300),
])
def test_both_strategies_of_definition_two_are_exact(size, m, seed, negative, max_elements):
    """Statistics as seeds (∂s/∂θ through Σ 2C_l backward passes, the means of the second and third BN layers
    through one pass of the block below) and losses as seeds (m passes); odd sizes, BN scales of both signs,
    ties in the pooling windows, and memory bounds small enough to chunk seeds and samples."""
    model = _model("small_cnn", "batch", size, seed=seed, negative=negative)
    x, y = _batch(m, size, seed=seed + 1)
    x[:, :, : size // 3] = 0.3  # constant rows: ties
    expected = persample.in_batch_grad_norms_reference(model, x, y)
    structured, per_loss = _both_strategies(model, x, y, max_elements)
    _assert_close(structured, expected)
    _assert_close(per_loss, expected)


def test_statistics_strategy_on_chains_without_the_pooled_shortcuts():
    """A strided conv without pooling (seed fields by grouped transposed convolution), a non-affine BN1d and an
    MLP: the statistics-as-seeds strategy takes the general descent there."""
    chain_model, x, y = _custom_chain()
    for model, inputs in ((chain_model, x), (_model("mlp", "batch", 8), _batch(6, 8)[0])):
        labels = y if inputs is x else _batch(6, 8)[1]
        expected = persample.in_batch_grad_norms_reference(model, inputs, labels)
        for result in _both_strategies(model, inputs, labels):
            _assert_close(result, expected)


def test_gathered_input_over_the_limit_takes_the_dense_path(monkeypatch):
    """Above GATHER_LIMIT the lowest conv's gradient is taken at full resolution; the results are the same."""
    model = _model("small_cnn", "batch", 16, seed=2, negative=True)
    x, y = _batch(6, 16, seed=3)
    expected = [reference(model, x, y) for _, reference in DEFINITIONS.values()]
    monkeypatch.setattr(persample.backward, "GATHER_LIMIT", 0)
    for (fast, _), reference in zip(DEFINITIONS.values(), expected, strict=True):
        _assert_close(fast(model, x, y, method="fast"), reference)
    _assert_close(_both_strategies(model, x, y)[0], expected[1])


def test_the_remembered_chain_follows_changes_of_the_model():
    """The chain layout is remembered per model; replacing a module re-probes it."""
    model = _model("small_cnn", "batch", 16)
    x, y = _batch(4, 16)
    first = persample.eval_mode_grad_norms(model, x, y, method="fast")
    _assert_close(persample.eval_mode_grad_norms(model, x, y, method="fast"), first)
    model.features[0][2] = nn.Identity()  # the first ReLU removed: another chain, other values
    changed = persample.eval_mode_grad_norms(model, x, y, method="fast")
    _assert_close(changed, persample.eval_mode_grad_norms_reference(model, x, y))
    assert float((changed - first).abs().max()) > 1e-6
    model.features[1] = nn.AvgPool2d(2)  # not supported by the fast path: refused, not served from memory
    with pytest.raises(ValueError, match="not a chain"):
        persample.eval_mode_grad_norms(model, x, y, method="fast")
    model.features[1] = nn.MaxPool2d(2)
    _assert_close(persample.eval_mode_grad_norms(model, x, y, method="fast"), changed)


def test_allocator_tuning_is_idempotent_and_reports_itself():
    first = persample.tune_allocator()
    assert isinstance(first, bool) and persample.tune_allocator() == first


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_custom_chain_with_conv_bias_stride_frozen_parameters_and_plain_batchnorm(definition):
    """A conv bias before BN, a strided conv without pooling, a non-affine BN1d, one frozen weight."""
    model, x, y = _custom_chain()
    model[4].weight.requires_grad_(False)
    fast, reference = DEFINITIONS[definition]
    _assert_close(fast(model, x, y, method="fast"), reference(model, x, y))


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_ties_in_max_pooling_and_3x3_windows_and_negative_scales(definition):
    """Constant image regions give equal values across a pooling window (ties: the first maximum in row-major
    order takes the gradient, as in PyTorch), on 2x2 and 3x3 windows, odd sizes, BN scales of both signs, and
    channels the ReLU zeroes in whole windows."""
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 5),
    ).double()
    _randomize_batchnorm(model, torch.Generator().manual_seed(9), negative=True)
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(6, 1, 13, 13, generator=generator, dtype=torch.float64)
    x[:, :, :7] = 0.25  # a constant band: every window there is a tie
    x[0] = -1.0
    y = torch.randint(0, 5, (6,), generator=generator)
    fast, reference = DEFINITIONS[definition]
    _assert_close(fast(model, x, y, method="fast"), reference(model, x, y))
    _assert_close(fast(model, x, y, method="fast", max_elements=500), reference(model, x, y))


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_a_zero_bn_scale_takes_the_unfused_path(definition):
    """With γ = 0 in some channel BN is not monotone there; such a block normalizes before pooling."""
    model = _model("small_cnn", "batch", 16, seed=4, negative=True)
    model.features[0][1].weight.data[1] = 0.0
    x, y = _batch(5, 16, seed=6)
    fast, reference = DEFINITIONS[definition]
    expected = reference(model, x, y)
    _assert_close(fast(model, x, y, method="fast"), expected)
    if definition == "in_batch":
        for result in _both_strategies(model, x, y):
            _assert_close(result, expected)


def test_linear_unit_with_batchnorm_as_in_the_theory_chapter():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1, affine=False), nn.Linear(1, 3)).double()
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(9, 2, generator=generator, dtype=torch.float64)
    x[-1] *= 20.0  # an outlier
    y = torch.randint(0, 3, (9,), generator=generator)
    for fast, reference in DEFINITIONS.values():
        _assert_close(fast(model, x, y, method="fast"), reference(model, x, y))


@pytest.mark.parametrize("arch,size", [("small_cnn", 16), ("mlp", 8)])
def test_without_batchnorm_every_definition_is_the_textbook_per_sample_gradient_norm(arch, size):
    model = _model(arch, "none", size)
    x, y = _batch(5, size)
    model.train()
    params = [p for p in model.parameters()]
    textbook = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)]).norm() for i in range(len(x))])
    for fast, reference in DEFINITIONS.values():
        _assert_close(fast(model, x, y, method="fast"), textbook)
        _assert_close(reference(model, x, y), textbook)


def test_with_batchnorm_the_definitions_differ():
    model = _model("small_cnn", "batch", 16)
    x, y = _batch(6, 16)
    values = [fast(model, x, y) for fast, _ in DEFINITIONS.values()]
    assert not torch.allclose(values[0], values[1]) and not torch.allclose(values[1], values[2])


@pytest.mark.parametrize("method", persample.METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_model_flag_and_buffers_are_restored(method, training):
    model = _model("small_cnn", "batch", 16)
    model.train(training)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    x, y = _batch(4, 16)
    for fast, _ in DEFINITIONS.values():
        fast(model, x, y, method=method)
        assert model.training == training
        for name, buffer in model.named_buffers():
            assert torch.equal(buffer, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_indices_select_samples():
    model = _model("small_cnn", "batch", 16)
    x, y = _batch(6, 16)
    chosen = [4, 1]
    for fast, _ in DEFINITIONS.values():
        every = fast(model, x, y)
        _assert_close(fast(model, x, y, indices=chosen), every[chosen])
    _assert_close(persample.counterfactual_influence_reference(model, x, y, indices=chosen),
                  persample.counterfactual_influence_reference(model, x, y)[chosen])


def test_float32_fast_path_agrees_with_the_reference():
    torch.manual_seed(0)
    model = models.build("small_cnn", "batch", 1, 28, 10, width=8)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    for fast, reference in DEFINITIONS.values():
        _assert_close(fast(model, x, y, method="fast"), reference(model, x, y), tolerance=2e-3)


def test_unsupported_network_falls_back_to_the_reference_and_fast_refuses():
    torch.manual_seed(0)
    model = models.build("resnet", "batch", 1, 8, 5, width=4).double()
    x, y = _batch(3, 8)
    assert persample.chain_modules(model, x) is None
    _assert_close(persample.in_batch_grad_norms(model, x, y), persample.in_batch_grad_norms_reference(model, x, y))
    with pytest.raises(ValueError, match="'method'"):
        persample.eval_mode_grad_norms(model, x, y, method="fast")


def test_bad_inputs_are_named():
    model = _model("small_cnn", "batch", 16)
    x, y = _batch(4, 16)
    with pytest.raises(ValueError, match="'method'.*'auto'"):
        persample.eval_mode_grad_norms(model, x, y, method="quick")
    with pytest.raises(ValueError, match="'x' and 'y'"):
        persample.in_batch_grad_norms(model, x, y[:3])
    with pytest.raises(ValueError, match="without sample i"):
        persample.counterfactual_influence(model, x[:1], y[:1])
    mlp = _model("mlp", "batch", 8)
    x, y = _batch(2, 8)
    for method in ("fast", "reference"):  # BatchNorm1d over one example has no variance: PyTorch refuses too
        with pytest.raises(ValueError):
            persample.counterfactual_influence(mlp, x, y, method=method)


def _flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def _split_by(sizes: list[int]):
    """A GhostBatchNorm forward that normalizes over the given consecutive virtual batch sizes."""
    def forward(self, x):
        return torch.cat([F.batch_norm(part, None, None, self.weight, self.bias, True, 0.0, self.eps)
                          for part in x.split(sizes)])
    return forward


def _counterfactual_by_fresh_copies(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Definition 3 with every pass on a deep copy of the model as given (buffers included); under ghost BN the
    batch without i keeps B's virtual batches, i dropped from its own (split sizes given explicitly)."""
    virtual = persample.ghost_virtual_batches(model, len(x))
    values = []
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        with_i, without_i = copy.deepcopy(model).train(), copy.deepcopy(model).train()
        if virtual is not None:
            sizes = [len(part) - int(i in part.tolist()) for part in virtual]
            for module in without_i.modules():
                if isinstance(module, models.GhostBatchNorm):
                    module.forward = _split_by(sizes).__get__(module)
        values.append((_flat_gradient(with_i, x, y) - _flat_gradient(without_i, x[keep], y[keep])).norm())
    return torch.stack(values)


@pytest.mark.parametrize("m", [5, 16, 37, 50])
def test_ghost_virtual_batches_are_the_models(m):
    """The split the counterfactual reference assumes is the model's: its train-mode output on B equals its
    outputs on each virtual batch passed alone."""
    model = _model("mlp", "ghost", 8)
    x, _ = _batch(m, 8)
    virtual = persample.ghost_virtual_batches(model, m)
    assert torch.cat(virtual).tolist() == list(range(m))
    with torch.no_grad():
        whole = copy.deepcopy(model).train()(x)
        parts = torch.cat([copy.deepcopy(model).train()(x[part]) for part in virtual])
    torch.testing.assert_close(whole, parts, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch,size", [("mlp", 8), ("small_cnn", 16)])
@pytest.mark.parametrize("norm", ["running", "ghost"])
@pytest.mark.parametrize("trained_buffers", [False, True])
def test_counterfactual_under_bn_variants_matches_fresh_copies(arch, size, norm, trained_buffers):
    """Under ``running`` BN every pass starts from the same buffers (not those the previous pass left); under
    ``ghost`` BN the batch without i keeps B's virtual batches (37 samples: two of 18 and 19)."""
    model = _model(arch, norm, size)
    x, y = _batch(37, size)
    if trained_buffers:  # running statistics initialized and moved away from the first batch's
        with torch.no_grad():
            model.train()(_batch(37, size, seed=9)[0] * 2 + 1)
        model.eval()
    buffers, training = {name: b.clone() for name, b in model.named_buffers()}, model.training
    indices = [0, 5, 18, 19, 36]
    fast = persample.counterfactual_influence(model, x, y, indices=indices)
    _assert_close(fast, _counterfactual_by_fresh_copies(model, x, y)[indices])
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert model.training == training


def test_the_experiment_module_re_exports_the_engine():
    """Chapters and other modules call the engine through ``bnlib.influence``."""
    for name in ("eval_mode_grad_norms", "in_batch_grad_norms", "counterfactual_influence", "tune_allocator",
                 "eval_mode_grad_norms_reference", "in_batch_grad_norms_reference",
                 "counterfactual_influence_reference", "chain_modules", "METHODS", "DEFAULT_MAX_ELEMENTS"):
        assert getattr(influence, name) is getattr(persample, name)


# ----------------------------------------------------------------------------- influence on the model zoo

def _planted_norms(effect: float, pairs: int, seed: int, pools: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per model pair, log summaries of synthetic gradient norms: every model has lognormal inlier norms and
    canary norms 2x the inliers' (with its own model-level spread); under BN the canaries are ``effect`` times
    more. Returns the BN and no-BN per-model log ratios and the pool labels."""
    rng = np.random.default_rng(seed)
    summaries = {}
    for norm, factor in (("batch", effect), ("none", 1.0)):
        rows = []
        for _ in range(pairs):
            model_scale = np.exp(rng.normal(0, 0.3))
            inliers = np.exp(rng.normal(0, 1.0, 64)) * model_scale
            canaries = np.exp(rng.normal(0, 1.0, 8)) * model_scale * 2.0 * factor
            rows.append(influence.log_ratio(canaries, inliers))
        summaries[norm] = np.array(rows)
    return summaries["batch"], summaries["none"], np.arange(pairs) % pools


def test_a_planted_threefold_effect_is_found_and_a_null_is_not():
    """Known answers on synthetic gradient norms: canaries x3 under BN gives a BN / no-BN ratio whose interval
    holds 3 and excludes 1; no planted effect gives an interval holding 1 and p >= 0.05 (fixed seeds)."""
    batch, none, pools = _planted_norms(3.0, 32, seed=0)
    found = influence_chapter.paired_log_comparison(batch, none, pools)
    assert found["ci95"][0] < 3.0 < found["ci95"][1] and found["ci95"][0] > 1.5 and found["p_value"] < 1e-6
    assert found["n"] == 32 and found["batch"]["mean"] == pytest.approx(6.0, rel=0.3)
    assert found["none"]["mean"] == pytest.approx(2.0, rel=0.3)
    batch, none, pools = _planted_norms(1.0, 32, seed=2)
    null = influence_chapter.paired_log_comparison(batch, none, pools)
    assert null["ci95"][0] < 1.0 < null["ci95"][1] and null["p_value"] >= 0.05


def test_the_stratified_paired_t_is_calibrated_with_a_pool_effect():
    """1,000 null populations (16 pairs in each of 2 pools, pool means of the difference +-0.5 apart): type-I
    error within [0.03, 0.07] (the pools are strata: their difference does not inflate the error); a pair with
    a NaN is dropped; bad shapes are named."""
    rng = np.random.default_rng(3)
    rejected = 0
    for _ in range(1000):
        pools = np.repeat([0, 1], 16)
        shift = np.where(pools == 0, 0.5, -0.5)
        common = rng.normal(0, 1, 32)
        # the difference is +1 in pool 0 and -1 in pool 1: the mean difference over the pools is 0
        batch, none = common + shift + rng.normal(0, 0.4, 32), common - shift + rng.normal(0, 0.4, 32)
        rejected += influence_chapter.paired_log_comparison(batch, none, pools)["p_value"] < 0.05
    assert 0.03 <= rejected / 1000 <= 0.07
    batch = np.array([0.0, 1.0, np.nan, 2.0])
    assert influence_chapter.paired_log_comparison(batch, np.zeros(4), np.zeros(4, dtype=int))["n"] == 3
    with pytest.raises(ValueError, match="'pools'"):
        influence_chapter.paired_log_comparison(np.zeros(3), np.zeros(3), np.zeros(2))


def test_log_ratio_is_the_log_of_the_ratio_of_geometric_means():
    canaries, inliers = np.array([2.0, 8.0]), np.array([1.0, 1.0, 4.0])
    expected = np.log(np.sqrt(2.0 * 8.0) / 4.0 ** (1 / 3))  # geometric means 4 and 4^(1/3)
    assert influence.log_ratio(canaries, inliers) == pytest.approx(expected)
    assert np.isfinite(influence.log_ratio(np.array([0.0]), np.array([1.0])))  # floored, not -inf


@pytest.fixture(scope="module")
def smoke_zoo():
    from bnlib import config, zoo

    cfg = config.load("smoke", device="cpu", n_models=2)
    return cfg, {norm: zoo.train_zoo(cfg, norm, progress=False) for norm in ("batch", "none")}


def test_checkpoint_weights_are_the_ones_the_checkpoint_logits_came_from(smoke_zoo):
    from bnlib import train, zoo

    cfg, zoos = smoke_zoo
    population = zoos["batch"]
    _, pool_x, _ = zoo.zoo_inputs(cfg)
    for index, epoch in enumerate(population.checkpoint_epochs.tolist()):
        logits = train.predict_logits(population.model(1, int(epoch)), pool_x).half()
        # the zoo evaluated channels-last (cfg.memory_format), predict_logits runs NCHW: float rounding apart
        torch.testing.assert_close(logits.float(), population.checkpoint_logits[index, 1].float(), atol=5e-3, rtol=0)
    last = int(population.checkpoint_epochs[-1])
    assert all(torch.equal(v, population.state_dict(0)[k]) for k, v in population.state_dict_at(0, last).items())
    with pytest.raises(ValueError, match="'epoch'"):
        population.state_dict_at(0, 99)


def test_zoo_probes_equal_the_per_sample_functions_on_the_same_weights(smoke_zoo):
    """The probes stored for a member at a checkpoint are the per-sample functions (exact against their
    references, tests above) evaluated in float64 on that member's checkpoint weights, its IN examples and its
    probe batches; the counterfactual values of the BN member also equal two full batch gradients per measured
    sample (the obviously right definition); the same layout pairs BN with no norm."""
    from bnlib import config, zoo
    from bnlib.persample import reference

    cfg, zoos = smoke_zoo
    _, params = config.load("smoke", extras=influence.ChapterParams)
    experiment, pool_x, _ = zoo.zoo_inputs(cfg)
    x, y = pool_x.double(), experiment.pool_y
    for norm, population in zoos.items():
        summary = influence.zoo_probes(cfg, population, params, epoch=1, members=[1])[0]
        stored = influence.probe_entry(cfg, norm, params).load(influence.probe_name(1, 1))["probes"]
        model = population.model(1, 1).double()
        batches, measured, is_canary, eval_inliers = influence.member_layout(
            population.keep[1], population.is_outlier, cfg.batch_size, params, zoo.member_seed(1))
        canaries = torch.nonzero(population.keep[1] & population.is_outlier).flatten()
        expected = {"eval_mode": {"canaries": influence.eval_mode_grad_norms(model, x[canaries], y[canaries]),
                                  "inliers": influence.eval_mode_grad_norms(model, x[eval_inliers], y[eval_inliers])}}
        for name, function in (("in_batch", influence.in_batch_grad_norms),
                               ("counterfactual", influence.counterfactual_influence)):
            values = torch.stack([function(model, x[b], y[b], indices=measured.tolist()) for b in batches])
            expected[name] = {"canaries": values[:, is_canary].flatten(), "inliers": values[:, ~is_canary].flatten()}
        for name in influence.DEFINITION_NAMES:
            for group in ("canaries", "inliers"):
                assert torch.allclose(stored[name][group], expected[name][group], rtol=2e-4), (norm, name, group)
            assert summary[name]["log_ratio"] == pytest.approx(influence.log_ratio(
                expected[name]["canaries"].numpy(), expected[name]["inliers"].numpy()), rel=1e-3, abs=1e-4)
        assert bool(population.keep[1][batches].all())
        assert bool(population.is_outlier[batches[:, measured[is_canary]]].all())
        if norm == "batch":
            batch = batches[0]
            with reference.model_state_preserved(model):
                model.train()
                whole = reference.batch_gradient(model, x[batch], y[batch])
                by_hand = torch.stack([(whole - reference.batch_gradient(
                    model, x[batch[torch.arange(len(batch)) != i]], y[batch[torch.arange(len(batch)) != i]])).norm()
                    for i in measured.tolist()])
            assert torch.allclose(stored["counterfactual"]["canaries"][:int(is_canary.sum())], by_hand[is_canary],
                                  rtol=2e-4)
    assert torch.equal(zoos["batch"].keep, zoos["none"].keep)  # same keep mask: same probe batches for the pair


def test_population_summaries_interpolate_between_the_bracketing_checkpoints(smoke_zoo):
    from bnlib import config, population

    cfg, zoos = smoke_zoo
    _, params = config.load("smoke", extras=influence.ChapterParams)
    one_pool = population.Population(norm="batch", epochs=cfg.epochs, pools=(cfg.seeds[0],), zoos=[zoos["batch"]],
                                     curves=[])
    cfg = config.load("smoke", device="cpu", n_models=2, pools=(cfg.seeds[0],))
    final = influence.population_summaries(cfg, one_pool, params)
    first = influence.population_summaries(cfg, one_pool, params, positions=[np.array([0.0, 0.0])])
    half = influence.population_summaries(cfg, one_pool, params, positions=[np.array([0.5, np.nan])])
    for name in influence.DEFINITION_NAMES:
        expected = (first[name]["log_ratio"][0] + final[name]["log_ratio"][0]) / 2
        assert half[name]["log_ratio"][0] == pytest.approx(expected)
        assert np.isnan(half[name]["log_ratio"][1])
    assert final["pools"]["label"].tolist() == [0, 0]


def test_a_population_at_another_learning_rate_is_probed_as_itself():
    """The equal-exposure design trains BN at a lowered peak rate: its probes must be those of its own models,
    not the cached probes of the common schedule's models (a cache key without the rate reads the wrong ones)."""
    from bnlib import config, population

    cfg = config.load("smoke", device="cpu", n_models=2, pools=(0,))
    _, params = config.load("smoke", extras=influence.ChapterParams)
    common = population.train_population(cfg, "batch", progress=False)
    lowered = population.train_population(cfg, "batch", progress=False, lr=cfg.lr / 8)
    read = {name: influence.population_summaries(cfg, p, params) for name, p in (("common", common),
                                                                                  ("lowered", lowered))}
    direct = influence.zoo_probes(replace(cfg, lr=cfg.lr / 8), lowered.zoos[0], params)
    for name in influence.DEFINITION_NAMES:
        assert read["lowered"][name]["log_ratio"].tolist() == pytest.approx(
            [member[name]["log_ratio"] for member in direct])
        assert read["lowered"][name]["log_ratio"].tolist() != read["common"][name]["log_ratio"].tolist()
