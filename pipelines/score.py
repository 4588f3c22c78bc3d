"""Stage ``score``: δ_r^k for every user from their latest features, as a dated snapshot.

DuckDB picks each user's latest snapshot at or before the score time and streams the
result in record batches; each batch is encoded, scored and appended to a parquet
file, so memory stays flat as users grow. The dated file
``<data>/scores/scores_<date>.parquet`` is written first; only when it is complete is
it copied over ``scores.parquet`` (the offline source of Feast's ``uplift_scores``
view), so a failed run leaves the previous scores in place.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from fulcrum.progress import progress
from pipelines.feature_store import (
    cpm_features,
    float_features,
    scores_path,
    scores_schema,
)
from pipelines.train import CHECKPOINT

log = logging.getLogger("fulcrum")


def score_date(cfg: FulcrumConfig, manifest: S.Manifest):
    """The configured date, else the day after the last snapshot (scores serve that day)."""
    if cfg.score.date is not None:
        return cfg.score.date
    return datetime.fromisoformat(manifest.last_snapshot).date() + timedelta(days=1)


def latest_features(features_file: Path, columns: list[str], as_of: datetime, chunk_size: int, memory_limit: str):
    """(record batch reader, number of users): each user's latest snapshot with ts <= as_of."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    src = f"read_parquet('{features_file.as_posix()}')"
    cols = ", ".join(f'"{c}"' for c in [S.USER_ID, *columns])
    where = f"{S.EVENT_TS} <= TIMESTAMPTZ '{as_of.isoformat()}'"
    n_users = con.execute(f"SELECT count(DISTINCT {S.USER_ID}) FROM {src} WHERE {where}").fetchone()[0]
    query = (
        f"SELECT {cols} FROM {src} WHERE {where} "
        f"QUALIFY row_number() OVER (PARTITION BY {S.USER_ID} ORDER BY {S.EVENT_TS} DESC) = 1 "
        f"ORDER BY {S.USER_ID}"
    )
    return con.execute(query).to_arrow_reader(chunk_size), int(n_users), con


def check_fits(ck, man: S.Manifest) -> None:
    """ValueError unless the checkpoint was trained for the data's arms and responses."""
    if ck.meta["arms"] != man.arms or ck.meta["responses"] != man.responses:
        raise StageError(f"{ck.meta.get('model', 'model')} {ck.version} was trained for arms {ck.meta['arms']} / "
                         f"responses {ck.meta['responses']}, data has {man.arms} / {man.responses}")


def run_score(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    import torch

    from models.checkpoint import load_checkpoint
    from models.train import pick_device, predict_mu, predict_uplift

    t0 = time.perf_counter()
    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    device = pick_device(cfg.train.device)
    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT, device)
    check_fits(ck, man)
    cpm = None
    if cfg.cdum_on:  # CDUM: CPM's ŷ per arm and response, in the same rows
        cpm_file = cfg.paths.cpm_dir(root) / CHECKPOINT
        if not cpm_file.exists():
            raise FileNotFoundError(f"{cpm_file} not found: families has cdum, run train_cpm first (fulcrum train-cpm)")
        cpm = load_checkpoint(cpm_file, device)
        check_fits(cpm, man)
    day = score_date(cfg, man)
    as_of = datetime.combine(day, datetime.min.time(), tzinfo=UTC)  # scores use data before the day
    names = float_features(man, cfg.cdum_on)
    schema = scores_schema(man, cfg.cdum_on)
    fields = sorted(set(ck.encoder.fields) | set(cpm.encoder.fields if cpm else []))
    out_dir = cfg.paths.scores_dir(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    dated = out_dir / f"scores_{day.isoformat()}.parquet"
    tmp = dated.with_suffix(".parquet.tmp")
    reader, n_users, con = latest_features(rct / S.FEATURES_FILE, fields, as_of,
                                           cfg.score.chunk_size, cfg.score.duckdb_memory_limit)
    ts = pa.array(np.full(1, int(as_of.timestamp() * 1e6), dtype=np.int64)).cast(pa.timestamp("us", tz="UTC"))
    sums = np.zeros(len(names))
    done = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer, progress("scoring users", n_users, "users") as advance:
            for batch in reader:
                df = batch.to_pandas()
                x = torch.from_numpy(ck.encoder.transform(df)).to(device)
                delta = predict_uplift(ck.net, x, ck.target).reshape(len(df), -1)  # (n, K*R), treatment-major
                n = len(df)
                cols = [pa.array(df[S.USER_ID].to_numpy(np.int64)), pa.repeat(ts[0], n)]
                if cpm is not None:  # (n, A*R), arm-major: control first, as mu_features lists them
                    mu = predict_mu(cpm.net, torch.from_numpy(cpm.encoder.transform(df)).to(device),
                                    cpm.target).reshape(n, -1)
                    delta = np.concatenate([delta, mu], axis=1)
                cols += [pa.array(delta[:, j].astype(np.float32)) for j in range(delta.shape[1])]
                cols += [pa.repeat(pa.scalar(day.isoformat()), n), pa.repeat(pa.scalar(ck.version), n)]
                if cpm is not None:
                    cols.append(pa.repeat(pa.scalar(cpm.version), n))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema))
                sums += delta.sum(0)
                done += n
                advance(n)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.replace(tmp, dated)
    # Swap the Feast offline source only once the dated snapshot is complete.
    current = scores_path(cfg, root)
    staging = current.with_suffix(".parquet.tmp")
    shutil.copyfile(dated, staging)
    os.replace(staging, current)
    seconds = time.perf_counter() - t0
    summary = {
        "score_date": day.isoformat(),
        "model_version": ck.version,
        **({"cpm_version": cpm.version, "cpm_outputs": cpm_features(man, True)} if cpm is not None else {}),
        "n_users": done,
        "seconds": round(seconds, 2),
        "users_per_s": round(done / max(seconds, 1e-9)),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "mean_delta": {name: float(v / max(done, 1)) for name, v in zip(names, sums, strict=True)},
        "file": str(dated),
    }
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "score.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("score: %s users for %s with model %s in %.1f s (%s users/s)", f"{done:,}", day, ck.version,
             seconds, f"{summary['users_per_s']:,}")
    return summary
