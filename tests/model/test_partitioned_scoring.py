"""Partitioned scoring: N parts, combined, are the unpartitioned stage bit for bit, and publish the same.

A tiny trained workspace (HUM and CPM, so δ and CDUM's ŷ columns are both covered) is built
once with the stage functions, as in test_stages.py.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from fulcrum.partition import partition_of

SETTINGS = {
    "paths": {"data": "data", "reports": "reports"},  # relative to the workspace root
    "families": ["hmum", "cdum"],
    "source": {"n_users": 6000, "feature_days": 2, "experiment_days": 2},
    "train": {"epochs": 1, "min_epochs": 1, "batch_size": 1024, "expert_hidden": [16, 8], "emb_dim": 8},
    "evaluate": {"protocol": "holdout"},
}


def _cfg(partitions: int = 1, chunk_size: int = 100_000, **more) -> FulcrumConfig:
    score = {"partitions": list(range(partitions)), "chunk_size": chunk_size, **more.pop("score", {})}
    return FulcrumConfig.model_validate({**SETTINGS, "score": score, **more})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from pipelines.collect import run_collect
    from pipelines.train import run_train
    from pipelines.train_cpm import run_train_cpm
    from pipelines.training_set import run_training_set

    root = tmp_path_factory.mktemp("partitioned")
    cfg = _cfg()
    for stage in (run_collect, run_training_set, run_train, run_train_cpm):
        stage(cfg, root)
    return root


def _scores(root: Path) -> tuple[object, bytes]:
    path = root / "data" / "scores" / "scores.parquet"
    return pq.read_table(path), path.read_bytes()


def _assert_bit_for_bit(got, want) -> None:
    assert got.schema.equals(want.schema)
    assert np.array_equal(got.column(S.USER_ID).to_numpy(), want.column(S.USER_ID).to_numpy())  # same order
    for name in want.column_names:
        a, b = got.column(name).to_numpy(zero_copy_only=False), want.column(name).to_numpy(zero_copy_only=False)
        if a.dtype == np.float32:
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name  # the bits, not a tolerance
        else:
            assert np.array_equal(a, b), name


def test_partitioned_scores_equal_the_unpartitioned_stage_bit_for_bit(workspace):
    from pipelines.feature_store import scores_schema
    from pipelines.score import part_path, run_score

    single = run_score(_cfg(1), workspace)
    want, want_bytes = _scores(workspace)
    man = S.Manifest.read(workspace / "data" / "rct")
    assert want.num_rows == man.n_users and single["partitions"] == 1
    assert want.schema.equals(scores_schema(man, cdum=True), check_metadata=False)

    out = run_score(_cfg(3), workspace)
    got, got_bytes = _scores(workspace)
    _assert_bit_for_bit(got, want)
    assert got_bytes == want_bytes  # the same file: the drift gate's fingerprint does not see N either
    dated = workspace / "data" / "scores" / f"scores_{out['score_date']}.parquet"
    assert dated.read_bytes() == got_bytes
    assert out["partitions"] == 3 and out["n_users"] == man.n_users
    assert out["mean_delta"] == single["mean_delta"] and out["model_version"] == single["model_version"]
    assert [p["n_users"] for p in out["parts"]] == [pq.read_metadata(part_path(_cfg(3), workspace, i)).num_rows
                                                  for i in range(3)]

    # Each user is in exactly one part, the one the hash names, and every part has users.
    cfg = _cfg(3)
    ids = [pq.read_table(part_path(cfg, workspace, i), columns=[S.USER_ID]).column(0).to_numpy() for i in range(3)]
    for i, part in enumerate(ids):
        assert len(part) > 0 and (partition_of(part, 3) == i).all() and (np.diff(part) > 0).all()
    every = np.concatenate(ids)
    assert len(every) == len(np.unique(every)) == want.num_rows
    assert np.array_equal(np.sort(every), want.column(S.USER_ID).to_numpy())

    # Other part counts and chunk sizes (batches of other shapes) give the same table.
    run_score(_cfg(5, chunk_size=700), workspace)
    _assert_bit_for_bit(_scores(workspace)[0], want)


def test_the_combine_refuses_a_missing_stale_or_foreign_part_and_keeps_the_scores(workspace):
    from pipelines.score import part_path, run_combine, run_score, run_score_part

    cfg = _cfg(3)
    run_score(cfg, workspace)
    _, before = _scores(workspace)
    parts = [part_path(cfg, workspace, i) for i in range(3)]
    saved = [p.read_bytes() for p in parts]

    def refused(match: str) -> None:
        with pytest.raises(StageError, match=match):
            run_combine(cfg, workspace)
        assert _scores(workspace)[1] == before  # the previous complete snapshot stays
        for p, b in zip(parts, saved, strict=True):
            p.write_bytes(b)

    parts[1].unlink()
    refused(r"score part 1 of 3 is missing .*score_part@1")
    run_score_part(_cfg(3, score={"date": "2031-01-02"}), workspace, 2)  # a part left from another day
    refused(r"parts of different runs .*part 2: 2031-01-02")
    run_score_part(_cfg(2), workspace, 0)  # a part of a run with two partitions
    refused(r"part 0: the file is part 0 of 2, not 0 of 3")
    parts[0].write_bytes(saved[1])  # part 1's file in part 0's place
    refused(r"part 0: the file is part 1 of 3")
    parts[2].write_bytes(saved[2][: len(saved[2]) // 2])  # truncated
    refused(r"score part 2 .* is not a readable parquet file")
    with pytest.raises(StageError, match=r"no score partition 3: score.partitions is \[0, 1, 2\]"):
        run_score_part(cfg, workspace, 3)
    assert run_combine(cfg, workspace)["n_users"] > 0  # the restored parts combine


def test_the_cli_runs_one_part_or_the_combine(workspace):
    from typer.testing import CliRunner

    from fulcrum.cli import app
    from pipelines.score import part_path

    cfg = _cfg(2)
    params = workspace / "params_parts.yaml"
    params.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    common = ["-p", str(params), "--root", str(workspace)]
    runner = CliRunner()
    for i in range(2):
        part_path(cfg, workspace, i).unlink(missing_ok=True)
    out = runner.invoke(app, ["score", "--part", "0", *common])
    assert out.exit_code == 0 and "scored part 0 of 2" in out.output, out.output
    out = runner.invoke(app, ["score", "--combine", *common])
    assert out.exit_code == 2 and "score part 1 of 2 is missing" in out.output, out.output
    assert runner.invoke(app, ["score", "--part", "1", *common]).exit_code == 0
    out = runner.invoke(app, ["score", "--combine", *common])
    assert out.exit_code == 0 and "(2 parts," in out.output, out.output
    out = runner.invoke(app, ["score", "--part", "2", *common])
    assert out.exit_code == 2 and "no score partition 2" in out.output
    assert runner.invoke(app, ["score", "--part", "0", "--combine", *common]).exit_code == 2


def _sqlite_rows(cfg: FulcrumConfig, root: Path) -> list[tuple]:
    from fulcrum.online_store import sqlite_table

    con = sqlite3.connect(root / cfg.feast.embedded.online_path)
    try:  # created_ts is when the rows were written: everything else must match
        return con.execute(f"SELECT entity_key, feature_name, value, value_text, event_ts "
                           f"FROM {sqlite_table(cfg.feast.project)} ORDER BY entity_key, feature_name").fetchall()
    finally:
        con.close()


def _served(marker: dict) -> dict:
    return {k: v for k, v in marker["served"].items() if k not in ("published_at", "generation")}


def test_publishing_partitioned_scores_fills_sqlite_like_the_single_stage(workspace):
    from pipelines.feature_store import float_features, version_features
    from pipelines.publish import read_marker, run_publish
    from pipelines.score import run_score

    one, three = _cfg(1), _cfg(3)
    run_score(one, workspace)
    run_publish(one, workspace)
    want, served = _sqlite_rows(one, workspace), _served(read_marker(one, workspace))
    man = S.Manifest.read(workspace / "data" / "rct")
    assert len(want) == man.n_users * len([*float_features(man, True), *version_features(True)])  # δ, ŷ, versions
    run_score(three, workspace)
    run_publish(three, workspace)
    assert _sqlite_rows(three, workspace) == want
    assert _served(read_marker(three, workspace)) == served


def test_publishing_partitioned_scores_fills_redis_like_the_single_stage(workspace):
    import redis

    from fulcrum.online_store import redis_marker_key
    from pipelines.publish import read_marker, run_publish
    from pipelines.score import run_score
    from tests.data.helpers_data import redis_score_hashes

    client = redis.Redis(host="127.0.0.1", port=6379, db=11, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as e:
        pytest.skip(f"no Redis server answers on 127.0.0.1:6379: {e}")
    project = f"parts_{uuid.uuid4().hex[:10]}"  # our own keys: they end in the project's name
    feast = {"project": project, "profile": "production",
             "production": {"redis_connection_string": "127.0.0.1:6379", "redis_db": 11}}

    def dump() -> dict:  # the served generation's hashes by entity key
        return redis_score_hashes(client, project)

    try:
        run_score(_cfg(1), workspace)
        run_publish(_cfg(1, feast=feast), workspace)
        want, served = dump(), _served(read_marker(_cfg(1, feast=feast), workspace))
        assert len(want) == S.Manifest.read(workspace / "data" / "rct").n_users
        run_score(_cfg(3), workspace)
        run_publish(_cfg(3, feast=feast), workspace)
        assert dump() == want  # hash for hash, byte for byte (a new generation: the old one is swept)
        assert len(list(client.scan_iter(match=b"*" + project.encode() + b".g*", count=10_000))) == len(want)
        assert _served(read_marker(_cfg(3, feast=feast), workspace)) == served
    finally:
        for key in [*client.scan_iter(match=b"*" + project.encode() + b"*", count=10_000), redis_marker_key(project)]:
            client.delete(key)
        client.close()


def test_score_part_declares_the_code_it_runs():
    """dvc.yaml's foreach stage lists its deps under ``do``: the closure check sees only ``score``."""
    from tests.orchestration.test_stage_deps import ROOT, STAGES, _closure, _has_code

    deps = STAGES["score_part"]["do"]["deps"]
    needed = {p.relative_to(ROOT).as_posix() for p in _closure("pipelines.score") if _has_code(p)}
    missing = sorted(p for p in needed if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage score_part misses deps: {missing}"
    assert STAGES["score_part"]["foreach"] == "${score.partitions}"
    assert "data/score_parts" in STAGES["score"]["deps"]
