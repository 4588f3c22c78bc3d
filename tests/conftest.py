"""Shared fixtures: tiny simulated datasets built once per session."""

from __future__ import annotations

import os
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


PG_DSN = os.environ.get("FULCRUM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture()
def pg_database():
    """A fresh PostgreSQL database of our own on the machine's server; dropped afterwards.

    Skips only when no server answers, and never in CI (CI=true), where it must run.
    """
    import uuid

    import psycopg2

    try:
        admin = psycopg2.connect(PG_DSN, connect_timeout=3)
    except psycopg2.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL ({PG_DSN}) is required in CI: {e}")
        pytest.skip(f"no PostgreSQL server answers at {PG_DSN}: {e}")
    admin.autocommit = True
    name = f"fulcrum_test_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
