"""Helpers of the data tests (the fixtures that use them are in conftest.py)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines import feature_store as fs

N_USERS = 3000


def feast_config(**feast) -> FulcrumConfig:
    # Default relative paths: data/ and feature_repo/ land under the tmp root.
    return FulcrumConfig.model_validate({"feast": feast})


REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("FULCRUM_TEST_REDIS_PORT", "6379"))
REDIS_TEST_DB = int(os.environ.get("FULCRUM_TEST_REDIS_DB", "13"))  # a database of our own


def write_scores(cfg: FulcrumConfig, root: Path, man: S.Manifest, users: np.ndarray, when: datetime,
                 seed: int = 0, version: str = "v-test") -> pd.DataFrame:
    """A score snapshot (random δ) for ``users`` where the score stage would put it."""
    names = fs.delta_features(man)
    rng = np.random.default_rng(seed)
    cols = {
        S.USER_ID: users.astype(np.int64),
        S.EVENT_TS: np.full(len(users), pd.Timestamp(when).as_unit("us")),
        **{n: rng.normal(0.01, 0.05, size=len(users)).astype(np.float32) for n in names},  # plausible δ
        fs.SCORE_DATE: [when.date().isoformat()] * len(users),
        fs.MODEL_VERSION: [version] * len(users),
    }
    table = pa.Table.from_pydict(cols, schema=fs.scores_schema(man))
    path = fs.scores_path(cfg, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table.to_pandas()


def redis_score_hashes(client, project: str, generation: int | None | str = "served") -> dict[bytes, dict]:
    """Score hashes of ``project`` keyed by Feast's entity key (suffix stripped): the served generation by default."""
    from fulcrum import online_store as O

    if generation == "served":
        generation = O.served_generation(O.redis_read_marker(client, project))
    width = len(O.entity_key_prefix(S.USER_ID)) + 8
    suffix = O.redis_suffix(project, generation)
    return {k[:width]: client.hgetall(k) for k in client.scan_iter(match=b"*" + suffix, count=10_000)
            if k[width:] == suffix}
