import pytest

from bnlib import config


def test_profiles_differ_and_default_is_quick():
    smoke, quick = config.load("smoke"), config.load()
    assert quick.profile == "quick" and smoke.profile == "smoke"
    assert smoke.n_train < quick.n_train and len(quick.seeds) >= 3


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"dataset": "imagenet"}, "'dataset'"),
        ({"arch": "transformer"}, "'arch'"),
        ({"norms": "batch,instance"}, "'norms'"),
        ({"n_train": 0}, "'n_train'"),
        ({"n_canaries": -3}, "'n_canaries'"),
        ({"epochs": "many"}, "'epochs'"),
        ({"batch_size": 1}, "'batch_size'"),
        ({"bacth_size": 64}, "'bacth_size'"),
        ({"outlier_kind": "gaussian"}, "'outlier_kind'"),
        ({"seeds": "0,0"}, "'seeds'"),
        ({"n_models": 1}, "'n_models'"),
    ],
)
def test_bad_parameters_name_the_parameter_and_allowed_values(overrides, fragment):
    with pytest.raises(ValueError) as error:
        config.load("smoke", **overrides)
    assert fragment in str(error.value)


def test_unknown_profile_lists_profiles():
    with pytest.raises(ValueError, match="'smoke', 'quick', 'paper'"):
        config.load("tiny")


def test_batch_size_one_allowed_without_batchnorm():
    cfg = config.load("smoke", batch_size=1, norms="none,group")
    assert cfg.batch_size == 1 and cfg.norms == ("none", "group")


def test_string_coercion_from_papermill():
    cfg = config.load("smoke", epochs="3", lr="0.1", seeds="[4, 5]", norms="batch")
    assert (cfg.epochs, cfg.lr, cfg.seeds, cfg.norms) == (3, 0.1, (4, 5), ("batch",))


def test_none_means_profile_default():
    assert config.load("smoke", epochs=None).epochs == config.load("smoke").epochs


def test_notebook_parameters_catches_injected_names():
    before = {"config", "np"}
    namespace = {"config": 1, "np": 2, "profile": "smoke", "epochs": None, "typo_name": 3, "_private": 4}
    params = config.notebook_parameters(namespace, before)
    assert params == {"profile": "smoke", "epochs": None, "typo_name": 3}
    with pytest.raises(ValueError, match="typo_name"):
        config.load(**params)


def test_extras_dataclass_is_validated():
    from dataclasses import dataclass, field
    from typing import ClassVar

    @dataclass(frozen=True)
    class Extra:
        probe_levels: tuple[float, ...] = field(default=(0.9,), metadata={"positive": True})
        PROFILES: ClassVar[dict] = {"smoke": {"probe_levels": (0.5,)}}

    cfg, extra = config.load("smoke", extras=Extra, probe_levels="0.7,0.8", epochs=3)
    assert extra.probe_levels == (0.7, 0.8) and cfg.epochs == 3
    assert config.load("smoke", extras=Extra)[1].probe_levels == (0.5,)
    with pytest.raises(ValueError, match="'probe_levels'"):
        config.load("smoke", extras=Extra, probe_levels="-1")


def test_fit_grid_is_declared_and_checked():
    quick = config.load("quick")
    assert quick.headline_fit == 0.95 and quick.fit_levels == (0.80, 0.85, 0.90, 0.95)
    smoke = config.load("smoke")
    assert smoke.headline_fit in smoke.fit_levels
    with pytest.raises(ValueError, match="'headline_fit'"):
        config.load("smoke", headline_fit=0.7)
    with pytest.raises(ValueError, match="'fit_levels'"):
        config.load("smoke", fit_levels="0.5,0.2", headline_fit=0.5)
    with pytest.raises(ValueError, match="'fit_levels'"):
        config.load("smoke", fit_levels="0.5,1.2", headline_fit=0.5)
    with pytest.raises(ValueError, match="'pools'.*calibration"):
        config.load("smoke", pools=f"0,{config.CALIBRATION_DRAWS}")
    # the grid decides no trained model: zoos at other levels are the same cache entries
    assert config.load("smoke", fit_levels="0.3", headline_fit=0.3).result_key() == smoke.result_key()
