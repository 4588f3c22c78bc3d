"""fulcrum.remote_run's pure parts: which stages and files a stage needs, and the exchange's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulcrum.remote_run import (
    Exchange,
    StageIO,
    merged_lock,
    producers,
    safe_run_id,
    uncached_inputs,
)

STAGES = {
    "score_part@0": StageIO("score_part@0", deps=["data/rct", "data/model"], cached=["data/score_parts/part_0.parquet"]),
    "score_part@1": StageIO("score_part@1", deps=["data/rct", "data/model"], cached=["data/score_parts/part_1.parquet"]),
    "score": StageIO("score", deps=["data/score_parts"], cached=["data/scores"], uncached=["reports/score.json"]),
    "drift": StageIO("drift", deps=["data/scores"], uncached=["data/drift/gate.json", "reports/drift"]),
    "publish": StageIO("publish", deps=["data/scores", "data/drift/gate.json"], uncached=[
        "data/drift/reference_scores.parquet", "reports/publish.json"], persist=["data/drift/reference_scores.parquet"]),
    "deploy": StageIO("deploy", deps=["data/scores", "reports/publish.json"]),
}


def test_a_stage_pulls_the_producers_of_its_cached_inputs_only():
    assert producers(STAGES, "score") == ["score_part@0", "score_part@1"]  # a folder holding their outputs
    assert producers(STAGES, "drift") == ["score"]
    assert producers(STAGES, "score_part@0") == []


def test_uncached_inputs_and_the_carried_state_travel_as_files():
    assert uncached_inputs(STAGES, "publish") == ["data/drift/gate.json", "data/drift/reference_scores.parquet"]
    # drift reads the last publication's references without declaring them: every stage gets them
    assert uncached_inputs(STAGES, "drift") == ["data/drift/reference_scores.parquet"]
    assert "reports/publish.json" in uncached_inputs(STAGES, "deploy")


def test_run_ids_become_one_path_component():
    assert safe_run_id("manual__2026-11-26T10:00:00+00:00") == "manual__2026-11-26T10_00_00+00_00"
    assert "/" not in safe_run_id("a/../b")
    with pytest.raises(ValueError):
        safe_run_id("")


def test_the_exchange_moves_files_folders_and_lock_entries(tmp_path: Path):
    exchange_round_trip(str(tmp_path / "remote"), tmp_path)


def exchange_round_trip(url: str, tmp_path: Path) -> None:
    """Files, folders, JSON and lock entries through the remote at ``url`` (a directory or s3://)."""
    ex = Exchange(url, "run 1")
    src = tmp_path / "work"
    (src / "reports" / "drift").mkdir(parents=True)
    (src / "reports" / "drift" / "a.html").write_text("a")
    (src / "reports" / "drift" / "b.html").write_text("b")
    (src / "gate.json").write_text("{}")
    assert ex.put_path(src / "reports" / "drift", f"{ex.run}/files/reports/drift") == 2
    assert ex.put_path(src / "gate.json", f"{ex.run}/files/gate.json") == 1
    dest = tmp_path / "other"
    (dest / "reports" / "drift").mkdir(parents=True)
    (dest / "reports" / "drift" / "stale.html").write_text("old")
    assert ex.get_path(f"{ex.run}/files/reports/drift", dest / "reports" / "drift") == 2
    assert sorted(p.name for p in (dest / "reports" / "drift").iterdir()) == ["a.html", "b.html"]  # replaced
    assert ex.get_path(f"{ex.run}/files/missing", dest / "missing") == 0

    ex.put_json(f"{ex.run}/lock/score.json", {"cmd": "fulcrum score --combine"})
    ex.put_json(f"{ex.current}/dvc.lock", {"schema": "2.0", "stages": {"score": {"cmd": "old"}, "drift": {"cmd": "d"}}})
    lock = merged_lock(tmp_path, ex)  # the current lock with this run's entries on top
    assert lock["stages"] == {"score": {"cmd": "fulcrum score --combine"}, "drift": {"cmd": "d"}}
