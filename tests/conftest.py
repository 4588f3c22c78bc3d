"""Shared fixtures: tiny simulated datasets built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.config import FulcrumConfig, SimulatorSource


def tiny_config(tmp: Path, **source) -> FulcrumConfig:
    """A small simulator config writing under ``tmp``."""
    base = dict(n_users=3000, feature_days=3, experiment_days=2)
    base.update(source)
    return FulcrumConfig(
        paths={"data": str(tmp / "data"), "reports": str(tmp / "reports")},
        source=SimulatorSource(**base),
    )


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory) -> Path:
    """A 40k-user simulated RCT (enough for statistical checks), collected once."""
    from pipelines.collect import run_collect

    tmp = tmp_path_factory.mktemp("sim")
    cfg = tiny_config(tmp, n_users=40_000, feature_days=2, experiment_days=2, arm_shares=[0.4, 0.3, 0.3])
    run_collect(cfg, Path("/"))
    return cfg.paths.rct_dir(Path("/"))
