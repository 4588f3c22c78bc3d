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
- One active run at a time (``max_active_runs=1``), and every DVC call holds the project's
  workspace lock (``fulcrum.lock``, the same one ``make run``, ``dvc repro`` and each
  ``fulcrum`` stage take), so nothing else writes the workspace during a stage.
- A run with trigger parameters that fails leaves nothing behind: ``restore_workspace``
  puts ``dvc.lock`` back as it was before the run and checks the DVC outputs out again
  (``data/rct`` is not left holding the trigger's 10-user set) and the reports, gate and
  policy files DVC does not cache as they were, then ``restore_params``
  restores ``params.yaml``.
- Deterministic failures fail at once, without retries: an invalid trigger value
  (``configure``) and a stage that stops for a named reason (``fulcrum`` exit code 2: bad
  data, bad configuration, implausible scores). Crashes and a busy lock are retried.

- ``score_part`` is mapped: one task per scoring partition (``score.partitions``), then
  ``score`` combines the parts.
- Distributed profile (``FULCRUM_REMOTE_URL`` set on the Celery workers): each stage task runs
  in its worker's own checkout through ``fulcrum.remote_run``, pulling its inputs from the
  remote and pushing its outputs; the overrides and the drift gate travel through the remote,
  and ``promote`` makes a finished run the one the next run starts from.

Nothing heavy is imported at module level: parsing this file costs milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task

PROJECT = Path(os.environ.get("FULCRUM_PROJECT_DIR", Path(__file__).resolve().parents[1]))
BIN = Path(sys.executable).parent  # dvc and fulcrum live next to the interpreter Airflow runs on
OVERRIDES_STATE = ".fulcrum_run_overrides.json"
# Before a run with trigger parameters: dvc.lock and the outputs DVC does not cache (reports,
# gate and policy files), to put back if the run fails (cached outputs come back by checkout).
RUN_BACKUP = ".fulcrum_run_backup"
# DVC's message when a stage command exits 2 (fulcrum's "stopped for a named reason").
DETERMINISTIC = re.compile(r"failed to run: .*, exited with 2\b")
# The DVC stages, in dvc.yaml order (tests check this matches dvc.yaml's dependency graph).
STAGES = [
    "collect", "training_set", "train", "train_cpm", "train_fic", "evaluate", "score_part", "score", "drift", "publish",
    "train_ddm", "policy", "deploy",
]  # train_cpm / train_fic: the CDUM family (each records a skip when `families` leaves it out)
# A DVC foreach stage (score_part@0 … score_part@N-1, N from params.yaml score.partitions): one
# mapped task per partition, so the parts run side by side on as many workers as there are.
MAPPED = {"score_part"}
AFTER_GATE = {"train_ddm", "policy", "deploy"}  # run even when the gate skipped publish


# Set on the workers of the distributed profile (fulcrum.airflow_env): PROJECT is then the worker's
# own checkout, and every stage pulls its inputs from this remote and pushes its outputs to it.
REMOTE = os.environ.get("FULCRUM_REMOTE_URL")


def stage_command(stage: str, run_id: str | None = None) -> str:
    """Run one DVC stage under the project lock (waits up to an hour for another writer).

    With a remote (distributed profile), ``fulcrum.remote_run`` wraps it: inputs pulled from the
    remote before, outputs pushed after, under the same lock.
    """
    project = shlex.quote(str(PROJECT))
    repro = f"{shlex.quote(str(BIN / 'dvc'))} repro --single-item {shlex.quote(stage)}"
    if REMOTE:
        return (f"cd {project} && {shlex.quote(sys.executable)} -m fulcrum.remote_run --root {project} "
                f"--run-id {shlex.quote(run_id or '')} stage {shlex.quote(stage)} -- {repro}")
    lock = f"{shlex.quote(sys.executable)} -m fulcrum.lock --root {project} --wait 3600 --"
    return f"cd {project} && {lock} {repro}"


def current_run_id() -> str:
    from airflow.sdk import get_current_context

    return get_current_context()["run_id"]


def run_stage(stage: str, env: dict) -> None:
    """One stage as a task: its output into the task log; exit 2 fails for good, anything else is retried."""
    from airflow.sdk.exceptions import AirflowFailException

    command = stage_command(stage, current_run_id() if REMOTE else None)
    proc = subprocess.Popen(command, shell=True, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        print(line, end="")
        tail = (tail + [line])[-50:]
    if proc.wait() == 0:
        return
    if any(DETERMINISTIC.search(line) for line in tail):
        raise AirflowFailException(f"stage {stage} stopped for a reason a retry cannot fix (see above): "
                                   "fix the input or the parameters, then trigger again")
    raise RuntimeError(f"stage {stage} failed with exit code {proc.returncode} (retried)")


def apply_overrides(params: dict) -> dict:
    """The trigger's overrides applied to params.yaml under the workspace lock; what they replaced.

    An invalid value fails the task for good (no retries: it would fail the same way).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from fulcrum.config import ConfigError
    from fulcrum.lock import workspace_lock
    from fulcrum.params_edit import set_params

    try:
        overrides = run_overrides(params)
    except (TypeError, ValueError) as e:
        raise AirflowFailException(f"invalid trigger parameters: {e}") from None
    if REMOTE:
        return record_remote_overrides(overrides)
    with workspace_lock(PROJECT, "airflow fulcrum_daily.configure"):
        try:
            previous = set_params(PROJECT / "params.yaml", overrides) if overrides else {}
        except ConfigError as e:
            raise AirflowFailException(str(e)) from None
        if overrides and (PROJECT / "dvc.lock").exists():
            _copy_paths(PROJECT, PROJECT / RUN_BACKUP, ["dvc.lock", *uncached_outputs(PROJECT / "dvc.yaml")])
        (PROJECT / OVERRIDES_STATE).write_text(json.dumps(previous, default=str))
    return overrides


def record_remote_overrides(overrides: dict) -> dict:
    """Distributed profile: check the overrides on a copy of params.yaml, then leave them in the
    remote, where every stage's task applies them to its own checkout (and takes them off after)."""
    import shutil
    import tempfile

    from airflow.sdk.exceptions import AirflowFailException

    from fulcrum.config import ConfigError
    from fulcrum.params_edit import set_params
    from fulcrum.remote_run import Exchange

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(PROJECT / "params.yaml", Path(tmp) / "params.yaml")
        try:
            set_params(Path(tmp) / "params.yaml", overrides) if overrides else None
        except ConfigError as e:
            raise AirflowFailException(str(e)) from None
    Exchange(REMOTE, current_run_id()).put_json_run("overrides.json", overrides)
    return overrides


def uncached_outputs(dvc_yaml: Path) -> list[str]:
    """Paths of every stage output declared ``cache: false`` (DVC cannot check them out again)."""
    import yaml

    out = []
    for spec in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind) or []:
                if isinstance(entry, dict):
                    (path, opts), = entry.items()
                    if (opts or {}).get("cache") is False:
                        out.append(path)
    return out


def _copy_paths(src_root: Path, dst_root: Path, paths: list[str]) -> None:
    """Copy files and folders ``paths`` (relative) from one root to another; missing ones are skipped."""
    import shutil

    for rel in paths:
        src, dst = src_root / rel, dst_root / rel
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def restore_dvc_state() -> str:
    """After a failed run with trigger parameters: dvc.lock and the DVC outputs as before the run."""
    import shutil

    from fulcrum.lock import workspace_lock

    if REMOTE:
        return "nothing to restore: a failed run is never promoted, the next run starts from the last good one"
    backup = PROJECT / RUN_BACKUP
    if not (backup / "dvc.lock").exists():
        return "nothing to restore (the run had no trigger parameters)"
    with workspace_lock(PROJECT, "airflow fulcrum_daily.restore_workspace"):
        for rel in uncached_outputs(PROJECT / "dvc.yaml"):  # outputs the failed run made that did not exist before
            if not (backup / rel).exists() and (PROJECT / rel).is_file():
                (PROJECT / rel).unlink()
        _copy_paths(backup, PROJECT, ["dvc.lock", *uncached_outputs(PROJECT / "dvc.yaml")])
        out = subprocess.run([str(BIN / "dvc"), "checkout", "--force"], cwd=PROJECT, capture_output=True,
                             text=True, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
        shutil.rmtree(backup, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError("dvc checkout could not restore the outputs: " + (out.stdout + out.stderr)[-2000:])
    return "dvc.lock and the DVC outputs restored to their state before this run"


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
    description="collect -> training set -> train -> evaluate -> score (partitions) -> drift gate -> publish -> DDM -> "
                "policy -> deploy",
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
        overrides = apply_overrides(params or {})
        print(f"run parameters: {overrides or 'as in params.yaml'}")
        return overrides

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def drift_gate() -> bool:
        """Publish only when the drift checks allow it (or publishing is forced)."""
        if REMOTE:  # the drift task ran on some worker: its gate file is in the remote
            from fulcrum.remote_run import Exchange

            gate = Exchange(REMOTE, current_run_id()).get_json_run("files/data/drift/gate.json")
        else:
            gate = json.loads((PROJECT / "data" / "drift" / "gate.json").read_text())
        if gate["publish_allowed"]:
            print("drift gate: open" + (" (forced despite: " + ", ".join(gate["blocked_by"]) + ")"
                                        if gate.get("forced") else ""))
            return True
        print("drift gate: CLOSED by " + ", ".join(gate["blocked_by"]) + ": publishing is skipped and the "
              "last published scores stay served (trigger with force_publish to publish anyway)")
        return False

    @task
    def partitions() -> list[str]:
        """The partition stages to map over: score_part@i for every id in params.yaml score.partitions."""
        from fulcrum.config import load_config

        parts = load_config(PROJECT / "params.yaml").score.partitions
        print(f"{len(parts)} scoring partition(s)")
        return [f"score_part@{i}" for i in parts]

    @task(trigger_rule="one_failed")
    def restore_workspace() -> None:
        """A stage failed: undo what the run's trigger parameters left in the DVC outputs."""
        print(restore_dvc_state())

    @task(trigger_rule="all_done")
    def restore_params() -> None:
        """Put back the params.yaml values this run's trigger parameters replaced."""
        import shutil

        from fulcrum.lock import workspace_lock
        from fulcrum.params_edit import set_params

        if REMOTE:
            print("nothing to put back: every stage's task took the run's overrides off its own checkout")
            return
        with workspace_lock(PROJECT, "airflow fulcrum_daily.restore_params"):
            state = PROJECT / OVERRIDES_STATE
            previous = json.loads(state.read_text()) if state.exists() else {}
            if previous:
                set_params(PROJECT / "params.yaml", previous)
            state.unlink(missing_ok=True)
            shutil.rmtree(PROJECT / RUN_BACKUP, ignore_errors=True)  # a successful run keeps what it made

    @task
    def promote() -> None:
        """Distributed profile: the finished run becomes the state the next run (and `sync`) starts from."""
        if not REMOTE:
            print("single workspace: the project folder already holds the run's outputs")
            return
        from fulcrum.remote_run import Exchange
        from fulcrum.remote_run import promote as promote_run

        print(promote_run(PROJECT, Exchange(REMOTE, current_run_id())))

    @task(trigger_rule="one_failed", retries=0)
    def fail_run_if_a_stage_failed() -> None:
        """restore_params always succeeds; without this the run would look green after a failed stage."""
        raise RuntimeError("a stage of the daily cycle failed: see the failed task's log")

    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FULCRUM_PROJECT_DIR": str(PROJECT)}
    tasks = {
        stage: task(run_stage, task_id=stage, trigger_rule="none_failed" if stage in AFTER_GATE else "all_success")(
            stage, env)
        for stage in STAGES if stage not in MAPPED
    }
    tasks["score_part"] = task(run_stage, task_id="score_part").partial(env=env).expand(stage=partitions())
    first, gate, undo, last = configure(), drift_gate(), restore_workspace(), restore_params()
    first >> tasks["collect"]
    chain = ["collect", "training_set", "train", "train_cpm", "train_fic", "evaluate", "score_part", "score", "drift"]
    for a, b in zip(chain, chain[1:]):
        tasks[a] >> tasks[b]
    tasks["drift"] >> gate >> tasks["publish"] >> tasks["train_ddm"] >> tasks["policy"] >> tasks["deploy"]
    done = promote()
    tasks["deploy"] >> done
    [first, *tasks.values(), done] >> undo >> last
    watcher = fail_run_if_a_stage_failed()
    [first, gate, undo, last, done, *tasks.values()] >> watcher


fulcrum_daily()
