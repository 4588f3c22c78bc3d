"""Stage ``publish``: the latest score snapshot into Feast's online store, safely.

Every published row carries its ``score_date`` and ``model_version``, so whatever is
in the store, each user's scores say which day and model they are from. A
publication marker, kept in the online store itself, records what is fully served:
before writing it says ``publishing`` (naming the target) while keeping the last
complete publication as ``served``; only after the last row is written does
``served`` move to the new snapshot. A failed or partial publish therefore never
looks like today's. On SQLite the bulk writer goes further: the new snapshot
replaces the old one in a single transaction together with the marker. On Redis the
default (``redis_publication: versioned``) writes a new generation of keys and moves the
marker to it when complete (readers follow the marker), then sweeps the older ones.

Writers (``publish.writer``): ``bulk`` (default; :mod:`fulcrum.online_store`,
SQLite and Redis) or ``feast`` (Feast's plain ``write_to_online_store``, kept as the
reference and for online stores the bulk writer does not know).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fulcrum import online_store as O
from fulcrum import schema as S
from fulcrum.config import FulcrumConfig, PublishConfig
from fulcrum.errors import StageError
from fulcrum.plausibility import plausibility_problems
from fulcrum.progress import progress
from pipelines.feature_store import (
    UPLIFT_SCORES,
    cpm_features,
    delta_features,
    feature_store_settings,
    float_features,
    scores_path,
    version_features,
)

log = logging.getLogger("fulcrum")


class PublishError(StageError):
    """The score snapshot is not fit to publish; nothing was written."""


def _online_store(cfg: FulcrumConfig, root: Path) -> dict:
    """The ``online_store`` section of the generated ``feature_store.yaml`` (absolute paths)."""
    return feature_store_settings(cfg, root)["online_store"]


def read_marker(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """The publication marker ``{"state", "served", "target"}`` from the online store; state ``never`` if none."""
    return O.read_marker(_online_store(cfg, root), cfg.feast.project)


def write_marker(cfg: FulcrumConfig, root: Path, marker: dict) -> None:
    O.write_marker(_online_store(cfg, root), cfg.feast.project, marker)


def snapshot_arrays(table, manifest: S.Manifest, target: dict, cdum: bool = False) -> O.Snapshot:
    """The checked parquet snapshot as the arrays the bulk writers take (CPM's ŷ beside δ with CDUM)."""
    names = float_features(manifest, cdum)
    deltas = np.column_stack([table.column(n).to_numpy().astype(np.float32) for n in names])
    ts = table.column(S.EVENT_TS)[0].as_py()
    return O.Snapshot(user_ids=table.column(S.USER_ID).to_numpy().astype(np.int64), deltas=deltas,
                      delta_names=names, constants={n: target[n] for n in version_features(cdum)}, event_ts=ts)


def read_snapshot(path: Path):
    """The score snapshot as a pyarrow table; PublishError (one line) if the file is not readable parquet."""
    import pyarrow as pa

    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the score stage first (fulcrum score)")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise PublishError(f"{path} is not a readable parquet file (truncated or corrupted?): {first}. "
                           "Nothing was published; re-run the score stage (dvc repro score)") from None


def check_snapshot(table, manifest: S.Manifest, publish: PublishConfig | None = None,
                   reference: dict[str, np.ndarray] | None = None, cdum: bool = False) -> dict:
    """One date, one model, finite and plausible δ for every row: else PublishError naming the problem.

    ``reference``: the last publication's δ per column (a sample), for the outlier-share check.
    ``cdum``: the snapshot must also carry CPM's outcomes, finite and ≥ 0 (they are expected
    outcomes of non-negative responses), and one CPM version.
    """
    publish = publish or PublishConfig()
    if table.num_rows == 0:
        raise PublishError("the score snapshot is empty")
    missing = [c for c in (*float_features(manifest, cdum), *version_features(cdum)) if c not in table.column_names]
    if missing:
        raise PublishError(f"score snapshot refused: no column {missing[:5]} (families changed since the score "
                           "stage ran? re-run it)")
    problems = []
    for col in version_features(cdum):
        values = table.column(col).unique().to_pylist()
        if len(values) != 1 or values[0] is None:
            problems.append(f"{col}: expected one value, found {values[:5]}")
    for name in cpm_features(manifest, cdum):
        x = table.column(name).to_numpy(zero_copy_only=False)
        bad = int((~(np.isfinite(x) & (x >= 0))).sum())
        if bad:
            problems.append(f"{name}: {bad} rows are NaN, infinite or negative (CPM's expected outcomes)")
    finite = {}
    for name in delta_features(manifest):
        x = table.column(name).to_numpy(zero_copy_only=False)
        bad = int((~np.isfinite(x)).sum())
        if bad:
            problems.append(f"{name}: {bad} rows are NaN or infinite")
        else:
            finite[name] = x
    problems += plausibility_problems(finite, publish.max_abs_delta, reference, publish.max_outlier_share,
                                      publish.outlier_margin_iqr)
    users = table.column(S.USER_ID).to_numpy()
    if len(np.unique(users)) != len(users):
        problems.append(f"{S.USER_ID}: duplicate users")
    if problems:
        raise PublishError("score snapshot refused: " + "; ".join(problems))
    return {c: table.column(c)[0].as_py() for c in version_features(cdum)}


def published_reference(cfg: FulcrumConfig, root: Path, names: list[str]) -> dict[str, np.ndarray] | None:
    """The last publication's δ sample (the drift reference publish saved), per column; None before any."""
    from pipelines.drift import REFERENCE_SCORES

    ref = cfg.paths.drift_dir(root) / REFERENCE_SCORES
    if not ref.exists():
        return None
    try:
        table = pq.read_table(ref)
    except (OSError, ValueError) as e:
        log.warning("publish: the last publication's δ sample %s is unreadable (%s): outlier check skipped", ref, e)
        return None
    return {n: table.column(n).to_numpy(zero_copy_only=False) for n in names if n in table.column_names}


def _checked_writer(cfg: FulcrumConfig, root: Path, store, man: S.Manifest) -> tuple[str, str]:
    """The bulk writer if it (and the service's direct reader) still match Feast's layout, else Feast's writer."""
    from feast.infra.online_stores.helpers import compute_table_id

    from fulcrum.store_contract import ContractReport, warn
    from serving.scores import check_direct_reader

    online = _online_store(cfg, root)
    report = check_direct_reader(online, S.USER_ID, man.treatments, man.responses) or ContractReport(online["type"])
    if online["type"] == "sqlite":
        view = store.get_feature_view(UPLIFT_SCORES)
        table = compute_table_id(cfg.feast.project, view, store.config.registry.enable_online_feature_view_versioning)
        if table != O.sqlite_table(cfg.feast.project):
            report.problems.append(f"Feast's table for {UPLIFT_SCORES} is {table!r}, Fulcrum's {O.sqlite_table(cfg.feast.project)!r}")
    if report.ok:
        return "bulk", "ok"
    warn(report, "Feast's writer (publish.writer: feast)")
    return "feast", "FAILED: " + "; ".join(report.problems)


def _write_feast(store, table, chunk: int, advance) -> None:
    for start in range(0, table.num_rows, chunk):
        part = table.slice(start, chunk).to_pandas()
        store.write_to_online_store(UPLIFT_SCORES, part)
        advance(len(part))


def _blocked(cfg: FulcrumConfig, root: Path, target: dict, why: str) -> dict:
    """The drift gate said no: write nothing to the store, say so, keep serving the last publication."""
    served = read_marker(cfg, root).get("served")
    summary = {"blocked": True, "reason": why, "target": target, "served": served}
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "publish.json").write_text(json.dumps(summary, indent=2) + "\n")
    still = f"{served['score_date']} (model {served['model_version']})" if served else "nothing (never published)"
    log.warning("publish BLOCKED: %s. The online store keeps serving %s.", why, still)
    return summary


def run_publish(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    from pipelines.drift import gate_allows, save_reference, snapshot_fingerprint
    from pipelines.feature_store import apply

    t0 = time.perf_counter()
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    table = read_snapshot(path := scores_path(cfg, root))
    target = check_snapshot(table, man, cfg.publish, published_reference(cfg, root, delta_features(man)), cfg.cdum_on)
    allowed, why = gate_allows(cfg, root, target["score_date"], target["model_version"], snapshot_fingerprint(path))
    if not allowed:
        return _blocked(cfg, root, target, why)
    store = apply(cfg, root, man)
    writer, chunk = cfg.publish.writer, cfg.publish.chunk_size
    contract = "not checked (feast writer)"
    if writer == "bulk":
        writer, contract = _checked_writer(cfg, root, store, man)
    redis = cfg.feast.profile == "production"
    versioned = redis and writer == "bulk" and cfg.feast.production.redis_publication == "versioned"
    client = O.redis_from_connection_string(_online_store(cfg, root)["connection_string"]) if redis else None
    try:
        previous = read_marker(cfg, root)
        old_generation = O.served_generation(previous)
        generation, swept = None, 0
        if versioned:
            # Leftovers of a failed publication are never read (the marker never named them): clear them first.
            swept = O.redis_sweep(client, S.USER_ID, cfg.feast.project, keep=old_generation)
            generation = (old_generation or 0) + 1
            target = {**target, "generation": generation}
        write_marker(cfg, root, {"state": "publishing", "served": previous.get("served"), "target": target})
        n = table.num_rows
        served = {**target, "n_users": n, "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "profile": cfg.feast.profile}
        complete = {"state": "complete", "served": served, "target": None}
        with progress("publishing scores", n, "users") as advance:
            if writer == "feast":
                _write_feast(store, table, chunk, advance)
                write_marker(cfg, root, complete)
            elif not redis:
                O.SqliteBulkWriter(_online_store(cfg, root)["path"], O.sqlite_table(cfg.feast.project), S.USER_ID,
                                   cfg.feast.project).publish(
                    snapshot_arrays(table, man, target, cfg.cdum_on), complete, chunk, advance)
            else:
                O.RedisBulkWriter(client, UPLIFT_SCORES, S.USER_ID, cfg.feast.project,
                                  cfg.feast.production.redis_key_ttl_seconds, generation).publish(
                    snapshot_arrays(table, man, target, cfg.cdum_on), chunk, advance)
                O.redis_write_marker(client, cfg.feast.project, complete)
        waited = 0.0
        if redis and (versioned or old_generation is not None):
            time.sleep(waited := O.GRACE_S)  # readers still on the old marker finish with the old generation
            swept += O.redis_sweep(client, S.USER_ID, cfg.feast.project, keep=generation)
    finally:
        if client is not None:
            client.close()
    save_reference(cfg, root)  # what the next run's drift checks compare against
    seconds = time.perf_counter() - t0 - waited
    summary = {**served, "blocked": False, "gate": why, "writer": writer, "contract": contract,
               "seconds": round(seconds, 2), "users_per_s": round(n / max(seconds, 1e-9))}
    if redis:
        summary["keys_swept"] = swept
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "publish.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("publish: %s users for %s (model %s) to the %s online store (%s writer) in %.1f s",
             f"{n:,}", target["score_date"], target["model_version"], cfg.feast.profile, writer, seconds)
    return summary
