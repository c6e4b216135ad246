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
