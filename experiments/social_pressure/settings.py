"""The experiment's configuration: the project's ``params.yaml`` with this folder's overlay on top.

``experiments/social_pressure/params.yaml`` holds only what differs from the project: the
paths (its own data and reports folders), the logs source that maps the social-pressure
files, an isolated Feast project, and the runner's own section ``social_pressure`` (which
is not part of :class:`fulcrum.config.FulcrumConfig` and is validated here). Everything
else, the ``train`` section above all, comes from the project's ``params.yaml``: the
"default HUM" of the comparison is whatever the project configures.

Merging: mappings merge key by key, recursively; any other value (lists included) in the
overlay replaces the project's. ``source`` is replaced as a whole (its fields depend on
its ``type``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fulcrum.config import ConfigError, FulcrumConfig, read_yaml_mapping

HERE = Path(__file__).resolve().parent
OVERLAY = Path("experiments/social_pressure/params.yaml")  # relative to the project root
PROJECT_PARAMS = Path("params.yaml")
RUNNER_SECTION = "social_pressure"
REPLACED = ("source", "decision")  # sections the overlay replaces instead of merging (σ keys name the arms)


class LGBMParams(BaseModel):
    """LightGBM settings shared by the peers' base learners (every model of every meta-learner)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_estimators: int = Field(200, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(31, ge=2)
    min_child_samples: int = Field(100, ge=1)
    subsample: float = Field(0.8, gt=0, le=1, description="row bagging share (re-drawn every tree, seeded)")
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    n_jobs: int = Field(1, ge=1, description="threads per LightGBM model (the machine has 2 cores)")


class RunnerSettings(BaseModel):
    """The comparison runner (``experiments/social_pressure/compare.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] | None = Field(
        None, description="null: every neural model in models.registry, the project's GBM baselines and the peers")
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    users: int | None = Field(None, ge=100, description="subsample this many voters (whole households); null: all")
    bootstrap: int = Field(200, ge=0, description="household-clustered paired bootstrap resamples (0: none)")
    reference: str = Field("hum", description="the model every peer is compared with, paired by seed")
    lgbm: LGBMParams = Field(default_factory=LGBMParams)


def deep_merge(base: dict, over: dict, replaced: tuple[str, ...] = ()) -> dict:
    """``base`` with ``over`` on top: mappings merge recursively, other values replace."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in replaced and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def relocated(base: Path) -> dict[str, str]:
    """Dotted overrides that put every file the experiment writes under ``base`` (tests, scratch runs)."""
    base = Path(base).resolve()
    return {
        "paths.data": str(base / "data"),
        "paths.reports": str(base / "reports"),
        "source.experiment.path": str(base / "data" / "logs" / "experiment.parquet"),
        "source.features.path": str(base / "data" / "logs" / "features.parquet"),
        "feast.repo_path": str(base / "data" / "feature_repo"),
        "feast.embedded.online_path": str(base / "data" / "feast" / "online.db"),
        "feast.embedded.registry_path": str(base / "data" / "feast" / "registry.db"),
    }




def load(root: Path = Path("."), overlay: Path | None = None, project: Path | None = None,
         overrides: dict[str, Any] | None = None) -> tuple[FulcrumConfig, RunnerSettings]:
    """The merged, validated configuration and the runner's settings.

    ``overlay`` / ``project`` default to the files above, relative to ``root``;
    ``overrides`` are dotted keys applied last (``{"train.epochs": 3}``).
    """
    over = read_yaml_mapping(overlay or root / OVERLAY)
    runner = over.pop(RUNNER_SECTION, {}) or {}
    tree = deep_merge(read_yaml_mapping(project or root / PROJECT_PARAMS), over, REPLACED)
    for dotted, value in (overrides or {}).items():
        node = tree
        *parents, last = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    try:
        cfg = FulcrumConfig.model_validate(tree)
        settings = RunnerSettings.model_validate(runner)
    except ValidationError as e:
        raise ConfigError(f"invalid social-pressure configuration: {e}") from None
    return cfg, settings
