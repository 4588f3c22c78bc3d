"""The daily Fulcrum cycle as an Airflow 3 DAG: one task per DVC stage.

Every stage task runs ``dvc repro --single-item <stage>`` in the project folder, so a
run from the Airflow UI and a ``dvc repro`` produce the same artifacts and the same
``dvc.lock``. Around them:

- ``configure`` applies the run's trigger parameters (run date -> ``score.date``, σ ->
  ``decision.sigma``, force publish -> ``drift.force_publish``, data source -> ``source``)
  to ``params.yaml`` the way DVC expects a parameter change; ``restore_params`` puts the
  previous values back at the end, whatever happened.
- ``drift_gate`` short-circuits ``publish`` when the Evidently checks block it: the last
  published scores stay served, DDM training, policy and deploy still run.
- ``policy`` calibrates σ and values the decisions offline; ``deploy`` refuses a release
  whose policy breaks a guard-rail (the previous release keeps serving) unless the
  trigger's ``force_release`` (``policy.force``) says otherwise. A σ given in the trigger
  form is released as given (``policy.calibrate`` off for that run).
- One active run at a time (``max_active_runs=1``), and every DVC call holds a file lock
  on the project, so a manual ``dvc repro`` and a run never write the workspace at once.

Nothing heavy is imported at module level: parsing this file costs milliseconds.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param, dag, task

PROJECT = Path(os.environ.get("FULCRUM_PROJECT_DIR", Path(__file__).resolve().parents[1]))
BIN = Path(sys.executable).parent  # dvc and fulcrum live next to the interpreter Airflow runs on
LOCK = ".fulcrum.lock"
OVERRIDES_STATE = ".fulcrum_run_overrides.json"
# The DVC stages, in dvc.yaml order (tests check this matches dvc.yaml's dependency graph).
STAGES = [
    "collect", "training_set", "train", "evaluate", "score", "drift", "publish", "train_ddm", "policy", "deploy",
]
AFTER_GATE = {"train_ddm", "policy", "deploy"}  # run even when the gate skipped publish


def stage_command(stage: str) -> str:
    """Run one DVC stage under the project lock (waits up to an hour for another writer)."""
    project = shlex.quote(str(PROJECT))
    return f"cd {project} && flock -w 3600 {LOCK} {shlex.quote(str(BIN / 'dvc'))} repro --single-item {stage}"


def run_overrides(params: dict) -> dict:
    """The trigger form's parameters as dotted ``params.yaml`` overrides (unset ones are left alone)."""
    out: dict = {}
    if params.get("run_date"):
        out["score.date"] = str(params["run_date"])
    for treatment, sigma in (params.get("sigma") or {}).items():
        out[f"decision.sigma.{treatment}"] = float(sigma)
    if params.get("sigma"):
        out["policy.calibrate"] = False  # a σ given by hand is the one released, not the calibrated one
    if params.get("force_release"):
        out["policy.force"] = True
    if params.get("force_publish"):
        out["drift.force_publish"] = True
    for key, value in (params.get("source") or {}).items():
        out[f"source.{key}"] = value
    return out


@dag(
    dag_id="fulcrum_daily",
    description="collect -> training set -> train -> evaluate -> score -> drift gate -> publish -> DDM -> policy -> deploy",
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    tags=["fulcrum"],
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "run_date": Param(None, type=["null", "string"], format="date",
                          description="score date (default: the day after the last feature snapshot)"),
        "sigma": Param({}, type="object", description='σ per treatment, e.g. {"t1": 0.01}; empty = params.yaml'),
        "force_publish": Param(False, type="boolean", description="publish even when a drift check fails"),
        "force_release": Param(False, type="boolean",
                               description="release even when the policy gate blocks it (recorded in the release)"),
        "source": Param({}, type="object",
                        description='overrides of params.yaml `source`, e.g. {"n_users": 50000} or {"type": "logs", ...}'),
    },
    doc_md=__doc__,
)
def fulcrum_daily():
    @task
    def configure(params=None) -> dict:
        """Apply the trigger parameters to params.yaml; remember what they replaced."""
        from fulcrum.params_edit import set_params

        overrides = run_overrides(params or {})
        previous = set_params(PROJECT / "params.yaml", overrides) if overrides else {}
        (PROJECT / OVERRIDES_STATE).write_text(json.dumps(previous, default=str))
        print(f"run parameters: {overrides or 'as in params.yaml'}")
        return overrides

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def drift_gate() -> bool:
        """Publish only when the drift checks allow it (or publishing is forced)."""
        gate_file = PROJECT / "data" / "drift" / "gate.json"
        gate = json.loads(gate_file.read_text())
        if gate["publish_allowed"]:
            print("drift gate: open" + (" (forced despite: " + ", ".join(gate["blocked_by"]) + ")"
                                        if gate.get("forced") else ""))
            return True
        print("drift gate: CLOSED by " + ", ".join(gate["blocked_by"]) + ": publishing is skipped and the "
              "last published scores stay served (trigger with force_publish to publish anyway)")
        return False

    @task(trigger_rule="all_done")
    def restore_params() -> None:
        """Put back the params.yaml values this run's trigger parameters replaced."""
        from fulcrum.params_edit import set_params

        state = PROJECT / OVERRIDES_STATE
        previous = json.loads(state.read_text()) if state.exists() else {}
        if previous:
            set_params(PROJECT / "params.yaml", previous)
        state.unlink(missing_ok=True)

    @task(trigger_rule="one_failed", retries=0)
    def fail_run_if_a_stage_failed() -> None:
        """restore_params always succeeds; without this the run would look green after a failed stage."""
        raise RuntimeError("a stage of the daily cycle failed: see the failed task's log")

    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FULCRUM_PROJECT_DIR": str(PROJECT)}
    tasks = {
        stage: BashOperator(
            task_id=stage, bash_command=stage_command(stage), env=env, append_env=True,
            trigger_rule="none_failed" if stage in AFTER_GATE else "all_success",
        )
        for stage in STAGES
    }
    first, gate, last = configure(), drift_gate(), restore_params()
    first >> tasks["collect"]
    chain = ["collect", "training_set", "train", "evaluate", "score", "drift"]
    for a, b in zip(chain, chain[1:]):
        tasks[a] >> tasks[b]
    tasks["drift"] >> gate >> tasks["publish"] >> tasks["train_ddm"] >> tasks["policy"] >> tasks["deploy"] >> last
    watcher = fail_run_if_a_stage_failed()
    [first, gate, last, *tasks.values()] >> watcher


fulcrum_daily()
