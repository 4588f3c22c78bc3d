"""Feast for real: the generated feature_store.yaml, apply, point-in-time training sets, scores online.

Every store lives in a tmp root (file registry + SQLite, DuckDB offline store); the
production-profile test starts its own loopback redis-server when one is installed.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_data import N_USERS, REDIS_HOST, REDIS_PORT, REDIS_TEST_DB, feast_config, write_scores

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines import feature_store as fs
from pipelines.training_set import (
    build_training_frame,
    build_training_frame_feast,
    build_training_frame_pandas,
)

# ibis (under Feast's DuckDB store) calls a DuckDB method that DuckDB has deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:fetch_arrow_table:DeprecationWarning")


@pytest.fixture(scope="module")
def store(dataset):
    cfg, root, man = dataset
    return fs.apply(cfg, root)


# --------------------------------------------------------------------------- feature_store.yaml


def test_yaml_follows_the_profile(tmp_path):
    import yaml

    emb = feast_config()
    path = fs.write_feature_store_yaml(emb, tmp_path)
    assert path == tmp_path.resolve() / "feature_repo" / "feature_store.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["project"] == "fulcrum" and doc["entity_key_serialization_version"] == 3
    assert doc["online_store"] == {"type": "sqlite", "path": str(tmp_path.resolve() / "data/feast/online.db")}
    assert doc["registry"] == {"registry_type": "file", "path": str(tmp_path.resolve() / "data/feast/registry.db")}
    assert doc["offline_store"] == {"type": "duckdb"}
    assert (tmp_path / "data" / "feast").is_dir()

    # Unchanged settings leave the file alone (no rewrite, no mtime churn).
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    fs.write_feature_store_yaml(emb, tmp_path)
    assert path.stat().st_mtime_ns == stamp

    prod = feast_config(profile="production", production={
        "redis_connection_string": "10.1.2.3:6380,ssl=true", "redis_db": 3, "redis_key_ttl_seconds": 86400,
        "offline_store": "file",
    })
    assert fs.write_feature_store_yaml(prod, tmp_path) == path
    doc = yaml.safe_load(path.read_text())
    assert doc["online_store"] == {
        "type": "redis", "connection_string": "10.1.2.3:6380,ssl=true,db=3", "key_ttl_seconds": 86400,
    }
    assert doc["registry"]["registry_type"] == "file" and doc["offline_store"] == {"type": "file"}
    assert "profile: production" in path.read_text()

    sql = feast_config(profile="production", production={"registry_url": "sqlite:////tmp/x/registry.sqlite"})
    doc = yaml.safe_load(fs.write_feature_store_yaml(sql, tmp_path).read_text())
    assert doc["registry"] == {"registry_type": "sql", "path": "sqlite:////tmp/x/registry.sqlite"}
    assert doc["online_store"]["connection_string"] == "127.0.0.1:6379,db=0"

    doc = yaml.safe_load(fs.write_feature_store_yaml(emb, tmp_path).read_text())
    assert doc["online_store"]["type"] == "sqlite"


def test_feast_settings_are_validated():
    with pytest.raises(ValueError, match="redis_db"):
        feast_config(profile="production", production={"redis_connection_string": "h:1,db=2"})
    with pytest.raises(ValueError, match="Feast project name"):
        feast_config(project="_bad-name")
    with pytest.raises(ValueError, match="profile"):
        feast_config(profile="cloud")


# --------------------------------------------------------------------------- apply


def test_apply_registers_the_repo_and_is_idempotent(dataset, store):
    from feast import FeatureView, Field, FileSource
    from feast.types import Float32, Int64, String, UnixTimestamp

    cfg, root, man = dataset
    uf = store.get_feature_view(fs.USER_FEATURES)
    types = {f.name: f.dtype for f in uf.features}
    assert types[S.EVENT_TS] == UnixTimestamp
    assert all(types[n] == Int64 for n in man.categorical) and all(types[n] == Float32 for n in man.numeric)
    assert [e for e in uf.entities] == [fs.USER_ENTITY] and uf.ttl == timedelta(days=60)
    assert Path(uf.batch_source.path) == (root / "data" / "rct" / S.FEATURES_FILE).resolve()

    sc = store.get_feature_view(fs.UPLIFT_SCORES)
    want = [fs.delta_feature(t, r) for t in ("t1", "t2") for r in ("usage_time", "video_views")]
    assert [f.name for f in sc.features] == [*want, fs.SCORE_DATE, fs.MODEL_VERSION]
    assert {f.name: f.dtype for f in sc.features}[fs.SCORE_DATE] == String
    assert not fs.scores_path(cfg, root).exists()  # the scores view applies before any scores exist
    svc = store.get_feature_service(fs.DECISION_SERVICE)
    assert [p.name for p in svc.feature_view_projections] == [fs.UPLIFT_SCORES]

    # Something registered that the definitions no longer hold is removed, as `feast apply` does.
    old = FeatureView(
        name="old_view", entities=[store.get_entity(fs.USER_ENTITY)], ttl=timedelta(days=1),
        schema=[Field(name=S.USER_ID, dtype=Int64), Field(name="x", dtype=Float32)],
        source=FileSource(name="old_source", path=str(root / "old.parquet"), timestamp_field=S.EVENT_TS),
    )
    store.apply([old])
    assert "old_view" in {v.name for v in store.list_feature_views()}

    # Twice more: same objects, nothing stale left.
    again = fs.apply(cfg, root)
    fs.apply(cfg, root)
    assert {v.name for v in again.list_feature_views()} == {fs.USER_FEATURES, fs.UPLIFT_SCORES}
    assert {s.name for s in again.list_data_sources()} == {f"{fs.USER_FEATURES}_source", f"{fs.UPLIFT_SCORES}_source"}
    assert [s.name for s in again.list_feature_services()] == [fs.DECISION_SERVICE]
    assert again.get_feature_view(fs.USER_FEATURES) == uf
    assert again.get_feature_view(fs.UPLIFT_SCORES) == sc


# --------------------------------------------------------------------------- training set


def test_feast_training_set_has_no_future_leakage(dataset, store):
    cfg, root, man = dataset
    rct = cfg.paths.rct_dir(root)
    feat_cols = [f.name for f in man.features]
    exp = pd.read_parquet(rct / S.EXPERIMENT_FILE, columns=[S.USER_ID, S.ASSIGN_TS])

    t0 = time.perf_counter()
    raw = store.get_historical_features(
        entity_df=exp, features=[f"{fs.USER_FEATURES}:{c}" for c in feat_cols]
    ).to_df()
    seconds = time.perf_counter() - t0
    print(f"\nget_historical_features: {len(raw)} users x {len(feat_cols)} features in {seconds:.2f} s")
    assert len(raw) == N_USERS

    df = build_training_frame_feast(rct, cfg, root).set_index(S.USER_ID)
    assert len(df) == N_USERS and df.index.is_unique and df.index.is_monotonic_increasing

    # The truth, straight from the raw parquet: each user's latest snapshot at or before assignment.
    feats = pd.read_parquet(rct / S.FEATURES_FILE).merge(exp, on=S.USER_ID)
    past = feats[feats[S.EVENT_TS] <= feats[S.ASSIGN_TS]]
    expected = past.loc[past.groupby(S.USER_ID)[S.EVENT_TS].idxmax()].set_index(S.USER_ID).loc[df.index]
    assert (df[S.EVENT_TS] == expected[S.EVENT_TS]).all()
    assert (df[S.EVENT_TS] <= df[S.ASSIGN_TS]).all()
    pd.testing.assert_frame_equal(df[feat_cols], expected[feat_cols])

    # Later (post-assignment) snapshots exist, differ, and were not used.
    later = feats[feats[S.EVENT_TS] > feats[S.ASSIGN_TS]]
    first_later = later.loc[later.groupby(S.USER_ID)[S.EVENT_TS].idxmin()].set_index(S.USER_ID)
    assert len(first_later) > N_USERS // 2
    used = df.loc[first_later.index, "usage_time_7d"]
    assert (used != first_later["usage_time_7d"]).mean() > 0.5


def test_feast_frame_equals_the_pandas_as_of_join(dataset, store):
    cfg, root, man = dataset
    rct = cfg.paths.rct_dir(root)
    want = build_training_frame_pandas(rct, man)
    got = build_training_frame_feast(rct, cfg, root, man)
    pd.testing.assert_frame_equal(got, want)  # same columns, dtypes, order and values
    assert list(got.columns) == [
        S.USER_ID, S.ASSIGN_TS, S.ARM, S.ARM_INDEX, *man.responses, S.EVENT_TS, *[f.name for f in man.features]
    ]
    # The switch: a configuration means Feast; none means pandas (existing callers).
    pd.testing.assert_frame_equal(build_training_frame(rct, cfg=cfg, root=root), want)
    pd.testing.assert_frame_equal(build_training_frame(rct), want)
    with pytest.raises(ValueError, match="needs the configuration"):
        build_training_frame(rct, source="feast")
    with pytest.raises(ValueError, match="configured rct directory"):
        build_training_frame_feast(root / "elsewhere", cfg, root, man)


def test_assignment_exactly_at_a_snapshot_uses_it_and_a_microsecond_earlier_does_not(dataset, tmp_path):
    cfg, src_root, man = dataset
    src = cfg.paths.rct_dir(src_root)
    rct = cfg.paths.rct_dir(tmp_path)
    rct.mkdir(parents=True)
    for name in (S.FEATURES_FILE, S.MANIFEST_FILE):
        shutil.copy(src / name, rct / name)
    exp = pd.read_parquet(src / S.EXPERIMENT_FILE).head(200).copy()
    snap = pd.read_parquet(rct / S.FEATURES_FILE, columns=[S.EVENT_TS])[S.EVENT_TS].drop_duplicates().sort_values()
    at = snap.iloc[1]  # a snapshot with an earlier one before it
    exp[S.ASSIGN_TS] = at
    exp.loc[exp.index[1::2], S.ASSIGN_TS] = at - pd.Timedelta(microseconds=1)
    exp.to_parquet(rct / S.EXPERIMENT_FILE)

    df = build_training_frame_feast(rct, cfg, tmp_path)
    on_time = df[S.ASSIGN_TS] == at
    assert on_time.sum() == 100
    assert (df.loc[on_time, S.EVENT_TS] == at).all()
    assert (df.loc[~on_time, S.EVENT_TS] == snap.iloc[0]).all()
    pd.testing.assert_frame_equal(df, build_training_frame_pandas(rct))


# --------------------------------------------------------------------------- scores online


def test_scores_reach_the_decision_service_online(dataset, store):
    cfg, root, man = dataset
    users = np.arange(1, 51)
    when = datetime(2026, 11, 5, 2, 0, tzinfo=UTC)
    scores = write_scores(cfg, root, man, users, when)
    store.materialize(when - timedelta(days=1), when + timedelta(hours=1), [fs.UPLIFT_SCORES])
    out = store.get_online_features(
        features=store.get_feature_service(fs.DECISION_SERVICE), entity_rows=[{S.USER_ID: 7}, {S.USER_ID: 9999}],
    ).to_dict()
    name = fs.delta_feature("t2", "video_views")
    assert out[name][0] == pytest.approx(float(scores.loc[6, name]))
    assert out[name][1] is None  # no score for an unknown user
    assert out[fs.MODEL_VERSION] == ["v-test", None] and out[fs.SCORE_DATE][0] == "2026-11-05"


@pytest.mark.integration
def test_production_profile_with_redis_and_a_sql_registry(dataset, tmp_path, redis_db):
    client = redis_db
    _, src_root, man = dataset
    cfg = FulcrumConfig.model_validate({
        "paths": {"data": str(src_root / "data")},
        "feast": {
            "profile": "production",
            "production": {
                "redis_connection_string": f"{REDIS_HOST}:{REDIS_PORT}", "redis_db": REDIS_TEST_DB,
                "registry_url": f"sqlite:///{tmp_path / 'registry.sqlite'}",
            },
        },
    })
    store = fs.apply(cfg, tmp_path)
    fs.apply(cfg, tmp_path)
    assert store.config.online_store.type == "redis"
    assert {v.name for v in fs.get_store(cfg, tmp_path).list_feature_views()} == {
        fs.USER_FEATURES, fs.UPLIFT_SCORES,
    }
    when = datetime(2026, 11, 6, 3, 0, tzinfo=UTC)
    scores = write_scores(cfg, src_root, man, np.arange(1, 21), when)
    store.materialize(when - timedelta(days=1), when + timedelta(hours=1), [fs.UPLIFT_SCORES])
    assert client.dbsize() == 20  # one hash per user, in our own database
    out = store.get_online_features(
        features=store.get_feature_service(fs.DECISION_SERVICE), entity_rows=[{S.USER_ID: 3}],
    ).to_dict()
    name = fs.delta_feature("t1", "usage_time")
    assert out[name][0] == pytest.approx(float(scores.loc[2, name]))
