"""The training set: one row per experiment user with the features known at assignment.

``build_training_frame`` is the single place the training input is built. It joins
each user's latest feature snapshot with ``event_timestamp <= assignment_ts``
(point-in-time, so post-assignment snapshots that carry the treatment never leak in).

Two implementations give the same frame: Feast's ``get_historical_features`` over the
``user_features`` view (:func:`build_training_frame_feast`, used when a configuration
is given) and a pandas as-of join (:func:`build_training_frame_pandas`, the reference
and the fast path when there is no configuration).

The ``training_set`` stage (:func:`run_training_set`) builds the Feast frame once and
stores it as ``<data>/training_set/training_set.parquet`` with a fingerprint of the
RCT data it came from; :func:`prepare` reuses it while the fingerprint matches, so
train, evaluate and compare read the same rows without re-joining.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from fulcrum.errors import StageError

log = logging.getLogger("fulcrum")

SPLITS = ("train", "valid", "test")
FRAME_FILE = "training_set.parquet"
FINGERPRINT_KEY = b"fulcrum.rct_fingerprint"
TS_DTYPE = "datetime64[us, UTC]"


def _experiment(rct_dir: Path, man: S.Manifest) -> pd.DataFrame:
    """Every experiment row, combined arms included (the policy stage values decisions on them)."""
    return pq.read_table(
        rct_dir / S.EXPERIMENT_FILE, columns=[S.USER_ID, S.ASSIGN_TS, S.ARM, S.ARM_INDEX, *man.responses]
    ).to_pandas()


def single_arm_rows(frame: pd.DataFrame, man: S.Manifest) -> pd.DataFrame:
    """The rows of single arms (control or one treatment): what uplift models train and are evaluated on.

    HUM models one treatment per branch, so combined-arm users (several treatments on)
    have no branch to train; they serve offline policy evaluation only.
    """
    single = frame[S.ARM_INDEX].to_numpy() < len(man.arms)
    return frame if single.all() else frame[single].reset_index(drop=True)


def build_training_frame(
    rct_dir: Path,
    manifest: S.Manifest | None = None,
    *,
    cfg: FulcrumConfig | None = None,
    root: Path | None = None,
    source: Literal["feast", "pandas"] | None = None,
) -> pd.DataFrame:
    """user_id, assignment_ts, arm, arm_index, responses..., event_timestamp, features... (one row per user).

    ``source`` picks the join: "feast" (needs ``cfg``; ``root`` defaults to the working
    directory) or "pandas". Unset, it is "feast" when ``cfg`` is given, else "pandas".
    """
    source = source or ("feast" if cfg is not None else "pandas")
    if source == "pandas":
        return build_training_frame_pandas(rct_dir, manifest)
    if source == "feast":
        if cfg is None:
            raise ValueError("the Feast training set needs the configuration: pass cfg (and root)")
        return build_training_frame_feast(rct_dir, cfg, Path(".") if root is None else root, manifest)
    raise ValueError(f"unknown training-set source {source!r}: use 'feast' or 'pandas'")


def build_training_frame_feast(
    rct_dir: Path, cfg: FulcrumConfig, root: Path, manifest: S.Manifest | None = None
) -> pd.DataFrame:
    """The training frame from Feast: ``get_historical_features`` on ``user_features`` at each assignment.

    Applies the feature repo first (cheap and idempotent) so the registered view matches
    the manifest. Feast takes, per user, the latest snapshot with
    ``event_timestamp <= assignment_ts`` within the view's TTL. Columns, dtypes and row
    order are those of :func:`build_training_frame_pandas`.
    """
    from pipelines import feature_store as fs

    rct_dir = Path(rct_dir)
    if rct_dir.resolve() != cfg.paths.rct_dir(root).resolve():
        raise ValueError(
            f"Feast reads the features registered for {cfg.paths.rct_dir(root)}, not {rct_dir}: "
            "pass the configured rct directory (or use source='pandas')"
        )
    man = manifest or S.Manifest.read(rct_dir)
    exp = _experiment(rct_dir, man)
    store = fs.apply(cfg, root, man)
    feat_cols = [f.name for f in man.features]
    refs = [f"{fs.USER_FEATURES}:{name}" for name in (S.EVENT_TS, *feat_cols)]
    # assignment_ts is the entity frame's only timestamp, so Feast joins on it (the name
    # event_timestamp is taken by the snapshot time the view returns); Feast prints a
    # line saying so, which would only clutter stage logs.
    with contextlib.redirect_stdout(io.StringIO()):
        job = store.get_historical_features(entity_df=exp, features=refs)
    df = job.to_df()
    for col in (S.ASSIGN_TS, S.EVENT_TS):
        df[col] = df[col].astype(TS_DTYPE)  # the file offline store returns nanoseconds
    df = df[[*exp.columns, S.EVENT_TS, *feat_cols]]
    return df.sort_values(S.USER_ID, kind="stable").reset_index(drop=True)


def build_training_frame_pandas(rct_dir: Path, manifest: S.Manifest | None = None) -> pd.DataFrame:
    """The same frame with a pandas as-of join (no TTL: any earlier snapshot qualifies)."""
    man = manifest or S.Manifest.read(rct_dir)
    exp = _experiment(rct_dir, man)
    feat_cols = [f.name for f in man.features]
    feats = pq.read_table(rct_dir / S.FEATURES_FILE, columns=[S.USER_ID, S.EVENT_TS, *feat_cols]).to_pandas()
    feats = feats.sort_values(S.EVENT_TS, kind="stable")
    left = exp.sort_values(S.ASSIGN_TS, kind="stable")
    df = pd.merge_asof(
        left, feats, left_on=S.ASSIGN_TS, right_on=S.EVENT_TS, by=S.USER_ID, direction="backward",
        allow_exact_matches=True,
    )
    return df.sort_values(S.USER_ID, kind="stable").reset_index(drop=True)


def rct_fingerprint(rct_dir: Path) -> str:
    """Identifies the RCT data a frame was built from: the manifest and the data files' contents.

    Contents, not sizes and times: a ``dvc pull`` or ``checkout`` on another worker gives the
    same files new times, and the frame (a DVC output) must be the same bytes there.
    Hashing is cheap next to building the frame (~1 GB/s).
    """
    rct_dir = Path(rct_dir)
    h = hashlib.sha256((rct_dir / S.MANIFEST_FILE).read_bytes())
    for name in (S.EXPERIMENT_FILE, S.FEATURES_FILE):
        with open(rct_dir / name, "rb") as f:
            h.update(name.encode() + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


class TrainingSetError(StageError):
    """The training set cannot support a model (named reason); nothing was written."""


def frame_path(cfg: FulcrumConfig, root: Path) -> Path:
    return cfg.paths.training_set_dir(root) / FRAME_FILE


def stored_frame(cfg: FulcrumConfig, root: Path) -> pd.DataFrame | None:
    """The training_set stage's frame when it was built from the current RCT data, else None."""
    path = frame_path(cfg, root)
    if not path.exists():
        return None
    meta = pq.read_schema(path).metadata or {}
    if meta.get(FINGERPRINT_KEY, b"").decode() != rct_fingerprint(cfg.paths.rct_dir(root)):
        log.info("training set %s is from other RCT data: rebuilding it through Feast", path)
        return None
    return pq.read_table(path).to_pandas()


def run_training_set(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Stage ``training_set``: the point-in-time frame from Feast, stored for the model stages."""
    import pyarrow as pa

    t0 = time.perf_counter()
    rct = cfg.paths.rct_dir(root)
    man = S.Manifest.read(rct)
    frame = build_training_frame_feast(rct, cfg, root, man)
    missing = int(frame[S.EVENT_TS].isna().sum())
    if len(frame) and missing == len(frame):
        raise TrainingSetError(
            f"no user of the experiment has a feature snapshot at or before their assignment ({missing:,} users): "
            "a model would train on no features at all. Check the feature log's timestamps against the "
            "assignments (for static features leave source.features.timestamp out)")
    path = frame_path(cfg, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: rct_fingerprint(rct)})
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    age = ((frame[S.ASSIGN_TS] - frame[S.EVENT_TS]).dt.total_seconds() / 86400).dropna()
    summary = {
        "rows": len(frame),
        "features": len(man.features),
        "users_without_snapshot": missing,
        "snapshot_age_days_mean": round(float(age.mean()), 3) if len(age) else None,
        "snapshot_age_days_max": round(float(age.max()), 3) if len(age) else None,
        "rows_per_arm": {arm: int(n) for arm, n in frame[S.ARM].value_counts().sort_index().items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "training_set.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log.info("training set: %s users, %s features, snapshots %.2f days old on average, in %.1f s",
             f"{len(frame):,}", len(man.features), summary["snapshot_age_days_mean"], summary["seconds"])
    if missing:
        log.warning("training set: %s users (%.1f%%) have no feature snapshot at or before their assignment",
                    f"{missing:,}", 100 * missing / len(frame))
    return summary


def split_users(user_id: np.ndarray, ratios: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split label per user (0 train, 1 valid, 2 test), stable for a user across runs and days."""
    h = pd.util.hash_array(np.asarray(user_id, dtype=np.int64) ^ np.int64(seed), categorize=False)
    u = (h % np.uint64(1_000_000)).astype(np.float64) / 1_000_000
    cuts = np.cumsum(ratios)[:-1]
    return np.searchsorted(cuts, u, side="right").astype(np.int8)


# --------------------------------------------------------------------------- tensors


class Prepared:
    """The training frame, its user split, the fitted encoder and the target transform."""

    def __init__(self, frame: pd.DataFrame, manifest: S.Manifest, split: np.ndarray, encoder, target,
                 others: pd.DataFrame | None = None):
        self.frame, self.manifest, self.split, self.encoder, self.target = frame, manifest, split, encoder, target
        # Combined-arm users: no model trains on them, the policy stage values decisions on them.
        self.others = frame.iloc[:0] if others is None else others
        self.x = encoder.transform(frame)  # (n, f) int64
        self.arm = frame[S.ARM_INDEX].to_numpy(np.int64)
        self.y = frame[manifest.responses].to_numpy(np.float32)  # raw units

    def rows(self, part: str) -> np.ndarray:
        return self.split == SPLITS.index(part)

    def arm_counts(self, rows: np.ndarray) -> np.ndarray:
        """Users per arm (control first, ``manifest.arms`` order) among the (N,) bool mask ``rows``."""
        return np.bincount(self.arm[rows], minlength=len(self.manifest.arms))

    def with_split(self, split: np.ndarray) -> Prepared:
        """The same encoded data under another user split (cross-fitting's folds); nothing is re-encoded."""
        if len(split) != len(self.split):
            raise ValueError(f"split has {len(split)} rows, the data {len(self.split)}")
        other = copy.copy(self)
        other.split = np.asarray(split, dtype=np.int8)
        return other

    def tensors(self, part: str):
        import torch

        from models.train import TensorData

        m = self.rows(part)
        return TensorData(
            torch.from_numpy(self.x[m]), torch.from_numpy(self.arm[m]), torch.from_numpy(self.target.encode(self.y[m]))
        )

    def true_mu(self, rct_dir: Path, part: str) -> np.ndarray | None:
        """True expected outcomes (n_part, K+1, R) in raw units, when the source knows them."""
        return self.true_mu_rows(rct_dir, self.rows(part))

    def true_mu_rows(self, rct_dir: Path, rows: np.ndarray) -> np.ndarray | None:
        """The same for the users of the (N,) bool mask ``rows`` (e.g. every user, cross-fitted)."""
        if not self.manifest.has_truth:
            return None
        man = self.manifest
        cols = [S.truth_column(a, r) for a in man.arms for r in man.responses]
        t = pq.read_table(rct_dir / S.TRUTH_FILE, columns=[S.USER_ID, *cols]).to_pandas().set_index(S.USER_ID)
        users = self.frame.loc[rows, S.USER_ID]
        return t.loc[users, cols].to_numpy().reshape(len(users), len(man.arms), len(man.responses))


def prepare(
    rct_dir: Path,
    split_ratios,
    seed: int,
    n_bins: int,
    encoder=None,
    target="mean",
    *,
    cfg: FulcrumConfig | None = None,
    root: Path | None = None,
) -> Prepared:
    """Build the frame, split users, fit the encoder (unless given) and the target transform on train only.

    ``target`` is a transform kind ("mean" / "log1p") or an already fitted ``TargetTransform``.
    With ``cfg`` (and ``root``) the frame is the training_set stage's (rebuilt through Feast
    when missing or stale), else the pandas as-of join.
    """
    from models.encoding import FieldEncoder
    from models.target import TargetTransform

    man = S.Manifest.read(rct_dir)
    frame = None
    if cfg is not None and Path(rct_dir).resolve() == cfg.paths.rct_dir(root or Path(".")).resolve():
        frame = stored_frame(cfg, root or Path("."))
    if frame is None:
        frame = build_training_frame(rct_dir, man, cfg=cfg, root=root)
    others = frame[frame[S.ARM_INDEX].to_numpy() >= len(man.arms)].reset_index(drop=True)
    frame = single_arm_rows(frame, man)
    split = split_users(frame[S.USER_ID].to_numpy(), tuple(split_ratios), seed)
    train = frame[split == 0]
    enc = encoder or FieldEncoder(man.categorical, man.numeric, n_bins).fit(train)
    # Targets are scaled to mean 1 per response so the losses of different units are comparable.
    if isinstance(target, str):
        target = TargetTransform.fit(target, train[man.responses].to_numpy(np.float64))
    return Prepared(frame, man, split, enc, target, others)
