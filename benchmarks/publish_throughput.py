"""Publishing throughput: N users' δ scores into Feast's online store, end to end.

    python benchmarks/publish_throughput.py --users 1000000

Set-up (not timed): a small simulated dataset and a one-epoch HUM, then N users made
by resampling the dataset's latest feature rows under new ids. Timed, on the same N
users and the same δ:

1. inference: encoder + HUM forward for every user (chunked, as the score stage does);
2. Fulcrum's bulk writer into SQLite: first publication, then a second one that
   replaces it (the daily case);
3. Fulcrum's bulk writer into Redis (127.0.0.1:6379, database 14, emptied before and
   after), when a server answers, and the sweep that deletes a superseded publication
   (``redis_publication: versioned``);
4. references: Feast's plain ``write_to_online_store`` (SQLite, and Redis when
   running) and a raw SQLite ``executemany`` upsert into Feast's table.

End to end = inference + write. Prints users/s for every step and the ratios; inference
and the bulk writes run ``--repeat`` times (median reported, every run printed).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fulcrum import online_store as O
from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines import feature_store as fs

REDIS_DB = 14


def setup(root: Path, n_users: int, seed: int):
    """A small dataset + a quickly trained HUM; N users' latest features resampled from it."""
    from models.checkpoint import load_checkpoint
    from pipelines.collect import run_collect
    from pipelines.train import CHECKPOINT, run_train

    cfg = FulcrumConfig.model_validate({
        "paths": {"data": str(root / "data"), "reports": str(root / "reports")},  # shared by every store root
        "source": {"n_users": 20_000, "feature_days": 2, "experiment_days": 2},
        "train": {"epochs": 1, "min_epochs": 1},
        "feast": {"production": {"redis_db": REDIS_DB}},
    })
    run_collect(cfg, root)
    run_train(cfg, root)
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    ck = load_checkpoint(cfg.paths.model_dir(root) / CHECKPOINT, "cpu")
    feats = pd.read_parquet(cfg.paths.rct_dir(root) / S.FEATURES_FILE)
    latest = feats.sort_values(S.EVENT_TS).groupby(S.USER_ID).tail(1)
    rows = np.random.default_rng(seed).integers(0, len(latest), n_users)
    users = latest.iloc[rows].reset_index(drop=True)
    users[S.USER_ID] = np.random.default_rng(seed + 1).permutation(n_users).astype(np.int64) + 1
    return cfg, man, ck, users


def infer(ck, users: pd.DataFrame, chunk: int) -> np.ndarray:
    import torch

    from models.train import predict_uplift

    out = []
    with torch.inference_mode():
        for start in range(0, len(users), chunk):
            part = users.iloc[start: start + chunk]
            x = torch.from_numpy(ck.encoder.transform(part))
            out.append(predict_uplift(ck.net, x, ck.target).reshape(len(part), -1).astype(np.float32))
    return np.concatenate(out)  # (n, K*R), treatment-major like delta_features


def raw_sqlite_upsert(path: str, table: str, snap: O.Snapshot) -> None:
    """The reference: Python rows through executemany, Feast's upsert statement, one transaction."""
    prefix = O.entity_key_prefix(S.USER_ID)
    keys = O.entity_keys(prefix, snap.user_ids)
    key_list = keys.view(f"V{keys.shape[1]}").ravel().tolist()
    cols = O.value_columns(snap.deltas)
    consts = [(name, O.string_value(text), text) for name, text in snap.constants.items()]
    ets, cts = int(snap.event_ts.timestamp()), int(time.time())

    def rows():
        for key, *values in zip(key_list, *cols):
            for name, value in zip(snap.delta_names, values):
                yield key, name, value, None, ets, cts
            for name, value, text in consts:
                yield key, name, value, text, ets, cts

    con = sqlite3.connect(path)
    with con:
        con.executemany(
            f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts", rows())
    con.close()


def feast_plain(store, snap: O.Snapshot, chunk: int) -> None:
    for part in snap.chunks(chunk):
        df = pd.DataFrame(part.deltas, columns=part.delta_names)
        df.insert(0, S.USER_ID, part.user_ids)
        df.insert(1, S.EVENT_TS, pd.Timestamp(part.event_ts))
        for name, text in part.constants.items():
            df[name] = text
        store.write_to_online_store(fs.UPLIFT_SCORES, df)


def timed(label: str, n: int, fn, results: dict, repeat: int = 1) -> float:
    """Run ``fn`` ``repeat`` times; keep and print the median (this VM's speed drifts by ±20 %)."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    s = float(np.median(runs))
    results[label] = s
    spread = f"  (runs: {', '.join(f'{r:.2f}' for r in runs)})" if repeat > 1 else ""
    print(f"{label:<44} {s:8.2f} s {n / s:>12,.0f} users/s{spread}", flush=True)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--reference-users", type=int, default=0,
                    help="users for Feast's plain path and the raw upsert (0 = all; they are slow)")
    ap.add_argument("--chunk", type=int, default=50_000, help="users per write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of inference and of each bulk write; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = ap.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="fulcrum-publish-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"set-up: dataset, HUM, {args.users:,} users under {root}", flush=True)
        cfg, man, ck, users = setup(root, args.users, args.seed)
        n, res = args.users, {}
        deltas = np.empty(0)

        def run_infer():
            nonlocal deltas
            deltas = infer(ck, users, 100_000)

        timed("inference (encoder + HUM forward)", n, run_infer, res, args.repeat)
        snap = O.Snapshot(users[S.USER_ID].to_numpy(np.int64), deltas, fs.delta_features(man),
                          {fs.SCORE_DATE: "2026-11-23", fs.MODEL_VERSION: ck.version},
                          datetime(2026, 11, 23, tzinfo=UTC))
        store = fs.apply(cfg, root, man)
        online = fs.feature_store_settings(cfg, root)["online_store"]["path"]
        table = f"{cfg.feast.project}_{fs.UPLIFT_SCORES}"
        writer = O.SqliteBulkWriter(online, table, S.USER_ID, cfg.feast.project)
        marker = {"state": "complete", "served": None, "target": None}
        timed("bulk SQLite, first publication", n, lambda: writer.publish(snap, marker, args.chunk), res)
        timed("bulk SQLite, replacing it", n, lambda: writer.publish(snap, marker, args.chunk), res, args.repeat)

        redis_client = None
        try:
            import redis

            redis_client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=2)
            redis_client.ping()
        except Exception as e:  # noqa: BLE001 - any failure means: no Redis here
            print(f"(no Redis on 127.0.0.1:6379: {e}; Redis rows skipped)")
            redis_client = None
        if redis_client is not None:
            redis_client.flushdb()
            rw = O.RedisBulkWriter(redis_client, fs.UPLIFT_SCORES, S.USER_ID, cfg.feast.project)
            timed("bulk Redis", n, lambda: rw.publish(snap, args.chunk), res, args.repeat)
            # A versioned publication's extra work: sweeping the superseded keys (n of Feast's own here).
            project = cfg.feast.project
            timed("Redis sweep of the superseded keys", n,
                  lambda: O.redis_sweep(redis_client, S.USER_ID, project, keep=1), res)

        m = args.reference_users or n
        ref = next(snap.chunks(m))
        ref_root = root / "reference"
        ref_store = fs.apply(cfg, ref_root, man)
        ref_online = fs.feature_store_settings(cfg, ref_root)["online_store"]["path"]
        timed(f"reference: raw SQLite upsert ({m:,})", m, lambda: raw_sqlite_upsert(ref_online, table, ref), res)
        shutil.rmtree(ref_root / "data" / "feast")
        ref_store = fs.apply(cfg, ref_root, man)
        timed(f"reference: Feast write_to_online_store ({m:,})", m, lambda: feast_plain(ref_store, ref, args.chunk),
              res)
        if redis_client is not None:
            redis_client.flushdb()
            prod = cfg.model_copy(update={"feast": cfg.feast.model_copy(update={"profile": "production"})})
            red_store = fs.apply(prod, root / "redis", man)
            timed(f"reference: Feast write_to_online_store, Redis ({m:,})", m,
                  lambda: feast_plain(red_store, ref, args.chunk), res)
            redis_client.flushdb()
        del store

        rate = {k: (m if k.startswith("reference") else n) / v for k, v in res.items()}
        e2e_sqlite = n / (res["inference (encoder + HUM forward)"] + res["bulk SQLite, replacing it"])
        print("\nend to end (inference + write):")
        print(f"  SQLite bulk: {e2e_sqlite:,.0f} users/s")
        feast_key = next(k for k in rate if k.startswith("reference: Feast write_to_online_store ("))
        print(f"  bulk SQLite write vs Feast's plain path: {rate['bulk SQLite, replacing it'] / rate[feast_key]:.1f}x")
        raw_key = next(k for k in rate if k.startswith("reference: raw SQLite"))
        print(f"  bulk SQLite write vs raw executemany upsert: {rate['bulk SQLite, replacing it'] / rate[raw_key]:.1f}x")
        if "bulk Redis" in res:
            e2e_redis = n / (res["inference (encoder + HUM forward)"] + res["bulk Redis"])
            print(f"  Redis bulk: {e2e_redis:,.0f} users/s")
            red_key = next((k for k in rate if "Redis (" in k), None)
            if red_key:
                print(f"  bulk Redis write vs Feast's plain Redis path: {rate['bulk Redis'] / rate[red_key]:.1f}x")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
