"""Stage ``deploy``: bundle the current models, build the Bento, smoke-test it on loopback, release it.

1. The bundle (DDM weights, ``serving.json`` with treatments, responses, σ and limits,
   and the Feast store settings) becomes a version of the BentoML model
   ``fulcrum-decision`` in ``<serve.bentoml_home>``.
2. ``bentofile.yaml`` is built into a Bento pinned to that model version.
3. The Bento is served by a real ``bentoml serve`` on 127.0.0.1 (a free port): readiness,
   a decision for a published user, an unknown user (the default, with its reason) and a
   malformed request (4xx) are checked.
4. Only then ``<data>/release.json`` names the Bento as the one to serve (``fulcrum serve``).
   A failed smoke test leaves the previous release in place.

Before anything is built, the policy gate (``policy.gate``): the policy stage's verdict
on the served HUM must pass (each response's DR lower bound above its guard-rail), or
the release is refused and the previous one keeps serving; ``policy.force`` releases
anyway and the release records it. σ is the calibrated one (``policy.calibrate``).
With no previous release (a first install), "the previous state stays" means no strategy
switched on: the release goes out with every treatment off (σ null), gate ``blocked``,
so the service answers with the safe decision and says why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from serving.process import CODE_DIR, ServerError, free_port, start_server, stop_server, wait_ready

log = logging.getLogger("fulcrum")
RELEASE_FILE = "release.json"


class DeployError(ServerError):
    """The new Bento failed its smoke test; the previous release stays."""


def bentoml_home(cfg: FulcrumConfig, root: Path) -> Path:
    home = Path(cfg.serve.bentoml_home)
    return (home if home.is_absolute() else Path(root) / home).resolve()


def use_bentoml_home(cfg: FulcrumConfig, root: Path) -> Path:
    """Point BentoML at the project's store. Must run before bentoml reads its configuration."""
    home = bentoml_home(cfg, root)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage analytics calls home
    return home


def release_path(cfg: FulcrumConfig, root: Path) -> Path:
    return Path(root) / cfg.paths.data / RELEASE_FILE


def read_release(cfg: FulcrumConfig, root: Path) -> dict | None:
    path = release_path(cfg, root)
    return json.loads(path.read_text()) if path.exists() else None


def release_policy(cfg: FulcrumConfig, root: Path, served_version: str | None) -> dict:
    """σ, mode and the gate's verdict for this release, from the policy stage; DeployError when it blocks.

    With ``policy.gate`` off and no policy evaluation, σ is ``decision.sigma`` as configured.
    The evaluation must be of the HUM whose scores are served and of the configured mode:
    σ calibrated for another model would act on δ it was never checked against.
    """
    from pipelines.policy import read_decision

    decision = read_decision(cfg, root)
    manual = {"sigma": None, "sigma_source": "decision.sigma", "gate": "off", "forced": False, "problems": []}
    if decision is None:
        if cfg.policy.gate:
            raise FileNotFoundError("no policy evaluation to gate the release on: run the policy stage first "
                                    "(fulcrum policy), or set policy.gate false")
        return manual
    if decision["hum_version"] != served_version:
        raise DeployError(f"the policy stage evaluated HUM {decision['hum_version']}, but the online store serves "
                          f"HUM {served_version} (publish blocked or not run?): re-run policy for the served model")
    if decision["mode"] != cfg.decision.mode:
        raise DeployError(f"the policy stage evaluated decision mode {decision['mode']!r}, the configuration says "
                          f"{cfg.decision.mode!r}: re-run the policy stage")
    gate = decision["gate"]
    blocked = cfg.policy.gate and not gate["passed"]
    if blocked and not cfg.policy.force and read_release(cfg, root) is None:
        log.warning("deploy: the policy gate blocks the calibrated σ and nothing is released yet: releasing "
                    "every treatment OFF (the state before any release): %s", "; ".join(gate["problems"]))
        return {"sigma": dict.fromkeys(decision["sigma"]), "sigma_source": "all off (gate blocked, first release)",
                "gate": "blocked", "forced": False, "problems": gate["problems"]}
    if blocked and not cfg.policy.force:
        raise DeployError("the policy gate blocks this release, the previous release stays: "
                          + "; ".join(gate["problems"]) + " (see reports/policy.html; policy.force releases anyway)")
    if blocked:
        log.warning("deploy: policy gate FORCED past: %s", "; ".join(gate["problems"]))
    return {
        "sigma": decision["sigma"] if decision["sigma_source"] == "calibrated" else None,
        "sigma_source": decision["sigma_source"],
        "gate": "passed" if gate["passed"] else ("forced" if blocked else "off"),
        "forced": bool(blocked),
        "problems": gate["problems"],
    }


def make_bundle(cfg: FulcrumConfig, root: Path, dest: Path, sigma: dict[str, float | None] | None = None) -> dict:
    """Write the service's bundle into ``dest``; returns the serving spec.

    ``sigma`` (per treatment; None = never on) replaces ``decision.sigma`` when given.
    """
    from models.ddm_io import CHECKPOINT, load_ddm
    from models.ddm_numpy import save_serving_ddm
    from pipelines.feature_store import write_feature_store_yaml
    from serving.engine import DDM_FILE, REPO_DIR, SERVING_FILE

    man = S.Manifest.read(cfg.paths.rct_dir(root))
    ddm_file = cfg.paths.ddm_dir(root) / CHECKPOINT
    if not ddm_file.exists():
        raise FileNotFoundError(f"{ddm_file} not found: run the DDM training stage first (fulcrum train-ddm)")
    ddm = load_ddm(ddm_file)
    if list(ddm.meta["responses"]) != man.responses:
        raise ValueError(f"DDM {ddm.version} was trained for responses {ddm.meta['responses']}, "
                         f"the data has {man.responses}")
    dest.mkdir(parents=True, exist_ok=True)
    save_serving_ddm(dest / DDM_FILE, ddm.fast, ddm.meta)  # numpy arrays: the Bento needs no torch
    (dest / REPO_DIR).mkdir(exist_ok=True)
    shutil.copyfile(write_feature_store_yaml(cfg, root), dest / REPO_DIR / "feature_store.yaml")
    spec = {
        "project": cfg.feast.project,
        "profile": cfg.feast.profile,
        "join_key": S.USER_ID,
        "treatments": man.treatments,
        "responses": man.responses,
        "sigma": sigma if sigma is not None else dict(zip(man.treatments, cfg.decision.sigma_for(man.treatments),
                                                           strict=True)),
        "mode": cfg.decision.mode,
        "max_items": cfg.serve.max_items,
        "max_batch": cfg.serve.max_batch,
        "score_reader": cfg.serve.score_reader,
        "ddm_version": ddm.version,
    }
    (dest / SERVING_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def smoke_test(url: str, user_id: int, responses: list[str], served: dict) -> dict:
    """Checks a running service; returns what it saw. Raises DeployError on the first failure."""
    import httpx

    from serving.examples import example_request

    checks: dict = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        ready = client.get("/ops/ready")
        if ready.status_code != 200 or ready.json()["score_date"] != served["score_date"]:
            raise DeployError(f"/ops/ready: {ready.status_code} {ready.text[:300]}")
        good = example_request(user_id, responses)
        t0 = time.perf_counter()
        r = client.post("/decide", json=good)
        checks["decide_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        body = r.json() if r.status_code == 200 else {}
        if r.status_code != 200 or body.get("reason") != "scored" or \
                body["model_versions"]["hum"] != served["model_version"]:
            raise DeployError(f"/decide for published user {user_id}: {r.status_code} {r.text[:300]}")
        checks["decision"] = body["decisions"]
        unknown = client.post("/decide", json=example_request(-1, responses))
        if unknown.status_code != 200 or unknown.json().get("reason") != "no_scores" or \
                any(unknown.json()["decisions"].values()):
            raise DeployError(f"/decide for an unknown user: {unknown.status_code} {unknown.text[:300]}")
        bad = client.post("/decide", json={**good, "user_id": "not a number"})
        if not 400 <= bad.status_code < 500:
            raise DeployError(f"/decide with a malformed body answered {bad.status_code}, expected 4xx")
        again = client.post("/decide", json=good)
        if again.status_code != 200:
            raise DeployError(f"/decide after a bad request: {again.status_code}")
        checks["ok"] = True
    return checks


def run_deploy(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    home = use_bentoml_home(cfg, root)
    import bentoml

    from pipelines.feature_store import scores_path
    from pipelines.publish import read_marker

    t0 = time.perf_counter()
    root = Path(root).resolve()
    marker = read_marker(cfg, root)
    served = marker.get("served")
    if not served:
        raise FileNotFoundError("no scores are published yet: run the publish stage first (fulcrum publish)")
    policy = release_policy(cfg, root, served["model_version"])
    with bentoml.models.create("fulcrum-decision", labels={"score_date": served["score_date"]},
                               metadata={"hum": served["model_version"]}) as model:
        spec = make_bundle(cfg, root, Path(model.path), sigma=policy["sigma"])
    model_tag = str(model.tag)
    env = {**os.environ, "FULCRUM_DECISION_MODEL": model_tag}
    os.environ["FULCRUM_DECISION_MODEL"] = model_tag  # the build imports the service: pin this version
    bento = bentoml.bentos.build_bentofile(str(CODE_DIR / "bentofile.yaml"), build_ctx=str(CODE_DIR),
                                           labels={"ddm": spec["ddm_version"], "hum": served["model_version"],
                                                   "score_date": served["score_date"]})
    bento_tag = str(bento.tag)
    log.info("deploy: built %s with %s; smoke test on 127.0.0.1", bento_tag, model_tag)
    user_id = int(pq.read_table(scores_path(cfg, root), columns=[S.USER_ID]).column(0)[0].as_py())
    port = free_port()
    logs = cfg.paths.reports_dir(root) / "deploy_server.log"
    logs.parent.mkdir(parents=True, exist_ok=True)
    logs.unlink(missing_ok=True)
    proc = start_server(bento_tag, port, env, logs, serve=cfg.serve)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}", proc, cfg.serve.smoke_timeout_s)
        checks = smoke_test(f"http://127.0.0.1:{port}", user_id, spec["responses"], served)
    except ServerError as e:
        raise DeployError(f"{bento_tag} failed its smoke test, the previous release stays: {e} "
                          f"(server log: {logs})") from None
    finally:
        stop_server(proc)
    release = {
        "bento": bento_tag,
        "model": model_tag,
        "bentoml_home": str(home),
        "ddm_version": spec["ddm_version"],
        "hum_version": served["model_version"],
        "score_date": served["score_date"],
        "sigma": spec["sigma"],
        "mode": spec["mode"],
        "policy": {k: policy[k] for k in ("sigma_source", "gate", "forced", "problems")},
        "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = release_path(cfg, root)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(release, indent=2) + "\n")
    os.replace(tmp, path)
    summary = {**release, "ready_seconds": round(ready_s, 2), "smoke": checks,
               "seconds": round(time.perf_counter() - t0, 2)}
    (cfg.paths.reports_dir(root) / "deploy.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("deploy: released %s (DDM %s, HUM %s, scores of %s) after a passing smoke test",
             bento_tag, spec["ddm_version"], served["model_version"], served["score_date"])
    return summary
