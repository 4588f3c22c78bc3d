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
from fulcrum.errors import StageError
from serving.engine import CDUM_MODEL_NAME, MODEL_NAME
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
    man = S.Manifest.read(cfg.paths.rct_dir(root))
    source = cfg.decision.weight_source(man.has_requests)
    if decision.get("weight_source", "ddm") != source:
        raise DeployError(f"the policy stage valued decisions with {decision.get('weight_source', 'ddm')} weights, the "
                          f"release would use {source} weights (decision.weights changed?): re-run the policy stage")
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
    source = cfg.decision.weight_source(man.has_requests)
    dest.mkdir(parents=True, exist_ok=True)
    ddm = None
    if source == "ddm":
        ddm_file = cfg.paths.ddm_dir(root) / CHECKPOINT
        if not ddm_file.exists():
            raise FileNotFoundError(f"{ddm_file} not found: run the DDM training stage first (fulcrum train-ddm)")
        ddm = load_ddm(ddm_file)
        if list(ddm.meta["responses"]) != man.responses:
            raise StageError(f"DDM {ddm.version} was trained for responses {ddm.meta['responses']}, "
                             f"the data has {man.responses}")
        save_serving_ddm(dest / DDM_FILE, ddm.fast, ddm.meta)  # numpy arrays: the Bento needs no torch
    (dest / REPO_DIR).mkdir(exist_ok=True)
    shutil.copyfile(write_feature_store_yaml(cfg, root), dest / REPO_DIR / "feature_store.yaml")
    spec = {
        "project": cfg.feast.project,
        "profile": cfg.feast.profile,
        "join_key": S.USER_ID,
        "treatments": man.treatments,
        "responses": man.responses,
        "arms": man.arms,
        "families": list(cfg.families),
        "default_policy": cfg.families[0],
        "sigma": sigma if sigma is not None else dict(zip(man.treatments, cfg.decision.sigma_for(man.treatments),
                                                           strict=True)),
        "mode": cfg.decision.mode,
        "max_items": cfg.serve.max_items,
        "max_batch": cfg.serve.max_batch,
        "score_reader": cfg.serve.score_reader,
        "weight_source": source,  # ddm: per-request weights from the item lists; fixed: the same w for everyone
        "weights": None if ddm else dict(zip(man.responses, cfg.decision.fixed_weights(man.responses), strict=True)),
        "ddm_version": ddm.version if ddm else None,
    }
    (dest / SERVING_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def cdum_release(cfg: FulcrumConfig, root: Path, served: dict) -> dict:
    """The CDUM family's part of this release (``cdum.json``): disabled, or ξ, mode, weights and scales.

    Like HMUM's σ, ξ comes from the policy stage, which must have valued the CPM whose
    outcomes are served. A CDUM whose gate blocks is released with every treatment off
    (ξ null) and says so; HMUM's release is not held back by it. ``policy.force`` releases
    the calibrated ξ anyway.
    """
    from pipelines.policy import read_decision

    if not cfg.cdum_on:
        return {"enabled": False, "reason": f"families is {cfg.families}"}
    decision = (read_decision(cfg, root) or {}).get("cdum")
    if decision is None:
        raise DeployError("families has cdum but the policy stage did not value CDUM: re-run it (fulcrum policy)")
    if decision["cpm_version"] != served.get("cpm_version"):
        raise DeployError(f"the policy stage evaluated CPM {decision['cpm_version']}, but the online store serves "
                          f"CPM {served.get('cpm_version')}: re-run score, publish and policy")
    if decision["mode"] != cfg.cdum.mode:
        raise DeployError(f"the policy stage evaluated CDUM mode {decision['mode']!r}, the configuration says "
                          f"{cfg.cdum.mode!r}: re-run the policy stage")
    gate = decision["gate"]
    blocked = cfg.policy.gate and not gate["passed"]
    xi = decision["xi"] if decision["xi_source"] == "calibrated" else dict(zip(
        decision["xi"], cfg.cdum.xi_for(list(decision["xi"])), strict=True))
    if blocked and not cfg.policy.force:
        log.warning("deploy: the policy gate blocks CDUM: released with every treatment OFF: %s",
                    "; ".join(gate["problems"]))
        xi, state = dict.fromkeys(xi), "blocked"
    else:
        state = "passed" if gate["passed"] else ("forced" if blocked else "off")
    return {"enabled": True, "xi": xi, "xi_source": decision["xi_source"] if state != "blocked" else "all off "
            "(gate blocked)", "mode": decision["mode"], "weights": decision["weights"], "scale": decision["scale"],
            "gate": state, "problems": gate["problems"], "cpm_version": decision["cpm_version"],
            "fic_version": decision["fic_version"]}


def make_cdum_bundle(cfg: FulcrumConfig, root: Path, dest: Path, part: dict) -> dict:
    """Write the CDUM family's bundle (``cdum.json``, and FIC's numpy weights when enabled) into ``dest``."""
    from pipelines.train_fic import FIC_FILE
    from serving.engine import CDUM_FILE
    from serving.engine import FIC_FILE as BUNDLE_FIC

    man = S.Manifest.read(cfg.paths.rct_dir(root))
    dest.mkdir(parents=True, exist_ok=True)
    spec = {**part, "treatments": man.treatments, "responses": man.responses}
    if part["enabled"]:
        fic = cfg.paths.fic_dir(root) / FIC_FILE
        if not fic.exists():
            raise FileNotFoundError(f"{fic} not found: run the FIC training stage first (fulcrum train-fic)")
        shutil.copyfile(fic, dest / BUNDLE_FIC)
    (dest / CDUM_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


def smoke_test(url: str, user_id: int, responses: list[str], served: dict, cdum: bool = False,
               fixed_weights: bool = False) -> dict:
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
        if cdum:  # the second family: its own rule on the same user's published CPM outcomes
            c = client.post("/decide", json={**good, "policy": "cdum"})
            got = c.json() if c.status_code == 200 else {}
            if c.status_code != 200 or got.get("reason") != "scored" or got.get("policy") != "cdum" or \
                    got["model_versions"]["cpm"] != served.get("cpm_version"):
                raise DeployError(f"/decide with policy cdum for published user {user_id}: {c.status_code} "
                                  f"{c.text[:300]}")
            checks["cdum_decision"] = got["decisions"]
        if fixed_weights:  # without DDM a request needs no item lists
            bare = client.post("/decide", json=example_request(user_id, responses, lists=False))
            if bare.status_code != 200 or bare.json().get("reason") != "scored":
                raise DeployError(f"/decide without item lists (fixed weights): {bare.status_code} {bare.text[:300]}")
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
    cdum = cdum_release(cfg, root, served)
    with bentoml.models.create(MODEL_NAME, labels={"score_date": served["score_date"], "family": "hmum"},
                               metadata={"hum": served["model_version"]}) as model:
        spec = make_bundle(cfg, root, Path(model.path), sigma=policy["sigma"])
    # One store entry per family: CDUM's is written on every release (disabled when the cycle runs
    # HMUM only), so the service never picks up an older release's CDUM.
    with bentoml.models.create(CDUM_MODEL_NAME, labels={"score_date": served["score_date"], "family": "cdum",
                                                        "enabled": str(cdum["enabled"]).lower()},
                               metadata={k: cdum[f"{k}_version"] for k in ("cpm", "fic") if k + "_version" in cdum}) as cmodel:
        make_cdum_bundle(cfg, root, Path(cmodel.path), cdum)
    model_tag, cdum_tag = str(model.tag), str(cmodel.tag)
    pins = {"FULCRUM_DECISION_MODEL": model_tag, "FULCRUM_CDUM_MODEL": cdum_tag}
    env = {**os.environ, **pins}
    os.environ.update(pins)  # the build imports the service: pin these versions
    bento = bentoml.bentos.build_bentofile(str(CODE_DIR / "bentofile.yaml"), build_ctx=str(CODE_DIR),
                                           labels={"ddm": spec["ddm_version"] or "fixed-weights",
                                                   "hum": served["model_version"],
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
        checks = smoke_test(f"http://127.0.0.1:{port}", user_id, spec["responses"], served, cdum["enabled"],
                            spec["weight_source"] == "fixed")
    except ServerError as e:
        raise DeployError(f"{bento_tag} failed its smoke test, the previous release stays: {e} "
                          f"(server log: {logs})") from None
    finally:
        stop_server(proc)
    release = {
        "bento": bento_tag,
        "model": model_tag,
        "cdum_model": cdum_tag,
        "families": list(cfg.families),
        "default_policy": spec["default_policy"],
        "bentoml_home": str(home),
        "ddm_version": spec["ddm_version"],
        "weight_source": spec["weight_source"],
        "weights": spec["weights"],
        "hum_version": served["model_version"],
        "score_date": served["score_date"],
        "sigma": spec["sigma"],
        "mode": spec["mode"],
        "policy": {k: policy[k] for k in ("sigma_source", "gate", "forced", "problems")},
        "cdum": cdum,
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
