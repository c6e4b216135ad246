import json
import os

import torch

from bnlib import results, zoo


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    results.atomic_write_json(tmp_path / "a.json", {"x": 1})
    results.atomic_torch_save(tmp_path / "b.pt", {"t": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert torch.equal(results.torch_load(tmp_path / "b.pt")["t"], torch.arange(3))


def test_config_hash_is_order_independent():
    assert results.config_hash({"a": 1, "b": (1, 2)}) == results.config_hash({"b": [1, 2], "a": 1})
    assert results.config_hash({"a": 1}) != results.config_hash({"a": 2})


def test_entry_stores_config_and_version():
    entry = results.Entry("unit", {"alpha": 0.5}, code=results.code_of("stats"))
    calls = []
    value = entry.get_or_compute("thing", lambda: calls.append(1) or {"v": torch.ones(2)})
    again = entry.get_or_compute("thing", lambda: calls.append(1) or {"v": torch.zeros(2)})
    assert calls == [1] and torch.equal(value["v"], again["v"])
    meta = json.loads((entry.folder / "config.json").read_text())
    assert meta["config"] == {"alpha": 0.5} and meta["bnlib_version"]
    assert meta["code"]["modules"] == ["stats.py"] and meta["code"]["hash"] == results.code_hash(("stats.py",))


def test_zoo_resumes_without_retraining(smoke_cfg):
    first = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    assert first.keep.shape == (smoke_cfg.n_models, len(first.labels))
    assert (first.keep.sum(0) == smoke_cfg.n_models // 2).all()
    assert first.logits.shape == (smoke_cfg.n_models, len(first.labels), 10)
    # simulate an interrupted run: model 1 missing
    path = first.members.path("model_1")
    stamps = {t: os.stat(first.members.path(f"model_{t}")).st_mtime_ns for t in range(smoke_cfg.n_models)}
    path.unlink()
    second = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    for t in range(smoke_cfg.n_models):
        if t != 1:
            assert os.stat(first.members.path(f"model_{t}")).st_mtime_ns == stamps[t]
    assert torch.allclose(second.logits, first.logits)  # retrained model 1 is bit-identical (seeded)
    model = second.model(0)
    assert not model.training


def test_summary_and_report(smoke_cfg):
    from bnlib import report, stats

    entry = results.metric_entry({"batch": stats.mean_ci([0.3, 0.4]), "none": stats.mean_ci([0.1, 0.2])},
                                 p_value=0.01, test="t", higher_means="more", description="d",
                                 comparison="same_schedule")
    results.write_summary("unit_chapter", {"unit_metric": entry}, smoke_cfg.to_dict())
    table = report.headline()
    assert table["unit_metric"]["batch"]["n"] == 2 and table["unit_metric"]["chapter"] == "unit_chapter"
    parsed = json.loads(report.as_json(table))
    assert parsed["unit_metric"]["p_value"] == 0.01 and "unit_metric" in report.text(table)
