"""A small RCT as a user's own CSV logs, and the ``source`` mapping that reads them back.

    fulcrum example-logs                       # data/example_logs/*.csv + the mapping, printed
    fulcrum example-logs --no-requests --apply  # ... and params.yaml pointed at them: `make run` serves it

The simulator's RCT is written the way a platform would export it: its own column names
(``customer_id``, ``group`` with raw values ``ctrl`` / ``A`` / ``B``, ``watch_minutes``),
ISO timestamps, and list columns as JSON arrays; then the bring-your-own-logs mapping
(``source.type: logs``) that turns it back into Fulcrum's schema. ``--no-requests``
leaves the request logs out: the decision then weighs responses with fixed weights
(``decision.weights``, equal when unset) and the service needs no item lists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig

RAW_ARMS = {"ctrl": "control", "A": "t1", "B": "t2"}  # the export's group codes -> arm names
RESPONSE_COLUMNS = {"usage_time": "watch_minutes", "video_views": "views"}
OUT = Path("data/example_logs")


def _json_lists(column: pd.Series, digits: int | None = None) -> list[str]:
    """List cells as JSON arrays (how a CSV export carries them); floats rounded to ``digits``."""
    if digits is None:
        return [json.dumps(np.asarray(v).tolist()) for v in column]
    return [json.dumps(np.round(np.asarray(v, dtype=np.float64), digits).tolist()) for v in column]


def write_example_logs(out: Path, users: int = 20_000, requests: bool = True, seed: int = 7) -> dict:
    """Simulate a 3-arm RCT (control, t1, t2) and write it as CSV logs under ``out``; returns the mapping.

    Paths in the returned ``source`` mapping are ``out``'s files as given (relative paths stay
    relative to the project root).
    """
    from pipelines.collect import run_collect

    arm_of = {v: k for k, v in RAW_ARMS.items()}
    cfg = FulcrumConfig.model_validate({
        "seed": seed,
        "source": {"n_users": users, "seed": seed, "feature_days": 3, "experiment_days": 3,
                   "treatments": ["t1", "t2"], "combined_arms": [], "arm_shares": None,
                   "requests": {"user_share": 0.3 if requests else 0.0}},
    })
    work = Path(tempfile.mkdtemp(prefix="fulcrum-example-"))
    try:
        run_collect(cfg, work)
        rct = cfg.paths.rct_dir(work)
        man = S.Manifest.read(rct)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.csv"):
            old.unlink()
        exp = pq.read_table(rct / S.EXPERIMENT_FILE).to_pandas()
        pd.DataFrame({
            "customer_id": exp[S.USER_ID], "assigned_at": exp[S.ASSIGN_TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "group": exp[S.ARM].map(arm_of), "p_assign": exp[S.PROPENSITY].round(6),
            **{col: exp[r] for r, col in RESPONSE_COLUMNS.items()},
        }).to_csv(out / "experiment.csv", index=False)
        feat = pq.read_table(rct / S.FEATURES_FILE).to_pandas()
        feat.insert(0, "snapshot_at", feat.pop(S.EVENT_TS).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        feat.insert(0, "customer_id", feat.pop(S.USER_ID))
        feat.to_csv(out / "features.csv", index=False)
        source: dict = {
            "type": "logs",
            "experiment": {
                "path": str(out / "experiment.csv"), "user_id": "customer_id", "timestamp": "assigned_at",
                "treatment": {"column": "group", "values": dict(RAW_ARMS)},
                "responses": dict(RESPONSE_COLUMNS), "propensity": "p_assign",
            },
            "features": {
                "path": str(out / "features.csv"), "user_id": "customer_id", "timestamp": "snapshot_at",
                "categorical": {f.name: f.name for f in man.features if f.kind == "categorical"},
                "numeric": {f.name: f.name for f in man.features if f.kind != "categorical"},
            },
        }
        if requests:
            req = pq.read_table(rct / S.REQUESTS_FILE).to_pandas()
            frame = {"request_id": req[S.REQUEST_ID], "customer_id": req[S.USER_ID],
                     "requested_at": req[S.REQUEST_TS].dt.strftime("%Y-%m-%dT%H:%M:%SZ")}
            lists = {}
            for part, prefix in (("recent", "recent"), ("candidates", "cand")):
                dur, cat, *scores = S.item_columns(prefix, man.responses)
                names = {"duration_bucket": f"{part}_duration", "category": f"{part}_category",
                         "scores": {r: f"{part}_score_{r}" for r in man.responses}}
                frame[names["duration_bucket"]], frame[names["category"]] = _json_lists(req[dur]), _json_lists(req[cat])
                for r, col in zip(man.responses, scores, strict=True):
                    frame[names["scores"][r]] = _json_lists(req[col], digits=4)
                lists[part] = names
            frame["shown"] = _json_lists(req["cand_exposed"].map(lambda v: np.asarray(v, dtype=int)))
            pd.DataFrame(frame).to_csv(out / "requests.csv", index=False)
            source["requests"] = {"path": str(out / "requests.csv"), "request_id": "request_id",
                                  "user_id": "customer_id", "timestamp": "requested_at", **lists,
                                  "exposed": "shown"}
        return source
    finally:
        shutil.rmtree(work, ignore_errors=True)
