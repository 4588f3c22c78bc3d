"""Decision-service latency: a real `bentoml serve` on loopback vs the same work in-process.

    python benchmarks/service_latency.py                 # uses the release of `make run` / `dvc repro`
    python benchmarks/service_latency.py --build-world   # builds a small world in a temp folder first

Measures, for ``POST /decide`` with simulator-shaped bodies (10 recent, 20 candidate items)
for published users:

- sequential: one keep-alive client, p50/p99 latency and requests/s;
- concurrent: 8 clients (threads, one keep-alive connection each), p50/p99 and requests/s;

The clients are the standard library's ``http.client`` with the bodies JSON-encoded up
front: the load generator shares the 2 cores with the server, and a heavier client
(httpx measured ~1.5 ms more per request here) would measure itself as much as the server.
- the floor: the same requests through the decision engine in-process (no HTTP), with
  the breakdown of each call into the online-store read, the DDM forward and the
  decision rule, and the read again through the other reader (direct / Feast's
  ``get_online_features``); HTTP + BentoML overhead = HTTP p50 - in-process p50.

Targets on 2 cores: p50 <= 3 ms and p99 <= 15 ms sequential; >= 500 requests/s with 8 clients.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fulcrum.config import FulcrumConfig, load_config  # noqa: E402

SMALL_WORLD = {
    "paths": {"data": "data", "reports": "reports"},
    "source": {"n_users": 20_000, "feature_days": 2, "experiment_days": 2, "requests": {"user_share": 0.3}},
    "train": {"epochs": 2, "min_epochs": 1},
    "ddm": {"epochs": 3},
    "policy": {"gate": False},  # latency, not policy: σ as configured (the gate needs the policy stage)
}


def build_world(root: Path) -> FulcrumConfig:
    import subprocess

    import yaml

    from pipelines.collect import run_collect
    from pipelines.publish import run_publish
    from pipelines.score import run_score
    from pipelines.train import run_train
    from pipelines.train_ddm import run_train_ddm
    from pipelines.training_set import run_training_set

    cfg = FulcrumConfig.model_validate(SMALL_WORLD)
    for stage in (run_collect, run_training_set, run_train, run_score, run_publish, run_train_ddm):
        stage(cfg, root)
    (root / "params.yaml").write_text(yaml.safe_dump(SMALL_WORLD))
    fulcrum = str(Path(sys.executable).parent / "fulcrum")
    subprocess.run([fulcrum, "deploy", "--params", str(root / "params.yaml"), "--root", str(root)], check=True)
    return cfg


class Client:
    """One keep-alive HTTP/1.1 connection: POST a pre-encoded JSON body, read the whole answer."""

    def __init__(self, host: str, port: int, timeout: float = 30):
        import http.client

        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def post(self, path: str, body: bytes) -> int:
        self.conn.request("POST", path, body, {"content-type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        return resp.status

    def close(self) -> None:
        self.conn.close()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def report(label: str, lat: list[float], seconds: float) -> None:
    print(f"{label:<34} p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms  "
          f"{len(lat) / seconds:8,.0f} req/s  ({len(lat):,} requests)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project root with a release (default: .)")
    ap.add_argument("--params", type=Path, default=None, help="params file (default: <root>/params.yaml)")
    ap.add_argument("--build-world", action="store_true", help="build a small released world in a temp folder")
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests (and per client / 4 concurrent)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()

    tmp = None
    if args.build_world:
        tmp = Path(tempfile.mkdtemp(prefix="fulcrum-latency-"))
        root = tmp
        cfg = build_world(root)
    else:
        root = args.root.resolve()
        cfg = load_config(args.params or root / "params.yaml")
    try:
        run(cfg, root, args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: FulcrumConfig, root: Path, args) -> None:
    import json

    from pipelines.deploy import make_bundle, read_release
    from pipelines.feature_store import scores_path
    from serving.engine import DecisionEngine
    from serving.examples import example_request
    from serving.process import free_port, start_server, stop_server, wait_ready
    from serving.schemas import DecideRequest

    release = read_release(cfg, root)
    if release is None:
        sys.exit(f"no release under {root}: run `make run` (or `dvc repro`) first, or pass --build-world")
    users = pq.read_table(scores_path(cfg, root), columns=["user_id"]).column(0).to_numpy()
    rng = np.random.default_rng(0)
    responses = None
    bundle = Path(tempfile.mkdtemp(prefix="fulcrum-bundle-"))
    spec = make_bundle(cfg, root, bundle)
    responses = spec["responses"]
    n = args.requests
    bodies = [example_request(int(u), responses, seed=i) for i, u in enumerate(rng.choice(users, n + args.warmup))]
    print(f"release {release['bento']} (scores of {release['score_date']}), {len(users):,} published users")

    # ---- the floor: in-process, no HTTP
    engine = DecisionEngine(bundle)
    parsed = [DecideRequest.model_validate(b) for b in bodies]
    for r in parsed[: args.warmup]:
        engine.decide([r])
    lat, store, ddm, rule = [], [], [], []
    t0 = time.perf_counter()
    for r in parsed[args.warmup:]:
        s = time.perf_counter()
        engine.decide([r])
        lat.append(time.perf_counter() - s)
        store.append(engine.timing.store)
        ddm.append(engine.timing.ddm)
        rule.append(engine.timing.rule)
    floor_s = time.perf_counter() - t0
    report("in-process (no HTTP), sequential", lat, floor_s)
    print(f"  breakdown p50: online-store read {pct(store, 50):.3f} ms, DDM forward {pct(ddm, 50):.3f} ms, "
          f"rule + response {pct(rule, 50):.3f} ms")
    floor_p50 = pct(lat, 50)
    del engine

    # ---- the same reads through Feast's get_online_features (serve.score_reader: feast), for comparison
    other = "feast" if spec.get("score_reader", "direct") == "direct" else "direct"
    engine = DecisionEngine(bundle, score_reader=other)
    for r in parsed[: args.warmup]:
        engine.decide([r])
    store = []
    for r in parsed[args.warmup:]:
        engine.decide([r])
        store.append(engine.timing.store)
    print(f"  online-store read with score_reader={other}: p50 {pct(store, 50):.3f} ms")
    del engine

    # ---- over HTTP: the released Bento
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": release["bentoml_home"]}
    log = root / "reports" / "latency_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(release["bento"], port, env, log, serve=cfg.serve)
    print(f"bentoml serve with {cfg.serve.workers} worker(s)")
    url = f"http://127.0.0.1:{port}"
    encoded = [json.dumps(b).encode() for b in bodies]
    try:
        print(f"server ready in {wait_ready(url, proc, 120):.1f} s on {url}")
        client = Client("127.0.0.1", port)
        for b in encoded[: args.warmup]:
            assert client.post("/decide", b) == 200
        lat = []
        t0 = time.perf_counter()
        for b in encoded[args.warmup:]:
            s = time.perf_counter()
            status = client.post("/decide", b)
            lat.append(time.perf_counter() - s)
            assert status == 200, status
        seq_s = time.perf_counter() - t0
        client.close()
        report("HTTP, sequential", lat, seq_s)
        print(f"  HTTP + BentoML overhead at p50: {pct(lat, 50) - floor_p50:.2f} ms")

        per_client = max(1, n // 4)
        results: list[list[float]] = [[] for _ in range(args.clients)]
        errors: list[str] = []

        def worker(i: int) -> None:
            mine = [encoded[(i * per_client + j) % len(encoded)] for j in range(per_client)]
            c = Client("127.0.0.1", port)
            for b in mine:
                s = time.perf_counter()
                status = c.post("/decide", b)
                results[i].append(time.perf_counter() - s)
                if status != 200:
                    errors.append(str(status))
            c.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conc_s = time.perf_counter() - t0
        flat = [x for r in results for x in r]
        report(f"HTTP, {args.clients} concurrent clients", flat, conc_s)
        if errors:
            print(f"  {len(errors)} non-200 answers: {statistics.multimode(errors)}")
    finally:
        stop_server(proc)
        shutil.rmtree(bundle, ignore_errors=True)


if __name__ == "__main__":
    main()
