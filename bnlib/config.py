"""Experiment configuration: one frozen dataclass, three profiles, validation that fails fast.

Every chapter notebook builds its configuration with :func:`load` in the cell right after its
papermill ``parameters`` cell, so a bad parameter stops the run before any data is read or any model
is trained. Chapters with parameters of their own declare them as another frozen dataclass with the
same conventions (``PROFILES`` class attribute, field ``metadata``) and pass it as ``extras``.

Field metadata understood by the validator:
    choices  -- a tuple of allowed values (for tuple fields: allowed values of each element)
    positive -- value (or every element) must be > 0
    minimum  -- value (or every element) must be >= minimum
    doc      -- one line shown in error messages and in ``describe``
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

PROFILE_NAMES = ("smoke", "quick", "paper")
NORMS = ("batch", "group", "layer", "none", "ghost", "running")
ARCHS = ("mlp", "small_cnn", "vgg", "resnet")
DATASETS = ("fashion_mnist", "mnist", "cifar10", "svhn")
OUTLIER_KINDS = ("ood_digits", "ood_photos", "random_label", "noise")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("onecycle", "cosine", "constant")
# The two arms of every headline comparison, and the three ways they are compared (bnlib.population).
COMPARED_NORMS = ("batch", "none")
COMPARISONS = ("same_schedule", "matched_fit", "matched_fit_annealed")
# The book's one family of primary endpoints (Holm across them, each in each comparison): measurement names, the
# metric keys without their ``_<comparison>`` suffix. Every other metric is secondary (bnlib.metric_registry).
PRIMARY_ENDPOINTS = ("canary_memorization", "influence_counterfactual_outlier_inlier_ratio",
                     "mia_lira_pooled_tpr_at_1pct_fpr_outliers")
# Declared equivalence margins, by measurement name: a difference BN - no-BN within +-m is "equivalent"; for a
# ratio (BN / no-BN) the margin is a factor m: equivalent within x1/m to xm.
EQUIVALENCE_MARGINS = {"canary_memorization": 0.08, "influence_counterfactual_outlier_inlier_ratio": 1.25,
                       "mia_lira_pooled_tpr_at_1pct_fpr_outliers": 0.05}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a trained model population and the data it saw.

    Two configs with equal fields give bit-identical results on the CPU (see ``bnlib.train``).
    """

    profile: str = field(default="quick", metadata={"choices": PROFILE_NAMES, "doc": "size preset"})
    dataset: str = field(default="fashion_mnist", metadata={"choices": DATASETS, "doc": "in-distribution data"})
    data_root: str = field(default="", metadata={"doc": "folder with dataset files (empty: the standard places)"})
    arch: str = field(default="small_cnn", metadata={"choices": ARCHS, "doc": "network family"})
    width: int = field(default=16, metadata={"positive": True, "doc": "channels of the first layer"})
    norms: tuple[str, ...] = field(
        default=COMPARED_NORMS, metadata={"choices": NORMS, "doc": "normalizers compared"}
    )
    outlier_kind: str = field(
        default="ood_digits", metadata={"choices": OUTLIER_KINDS, "doc": "what the canaries are"}
    )
    n_train: int = field(default=2500, metadata={"positive": True, "doc": "in-distribution training pool"})
    n_test: int = field(default=1000, metadata={"positive": True, "doc": "test examples"})
    n_canaries: int = field(
        default=100, metadata={"positive": True, "doc": "canaries inserted (as many again held out)"}
    )
    epochs: int = field(default=12, metadata={"positive": True, "doc": "passes over the training set"})
    batch_size: int = field(default=128, metadata={"positive": True, "doc": "examples per SGD step"})
    lr: float = field(default=0.05, metadata={"positive": True, "doc": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"minimum": 0.0, "doc": "SGD momentum"})
    weight_decay: float = field(default=5e-4, metadata={"minimum": 0.0, "doc": "L2 penalty"})
    schedule: str = field(default="onecycle", metadata={"choices": SCHEDULES, "doc": "learning-rate schedule"})
    n_models: int = field(default=16, metadata={"positive": True, "doc": "models per norm in each pool (T)"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"minimum": 0, "doc": "independent runs"})
    pools: tuple[int, ...] = field(default=(0, 1), metadata={
        "minimum": 0, "doc": "independent data draws of the model zoo (each holds n_models models per norm)"})
    device: str = field(default="auto", metadata={"choices": DEVICES, "doc": "where to train"})
    workers: int = field(
        default=0, metadata={"minimum": 0, "doc": "zoo worker processes (0: one per CPU core on a CPU, 1 on a GPU)"}
    )
    allow_download: bool = field(
        default=False, metadata={"doc": "fetch missing datasets with torchvision (needs internet)"}
    )

    # Values per profile; fields not named keep the defaults above. `quick` is the default profile.
    PROFILES: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_train=256, n_test=256, n_canaries=16, epochs=2, batch_size=32, width=8,
                      n_models=4, seeds=(0, 1), workers=1),
        "quick": dict(),
        "paper": dict(n_train=60000, n_test=10000, n_canaries=500, epochs=30, batch_size=128,
                      arch="resnet", width=64, n_models=64, seeds=(0, 1, 2, 3, 4), pools=(0, 1, 2),
                      norms=("batch", "group", "layer", "none")),
    }

    # Fields that never change a trained model (which norms/seeds a chapter loops over, where it runs).
    NOT_IN_RESULTS: typing.ClassVar[tuple[str, ...]] = ("profile", "norms", "seeds", "pools", "device",
                                                        "allow_download", "workers")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def result_key(self, *also_drop: str) -> dict[str, Any]:
        """The fields that decide a trained model: the basis of every cache key (see bnlib.results)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_IN_RESULTS + also_drop}


def _is_tuple_field(field_type: Any) -> bool:
    return str(field_type).startswith("tuple")


def _element_type(field_type: str) -> type:
    return int if "int" in str(field_type) else float if "float" in str(field_type) else str


def _coerce(name: str, value: Any, field_type: Any) -> Any:
    """Turn papermill/CLI strings ('64', 'batch,none', '[0, 1]') into the field's type."""
    type_name = field_type if isinstance(field_type, str) else (
        field_type.__name__ if isinstance(field_type, type) else str(field_type)
    )
    if _is_tuple_field(type_name):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        element = _element_type(type_name)
        return tuple(_coerce(name, item, element.__name__) for item in value)
    try:
        if type_name == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if type_name == "float":
            return float(value)
        if type_name == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise TypeError
                return value.lower() in ("true", "1")
            return bool(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"Parameter {name!r} must be of type {type_name}; got {value!r}.") from None


def _check_field(cls_name: str, spec: dataclasses.Field, value: Any) -> None:
    meta = spec.metadata
    items = value if isinstance(value, tuple) else (value,)
    doc = f" ({meta['doc']})" if "doc" in meta else ""
    if isinstance(value, tuple) and not value:
        raise ValueError(f"Parameter {spec.name!r}{doc} must not be empty.")
    for item in items:
        if "choices" in meta and item not in meta["choices"]:
            raise ValueError(
                f"Parameter {spec.name!r}{doc} got {item!r}; allowed values: {', '.join(map(repr, meta['choices']))}."
            )
        if meta.get("positive") and not item > 0:
            raise ValueError(f"Parameter {spec.name!r}{doc} must be positive; got {item!r}.")
        if "minimum" in meta and not item >= meta["minimum"]:
            raise ValueError(f"Parameter {spec.name!r}{doc} must be >= {meta['minimum']}; got {item!r}.")


def build(cls: type, profile: str, overrides: dict[str, Any]) -> Any:
    """Instantiate frozen dataclass ``cls`` at ``profile`` with ``overrides``, validating every field."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"Parameter 'profile' got {profile!r}; allowed values: {', '.join(map(repr, PROFILE_NAMES))}.")
    specs = {f.name: f for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in overrides.items() if v is not None}  # None = the profile's default
    unknown = sorted(set(overrides) - set(specs))
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"allowed parameters: {', '.join(sorted(specs))}."
        )
    values = {**cls.PROFILES.get(profile, {}), **overrides}
    if "profile" in specs:
        values["profile"] = profile
    coerced = {name: _coerce(name, value, specs[name].type) for name, value in values.items()}
    for name, spec in specs.items():
        value = coerced.get(name, spec.default)
        _check_field(cls.__name__, spec, value)
    return cls(**coerced)


def _check_consistency(cfg: ExperimentConfig) -> None:
    if cfg.batch_size == 1 and {"batch", "ghost"} & set(cfg.norms):
        raise ValueError(
            "Parameter 'batch_size' is 1 while 'norms' contains 'batch' or 'ghost': BatchNorm in training mode "
            "normalizes each example by the statistics of its batch, which are undefined for one "
            "example (zero variance). Use batch_size >= 2, or drop 'batch' from norms."
        )
    if cfg.batch_size > cfg.n_train:
        raise ValueError(
            f"Parameter 'batch_size' ({cfg.batch_size}) exceeds 'n_train' ({cfg.n_train}); "
            "allowed: 1 < batch_size <= n_train."
        )
    for name in ("seeds", "pools"):
        if len(set(getattr(cfg, name))) != len(getattr(cfg, name)):
            raise ValueError(f"Parameter {name!r} has repeated values: {getattr(cfg, name)!r}; allowed: distinct "
                             "integers >= 0.")
    if len(set(cfg.norms)) != len(cfg.norms):
        raise ValueError(f"Parameter 'norms' has repeated values: {cfg.norms!r}.")
    if cfg.data_root:
        from . import data  # torch is imported only when a data_root is to be checked

        data.check_data_root(cfg.dataset, cfg.data_root, cfg.allow_download)
    if cfg.n_models < 2:
        raise ValueError(
            f"Parameter 'n_models' must be >= 2 (each example is IN for half of the models); got {cfg.n_models}."
        )


def check_compared_norms(cfg: ExperimentConfig) -> None:
    """Fail fast unless ``cfg.norms`` holds both arms of the headline comparison (``COMPARED_NORMS``)."""
    missing = [norm for norm in COMPARED_NORMS if norm not in cfg.norms]
    if missing:
        raise ValueError(f"Parameter 'norms' got {cfg.norms!r}; this chapter compares BatchNorm with no "
                         f"normalization, so it must contain {' and '.join(map(repr, COMPARED_NORMS))} "
                         f"(missing: {', '.join(map(repr, missing))}).")


def load(profile: str = "quick", extras: type | None = None, **overrides: Any):
    """Build and validate the experiment config (and, if ``extras`` is given, a chapter's own config).

    Args:
        profile: one of ``smoke``, ``quick``, ``paper``.
        extras: optional frozen dataclass with chapter-specific parameters; overrides are split between
            it and :class:`ExperimentConfig` by field name.
        **overrides: parameter values; strings from papermill/CLI are converted to the field types;
            None means "the profile's default".

    Returns:
        ``ExperimentConfig``, or ``(ExperimentConfig, extras_instance)`` when ``extras`` is given.

    Raises:
        ValueError: naming the bad parameter, its value and what is allowed.
    """
    base_names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    extra_names = {f.name for f in dataclasses.fields(extras)} if extras else set()
    unknown = sorted(set(overrides) - base_names - extra_names - {"profile"})
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))}; allowed parameters: "
            f"{', '.join(sorted(base_names | extra_names))}."
        )
    base = {k: v for k, v in overrides.items() if k in base_names and k != "profile"}
    cfg = build(ExperimentConfig, profile, base)
    _check_consistency(cfg)
    if extras is None:
        return cfg
    extra = build(extras, profile, {k: v for k, v in overrides.items() if k in extra_names})
    return cfg, extra


def notebook_parameters(namespace: dict[str, Any], names_before: set[str]) -> dict[str, Any]:
    """Parameters a notebook defined after ``names_before`` was taken (its parameters cell and
    anything papermill injected), so that names a user passed that the chapter does not know are caught."""
    return {
        name: value
        for name, value in namespace.items()
        if name not in names_before and not name.startswith("_") and name not in ("In", "Out")
    }


def describe(cls: type = ExperimentConfig) -> list[dict[str, Any]]:
    """One row per parameter (name, default per profile, allowed values, doc) for the book and CLI help."""
    rows = []
    for spec in dataclasses.fields(cls):
        row = {"name": spec.name, "doc": spec.metadata.get("doc", "")}
        for profile in PROFILE_NAMES:
            row[profile] = cls.PROFILES.get(profile, {}).get(spec.name, spec.default)
        row["allowed"] = spec.metadata.get("choices", "")
        rows.append(row)
    return rows


PROFILE_TABLE_FIELDS = ("dataset", "n_train", "n_canaries", "n_test", "arch", "width", "norms", "epochs",
                        "batch_size", "n_models", "pools", "seeds")


def profiles_table(fields: tuple[str, ...] = PROFILE_TABLE_FIELDS) -> str:
    """A Markdown table of ``fields`` of :class:`ExperimentConfig` at every profile (rows: parameters), read
    from ``PROFILES`` so that a page describing the profiles can never disagree with them."""
    def text(value: Any) -> str:
        if isinstance(value, tuple):
            return ", ".join(map(str, value))
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    rows = {row["name"]: row for row in describe(ExperimentConfig)}
    lines = ["| parameter | what it is | " + " | ".join(f"`{p}`" for p in PROFILE_NAMES) + " |",
             "|---|---|" + "---|" * len(PROFILE_NAMES)]
    for name in fields:
        row = rows[name]
        lines.append(f"| `{name}` | {row['doc']} | " + " | ".join(text(row[p]) for p in PROFILE_NAMES) + " |")
    return "\n".join(lines)
