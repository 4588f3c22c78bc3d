"""Stages ``score_part@i`` and ``score``: δ_r^k for every user from their latest features, as a dated snapshot.

Users are scored in ``N`` partitions (``score.partitions`` lists the ids 0..N−1; a user's
partition is :func:`fulcrum.partition.partition_of`, a stable hash of the id), then combined:

- ``score_part@i`` (:func:`run_score_part`): DuckDB picks the latest snapshot at or before
  the score time of each user of partition ``i`` and streams them, in user order, in record
  batches; each batch is encoded, scored and appended to ``<data>/score_parts/part_<i>.parquet``
  (written aside, then renamed), so memory stays flat as users grow. The file's footer
  holds the part's summary: which part of how many, the date, the models, the number of
  users the date has over all parts.
- ``score`` (:func:`run_combine`): refuses a missing part, a part of another run (date,
  models, N or user count differ) and a part holding another part's users; otherwise
  writes the parts, merged in user order, to ``<data>/scores/scores_<date>.parquet`` and
  only then copies that over ``scores.parquet`` (the offline source of Feast's
  ``uplift_scores`` view). A failed or missing part leaves the previous scores in place.

Why a combine rather than readers that take the parts: drift (its samples and the file
fingerprint its gate belongs to), publish (one SQLite swap, Redis per chunk), deploy,
policy and Feast's offline source keep reading one complete snapshot, and "complete" is
decided here, once. It costs one read and one write of the scores (measured: 1.9 s per
1M users with four δ columns, on 2 cores), little next to the forward pass the parts
spread out (~7 s per 1M users for HUM alone, ``models.train.PREDICT_BATCH``).

The combined table is the unpartitioned one bit for bit: the same users in id order, and
each user's δ from fixed-shape forward passes (:func:`fixed_batches`), so it does not
depend on which other users share the part or the chunk.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from fulcrum.partition import partition_of
from fulcrum.progress import progress
from pipelines.feature_store import (
    cpm_features,
    scores_path,
    scores_schema,
)
from pipelines.train import CHECKPOINT

log = logging.getLogger("fulcrum")

PARTS_DIR = "score_parts"
PART_FOOTER = b"fulcrum.score_part"  # a part file's summary (JSON) in its parquet footer


def part_path(cfg: FulcrumConfig, root: Path, part: int) -> Path:
    """``<data>/score_parts/part_<i>.parquet``: partition ``part``'s scores (the output of ``score_part@<i>``)."""
    return root / cfg.paths.data / PARTS_DIR / f"part_{part}.parquet"


def score_date(cfg: FulcrumConfig, manifest: S.Manifest):
    """The configured date, else the day after the last snapshot (scores serve that day)."""
    if cfg.score.date is not None:
        return cfg.score.date
    return datetime.fromisoformat(manifest.last_snapshot).date() + timedelta(days=1)


def latest_features(features_file: Path, columns: list[str], as_of: datetime, chunk_size: int, memory_limit: str,
                    part: int = 0, partitions: int = 1):
    """(record batch reader, users of the part, users of every part, connection).

    The reader yields each user of partition ``part`` (of ``partitions``) once, with their
    latest snapshot at or before ``as_of``, in user order.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{memory_limit}'")
        src = f"read_parquet('{features_file.as_posix()}')"
        cols = ", ".join(f'"{c}"' for c in [S.USER_ID, *columns])
        where = f"{S.EVENT_TS} <= TIMESTAMPTZ '{as_of.isoformat()}'"
        users = con.execute(f"SELECT DISTINCT {S.USER_ID} FROM {src} WHERE {where}").fetchnumpy()[S.USER_ID]
        mine = users[partition_of(users, partitions) == part]
        if partitions > 1:  # WHERE runs before the window: each part ranks only its own users' snapshots
            con.register("part_users", pa.table({S.USER_ID: mine}))
            where += f" AND {S.USER_ID} IN (SELECT {S.USER_ID} FROM part_users)"
        query = (
            f"SELECT {cols} FROM {src} WHERE {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {S.USER_ID} ORDER BY {S.EVENT_TS} DESC) = 1 "
            f"ORDER BY {S.USER_ID}"
        )
        return con.execute(query).to_arrow_reader(chunk_size), len(mine), len(users), con
    except BaseException:
        con.close()
        raise


def check_fits(ck, man: S.Manifest) -> None:
    """ValueError unless the checkpoint was trained for the data's arms and responses."""
    if ck.meta["arms"] != man.arms or ck.meta["responses"] != man.responses:
        raise StageError(f"{ck.meta.get('model', 'model')} {ck.version} was trained for arms {ck.meta['arms']} / "
                         f"responses {ck.meta['responses']}, data has {man.arms} / {man.responses}")


def fixed_batches(predict: Callable, net, x, target) -> np.ndarray:
    """``predict(net, x, target, PREDICT_BATCH)`` with every batch exactly PREDICT_BATCH rows (the last padded).

    The fused forward's float32 rounding depends on how many rows a batch has (measured: up
    to 2e-6 between sizes), while at one size a row's result depends on that row alone,
    whatever its place and neighbours. Fixed-size batches therefore make a user's δ the same
    whichever users share their chunk or partition.
    """
    import torch

    from models.train import PREDICT_BATCH

    n = len(x)
    pad = -n % PREDICT_BATCH
    if pad:  # copies of the first row, dropped from the result
        x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
    return predict(net, x, target, PREDICT_BATCH)[:n]


def _models(cfg: FulcrumConfig, root: Path, man: S.Manifest, device):
    """(HUM checkpoint, CPM checkpoint or None), both checked against the data."""
    from models.checkpoint import load_checkpoint

    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT, device)
    check_fits(ck, man)
    if not cfg.cdum_on:
        return ck, None
    cpm_file = cfg.paths.cpm_dir(root) / CHECKPOINT  # CDUM: CPM's ŷ per arm and response, in the same rows
    if not cpm_file.exists():
        raise FileNotFoundError(f"{cpm_file} not found: families has cdum, run train_cpm first (fulcrum train-cpm)")
    cpm = load_checkpoint(cpm_file, device)
    check_fits(cpm, man)
    return ck, cpm


def _score_batch(df, ck, cpm, device, schema: pa.Schema, ts: pa.Scalar, day: str) -> pa.Table:
    """One batch of users' snapshots -> their rows of the score snapshot."""
    import torch

    from models.train import predict_mu, predict_uplift

    n = len(df)
    x = torch.from_numpy(ck.encoder.transform(df)).to(device)
    delta = fixed_batches(predict_uplift, ck.net, x, ck.target).reshape(n, -1)  # (n, K*R), treatment-major
    if cpm is not None:  # (n, A*R), arm-major: control first, as mu_features lists them
        xc = torch.from_numpy(cpm.encoder.transform(df)).to(device)
        delta = np.concatenate([delta, fixed_batches(predict_mu, cpm.net, xc, cpm.target).reshape(n, -1)], axis=1)
    cols = [pa.array(df[S.USER_ID].to_numpy(np.int64)), pa.repeat(ts, n)]
    cols += [pa.array(delta[:, j].astype(np.float32)) for j in range(delta.shape[1])]
    cols += [pa.repeat(pa.scalar(day), n), pa.repeat(pa.scalar(ck.version), n)]
    if cpm is not None:
        cols.append(pa.repeat(pa.scalar(cpm.version), n))
    return pa.Table.from_arrays(cols, schema=schema)


def run_score_part(cfg: FulcrumConfig, root: Path = Path("."), part: int = 0) -> dict:
    """Score the users of partition ``part`` into :func:`part_path`; the part's summary (also in its footer)."""
    from models.train import pick_device

    n_parts = cfg.score.n_partitions
    if part not in cfg.score.partitions:
        raise StageError(f"no score partition {part}: score.partitions is {cfg.score.partitions}")
    t0 = time.perf_counter()
    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    device = pick_device(cfg.train.device)
    ck, cpm = _models(cfg, root, man, device)
    day = score_date(cfg, man)
    as_of = datetime.combine(day, datetime.min.time(), tzinfo=UTC)  # scores use data before the day
    schema = scores_schema(man, cfg.cdum_on)
    fields = sorted(set(ck.encoder.fields) | set(cpm.encoder.fields if cpm else []))
    out = part_path(cfg, root, part)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    reader, n_users, n_total, con = latest_features(rct / S.FEATURES_FILE, fields, as_of, cfg.score.chunk_size,
                                                    cfg.score.duckdb_memory_limit, part, n_parts)
    ts = pa.array([int(as_of.timestamp() * 1e6)], pa.int64()).cast(pa.timestamp("us", tz="UTC"))[0]
    done = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer, \
                progress(f"scoring part {part} of {n_parts}", n_users, "users") as advance:
            for batch in reader:
                table = _score_batch(batch.to_pandas(), ck, cpm, device, schema, ts, day.isoformat())
                writer.write_table(table)
                done += table.num_rows
                advance(table.num_rows)
            # The footer says what the part is, nothing about this run of it (no timings, no host
            # paths): the same inputs give the same bytes on any worker, so DVC's hash is the same.
            identity = {
                "part": part, "partitions": n_parts, "score_date": day.isoformat(), "model_version": ck.version,
                **({"cpm_version": cpm.version, "cpm_outputs": cpm_features(man, True)} if cpm is not None else {}),
                "n_users": done, "users_total": n_total,
            }
            writer.add_key_value_metadata({PART_FOOTER: json.dumps(identity)})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.replace(tmp, out)
    seconds = time.perf_counter() - t0
    summary = {**identity, "seconds": round(seconds, 2), "users_per_s": round(done / max(seconds, 1e-9)),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "file": str(out)}
    report = part_report_path(cfg, root, part)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("score part %d of %d: %s of %s users for %s with model %s in %.1f s", part, n_parts, f"{done:,}",
             f"{n_total:,}", day, ck.version, seconds)
    return summary


def part_report_path(cfg: FulcrumConfig, root: Path, part: int) -> Path:
    """``<reports>/score_parts/part_<i>.json``: how the run of ``score_part@<i>`` went (timings)."""
    return cfg.paths.reports_dir(root) / PARTS_DIR / f"part_{part}.json"


def part_timings(cfg: FulcrumConfig, root: Path, part: int) -> dict:
    """The part's timings from its report, when this workspace has it (a worker that did not run the
    part has only the part's file); {} otherwise."""
    try:
        return json.loads(part_report_path(cfg, root, part).read_text())
    except (OSError, ValueError):
        return {}


def read_part(cfg: FulcrumConfig, root: Path, part: int) -> tuple[pa.Table, dict]:
    """(part ``part``'s table, its footer summary); StageError naming the part if it is missing or unreadable."""
    path = part_path(cfg, root, part)
    redo = f"run `fulcrum score --part {part}` (dvc repro score_part@{part})"
    if not path.exists():
        raise StageError(f"score part {part} of {cfg.score.n_partitions} is missing ({path}): {redo}. "
                         "Nothing was combined; the previous scores stay")
    try:
        f = pq.ParquetFile(path)
        footer = (f.metadata.metadata or {}).get(PART_FOOTER)
        table = f.read()
    except (pa.ArrowException, OSError) as e:
        raise StageError(f"score part {part} ({path}) is not a readable parquet file ({type(e).__name__}): "
                         f"{redo}") from None
    if footer is None:
        raise StageError(f"{path} is not a score part (no {PART_FOOTER.decode()} footer): {redo}")
    return table, json.loads(footer)


def check_parts(parts: list[tuple[pa.Table, dict]], n_parts: int) -> None:
    """StageError unless the parts are parts 0..n−1 of one run that together hold each of its users once."""
    problems = []
    for i, (table, meta) in enumerate(parts):
        if (meta["part"], meta["partitions"]) != (i, n_parts):
            problems.append(f"part {i}: the file is part {meta['part']} of {meta['partitions']}, not {i} of {n_parts}")
        elif table.num_rows != meta["n_users"]:
            problems.append(f"part {i}: {table.num_rows} rows, its footer says {meta['n_users']}")
        elif not table.schema.equals(parts[0][0].schema, check_metadata=False):
            problems.append(f"part {i}: other columns than part 0 (families changed since one of them ran?)")
        else:
            stray = int((partition_of(table.column(S.USER_ID).to_numpy(), n_parts) != i).sum())
            if stray:
                problems.append(f"part {i}: {stray} users of other parts")
    run = ("score_date", "model_version", "cpm_version", "users_total")
    if len({tuple(m.get(k) for k in run) for _, m in parts}) > 1:
        problems.append("parts of different runs (a stale part?): " + "; ".join(
            f"part {i}: {m['score_date']}, model {m['model_version']}"
            + (f", CPM {m['cpm_version']}" if m.get("cpm_version") else "") + f", {m['users_total']} users"
            for i, (_, m) in enumerate(parts)))
    elif (held := sum(t.num_rows for t, _ in parts)) != parts[0][1]["users_total"]:
        problems.append(f"the parts hold {held} users, the score date has {parts[0][1]['users_total']}")
    if problems:
        raise StageError("score parts refused, nothing was combined and the previous scores stay: "
                         + "; ".join(problems))


def combine(parts: list[pa.Table]) -> pa.Table:
    """The parts as one table in user order: the order the unpartitioned query returns."""
    table = pa.concat_tables(parts)
    order = np.argsort(table.column(S.USER_ID).to_numpy(), kind="stable")
    return table.take(pa.array(order)).replace_schema_metadata(None)


def _write_atomically(table: pa.Table, path: Path, row_group_size: int) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=row_group_size)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def run_combine(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Check the N parts and write them as the dated snapshot, then as ``scores.parquet``; the stage's summary."""
    t0 = time.perf_counter()
    parts = [read_part(cfg, root, i) for i in cfg.score.partitions]
    check_parts(parts, cfg.score.n_partitions)
    table = combine([t for t, _ in parts])
    meta = [m for _, m in parts]
    out_dir = cfg.paths.scores_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    dated = out_dir / f"scores_{meta[0]['score_date']}.parquet"
    _write_atomically(table, dated, cfg.score.chunk_size)
    # Swap the Feast offline source only once the dated snapshot is complete.
    current = scores_path(cfg, root)
    staging = current.with_suffix(".parquet.tmp")
    shutil.copyfile(dated, staging)
    os.replace(staging, current)
    combine_s = time.perf_counter() - t0
    timings = [part_timings(cfg, root, m["part"]) for m in meta]
    seconds = sum(t.get("seconds", 0.0) for t in timings) + combine_s  # scoring work over all parts (as known)
    n = table.num_rows
    floats = [f.name for f in table.schema if f.type == pa.float32()]
    summary = {
        **{k: meta[0][k] for k in ("score_date", "model_version", "cpm_version", "cpm_outputs") if k in meta[0]},
        "n_users": n,
        "partitions": len(parts),
        "seconds": round(seconds, 2),
        "combine_seconds": round(combine_s, 2),
        "users_per_s": round(n / max(seconds, 1e-9)),
        "peak_rss_mib": max([t.get("peak_rss_mib", 0) for t in timings]
                            + [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)]),
        "mean_delta": {c: float(np.mean(table.column(c).to_numpy(), dtype=np.float64)) if n else 0.0
                       for c in floats},
        "parts": [{"part": m["part"], "n_users": m["n_users"], "seconds": t.get("seconds")} for m, t in zip(meta, timings)],
        "file": str(dated),
    }
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "score.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("score: %s users for %s with model %s from %d parts (combined in %.1f s)", f"{n:,}",
             summary["score_date"], summary["model_version"], len(parts), combine_s)
    return summary


def run_score(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """The whole stage in one process: every partition in turn, then :func:`run_combine` (``fulcrum score``)."""
    for part in cfg.score.partitions:
        run_score_part(cfg, root, part)
    return run_combine(cfg, root)


def part_stage(part: int) -> Callable[[FulcrumConfig, Path], dict]:
    """``run_score_part`` for one part as a ``(cfg, root)`` stage function (keeps its name and module)."""
    return functools.update_wrapper(functools.partial(run_score_part, part=part), run_score_part)
