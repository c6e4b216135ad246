import pytest
import torch
import torch.nn.functional as F

from bnlib import config, models


@pytest.mark.parametrize("arch", config.ARCHS)
@pytest.mark.parametrize("norm", config.NORMS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_arch_and_norm_builds_and_trains_a_step(arch, norm, channels, size):
    torch.manual_seed(0)
    model = models.build(arch, norm, channels, size, 10, width=4)
    x, y = torch.randn(6, channels, size, size), torch.randint(0, 10, (6,))
    assert model(x).shape == (6, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert models.has_batchnorm(model) == (norm == "batch")


def test_variants_differ_only_in_normalization():
    counts = {n: models.count_parameters(models.build("small_cnn", n, width=8)) for n in config.NORMS}
    # BN/GN/LN have a scale and shift per channel where `none` has a conv bias: 2C vs C per layer
    assert counts["batch"] == counts["group"] == counts["layer"]
    assert counts["batch"] - counts["none"] == 8 + 16 + 32


def test_bad_arch_and_norm_messages():
    with pytest.raises(ValueError, match="'arch'.*allowed"):
        models.build("lenet", "batch")
    with pytest.raises(ValueError, match="'norm'.*allowed"):
        models.build("mlp", "instance")


def test_ghost_batchnorm_normalizes_each_virtual_batch():
    torch.manual_seed(0)
    ghost = models.GhostBatchNorm(3).train()
    x = torch.randn(2 * models.GHOST_BATCH_SIZE, 3, 4, 4) * 2 + 1
    out = ghost(x)
    for part_in, part_out in zip(x.split(models.GHOST_BATCH_SIZE), out.split(models.GHOST_BATCH_SIZE), strict=True):
        expected = torch.nn.functional.batch_norm(part_in, None, None, training=True, eps=ghost.eps)
        assert torch.allclose(part_out, expected, atol=1e-5)
    assert not torch.allclose(ghost.running_mean, torch.zeros(3))
    ghost.eval()
    shape = (1, 3, 1, 1)
    reference = (x - ghost.running_mean.view(shape)) / torch.sqrt(ghost.running_var + ghost.eps).view(shape)
    assert torch.allclose(ghost(x), reference, atol=1e-5)


def test_running_batchnorm_does_not_couple_examples():
    torch.manual_seed(0)
    layer = models.RunningBatchNorm(3).train()
    layer(torch.randn(8, 3))  # initializes the running statistics from a first batch
    x = torch.randn(8, 3, requires_grad=True)
    out = layer(x)
    out[0].sum().backward()
    assert torch.count_nonzero(x.grad[1:]) == 0  # example 0's output does not depend on the others
    other = torch.cat([x[:1].detach(), torch.randn(7, 3) * 10])
    before = layer.running_mean.clone(), layer.running_var.clone()
    assert torch.allclose(layer(other)[0], (x[0] - before[0]) / torch.sqrt(before[1] + layer.eps), atol=1e-5)
