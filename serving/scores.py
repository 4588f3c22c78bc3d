"""δ for a batch of users from the online store (the decision service's only store read).

Two readers give the same answer (tested against each other on SQLite and Redis):

- :class:`FeastScores` goes through Feast's ``get_online_features``: the contract, and
  the reader to fall back on (``serve.score_reader: feast``).
- :class:`SqliteScores` / :class:`RedisScores` (``serve.score_reader: direct``, the
  default) read the same rows in Feast's layout with one indexed query or one ``HMGET``
  per user. Feast's read spends ~0.4 ms per request on building protobuf entity keys,
  resolving the feature service and assembling a response; the direct read ~0.1 ms.
  Keys and values go through ``fulcrum.online_store``, the bulk writer's module: its
  entity-key layout is checked against Feast's serializers on first use, and values
  that are not the plain float layout are decoded by protobuf itself.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fulcrum.online_store import (
    CPM_VERSION,
    DECISION_SERVICE,
    MODEL_VERSION,
    READER_REFRESH_S,
    SCORE_DATE,
    UPLIFT_SCORES,
    decode_value,
    delta_feature,
    entity_key_prefix,
    entity_keys,
    mu_features,
    quote_ident,
    redis_from_connection_string,
    redis_read_marker,
    redis_suffix,
    served_generation,
    sqlite_table,
)
from fulcrum.store_contract import check_redis, check_sqlite, warn  # noqa: E402

log = logging.getLogger("fulcrum.serving")
READERS = ("direct", "feast")


@dataclass(frozen=True)
class UserScores:
    delta: np.ndarray                  # (B, K, R); NaN rows for users without scores
    score_date: list[str | None]       # (B,)
    model_version: list[str | None]    # (B,)
    mu: np.ndarray | None = None       # (B, A, R) CPM's ŷ per arm (control first); CDUM only
    cpm_version: list[str | None] | None = None  # (B,) CDUM only


class ScoreReader(Protocol):
    def read(self, user_ids: list[int]) -> UserScores: ...


class _Layout:
    """Feature names in the order the engine wants them, and how to turn rows into :class:`UserScores`.

    ``arms`` (CDUM): also read CPM's outcomes ŷ per arm and response and its version.
    """

    def __init__(self, join_key: str, treatments: list[str], responses: list[str], arms: list[str] | None = None):
        self.join_key, self.k, self.r, self.a = join_key, len(treatments), len(responses), len(arms or [])
        # The float features: δ treatment-major, then (CDUM) ŷ arm-major.
        self.deltas = [delta_feature(t, r) for t in treatments for r in responses]
        self.deltas += mu_features(list(arms), responses) if arms else []
        self.column = {name: j for j, name in enumerate(self.deltas)}
        self.strings = [SCORE_DATE, MODEL_VERSION, *([CPM_VERSION] if arms else [])]

    def empty(self, n: int) -> tuple[np.ndarray, dict[str, list]]:
        return np.full((n, len(self.deltas)), np.nan), {name: [None] * n for name in self.strings}

    def done(self, values: np.ndarray, strings: dict[str, list]) -> UserScores:
        n, kr = len(strings[SCORE_DATE]), self.k * self.r
        mu = values[:, kr:].reshape(n, self.a, self.r) if self.a else None
        return UserScores(values[:, :kr].reshape(n, self.k, self.r), strings[SCORE_DATE], strings[MODEL_VERSION],
                          mu, strings.get(CPM_VERSION))


class FeastScores:
    """Reads the ``decision_service`` feature service through Feast's ``get_online_features``.

    The store is whatever ``feature_store.yaml`` in ``repo_dir`` names: SQLite in the
    embedded profile, Redis in production.
    """

    def __init__(self, repo_dir: Path, join_key: str, treatments: list[str], responses: list[str],
                 arms: list[str] | None = None):
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=str(repo_dir))
        self.layout = _Layout(join_key, treatments, responses, arms)
        self.service = self.store.get_feature_service(DECISION_SERVICE)

    def read(self, user_ids: list[int]) -> UserScores:
        lay = self.layout
        got = self.store.get_online_features(
            features=self.service, entity_rows=[{lay.join_key: int(u)} for u in user_ids],
        ).to_dict()
        cols = [np.asarray([np.nan if v is None else v for v in got[n]], dtype=np.float64) for n in lay.deltas]
        delta = np.stack(cols, axis=1) if cols else np.empty((len(user_ids), 0))
        return lay.done(delta, {name: list(got[name]) for name in lay.strings})


class SqliteScores:
    """Feast's SQLite table read directly: ``WHERE entity_key IN (...)`` on its primary key.

    One read-only connection, kept open: after a publication swaps the table, SQLite
    re-prepares the statement and the next read sees the new snapshot (WAL: never a mix).
    """

    def __init__(self, path: str, project: str, join_key: str, treatments: list[str], responses: list[str],
                 arms: list[str] | None = None, table: str | None = None):
        self.layout = _Layout(join_key, treatments, responses, arms)
        self.prefix = entity_key_prefix(join_key)
        self.table = quote_ident(table or sqlite_table(project))
        self.path = path
        self.con: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) the connection has open

    def _connect(self) -> sqlite3.Connection | None:
        """The connection, opened on first use (None while the store file does not exist).

        A store file replaced under the service (a fresh ``make run`` after ``clean-data``)
        would otherwise be read through the old, unlinked inode forever while ``/ops/health``
        reported the new publication: one ``stat`` per read (~2 µs) catches it and reopens.
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._close()
            return None
        if self.con is not None and self._file != (st.st_dev, st.st_ino):
            self._close()
        if self.con is None:
            # Read-only, and usable from whichever thread the server calls it on (one at a time).
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, check_same_thread=False,
                                  cached_statements=512)
            con.execute("PRAGMA cache_size=-65536")  # 64 MB of hot pages per worker
            self.con, self._file = con, (st.st_dev, st.st_ino)
        return self.con

    def _close(self) -> None:
        if self.con is not None:
            self.con.close()
        self.con, self._file = None, None

    def read(self, user_ids: list[int]) -> UserScores:
        lay = self.layout
        keys = [bytes(k) for k in entity_keys(self.prefix, np.asarray(user_ids, dtype=np.int64))]
        # One slot per distinct user: the query returns a user's rows once however often the
        # batch names them, so every copy is filled from its user's slot at the end.
        slot: dict[bytes, int] = {}
        for k in keys:
            slot.setdefault(k, len(slot))
        delta, strings = lay.empty(len(slot))
        con = self._connect()
        if con is None:
            return self._spread(keys, slot, delta, strings)
        try:
            rows = con.execute(
                f"SELECT entity_key, feature_name, value FROM {self.table} "
                f"WHERE entity_key IN ({','.join('?' * len(slot))})", list(slot)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # nothing published yet: every user unscored
                return self._spread(keys, slot, delta, strings)
            raise
        for key, name, raw in rows:
            i = slot[key]
            j = lay.column.get(name)
            if j is not None:
                v = decode_value(raw)
                delta[i, j] = np.nan if v is None else v
            elif name in strings:
                strings[name][i] = decode_value(raw)
        return self._spread(keys, slot, delta, strings)

    def _spread(self, keys: list[bytes], slot: dict[bytes, int], delta: np.ndarray,
                strings: dict[str, list]) -> UserScores:
        """Per-user results (one slot per distinct user) back in request order, duplicates included."""
        if len(slot) == len(keys):  # the usual batch: slots are already in request order
            return self.layout.done(delta, strings)
        at = [slot[k] for k in keys]
        return self.layout.done(delta[at], {name: [v[i] for i in at] for name, v in strings.items()})


class RedisScores:
    """Feast's Redis hashes read directly: one ``HMGET`` per user (pipelined for a batch).

    ``follow_marker`` (the service): read the generation the publication marker names
    (``fulcrum.online_store``, versioned publication), re-reading the marker at most every
    ``READER_REFRESH_S``, so a whole batch comes from one publication. Off: Feast's own
    keys of ``project`` (the contract check's scratch projects).
    """

    def __init__(self, connection_string: str, project: str, join_key: str, treatments: list[str],
                 responses: list[str], arms: list[str] | None = None, follow_marker: bool = True):
        from feast.infra.online_stores.helpers import _mmh3

        self.layout = _Layout(join_key, treatments, responses, arms)
        self.prefix, self.project = entity_key_prefix(join_key), project
        self.suffix = redis_suffix(project, None)
        self.client = redis_from_connection_string(connection_string)
        names = [*self.layout.deltas, *self.layout.strings]
        self.fields = [_mmh3(f"{UPLIFT_SCORES}:{name}") for name in names]
        self.follow_marker, self._checked_at = follow_marker, -np.inf

    def _refresh(self, force: bool = False) -> bool:
        """Re-read the served generation if due (or forced); True if the key suffix changed."""
        now = time.monotonic()
        if not self.follow_marker or (not force and now - self._checked_at < READER_REFRESH_S):
            return False
        self._checked_at = now
        suffix = redis_suffix(self.project, served_generation(redis_read_marker(self.client, self.project)))
        changed, self.suffix = suffix != self.suffix, suffix
        return changed

    def read(self, user_ids: list[int]) -> UserScores:
        self._refresh()
        got, found = self._read(user_ids)
        # Nobody found under a generation read a while ago: it may have been swept since. Ask again.
        if not found and self._refresh(force=True):
            got, found = self._read(user_ids)
        return got

    def _read(self, user_ids: list[int]) -> tuple[UserScores, bool]:
        lay = self.layout
        n, d = len(user_ids), len(lay.deltas)
        keys = entity_keys(self.prefix, np.asarray(user_ids, dtype=np.int64), self.suffix)
        if n == 1:
            replies = [self.client.hmget(keys[0].tobytes(), self.fields)]
        else:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key.tobytes(), self.fields)
                replies = pipe.execute()
        delta, strings = lay.empty(n)
        for i, values in enumerate(replies):
            for j in range(d):
                v = decode_value(values[j])
                if v is not None:
                    delta[i, j] = v
            for s, name in enumerate(lay.strings):
                strings[name][i] = decode_value(values[d + s])
        return lay.done(delta, strings), any(v is not None for v in strings[SCORE_DATE])


def open_scores(repo_dir: Path, online_store: dict, spec: dict, reader: str = "direct",
                check: bool = True) -> ScoreReader:
    """The configured reader for the online store named in ``online_store`` (feature_store.yaml).

    The direct readers are first checked against Feast's own writer (``fulcrum.store_contract``);
    on a mismatch the service reads through Feast, with a loud warning.
    """
    args = (spec["join_key"], spec["treatments"], spec["responses"])
    arms = spec.get("arms") if spec.get("cdum") else None  # CDUM in the release: CPM's ŷ too
    if reader == "feast":
        return FeastScores(repo_dir, *args, arms)
    if reader != "direct":
        raise ValueError(f"unknown score reader {reader!r}: expected one of {READERS}")
    if online_store["type"] not in ("sqlite", "redis"):
        return FeastScores(repo_dir, *args, arms)  # any other store Feast supports: through Feast
    if check:
        report = check_direct_reader(online_store, *args)
        if report is not None and not report.ok:
            warn(report, "Feast's reader (serve.score_reader: feast)")
            return FeastScores(repo_dir, *args, arms)
    if online_store["type"] == "sqlite":
        return SqliteScores(online_store["path"], spec["project"], *args, arms)
    return RedisScores(online_store["connection_string"], spec["project"], *args, arms)


def _as_arrays(got: UserScores) -> tuple[np.ndarray, list, list]:
    return got.delta.reshape(len(got.score_date), -1), got.score_date, got.model_version


def check_direct_reader(online_store: dict, join_key: str, treatments: list[str], responses: list[str]):
    """The contract check for the direct reader of ``online_store`` (None when it could not run)."""
    names = [delta_feature(t, r) for t in treatments for r in responses]
    if online_store["type"] == "sqlite":
        def sqlite_reader(path: str, table: str):
            r = SqliteScores(path, "", join_key, treatments, responses, table=table)
            return lambda ids: _as_arrays(r.read(list(ids)))

        return check_sqlite("fulcrum", join_key, names, reader=sqlite_reader)
    cs = online_store["connection_string"]

    def redis_reader(project: str):
        r = RedisScores(cs, project, join_key, treatments, responses, follow_marker=False)
        return lambda ids: _as_arrays(r.read(list(ids)))

    client = redis_from_connection_string(cs)
    try:
        return check_redis(client, cs, join_key, names, reader=redis_reader)
    except Exception as e:  # e.g. a read-only account: serve on, but say the check did not run
        log.warning("could not run the Feast contract check on Redis (%s): serving with the direct reader", e)
        return None
    finally:
        client.close()
