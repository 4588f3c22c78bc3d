"""Stage ``publish``: the latest score snapshot into Feast's online store, safely.

Every published row carries its ``score_date`` and ``model_version``, so whatever is
in the store, each user's scores say which day and model they are from. A
publication marker records what is fully served: before writing it says
``publishing`` (naming the target) while keeping the last complete publication as
``served``; only after the last row is written does ``served`` move to the new
snapshot. A failed or partial publish therefore never looks like today's.

The marker lives next to the registry (``<registry folder>/published.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.progress import progress
from pipelines.feature_store import (
    MODEL_VERSION,
    SCORE_DATE,
    UPLIFT_SCORES,
    delta_features,
    scores_path,
)

log = logging.getLogger("fulcrum")
MARKER = "published.json"


class PublishError(ValueError):
    """The score snapshot is not fit to publish; nothing was written."""


def marker_path(cfg: FulcrumConfig, root: Path) -> Path:
    prof = cfg.feast.embedded if cfg.feast.profile == "embedded" else cfg.feast.production
    registry = Path(prof.registry_path)
    return (registry if registry.is_absolute() else root / registry).parent / MARKER


def read_marker(cfg: FulcrumConfig, root: Path) -> dict:
    """The publication marker: ``{"state", "served", "target"}``; empty state if never published."""
    path = marker_path(cfg, root)
    if not path.exists():
        return {"state": "never", "served": None, "target": None}
    return json.loads(path.read_text())


def _write_marker(path: Path, marker: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, path)


def check_snapshot(table, manifest: S.Manifest) -> dict:
    """One date, one model, finite δ for every row: else PublishError naming the problem."""
    if table.num_rows == 0:
        raise PublishError("the score snapshot is empty")
    problems = []
    for col in (SCORE_DATE, MODEL_VERSION):
        values = table.column(col).unique().to_pylist()
        if len(values) != 1 or values[0] is None:
            problems.append(f"{col}: expected one value, found {values[:5]}")
    for name in delta_features(manifest):
        x = table.column(name).to_numpy(zero_copy_only=False)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            problems.append(f"{name}: {bad} rows are NaN or infinite")
    users = table.column(S.USER_ID).to_numpy()
    if len(np.unique(users)) != len(users):
        problems.append(f"{S.USER_ID}: duplicate users")
    if problems:
        raise PublishError("score snapshot refused: " + "; ".join(problems))
    return {"score_date": table.column(SCORE_DATE)[0].as_py(), "model_version": table.column(MODEL_VERSION)[0].as_py()}


def run_publish(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from pipelines.feature_store import apply

    t0 = time.perf_counter()
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    path = scores_path(cfg, root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the score stage first (fulcrum score)")
    table = pq.read_table(path)
    target = check_snapshot(table, man)
    store = apply(cfg, root, man)
    mpath = marker_path(cfg, root)
    previous = read_marker(cfg, root)
    _write_marker(mpath, {"state": "publishing", "served": previous.get("served"), "target": target})
    chunk = cfg.publish.chunk_size
    n = table.num_rows
    with progress("publishing scores", n, "users") as advance:
        for start in range(0, n, chunk):
            part = table.slice(start, chunk).to_pandas()
            store.write_to_online_store(UPLIFT_SCORES, part)
            advance(len(part))
    served = {**target, "n_users": n, "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "profile": cfg.feast.profile}
    _write_marker(mpath, {"state": "complete", "served": served, "target": None})
    seconds = time.perf_counter() - t0
    summary = {**served, "seconds": round(seconds, 2), "users_per_s": round(n / max(seconds, 1e-9))}
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "publish.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("publish: %s users for %s (model %s) to the %s online store in %.1f s",
             f"{n:,}", target["score_date"], target["model_version"], cfg.feast.profile, seconds)
    return summary
