"""Decision-service latency: a real `bentoml serve` on loopback vs the same work in-process.

    python benchmarks/service_latency.py                 # uses the release of `make run` / `dvc repro`
    python benchmarks/service_latency.py --build-world   # builds a small world in a temp folder first
    python benchmarks/service_latency.py --build-world --cdum   # both families: HMUM and CDUM side by side

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

When the release carries CDUM (``families: [hmum, cdum]``), the in-process and sequential
HTTP runs send every body twice, once per policy, interleaved (same users, same moment), and
print each policy's p50 and the ratio cdum / hmum.

Targets on 2 cores: p50 <= 3 ms and p99 <= 15 ms sequential; >= 500 requests/s with 8 clients;
``policy: cdum`` p50 within 10 % of ``policy: hmum``.
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
# Both families on the duration-mix scenario; CDUM's ξ come from the policy stage (as configured here).
CDUM_WORLD = {
    **SMALL_WORLD,
    "families": ["hmum", "cdum"],
    "source": {**SMALL_WORLD["source"], "scenario": "duration_mix", "treatments": ["short", "medium", "long"],
               "combined_arms": [], "arm_shares": None},
    "decision": {"sigma": {}},
    "cdum": {"fic": {"epochs": 3}},
    "policy": {"gate": False, "calibrate": False, "bootstrap": 20, "max_candidates": 16, "frontier_points": 5},
}


def build_world(root: Path, cdum: bool = False) -> FulcrumConfig:
    import subprocess

    import yaml

    from pipelines.collect import run_collect
    from pipelines.policy import run_policy
    from pipelines.publish import run_publish
    from pipelines.score import run_score
    from pipelines.train import run_train
    from pipelines.train_cpm import run_train_cpm
    from pipelines.train_ddm import run_train_ddm
    from pipelines.train_fic import run_train_fic
    from pipelines.training_set import run_training_set

    settings = CDUM_WORLD if cdum else SMALL_WORLD
    cfg = FulcrumConfig.model_validate(settings)
    stages = [run_collect, run_training_set, run_train]
    stages += [run_train_cpm, run_train_fic] if cdum else []
    stages += [run_score, run_publish, run_train_ddm] + ([run_policy] if cdum else [])
    for stage in stages:
        stage(cfg, root)
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
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
    ap.add_argument("--cdum", action="store_true", help="with --build-world: both families (duration-mix scenario)")
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests (and per client / 4 concurrent)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()

    tmp = None
    if args.build_world:
        tmp = Path(tempfile.mkdtemp(prefix="fulcrum-latency-"))
        root = tmp
        cfg = build_world(root, args.cdum)
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

    from pipelines.deploy import make_bundle, make_cdum_bundle, read_release
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
    cdum_bundle = None
    policies = ["hmum"]
    if (release.get("cdum") or {}).get("enabled"):
        cdum_bundle = bundle.with_name(bundle.name + "-cdum")
        make_cdum_bundle(cfg, root, cdum_bundle, release["cdum"])
        policies.append("cdum")
    responses = spec["responses"]
    n = args.requests
    bodies = [example_request(int(u), responses, seed=i) for i, u in enumerate(rng.choice(users, n + args.warmup))]
    print(f"release {release['bento']} (scores of {release['score_date']}), {len(users):,} published users, "
          f"policies {policies}")

    # ---- the floor: in-process, no HTTP (each body once per policy, interleaved)
    engine = DecisionEngine(bundle, cdum_bundle=cdum_bundle)
    parsed = {p: [DecideRequest.model_validate({**b, "policy": p}) for b in bodies] for p in policies}
    for i in range(args.warmup):
        for p in policies:
            engine.decide([parsed[p][i]])
    lat: dict[str, list[float]] = {p: [] for p in policies}
    store, ddm, rule = ({p: [] for p in policies} for _ in range(3))
    t0 = time.perf_counter()
    for i in range(args.warmup, len(bodies)):
        for p in policies:
            s = time.perf_counter()
            engine.decide([parsed[p][i]])
            lat[p].append(time.perf_counter() - s)
            store[p].append(engine.timing.store)
            ddm[p].append(engine.timing.ddm)
            rule[p].append(engine.timing.rule)
    floor_s = (time.perf_counter() - t0) / len(policies)
    for p in policies:
        report(f"in-process (no HTTP), {p}", lat[p], floor_s)
        print(f"  breakdown p50: online-store read {pct(store[p], 50):.3f} ms, "
              f"{'DDM' if p == 'hmum' else 'FIC'} forward {pct(ddm[p], 50):.3f} ms, "
              f"rule + response {pct(rule[p], 50):.3f} ms")
    if len(policies) > 1:
        print(f"  cdum / hmum p50 in-process: {pct(lat['cdum'], 50) / pct(lat['hmum'], 50):.3f}")
    floor_p50 = pct(lat["hmum"], 50)
    parsed = parsed["hmum"]
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
    env = {**os.environ, "BENTOML_HOME": release["bentoml_home"], "FULCRUM_DECISION_MODEL": release["model"],
           **({"FULCRUM_CDUM_MODEL": release["cdum_model"]} if release.get("cdum_model") else {})}
    log = root / "reports" / "latency_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(release["bento"], port, env, log, serve=cfg.serve)
    print(f"bentoml serve with {cfg.serve.workers} worker(s)")
    url = f"http://127.0.0.1:{port}"
    encoded = [json.dumps(b).encode() for b in bodies]
    by_policy = {p: [json.dumps({**b, "policy": p}).encode() for b in bodies] for p in policies}
    try:
        print(f"server ready in {wait_ready(url, proc, 120):.1f} s on {url}")
        client = Client("127.0.0.1", port)
        for i in range(args.warmup):
            for p in policies:
                assert client.post("/decide", by_policy[p][i]) == 200
        lat = {p: [] for p in policies}
        t0 = time.perf_counter()
        for i in range(args.warmup, len(bodies)):
            for p in policies:
                s = time.perf_counter()
                status = client.post("/decide", by_policy[p][i])
                lat[p].append(time.perf_counter() - s)
                assert status == 200, status
        seq_s = (time.perf_counter() - t0) / len(policies)
        client.close()
        for p in policies:
            report(f"HTTP, sequential, {p}", lat[p], seq_s)
        print(f"  HTTP + BentoML overhead at p50: {pct(lat['hmum'], 50) - floor_p50:.2f} ms")
        if len(policies) > 1:
            ratio = pct(lat["cdum"], 50) / pct(lat["hmum"], 50)
            print(f"  cdum / hmum p50 over HTTP: {ratio:.3f} (target ≤ 1.10: {'met' if ratio <= 1.10 else 'MISSED'})")

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
        if cdum_bundle is not None:
            shutil.rmtree(cdum_bundle, ignore_errors=True)


if __name__ == "__main__":
    main()
