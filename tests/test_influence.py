"""The three influence definitions: fast paths against slow, obviously right references (loops of single
backward passes, two full batch gradients per sample), on MLPs and CNNs with and without BatchNorm, batch
sizes down to 2, float64; plus the no-BN identities, state restoration and input validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlib import influence, models, persample

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


def _synthetic_track(canary_scale: float, seed: int) -> dict:
    """Two checkpoints, one probe batch of 4 inliers and 4 canaries; canaries ``canary_scale`` times the inliers."""
    generator = torch.Generator().manual_seed(seed)
    is_canary = torch.tensor([[False] * 4 + [True] * 4])
    values = torch.rand(2, 1, 8, generator=generator) + 1.0
    values[..., 4:] *= canary_scale
    return {"records": [{"inliers_acc": 0.5}, {"inliers_acc": 0.9}], "measured_is_canary": is_canary,
            **{name: values.clone() for name in influence.DEFINITION_NAMES}}


def test_the_canary_sentence_follows_the_direction_and_the_p_value():
    """Canaries 10x the inliers under BN: larger, significant (12 vs 12 pooled samples); canaries 0.5x under no
    norm: smaller, not significant (the test is one-sided, for larger)."""
    tracks = {"batch": [_synthetic_track(10.0, s) for s in range(3)],
              "none": [_synthetic_track(0.5, s + 10) for s in range(3)]}
    rows = influence.comparison(tracks, 0.7)
    assert rows[0]["outliers_pooled_ratio"]["batch"] > 5 and rows[0]["outliers_pooled_ratio"]["none"] < 1
    labels = {name: name for name in influence.DEFINITION_NAMES}
    text = influence.canaries_versus_inliers(rows, labels, {"batch": "BN", "none": "no norm"})
    with_bn, without = text.split("With no norm")
    assert "12 canaries against 12 inliers" in with_bn
    assert with_bn.count(": larger") == 3 and with_bn.count(", significant") == 3
    assert without.count(": smaller") == 3 and without.count("not significant") == 3
