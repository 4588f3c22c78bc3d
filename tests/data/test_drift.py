"""The drift stage: Evidently checks on small simulated data, the gate file and what publish reads from it."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers_data import N_USERS, write_scores

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines import drift as D
from pipelines.feature_store import delta_features, scores_path
from pipelines.training_set import build_training_frame_pandas, frame_path


def config(**drift) -> FulcrumConfig:
    return FulcrumConfig.model_validate({"paths": {"data": "data", "reports": "reports"}, "drift": drift})


@pytest.fixture(scope="module")
def base(dataset) -> tuple[Path, S.Manifest]:
    """The shared simulated RCT root, plus its training frame and a score snapshot (random δ), built once."""
    _, root, man = dataset
    cfg = config()
    rct = cfg.paths.rct_dir(root)
    path = frame_path(cfg, root)
    path.parent.mkdir(parents=True)
    build_training_frame_pandas(rct, man).to_parquet(path, index=False)
    users = pq.read_table(rct / S.EXPERIMENT_FILE, columns=[S.USER_ID])[S.USER_ID].to_numpy()
    day = datetime.fromisoformat(man.last_snapshot).date() + timedelta(days=1)
    write_scores(cfg, root, man, users, datetime.combine(day, datetime.min.time(), tzinfo=UTC))
    return root, man


@pytest.fixture()
def root(base, tmp_path) -> Path:
    """A private copy of the base root: each test may plant drift in it."""
    shutil.copytree(base[0] / "data", tmp_path / "data")
    return tmp_path


@pytest.fixture(scope="module")
def clean_run(base, tmp_path_factory) -> tuple[Path, dict]:
    """run_drift once on undrifted data (shared by the tests that only read its outputs)."""
    root = tmp_path_factory.mktemp("drift_clean")
    shutil.copytree(base[0] / "data", root / "data")
    return root, D.run_drift(config(), root)


def plant_feature_drift(root: Path, man: S.Manifest) -> None:
    """Shift every numeric feature of today's snapshot (the last one) by 5 std."""
    path = config().paths.rct_dir(root) / S.FEATURES_FILE
    df = pq.read_table(path).to_pandas()
    today = df[S.EVENT_TS] == df[S.EVENT_TS].max()
    for col in man.numeric:
        df.loc[today, col] = df.loc[today, col] + 5 * df[col].std()
    df.to_parquet(path, index=False)


def scale_scores(root: Path, man: S.Manifest) -> None:
    """Multiply today's δ by 5 and add an offset."""
    path = scores_path(config(), root)
    df = pq.read_table(path).to_pandas()
    for col in delta_features(man):
        df[col] = (df[col] * 5 + 3).astype(np.float32)
    df.to_parquet(path, index=False)


def scored(root: Path) -> tuple[str, str, str]:
    """(score_date, model_version, fingerprint) of the score snapshot, as publish passes them to gate_allows."""
    path = scores_path(config(), root)
    table = pq.read_table(path, columns=["score_date", "model_version"])
    return table["score_date"][0].as_py(), table["model_version"][0].as_py(), D.snapshot_fingerprint(path)


# --------------------------------------------------------------------------- pure helpers


def test_sample_is_seeded_capped_and_ordered():
    df = pd.DataFrame({"x": np.arange(1000)})
    a, b = D.sample(df, 100, seed=3), D.sample(df, 100, seed=3)
    assert len(a) == 100 and a.equals(b)
    assert a["x"].is_monotonic_increasing and a["x"].is_unique
    assert not a.equals(D.sample(df, 100, seed=4))
    assert D.sample(df, 5000, seed=3).equals(df)  # fewer rows than the cap: all of them


def test_gate_blocks_on_any_failed_check_unless_forced():
    ok = D.CheckResult(status="checked", threshold=0.3, passed=True, share=0.1)
    bad = D.CheckResult(status="checked", threshold=0.3, passed=False, share=0.6)
    skipped = D.CheckResult.skipped(0.5)
    assert D.gate({"features": ok, "scores": skipped}, force=False) == (True, [])
    assert D.gate({"features": bad, "scores": skipped}, force=False) == (False, ["features"])
    assert D.gate({"features": bad, "scores": skipped}, force=True) == (True, ["features"])
    sentence = D.describe({"features": bad, "scores": skipped}, allowed=False, forced=False)
    assert "features drifted (share 0.60 > 0.30)" in sentence and "BLOCKED" in sentence


def test_parse_snapshot_reads_counts_scores_and_failed_columns():
    report = {
        "metrics": [
            {"id": "c", "config": {"type": "evidently:metric_v2:DriftedColumnsCount"},
             "value": {"count": 1.0, "share": 0.5}},
            {"id": "a", "config": {"type": "evidently:metric_v2:ValueDrift", "column": "x", "method": "m"},
             "value": 0.4},
            {"id": "b", "config": {"type": "evidently:metric_v2:ValueDrift", "column": "y", "method": "m"},
             "value": 0.01},
        ],
        "tests": [
            {"metric_config": {"metric_id": "c"}, "status": "FAIL"},
            {"metric_config": {"metric_id": "a"}, "status": "FAIL"},
            {"metric_config": {"metric_id": "b"}, "status": "SUCCESS"},
        ],
    }
    got = D.parse_snapshot(report)
    assert got["count"] == 1 and got["share"] == 0.5
    assert got["drifted"] == ["x"] and got["scores"] == {"x": 0.4, "y": 0.01}
    assert got["tests"] == {"FAIL": 2, "SUCCESS": 1}


# --------------------------------------------------------------------------- the stage


def test_no_drift_passes_and_allows(clean_run, base):
    root, summary = clean_run
    man = base[1]
    feats = summary["features"]
    assert feats["status"] == "checked" and feats["passed"]
    assert feats["n_columns"] == len(man.features) and feats["share"] <= feats["threshold"] == 0.3
    assert set(feats["column_scores"]) == {f.name for f in man.features}
    assert feats["tests"] and feats["rows_current"] == N_USERS
    for name in ("scores", "responses"):  # no publication yet: nothing to compare with
        assert summary[name]["status"] == "no_reference" and summary[name]["passed"]
    assert summary["publish_allowed"] and not summary["forced"] and summary["blocked_by"] == []
    assert (root / "reports" / "drift" / "features.html").stat().st_size > 0
    assert json.loads((root / "reports" / "drift.json").read_text())["publish_allowed"] is True
    gate = D.read_gate(config(), root)
    assert gate["publish_allowed"] and gate["score_date"] == summary["score_date"]
    assert D.gate_allows(config(), root, *scored(root)) == (True, "drift checks passed")


def test_stale_or_missing_gate(clean_run, tmp_path):
    root, summary = clean_run
    day, model, snap = scored(root)
    ok, reason = D.gate_allows(config(), root, "2001-01-01", summary["model_version"], snap)
    assert not ok and "run the drift stage" in reason and "2001-01-01" in reason
    ok, reason = D.gate_allows(config(), root, summary["score_date"], "another-model", snap)
    assert not ok and "run the drift stage" in reason
    # Same date, same model, other scores (re-scored after a fix): the old gate does not cover them.
    ok, reason = D.gate_allows(config(), root, day, model, "0123456789abcdef")
    assert not ok and "rewritten" in reason
    assert D.read_gate(config(), tmp_path) is None
    assert D.gate_allows(config(), tmp_path, "2001-01-01", "v", snap) == (True, "no drift check ran")


def test_feature_drift_blocks_then_force_publishes(root, base, caplog):
    plant_feature_drift(root, base[1])
    with caplog.at_level("INFO", logger="fulcrum"):
        summary = D.run_drift(config(), root)
    feats = summary["features"]
    assert not feats["passed"] and feats["share"] > 0.3 and set(base[1].numeric) <= set(feats["drifted_columns"])
    assert not summary["publish_allowed"] and summary["blocked_by"] == ["features"]
    assert "BLOCKED" in caplog.text and "features drifted" in caplog.text
    ok, reason = D.gate_allows(config(), root, *scored(root))
    assert not ok and "features" in reason and "force_publish" in reason

    forced = D.run_drift(config(force_publish=True), root)
    assert forced["publish_allowed"] and forced["forced"] and forced["blocked_by"] == ["features"]
    ok, reason = D.gate_allows(config(), root, *scored(root))
    assert ok and "force_publish" in reason
    assert D.read_gate(config(), root)["forced"] is True


def test_references_activate_score_and_response_checks(root, base):
    cfg = config()
    D.save_reference(cfg, root)
    drift_dir = cfg.paths.drift_dir(root)
    ref = pq.read_table(drift_dir / D.REFERENCE_SCORES)
    assert ref.column_names == delta_features(base[1]) and ref.num_rows == N_USERS
    assert ref.schema.metadata[b"fulcrum.score_date"].decode() == scored(root)[0]
    assert pq.read_table(drift_dir / D.REFERENCE_RESPONSES).column_names == base[1].responses

    same = D.run_drift(cfg, root)
    for name in ("scores", "responses"):
        assert same[name]["status"] == "checked" and same[name]["passed"] and same[name]["share"] == 0
    assert same["publish_allowed"]
    assert (root / "reports" / "drift" / "scores.html").exists()

    scale_scores(root, base[1])
    drifted = D.run_drift(cfg, root)
    assert not drifted["scores"]["passed"] and drifted["scores"]["share"] == 1.0
    assert drifted["responses"]["passed"] and drifted["blocked_by"] == ["scores"]
    ok, reason = D.gate_allows(cfg, root, *scored(root))
    assert not ok and "scores" in reason


def test_samples_are_capped(root):
    cfg = config(sample_size=500)
    D.save_reference(cfg, root)
    assert pq.read_table(cfg.paths.drift_dir(root) / D.REFERENCE_SCORES).num_rows == 500
    summary = D.run_drift(cfg, root)
    for name in ("features", "scores", "responses"):
        assert summary[name]["rows_current"] == 500 and summary[name]["rows_reference"] == 500
    assert summary["sample_size"] == 500
