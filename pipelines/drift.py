"""Stage ``drift``: Evidently drift checks that gate publishing.

Runs after ``score`` and before ``publish``. Three checks, each on seeded samples of
at most ``drift.sample_size`` rows per side:

- ``features``:  today's user features (each scored user's latest snapshot, as the
  score stage read it) vs the training frame the model learned from;
- ``scores``:    today's δ columns vs the last published δ;
- ``responses``: the current RCT responses vs the last accepted ones.

The last two compare against references that :func:`save_reference` stores after a
successful publish; without one they are skipped (and pass). Evidently measures the
share of drifted columns; the gate itself is decided here, from that share and our
thresholds: a check passes when ``share <= threshold``, and publishing is allowed
when every check passes or ``drift.force_publish`` is set. The decision lands in
``<data>/drift/gate.json`` (atomically), which :func:`gate_allows` reads for the
publish stage; reports go to ``<reports>/drift.json`` and ``<reports>/drift/<check>.html``.

Evidently is imported inside functions: the import alone costs seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError
from pipelines.feature_store import MODEL_VERSION, SCORE_DATE, delta_features, scores_path
from pipelines.training_set import frame_path

log = logging.getLogger("fulcrum")

CHECKS = ("features", "scores", "responses")
GATE_FILE = "gate.json"
REFERENCE_SCORES = "reference_scores.parquet"
REFERENCE_RESPONSES = "reference_responses.parquet"
# Parquet metadata of a reference: which publication it came from.
REFERENCE_META = (b"fulcrum.score_date", b"fulcrum.model_version")

Status = Literal["checked", "no_reference"]


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class CheckResult:
    """One drift check: Evidently's measurements and our pass/fail against the threshold."""

    status: Status
    threshold: float
    passed: bool
    n_columns: int = 0
    n_drifted: int = 0
    share: float = 0.0
    rows_current: int = 0
    rows_reference: int = 0
    drifted_columns: list[str] = field(default_factory=list)
    column_scores: dict[str, float] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    tests: dict[str, int] = field(default_factory=dict)

    @classmethod
    def skipped(cls, threshold: float) -> CheckResult:
        """No reference to compare with yet: nothing to block on."""
        return cls(status="no_reference", threshold=threshold, passed=True)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_indices(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Sorted row positions of a seeded sample of at most ``n`` rows (all rows when fewer)."""
    if n_rows <= n:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most ``n`` rows, in the frame's order."""
    return df.iloc[sample_indices(len(df), n, seed)].reset_index(drop=True)


def parse_snapshot(report: dict) -> dict:
    """The parts of an Evidently ``Snapshot.dict()`` the gate reports.

    Per-column drift is read from the column tests (FAIL = drifted), which is what
    Evidently's drifted-columns count is made of.
    """
    count = share = None
    columns: dict[str, tuple[str, str, float]] = {}  # metric id -> (column, method, score)
    for m in report["metrics"]:
        kind = m["config"]["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            count, share = m["value"]["count"], m["value"]["share"]
        elif kind == "ValueDrift":
            columns[m["id"]] = (m["config"]["column"], m["config"]["method"], float(m["value"]))
    if count is None:
        raise ValueError("the Evidently report has no DriftedColumnsCount metric")
    tests = report.get("tests", [])
    drifted = {
        columns[t["metric_config"]["metric_id"]][0]
        for t in tests
        if t["metric_config"]["metric_id"] in columns and t["status"] == "FAIL"
    }
    return {
        "count": int(count),
        "share": float(share),
        "scores": {col: score for col, _, score in columns.values()},
        "methods": sorted({method for _, method, _ in columns.values()}),
        "drifted": sorted(drifted),
        # Statuses are str enums: keep their plain values for JSON.
        "tests": dict(Counter(str(getattr(t["status"], "value", t["status"])) for t in tests)),
    }


def drift_check(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    threshold: float,
    html: Path | None = None,
) -> CheckResult:
    """Evidently's DataDriftPreset on the given columns; passed = drifted share <= threshold.

    ``html``, when given, receives Evidently's HTML report.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*numeric, *categorical]
    if not columns:
        raise ValueError("a drift check needs at least one column")
    if len(current) == 0 or len(reference) == 0:
        raise ValueError(f"a drift check needs rows on both sides (current {len(current)}, reference {len(reference)})")
    # Explicit types: integer-coded categories would otherwise be taken for numbers.
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))

    def dataset(df: pd.DataFrame):
        return Dataset.from_pandas(df[columns], data_definition=definition)

    # drift_share only shapes Evidently's own test and HTML; the gate uses our comparison below.
    report = Report([DataDriftPreset(columns=columns, drift_share=threshold)], include_tests=True)
    snap = report.run(current_data=dataset(current), reference_data=dataset(reference))
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        snap.save_html(str(html))
    got = parse_snapshot(snap.dict())
    return CheckResult(
        status="checked",
        threshold=threshold,
        passed=got["share"] <= threshold,
        n_columns=len(columns),
        n_drifted=got["count"],
        share=got["share"],
        rows_current=len(current),
        rows_reference=len(reference),
        drifted_columns=got["drifted"],
        column_scores=got["scores"],
        methods=got["methods"],
        tests=got["tests"],
    )


def gate(results: dict[str, CheckResult], force: bool) -> tuple[bool, list[str]]:
    """(publish allowed, names of the failed checks): allowed when none failed or ``force``."""
    blocked_by = [name for name, r in results.items() if not r.passed]
    return (not blocked_by or force), blocked_by


def describe(results: dict[str, CheckResult], allowed: bool, forced: bool) -> str:
    """One plain sentence: what each check found and what happens to publishing."""
    parts = []
    for name, r in results.items():
        if r.status == "no_reference":
            parts.append(f"{name} skipped (no reference yet)")
        elif r.passed:
            parts.append(f"{name} stable (share {r.share:.2f} <= {r.threshold:.2f})")
        else:
            parts.append(f"{name} drifted (share {r.share:.2f} > {r.threshold:.2f})")
    found = ", ".join(parts)
    if not allowed:
        return (f"drift: {found}: publishing is BLOCKED; yesterday's scores stay served "
                "(set drift.force_publish=true and rerun the drift stage to publish anyway)")
    if forced:
        return f"drift: {found}: publishing anyway because drift.force_publish=true"
    return f"drift: {found}: publishing is allowed"


# --------------------------------------------------------------------------- I/O helpers


def _write_atomic(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, doc: dict) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=2) + "\n"))


def _read_sample(path: Path, columns: list[str], n: int, seed: int, valid: str | None = None) -> pd.DataFrame:
    """Read only ``columns`` and sample before converting to pandas (cheap at millions of rows).

    ``valid`` names a column whose null rows are dropped first.
    """
    table = pq.read_table(path, columns=columns)
    if valid is not None:
        table = table.filter(pc.is_valid(table[valid]))
    return table.take(pa.array(sample_indices(table.num_rows, n, seed))).to_pandas()


def snapshot_fingerprint(path: Path) -> str:
    """A content hash of a score snapshot file: the gate belongs to these bytes, not just a date and model.

    Re-scoring the same date with the same model (new features, a fixed bug) gives new
    scores under the same name; the gate must be rerun for them.
    """
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _snapshot_target(cfg: FulcrumConfig, root: Path) -> dict:
    """score_date and model_version of the score snapshot about to be published."""
    path = scores_path(cfg, root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the score stage first (fulcrum score)")
    table = pq.read_table(path, columns=[SCORE_DATE, MODEL_VERSION])
    if table.num_rows == 0:
        raise StageError(f"{path} is empty: nothing to check")
    return {SCORE_DATE: table[SCORE_DATE][0].as_py(), MODEL_VERSION: table[MODEL_VERSION][0].as_py()}


def current_features(cfg: FulcrumConfig, root: Path, columns: list[str], score_day: str, seed: int) -> pd.DataFrame:
    """The latest snapshot (at or before the score date's midnight, as scored) of a seeded sample of scored users.

    Users are sampled from the score snapshot first, so DuckDB only picks the latest
    rows of those users instead of all of them.
    """
    import duckdb

    users = _read_sample(scores_path(cfg, root), [S.USER_ID], cfg.drift.sample_size, seed)
    as_of = datetime.combine(date.fromisoformat(score_day), datetime.min.time(), tzinfo=UTC)
    src = (cfg.paths.rct_dir(root) / S.FEATURES_FILE).as_posix().replace("'", "''")
    cols = ", ".join(f'f."{c}"' for c in [S.USER_ID, *columns])
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit = '{cfg.score.duckdb_memory_limit}'")
        con.register("sampled", pa.Table.from_pandas(users, preserve_index=False))
        query = (
            f"SELECT {cols} FROM read_parquet('{src}') f SEMI JOIN sampled s ON f.{S.USER_ID} = s.{S.USER_ID} "
            f"WHERE f.{S.EVENT_TS} <= ? "
            f"QUALIFY row_number() OVER (PARTITION BY f.{S.USER_ID} ORDER BY f.{S.EVENT_TS} DESC) = 1 "
            f"ORDER BY f.{S.USER_ID}"
        )
        return con.execute(query, [as_of]).to_arrow_table().to_pandas()
    finally:
        con.close()


def _align_categories(current: pd.DataFrame, reference: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """Reference categories in the current dtype (parquet nulls turn int codes into floats)."""
    out = reference.copy()
    for c in categorical:
        if out[c].dtype != current[c].dtype and not out[c].isna().any():
            out[c] = out[c].astype(current[c].dtype)
    return out


def _shared(current_cols: list[str], reference: Path) -> list[str]:
    """Columns of ``current_cols`` the stored reference also has (a new treatment or response has none yet)."""
    have = set(pq.read_schema(reference).names)
    return [c for c in current_cols if c in have]


# --------------------------------------------------------------------------- the stage


def run_drift(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Run the three checks on the current score snapshot; write the gate, drift.json and the HTML reports."""
    t0 = time.perf_counter()
    dc, seed, n = cfg.drift, cfg.seed, cfg.drift.sample_size
    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    target = _snapshot_target(cfg, root)
    html_dir = cfg.paths.reports_dir(root) / "drift"
    drift_dir = cfg.paths.drift_dir(root)
    results: dict[str, CheckResult] = {}

    # (a) features: today's snapshots vs what the model was trained on.
    feats = [f.name for f in man.features]
    training = frame_path(cfg, root)
    if not training.exists():
        raise FileNotFoundError(f"{training} not found: run the training_set stage first (fulcrum training-set)")
    current = current_features(cfg, root, feats, target[SCORE_DATE], seed)
    # Users without a snapshot at assignment carry no features: not part of the reference.
    reference = _read_sample(training, [S.EVENT_TS, *feats], n, seed + 1, valid=S.EVENT_TS)
    reference = _align_categories(current, reference, man.categorical)
    results["features"] = drift_check(current, reference, man.numeric, man.categorical,
                                      dc.features_threshold, html_dir / "features.html")

    # (b) scores and (c) responses: against the references of the last publication.
    for name, path, cols, ref_file, threshold in (
        ("scores", scores_path(cfg, root), delta_features(man), REFERENCE_SCORES, dc.scores_threshold),
        ("responses", rct / S.EXPERIMENT_FILE, list(man.responses), REFERENCE_RESPONSES, dc.responses_threshold),
    ):
        ref_path = drift_dir / ref_file
        shared = _shared(cols, ref_path) if ref_path.exists() else []
        if not shared:
            results[name] = CheckResult.skipped(threshold)
            (html_dir / f"{name}.html").unlink(missing_ok=True)  # a stale report would mislead
            continue
        results[name] = drift_check(_read_sample(path, shared, n, seed), _read_sample(ref_path, shared, n, seed + 1),
                                    shared, [], threshold, html_dir / f"{name}.html")

    allowed, blocked_by = gate(results, dc.force_publish)
    forced = bool(blocked_by) and allowed
    message = describe(results, allowed, forced)
    decision = {"publish_allowed": allowed, "forced": forced, "blocked_by": blocked_by}
    _write_json(drift_dir / GATE_FILE, {
        **decision,
        "score_date": target[SCORE_DATE],
        "model_version": target[MODEL_VERSION],
        "snapshot": snapshot_fingerprint(scores_path(cfg, root)),
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checks": {k: {"status": r.status, "share": r.share, "threshold": r.threshold, "passed": r.passed}
                   for k, r in results.items()},
        "message": message,
    })
    summary = {
        **{k: r.to_dict() for k, r in results.items()},
        **decision,
        **target,
        "sample_size": n,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    reports = cfg.paths.reports_dir(root)
    _write_json(reports / "drift.json", summary)
    (log.info if allowed and not forced else log.warning)("%s", message)
    return summary


# --------------------------------------------------------------------------- the publish side


def read_gate(cfg: FulcrumConfig, root: Path = Path(".")) -> dict | None:
    """The drift stage's last decision, or None when it never ran (ValueError when unreadable)."""
    path = cfg.paths.drift_dir(root) / GATE_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StageError(f"drift gate {path} is unreadable: {e}") from e
    if not isinstance(doc, dict) or "publish_allowed" not in doc:
        raise StageError(f"drift gate {path} has no publish_allowed decision")
    return doc


def gate_allows(cfg: FulcrumConfig, root: Path, score_date: str, model_version: str,
                snapshot: str) -> tuple[bool, str]:
    """(may publish, why) for the snapshot ``score_date`` / ``model_version`` with fingerprint ``snapshot``.

    No gate file: allowed (the drift stage is optional for a bare ``fulcrum publish``).
    A gate for another snapshot is stale: refused until the drift stage checks this one.
    """
    try:
        doc = read_gate(cfg, root)
    except ValueError as e:
        return False, f"{e}: rerun the drift stage (fulcrum drift)"
    if doc is None:
        return True, "no drift check ran"
    checked = (str(doc.get("score_date")), str(doc.get("model_version")))
    if checked != (str(score_date), str(model_version)):
        return False, (f"the drift gate is for scores of {checked[0]} (model {checked[1]}), not {score_date} "
                       f"(model {model_version}): run the drift stage (fulcrum drift) on this snapshot first")
    if doc.get("snapshot") != snapshot:
        return False, (f"the drift gate checked other scores for {score_date} (model {model_version}): the "
                       "snapshot was rewritten since; run the drift stage (fulcrum drift) on this snapshot first")
    blocked = ", ".join(doc.get("blocked_by", []))
    if not doc["publish_allowed"]:
        return False, (f"drift checks failed ({blocked}): publishing is blocked and yesterday's scores stay "
                       "served; set drift.force_publish=true and rerun the drift stage to publish anyway")
    if doc.get("forced"):
        return True, f"drift checks failed ({blocked}) but drift.force_publish=true"
    return True, "drift checks passed"


def save_reference(cfg: FulcrumConfig, root: Path = Path(".")) -> None:
    """After a successful publish: the published δ and the accepted responses become the next references."""
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    target = _snapshot_target(cfg, root)
    meta = dict(zip(REFERENCE_META, (str(target[SCORE_DATE]).encode(), str(target[MODEL_VERSION]).encode()),
                    strict=True))
    drift_dir = cfg.paths.drift_dir(root)
    n, seed = cfg.drift.sample_size, cfg.seed
    for src, cols, name in (
        (scores_path(cfg, root), delta_features(man), REFERENCE_SCORES),
        (cfg.paths.rct_dir(root) / S.EXPERIMENT_FILE, list(man.responses), REFERENCE_RESPONSES),
    ):
        table = pq.read_table(src, columns=cols)
        table = table.take(pa.array(sample_indices(table.num_rows, n, seed)))
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        _write_atomic(drift_dir / name, lambda tmp, t=table: pq.write_table(t, tmp))
    log.info("drift: references saved from the scores of %s (model %s)", target[SCORE_DATE], target[MODEL_VERSION])
