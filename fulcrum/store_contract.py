"""The contract between Fulcrum's fast online-store paths and Feast, checked on live code.

The bulk writer and the direct readers reproduce Feast's online layouts without going
through Feast (``fulcrum.online_store``, ``serving.scores``): the table name, the
serialized entity keys, the ``_ts:<view>`` field, the mmh3 field names in Redis. Those are
Feast internals a Feast upgrade may change. So at publish and at service start a few rows are
written **by Feast's own online store** and by Fulcrum's writer into scratch places (a
temporary SQLite file; scratch projects' keys in Redis, deleted afterwards), and compared:

- the stored bytes (SQLite rows: key, feature, value, timestamp, text of strings; Redis:
  every hash field), and
- the reads both ways: Fulcrum's reader on Feast's rows, Feast's ``online_read`` on Fulcrum's.

Any difference is a list of problems; the callers then fall back to Feast's own path (the
``feast`` writer or reader) with a loud warning rather than write or read garbage.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fulcrum import online_store as O

log = logging.getLogger("fulcrum")

SCRATCH = "fulcrum_contract"  # scratch feature view / project names
# Ids whose little-endian bytes sort unlike their values, a negative one and one past 2**32.
IDS = np.array([0, 1, 255, 256, -5, 2**40 + 3], dtype=np.int64)
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class ContractReport:
    backend: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sample_snapshot(delta_names: list[str]) -> O.Snapshot:
    """A few rows with distinct values: the same in every check."""
    deltas = (np.arange(len(IDS) * len(delta_names), dtype=np.float32).reshape(len(IDS), -1) - 3.25) / 64
    return O.Snapshot(IDS, deltas, list(delta_names), {O.SCORE_DATE: "2026-01-02", O.MODEL_VERSION: "contract-v1"},
                      WHEN)


def _view(name: str, join_key: str, delta_names: list[str]):
    """A stand-in feature view with the published schema (Feast's writers need one, not its source)."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, String

    entity = Entity(name="user", join_keys=[join_key], value_type=ValueType.INT64)
    schema = [Field(name=n, dtype=Float32) for n in delta_names]
    schema += [Field(name=O.SCORE_DATE, dtype=String), Field(name=O.MODEL_VERSION, dtype=String)]
    source = FileSource(path="unused.parquet", timestamp_field="event_timestamp")
    return FeatureView(name=name, entities=[entity], schema=schema, source=source)


def _feast_rows(snap: O.Snapshot, join_key: str) -> list:
    """The snapshot as Feast's ``online_write_batch`` takes it."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    rows = []
    for i, uid in enumerate(snap.user_ids):
        values = {n: Value(float_val=float(snap.deltas[i, j])) for j, n in enumerate(snap.delta_names)}
        values.update({n: Value(string_val=t) for n, t in snap.constants.items()})
        rows.append((EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(uid))]), values, snap.event_ts,
                     None))
    return rows


def _compare_reads(snap: O.Snapshot, read: Callable, who: str) -> list[str]:
    """``read`` returns (δ (n, D) float array, score dates, model versions) for ``snap.user_ids``."""
    delta, dates, versions = read()
    problems = []
    if not np.allclose(np.asarray(delta, dtype=np.float64), snap.deltas, atol=0, rtol=0, equal_nan=False):
        problems.append(f"{who}: δ values differ from what was written")
    if list(dates) != [snap.constants[O.SCORE_DATE]] * len(snap) or \
            list(versions) != [snap.constants[O.MODEL_VERSION]] * len(snap):
        problems.append(f"{who}: score date / model version differ from what was written")
    return problems


def _feast_read(store, config, view, snap: O.Snapshot, join_key: str):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    keys = [EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(u))]) for u in snap.user_ids]
    got = store.online_read(config, view, keys)

    def get(values, name):
        if values is None or name not in values:
            return None
        v = values[name]
        return getattr(v, v.WhichOneof("val")) if v.WhichOneof("val") else None

    delta = [[get(vals, n) for n in snap.delta_names] for _, vals in got]
    delta = np.array([[np.nan if x is None else x for x in row] for row in delta], dtype=np.float64)
    return delta, [get(v, O.SCORE_DATE) for _, v in got], [get(v, O.MODEL_VERSION) for _, v in got]


def _repo_config(project: str, online_store: dict, tmp: Path):
    from feast.repo_config import RepoConfig

    # The scratch config never reads offline data; the default offline store (dask) would cost
    # ~0.75 s to import and duckdb ~0.3 s, while the "remote" one is only validated (~0.03 s).
    return RepoConfig(project=project, provider="local", online_store=online_store, entity_key_serialization_version=3,
                      registry={"registry_type": "file", "path": str(tmp / "registry.db")},
                      offline_store={"type": "remote", "host": "127.0.0.1", "port": 1})


def check_sqlite(project: str, join_key: str, delta_names: list[str],
                 reader: Callable[[str, str], Callable] | None = None) -> ContractReport:
    """Feast's SQLite writer vs the bulk writer (and ``reader``) in a temporary file.

    ``reader(path, table)`` returns a function ``ids -> (δ, dates, versions)``: the service's
    direct reader; None checks the writer only.
    """
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    report = ContractReport("sqlite")
    snap = sample_snapshot(delta_names)
    with tempfile.TemporaryDirectory(prefix="fulcrum-contract-") as d:
        tmp = Path(d)
        path = str(tmp / "online.db")
        config = _repo_config(project, {"type": "sqlite", "path": path}, tmp)
        store = SqliteOnlineStore()
        feast_view, bulk_view = (_view(f"{SCRATCH}_{who}", join_key, delta_names) for who in ("feast", "bulk"))
        for view in (feast_view, bulk_view):
            if compute_table_id(project, view, False) != O.sqlite_table(project, view.name):
                report.problems.append(f"table name: Feast uses {compute_table_id(project, view, False)!r}, Fulcrum "
                                       f"{O.sqlite_table(project, view.name)!r}")
                return report
        store.update(config, [], [feast_view, bulk_view], [], [], partial=False)
        store.online_write_batch(config, feast_view, _feast_rows(snap, join_key), None)
        O.SqliteBulkWriter(path, O.sqlite_table(project, bulk_view.name), join_key, project).publish(
            snap, None, chunk_size=len(snap))
        con = sqlite3.connect(path)
        try:
            def rows(view) -> list:
                return con.execute(
                    f"SELECT entity_key, feature_name, value, event_ts, CASE WHEN feature_name LIKE 'delta%' THEN NULL "
                    f"ELSE value_text END FROM {O.quote_ident(O.sqlite_table(project, view.name))} ORDER BY 1, 2"
                ).fetchall()

            if rows(feast_view) != rows(bulk_view):
                report.problems.append("stored rows: the bulk writer's bytes differ from Feast's")
        finally:
            con.close()
        report.problems += _compare_reads(snap, lambda: _feast_read(store, config, bulk_view, snap, join_key),
                                          "Feast reading the bulk writer's rows")
        if reader is not None:
            read = reader(path, O.sqlite_table(project, feast_view.name))
            report.problems += _compare_reads(snap, lambda: read(snap.user_ids), "the direct reader on Feast's rows")
        store.teardown(config, [feast_view, bulk_view], [])
    return report


def check_redis(client, connection_string: str, join_key: str, delta_names: list[str],
                reader: Callable[[str], Callable] | None = None) -> ContractReport:
    """Feast's Redis writer vs the bulk writer (and ``reader``) under scratch projects; their keys are deleted.

    ``reader(project)`` returns a function ``ids -> (δ, dates, versions)`` reading that project's keys.
    """
    from feast.infra.online_stores.redis import RedisOnlineStore

    report = ContractReport("redis")
    snap = sample_snapshot(delta_names)
    view = _view(O.UPLIFT_SCORES, join_key, delta_names)  # the real name: fields hash it; scratch projects keep keys apart
    projects = {"feast": f"{SCRATCH}_feast_{os.getpid()}", "bulk": f"{SCRATCH}_bulk_{os.getpid()}"}
    prefix = O.entity_key_prefix(join_key)
    keys = {who: [k.tobytes() for k in O.entity_keys(prefix, snap.user_ids, p.encode())] for who, p in projects.items()}
    with tempfile.TemporaryDirectory(prefix="fulcrum-contract-") as d:
        config = _repo_config(projects["feast"], {"type": "redis", "connection_string": connection_string}, Path(d))
        store = RedisOnlineStore()
        try:
            store.online_write_batch(config, view, _feast_rows(snap, join_key), None)
            O.RedisBulkWriter(client, view.name, join_key, projects["bulk"]).publish(snap, chunk_size=len(snap))
            for a, b in zip(keys["feast"], keys["bulk"], strict=True):
                if client.hgetall(a) != client.hgetall(b):
                    report.problems.append("stored hashes: the bulk writer's fields differ from Feast's")
                    break
            bulk_config = config.model_copy(update={"project": projects["bulk"]})
            report.problems += _compare_reads(snap, lambda: _feast_read(store, bulk_config, view, snap, join_key),
                                              "Feast reading the bulk writer's hashes")
            if reader is not None:
                read = reader(projects["feast"])
                report.problems += _compare_reads(snap, lambda: read(snap.user_ids),
                                                  "the direct reader on Feast's hashes")
        finally:
            client.delete(*keys["feast"], *keys["bulk"])
    return report


def warn(report: ContractReport, fallback: str) -> None:
    """The loud warning when a check fails (the caller then uses Feast's own path)."""
    log.error("Feast contract check FAILED for the %s online store (%s): falling back to %s. Fulcrum's fast path "
              "no longer matches this Feast version's layout; the fallback is correct but slower.",
              report.backend, "; ".join(report.problems), fallback)
