"""The publish stage's writers against Feast's own: same bytes, same reads, safe failures.

Each test publishes a score snapshot through ``run_publish`` into stores under its own
tmp root (SQLite) or the machine's Redis (database 13, emptied before and after).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from helpers_data import REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, redis_score_hashes, write_scores

from fulcrum import online_store as O
from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines import feature_store as fs
from pipelines import publish as P

pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")

WHEN = datetime(2026, 11, 7, 0, 0, tzinfo=UTC)
# Ids whose little-endian bytes sort differently from their values, and one past 2**32.
USERS = np.array([1, 2, 255, 256, 257, 65_536, 2**40 + 3, *range(1000, 1300)])
TABLE = "fulcrum_uplift_scores"


def _cfg(src_root: Path, writer: str, chunk: int = 100, **feast) -> FulcrumConfig:
    return FulcrumConfig.model_validate({
        "paths": {"data": str(src_root / "data")},  # the dataset and scores of the shared fixture
        "publish": {"writer": writer, "chunk_size": chunk},
        "feast": feast,
    })


def _rows(root: Path) -> list[tuple]:
    con = sqlite3.connect(root / "data" / "feast" / "online.db")
    try:
        return con.execute(
            f"SELECT entity_key, feature_name, value, event_ts, "
            f"CASE WHEN feature_name LIKE 'delta%' THEN NULL ELSE value_text END FROM {TABLE} ORDER BY 1, 2"
        ).fetchall()
    finally:
        con.close()


def _online(cfg: FulcrumConfig, root: Path, users) -> dict:
    store = fs.get_store(cfg, root)
    return store.get_online_features(
        features=store.get_feature_service(fs.DECISION_SERVICE), entity_rows=[{S.USER_ID: int(u)} for u in users],
    ).to_dict()


def test_bulk_sqlite_writes_the_bytes_feast_writes(dataset, tmp_path):
    _, src, man = dataset
    snap = write_scores(_cfg(src, "bulk"), src, man, USERS, WHEN)
    P.run_publish(_cfg(src, "feast"), tmp_path / "feast")
    out = P.run_publish(_cfg(src, "bulk", chunk=64), tmp_path / "bulk")
    assert out["writer"] == "bulk" and out["n_users"] == len(USERS)
    feast_rows, bulk_rows = _rows(tmp_path / "feast"), _rows(tmp_path / "bulk")
    assert len(bulk_rows) == len(USERS) * 6 and bulk_rows == feast_rows
    with sqlite3.connect(tmp_path / "bulk" / "data" / "feast" / "online.db") as con:  # made by apply, not Feast
        assert con.execute("PRAGMA page_size").fetchone()[0] == 65536
    ask = [*USERS[::37], 2**40 + 4]  # the last one was never scored
    got = _online(_cfg(src, "bulk"), tmp_path / "bulk", ask)
    assert got == _online(_cfg(src, "feast"), tmp_path / "feast", ask)
    name = fs.delta_feature("t2", "usage_time")
    expect = snap.set_index(S.USER_ID).loc[USERS[::37], name].to_numpy()
    assert np.allclose(got[name][:-1], expect, atol=1e-7) and got[name][-1] is None


def test_bulk_sqlite_replaces_the_snapshot_atomically(dataset, tmp_path, monkeypatch):
    _, src, man = dataset
    cfg = _cfg(src, "bulk", chunk=50)
    first = write_scores(cfg, src, man, USERS, WHEN, seed=1, version="v1").set_index(S.USER_ID)
    P.run_publish(cfg, tmp_path)
    served = P.read_marker(cfg, tmp_path)["served"]
    assert served["model_version"] == "v1"

    write_scores(cfg, src, man, USERS[1:], WHEN, seed=2, version="v2")
    calls = {"n": 0}
    real = O._float_values

    def flaky(deltas):  # the third chunk fails: a partial publish
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(deltas)

    monkeypatch.setattr(O, "_float_values", flaky)
    with pytest.raises(OSError, match="disk full"):
        P.run_publish(cfg, tmp_path)
    marker = P.read_marker(cfg, tmp_path)
    assert marker["state"] == "publishing" and marker["served"] == served
    assert marker["target"]["model_version"] == "v2"
    name = fs.delta_feature("t1", "video_views")
    got = _online(cfg, tmp_path, USERS)
    assert set(got[fs.MODEL_VERSION]) == {"v1"}  # not one row of the failed snapshot is visible
    assert np.allclose(got[name], first.loc[USERS, name].to_numpy(), atol=1e-7)
    con = sqlite3.connect(tmp_path / "data" / "feast" / "online.db")
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE ?",
                                      (TABLE + "%",))] == [TABLE]  # no staging table left behind
    con.close()

    monkeypatch.setattr(O, "_float_values", real)
    P.run_publish(cfg, tmp_path)
    assert P.read_marker(cfg, tmp_path)["served"]["model_version"] == "v2"
    got = _online(cfg, tmp_path, USERS[:2])
    assert got[fs.MODEL_VERSION] == [None, "v2"]  # a snapshot replaces the last: user 1 was not scored


def test_publish_twice_and_reapply_keep_the_same_state(dataset, tmp_path):
    _, src, man = dataset
    cfg = _cfg(src, "bulk")
    write_scores(cfg, src, man, USERS, WHEN)
    P.run_publish(cfg, tmp_path)
    before = _rows(tmp_path)
    fs.apply(cfg, tmp_path)  # Feast's own apply leaves the replaced table alone
    P.run_publish(cfg, tmp_path)
    assert _rows(tmp_path) == before


@pytest.mark.integration
def test_redis_publish_through_the_stage_equals_feasts_write(dataset, tmp_path, redis_db, pg_database):
    """Production profile for real: Redis online store, SQL registry on PostgreSQL."""
    client = redis_db
    _, src, man = dataset
    prod = {"profile": "production",
            "production": {"redis_connection_string": f"{REDIS_HOST}:{REDIS_PORT}", "redis_db": REDIS_TEST_DB,
                           "registry_url": pg_database}}
    snap = write_scores(_cfg(src, "bulk", **prod), src, man, USERS, WHEN).set_index(S.USER_ID)
    marker_key = O.redis_marker_key("fulcrum").encode()

    def dump() -> dict:
        return {k: client.hgetall(k) for k in client.keys("*") if k != marker_key}

    P.run_publish(_cfg(src, "feast", **prod), tmp_path / "feast")
    by_feast = dump()
    client.flushdb()
    # Versioned (the default): Feast's bytes under the generation's keys; Feast's own keys are not written.
    cfg = _cfg(src, "bulk", chunk=64, **prod)
    assert P.read_marker(cfg, tmp_path)["state"] == "never"
    out = P.run_publish(cfg, tmp_path / "versioned")
    assert out["generation"] == 1 and len(dump()) == len(USERS)
    feasts = {k.removesuffix(b"fulcrum"): v for k, v in by_feast.items()}
    assert redis_score_hashes(client, "fulcrum") == feasts  # byte for byte, hash for hash
    assert redis_score_hashes(client, "fulcrum", None) == {}
    client.flushdb()
    prod["production"]["redis_publication"] = "in_place"
    cfg = _cfg(src, "bulk", chunk=64, **prod)
    out = P.run_publish(cfg, tmp_path / "bulk")
    assert len(by_feast) == len(USERS) and dump() == by_feast  # Feast's own keys, byte for byte
    marker = P.read_marker(cfg, tmp_path)
    assert marker["state"] == "complete" and marker["served"]["score_date"] == out["score_date"]
    assert "generation" not in marker["served"]
    ask = [*USERS[:5], 10**9]
    got = _online(cfg, tmp_path / "bulk", ask)
    name = fs.delta_feature("t1", "usage_time")
    assert np.allclose(got[name][:-1], snap.loc[USERS[:5], name].to_numpy(), atol=1e-7)
    assert got[name][-1] is None and got[fs.SCORE_DATE][0] == WHEN.date().isoformat()
    store = fs.get_store(cfg, tmp_path / "bulk")
    assert store.config.registry.registry_type == "sql" and store.config.registry.path.startswith("postgresql")
    assert {v.name for v in store.list_feature_views()} == {fs.USER_FEATURES, fs.UPLIFT_SCORES}


def test_resp_template_packs_what_redis_py_packs():
    from redis.connection import Connection

    t = O.RespTemplate().command().arg(b"HSET").slot("key", 4).arg(b"f").slot("v", 3)
    t.command().arg(b"EXPIRE").slot("key", 4).arg(b"60")
    template, slots = t.compile()
    buf = np.tile(template, (2, 1))
    for off, width in slots["key"]:
        buf[:, off: off + width] = np.frombuffer(b"key1key2", np.uint8).reshape(2, 4)
    (off, width), = slots["v"]
    buf[:, off: off + width] = np.frombuffer(b"\x00\r\n\xff\x01\x02", np.uint8).reshape(2, 3)  # binary-safe
    pack = Connection().pack_command
    expect = b"".join(
        b"".join(pack("HSET", key, b"f", v)) + b"".join(pack("EXPIRE", key, b"60"))
        for key, v in ((b"key1", b"\x00\r\n"), (b"key2", b"\xff\x01\x02"))
    )
    assert buf.tobytes() == expect


def _snapshot(n: int) -> O.Snapshot:
    rng = np.random.default_rng(3)
    return O.Snapshot(np.arange(1, n + 1, dtype=np.int64), rng.random((n, 2), dtype=np.float32), ["a", "b"],
                      {"score_date": "2026-11-07", "model_version": "m1"}, WHEN)


@pytest.mark.integration
def test_redis_bulk_writer_sets_feasts_ttl_and_surfaces_refused_commands(redis_db):
    client = redis_db
    O.RedisBulkWriter(client, "v", "user_id", "proj", key_ttl_seconds=3600).publish(_snapshot(50), chunk_size=16)
    keys = client.keys("*")
    assert len(keys) == 50 and all(0 < client.ttl(k) <= 3600 for k in keys)

    # A key of the wrong type makes Redis refuse that HSET: the writer raises with Redis's reason...
    client.flushdb()
    prefix = O.entity_key_prefix("user_id")
    client.set(O.entity_keys(prefix, np.array([7]), b"proj").tobytes(), b"not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        O.RedisBulkWriter(client, "v", "user_id", "proj").publish(_snapshot(50), chunk_size=16)
    # ... and the pooled connection is not left with unread replies.
    assert client.ping() and client.set("probe", b"1") and client.get("probe") == b"1"


def test_new_sqlite_store_gets_the_configured_page_size_and_an_old_one_keeps_its_own(tmp_path):
    path = tmp_path / "a.db"
    assert O.sqlite_create(str(path), 16384)
    assert not O.sqlite_create(str(path), 4096)  # exists: untouched
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA page_size").fetchone()[0] == 16384
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE t (x)").connection.close()  # a store made with the default
    O.SqliteBulkWriter(str(old), "t2", "user_id", "proj").publish(_snapshot(30), {"state": "complete"}, 8)
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert con.execute("SELECT count(*) FROM t2").fetchone()[0] == 30 * 4
    con.close()
    with pytest.raises(ValueError, match="power of two"):
        FulcrumConfig.model_validate({"feast": {"embedded": {"sqlite_page_size": 3000}}})


def _direct(cfg: FulcrumConfig, root: Path, man):
    from serving.scores import open_scores

    repo = fs.write_feature_store_yaml(cfg, root).parent
    spec = {"project": cfg.feast.project, "join_key": S.USER_ID, "treatments": man.treatments,
            "responses": man.responses}
    return open_scores(repo, fs.feature_store_settings(cfg, root)["online_store"], spec, "direct")


def _via_feast(cfg: FulcrumConfig, root: Path, man):
    from serving.scores import FeastScores

    return FeastScores(fs.write_feature_store_yaml(cfg, root).parent, S.USER_ID, man.treatments, man.responses)


def _same(a, b) -> None:
    np.testing.assert_allclose(a.delta, b.delta, rtol=0, atol=0)  # both NaN where unscored
    assert a.score_date == b.score_date and a.model_version == b.model_version


def test_direct_sqlite_reader_agrees_with_feast_and_follows_a_new_publication(dataset, tmp_path):
    from serving.scores import SqliteScores

    _, src, man = dataset
    cfg = _cfg(src, "bulk", chunk=64)
    direct = _direct(cfg, tmp_path, man)
    assert isinstance(direct, SqliteScores)
    ask = [int(USERS[0]), 2**40 + 4, *map(int, USERS[3:40:7]), int(USERS[200])]
    nothing = direct.read(ask)  # nothing published yet: every user unscored, no error
    assert np.isnan(nothing.delta).all() and nothing.score_date == [None] * len(ask)
    snap = write_scores(cfg, src, man, USERS, WHEN).set_index(S.USER_ID)
    P.run_publish(cfg, tmp_path)
    got = direct.read(ask)
    _same(got, _via_feast(cfg, tmp_path, man).read(ask))
    name = fs.delta_feature("t2", "video_views")
    k, r = man.treatments.index("t2"), man.responses.index("video_views")
    assert got.delta[0, k, r] == pytest.approx(float(snap.loc[USERS[0], name]), abs=0)
    assert np.isnan(got.delta[1]).all() and got.score_date[1] is None and got.score_date[0] == "2026-11-07"
    # The next day's publication swaps the table under the open connection: the reader follows.
    later = datetime(2026, 11, 8, tzinfo=UTC)
    write_scores(cfg, src, man, USERS[:100], later, seed=1, version="v-next")
    P.run_publish(cfg, tmp_path)
    again = direct.read(ask)
    _same(again, _via_feast(cfg, tmp_path, man).read(ask))
    assert again.score_date[0] == "2026-11-08" and again.model_version[0] == "v-next"
    assert again.score_date[-1] is None  # USERS[200] is not in the new snapshot: gone with the old table
    assert not np.allclose(again.delta[0], got.delta[0])
    # The store file itself replaced (clean-data, then a fresh run): the reader reopens, not the old inode.
    online = Path(fs.feature_store_settings(cfg, tmp_path)["online_store"]["path"])
    for f in (online, Path(f"{online}-wal"), Path(f"{online}-shm")):
        f.unlink(missing_ok=True)
    assert np.isnan(direct.read(ask).delta).all()  # no file: unscored, no error
    write_scores(cfg, src, man, USERS, later, seed=2, version="v-fresh")
    P.run_publish(cfg, tmp_path)
    fresh = direct.read(ask)
    assert fresh.model_version[0] == "v-fresh" and fresh.score_date[-1] == "2026-11-08"
    _same(fresh, _via_feast(cfg, tmp_path, man).read(ask))


@pytest.mark.integration
def test_direct_redis_reader_agrees_with_feast(dataset, tmp_path, redis_db):
    from serving.scores import RedisScores

    _, src, man = dataset
    cfg = _cfg(src, "bulk", chunk=64, **_redis_profile("in_place"))  # Feast reads Feast's own keys only
    write_scores(cfg, src, man, USERS, WHEN)
    P.run_publish(cfg, tmp_path)
    direct, feast = _direct(cfg, tmp_path, man), _via_feast(cfg, tmp_path, man)
    assert isinstance(direct, RedisScores)
    ask = [int(USERS[5]), 2**40 + 4, *map(int, USERS[10:300:29])]
    got = direct.read(ask)
    _same(got, feast.read(ask))
    assert not np.isnan(got.delta[0]).any() and np.isnan(got.delta[1]).all() and got.model_version[1] is None
    _same(direct.read(ask[:1]), feast.read(ask[:1]))  # the single-user path (no pipeline)


def _redis_profile(publication: str = "versioned", project: str = "fulcrum") -> dict:
    return {"project": project, "profile": "production",
            "production": {"redis_connection_string": f"{REDIS_HOST}:{REDIS_PORT}", "redis_db": REDIS_TEST_DB,
                           "redis_publication": publication}}


@pytest.mark.integration
def test_versioned_redis_publication_is_all_or_nothing_for_readers(dataset, tmp_path, redis_db, monkeypatch):
    """Readers see one whole publication per batch, during a publication and after a failed one."""
    _, src, man = dataset
    client = redis_db
    monkeypatch.setattr(O, "GRACE_S", 0.0)
    cfg = _cfg(src, "bulk", chunk=40, **_redis_profile())
    first = write_scores(cfg, src, man, USERS, WHEN, seed=1, version="v1").set_index(S.USER_ID)
    assert P.run_publish(cfg, tmp_path)["generation"] == 1
    direct = _direct(cfg, tmp_path, man)
    ask = [int(u) for u in USERS[::3]]
    name = fs.delta_feature("t1", "video_views")
    k, r = man.treatments.index("t1"), man.responses.index("video_views")
    assert direct.read(ask).model_version == ["v1"] * len(ask)
    assert direct.read(ask).delta[:, k, r].tolist() == pytest.approx(first.loc[ask, name].tolist(), abs=0)
    # A neighbour project whose name ends like ours: the sweeps never touch it.
    O.RedisBulkWriter(client, fs.UPLIFT_SCORES, S.USER_ID, "x_fulcrum").publish(O.Snapshot(
        np.arange(1, 6, dtype=np.int64), np.zeros((5, 1), np.float32), ["d"], {}, WHEN), chunk_size=5)
    neighbour = redis_score_hashes(client, "x_fulcrum", None)

    # The next publication, read after every chunk it writes: always all of v1, then all of v2.
    write_scores(cfg, src, man, USERS[1:], WHEN, seed=2, version="v2")
    seen: list[set] = []

    @contextmanager
    def watching(*args, **kwargs):
        def advance(n):
            direct._checked_at = -np.inf  # re-read the marker on every read: the strictest reader
            seen.append(set(direct.read(ask).model_version))
        yield advance

    monkeypatch.setattr(P, "progress", watching)
    out = P.run_publish(cfg, tmp_path)
    assert out["generation"] == 2 and out["keys_swept"] == len(USERS)  # generation 1 went after the switch
    assert len(seen) == -(-(len(USERS) - 1) // 40) and all(s == {"v1"} for s in seen)  # mid-publication: the old
    got = direct.read(ask)
    assert got.model_version[1:] == ["v2"] * (len(ask) - 1) and got.model_version[0] is None  # USERS[0]: dropped

    # A publication that fails part-way: readers stay on v2, whole; the next one clears its leftovers.
    write_scores(cfg, src, man, USERS, WHEN, seed=3, version="v3")
    calls = {"n": 0}
    real = O._float_values

    def flaky(deltas):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("Redis went away")
        return real(deltas)

    monkeypatch.setattr(O, "_float_values", flaky)
    with pytest.raises(ConnectionError):
        P.run_publish(cfg, tmp_path)
    marker = P.read_marker(cfg, tmp_path)
    assert marker["state"] == "publishing" and marker["served"]["generation"] == 2
    leftovers = len(redis_score_hashes(client, "fulcrum", 3))
    assert marker["target"]["generation"] == 3 and 0 < leftovers < len(USERS)
    direct._checked_at = -np.inf
    assert direct.read(ask).model_version[1:] == ["v2"] * (len(ask) - 1)
    monkeypatch.setattr(O, "_float_values", real)
    out = P.run_publish(cfg, tmp_path)
    assert out["generation"] == 3 and out["keys_swept"] == leftovers + len(USERS) - 1  # leftovers, then v2
    assert set(redis_score_hashes(client, "fulcrum").keys()) == set(redis_score_hashes(client, "fulcrum", 3))
    assert redis_score_hashes(client, "x_fulcrum", None) == neighbour

    # Back to Feast's own keys (in_place): the generations are swept, the direct reader follows.
    cfg = _cfg(src, "bulk", chunk=40, **_redis_profile("in_place"))
    out = P.run_publish(cfg, tmp_path)
    assert "generation" not in out and out["keys_swept"] == len(USERS)
    assert len(redis_score_hashes(client, "fulcrum", None)) == len(USERS)
    assert direct.read(ask).model_version == ["v3"] * len(ask)
    # ... and to versioned again: Feast's keys go once the new generation serves (a Feast reader finds none).
    out = P.run_publish(_cfg(src, "bulk", chunk=40, **_redis_profile()), tmp_path)
    assert out["generation"] == 1 and out["keys_swept"] == len(USERS)
    assert redis_score_hashes(client, "fulcrum", None) == {} and direct.read(ask).model_version == ["v3"] * len(ask)
    assert redis_score_hashes(client, "x_fulcrum", None) == neighbour


@pytest.mark.integration
def test_a_reader_whose_cached_generation_was_swept_asks_the_marker_again(dataset, tmp_path, redis_db, monkeypatch):
    _, src, man = dataset
    monkeypatch.setattr(O, "GRACE_S", 0.0)  # the old generation goes at once, inside the reader's refresh interval
    cfg = _cfg(src, "bulk", chunk=100, **_redis_profile())
    write_scores(cfg, src, man, USERS, WHEN, seed=1, version="v1")
    P.run_publish(cfg, tmp_path)
    direct = _direct(cfg, tmp_path, man)
    ask = [int(u) for u in USERS[:4]]
    assert direct.read(ask).model_version == ["v1"] * 4  # the marker read now: generation 1 cached
    direct._checked_at = np.inf  # and never due again: only a read that finds nobody asks the marker
    write_scores(cfg, src, man, USERS, WHEN, seed=2, version="v2")
    assert P.run_publish(cfg, tmp_path)["keys_swept"] == len(USERS)
    assert direct.read(ask).model_version == ["v2"] * 4  # nobody under generation 1 any more: re-read, retried


def test_feasts_reader_is_refused_with_a_versioned_redis_publication():
    prod = _redis_profile()
    with pytest.raises(ValueError, match="redis_publication: in_place"):
        FulcrumConfig.model_validate({"feast": prod, "serve": {"score_reader": "feast"}})
    prod["production"]["redis_publication"] = "in_place"
    assert FulcrumConfig.model_validate({"feast": prod, "serve": {"score_reader": "feast"}})


# --------------------------------------------------------------------------- the Feast contract, on live code


def test_a_changed_feast_layout_makes_publish_fall_back_to_feasts_writer(dataset, tmp_path, monkeypatch, caplog):
    """Simulates a Feast upgrade that changes the entity-key bytes: the bulk writer must not write garbage."""
    _, src, man = dataset
    snap = write_scores(_cfg(src, "bulk"), src, man, USERS, WHEN).set_index(S.USER_ID)
    real = O.entity_key_prefix
    monkeypatch.setattr(O, "entity_key_prefix", lambda join_key: b"\x07" + real(join_key)[1:])
    out = P.run_publish(_cfg(src, "bulk"), tmp_path)
    assert out["writer"] == "feast" and out["contract"].startswith("FAILED: stored rows"), out
    assert "Feast contract check FAILED" in caplog.text
    monkeypatch.undo()
    name = fs.delta_feature("t1", "video_views")
    got = _online(_cfg(src, "bulk"), tmp_path, USERS[:5])
    assert np.allclose(got[name], snap.loc[USERS[:5], name].to_numpy(), atol=1e-7)
    assert P.run_publish(_cfg(src, "bulk"), tmp_path)["contract"] == "ok"  # the real layout: bulk again


def test_a_direct_reader_that_misreads_falls_back_to_feasts_reader(dataset, tmp_path, monkeypatch, caplog):
    import serving.scores as SC

    _, src, man = dataset
    cfg = _cfg(src, "bulk")
    write_scores(cfg, src, man, USERS, WHEN)
    P.run_publish(cfg, tmp_path)
    online = fs.feature_store_settings(cfg, tmp_path)["online_store"]
    spec = {"join_key": S.USER_ID, "treatments": man.treatments, "responses": man.responses,
            "project": cfg.feast.project}
    repo = fs.repo_dir(cfg, tmp_path)
    assert isinstance(SC.open_scores(repo, online, spec), SC.SqliteScores)
    real = SC.decode_value
    monkeypatch.setattr(SC, "decode_value", lambda raw: (lambda v: v * 2 if isinstance(v, float) else v)(real(raw)))
    assert isinstance(SC.open_scores(repo, online, spec), SC.FeastScores)
    assert "direct reader on Feast's rows: δ values differ" in caplog.text


def test_two_publishes_at_once_both_finish(dataset, tmp_path):
    """Found by probing: the second of two concurrent `fulcrum publish` crashed on the shared staging table
    in 4 of 9 trials. Now the second waits for the workspace lock (and says for whom), then publishes."""
    import subprocess
    import sys

    import yaml

    _, src, man = dataset
    write_scores(_cfg(src, "bulk"), src, man, USERS, WHEN)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"data": str(src / "data")}}))
    cmd = [str(Path(sys.executable).parent / "fulcrum"), "publish", "--params", str(params), "--root", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("waiting for the workspace lock" in o and "held by pid" in o for o in outs) == 1, outs
    cfg = FulcrumConfig.model_validate({"paths": {"data": str(src / "data")}})
    assert P.read_marker(cfg, tmp_path)["state"] == "complete"
