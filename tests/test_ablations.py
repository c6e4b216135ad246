import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bnlib import ablations, config, runs


def _fake_run(in_logits, in_labels, out_logits, out_labels):
    return runs.Run(norm="batch", seed=0, records=[], canary_in_logits=in_logits, canary_out_logits=out_logits,
                    canary_in_labels=in_labels, canary_out_labels=out_labels, state_dict={})


def test_canary_attack_matches_sklearn_auc():
    generator = torch.Generator().manual_seed(0)
    in_logits, out_logits = torch.randn(40, 10, generator=generator), torch.randn(30, 10, generator=generator)
    in_labels, out_labels = torch.randint(0, 10, (40,), generator=generator), torch.randint(0, 10, (30,))
    in_logits[torch.arange(40), in_labels] += 2.0  # members are fit better
    result = ablations.canary_attack(_fake_run(in_logits, in_labels, out_logits, out_labels))
    losses = torch.cat([torch.nn.functional.cross_entropy(in_logits, in_labels, reduction="none"),
                        torch.nn.functional.cross_entropy(out_logits, out_labels, reduction="none")])
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], -losses.numpy())
    assert result["auc"] == pytest.approx(expected) and result["n_negatives"] == 30


def test_influence_ratio_without_bn_is_the_gradient_norm_ratio():
    # no BN: counterfactual influence = per-sample gradient norm; a linear model's is closed form
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3, bias=False))
    x, y = torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    probabilities = torch.softmax(model(x), 1)
    residual = probabilities - torch.nn.functional.one_hot(y, 3)
    norms = residual.norm(dim=1) * x.flatten(1).norm(dim=1)  # ||(p - e_y) x^T||_F
    expected = float(norms[-1] / norms[:-1].median())
    assert ablations.influence_ratio(model, [(x, y)]) == pytest.approx(expected, rel=1e-4)


def test_summaries_and_paired_gap():
    rows = [{"setting": "a", "norm": n, "seed": s, "m": v}
            for n, values in (("batch", [0.5, 0.7]), ("none", [0.1, 0.2])) for s, v in enumerate(values)]
    summary = ablations.summarize(rows, "m")
    assert summary[("a", "batch")]["mean"] == pytest.approx(0.6) and summary[("a", "none")]["n"] == 2
    gap = ablations.paired_gap(rows, "m", "a")
    assert gap["diff"]["mean"] == pytest.approx(0.45) and gap["n"] == 2


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="'variant_norms'"):
        config.load("smoke", extras=ablations.ChapterParams, variant_norms="batch,instance")
    with pytest.raises(ValueError, match="'fit_level'"):
        config.load("smoke", extras=ablations.ChapterParams, fit_level=1.5)
    cfg, params = config.load("smoke", extras=ablations.ChapterParams, sweep_seeds=5)
    with pytest.raises(ValueError, match="'sweep_seeds'"):
        ablations.check_config(cfg, params)
    with pytest.raises(ValueError, match="'sweep'"):
        ablations.sweep(cfg, params, "dropout")


def test_measure_point_runs_and_is_cached(smoke_cfg):
    params = ablations.ChapterParams(fit_level=0.3, probe_batches=1)
    first = ablations.measure_point(smoke_cfg, "batch", 0, params, batch_size=16)
    again = ablations.measure_point(smoke_cfg, "batch", 0, params, batch_size=16)
    assert first == again or all(
        (math.isnan(first[k]) and math.isnan(again[k])) or first[k] == again[k] for k in first)
    assert 0 <= first["auc"] <= 1 and first["influence_ratio_init"] > 0
