"""Fixtures of the data tests: a small simulated dataset and the machine's Redis."""

from __future__ import annotations

import os

import pytest
from helpers_data import N_USERS, REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, feast_config

from fulcrum.config import SimulatorSource
from pipelines.sources.simulator import simulate_to


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    cfg = feast_config()
    rct = cfg.paths.rct_dir(root)
    rct.mkdir(parents=True)
    man = simulate_to(SimulatorSource(n_users=N_USERS, feature_days=2, experiment_days=3), rct)
    man.write(rct)
    return cfg, root, man



@pytest.fixture()
def redis_db():
    """The machine's Redis (127.0.0.1:6379), database 13, emptied before and after.

    Skips only when no server answers, and never in CI (CI=true), where it must run.
    """
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"Redis on {REDIS_HOST}:{REDIS_PORT} is required in CI: {e}")
        pytest.skip(f"no Redis server answers on {REDIS_HOST}:{REDIS_PORT}: {e}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
