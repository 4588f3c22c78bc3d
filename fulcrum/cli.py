"""The ``fulcrum`` command: one subcommand per pipeline stage.

Heavy libraries are imported inside the commands so ``fulcrum --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="fulcrum",
    help="Fulcrum: decide per user and request which recommendation strategies to switch on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[
    Path | None, typer.Option("--params", "-p", help="configuration file (default: params.yaml or $FULCRUM_PARAMS)")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a setting, e.g. --set source.n_users=1000 (repeatable)"),
]
RootOpt = Annotated[Path, typer.Option("--root", help="project folder that relative paths start from")]


def _setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(msg, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run_stage(fn, params: Path | None, overrides: list[str] | None, root: Path):
    """Load the configuration and run one stage; known failures exit 2 with their message."""
    from fulcrum.errors import StageError
    from fulcrum.lock import LockBusy, workspace_lock
    from pipelines.validation import ContractError

    cfg = _config(params, overrides)
    stage = fn.__module__.split(".")[-1]
    try:
        with workspace_lock(root, f"fulcrum {stage}", notify=typer.echo):
            return cfg, fn(cfg, root)
    except LockBusy as e:
        _fail(f"{stage} did not start: {e}")
    except ContractError as e:
        _fail(f"{fn.__module__.split('.')[-1]} stopped, nothing was changed:\n{e}")
    except (FileNotFoundError, StageError) as e:
        _fail(f"{fn.__module__.split('.')[-1]} stopped, nothing was changed: {e}")


def _config(params: Path | None, overrides: list[str] | None):
    from fulcrum.config import ConfigError, load_config, parse_overrides
    from fulcrum.secrets import SecretsError, load_secrets_file

    try:
        load_secrets_file(Path(params).resolve().parent if params else Path("."))  # next to params.yaml
        return load_config(params, parse_overrides(overrides))
    except (ConfigError, SecretsError) as e:
        _fail(str(e))


def _skipped(stage: str, summary: dict) -> bool:
    """Say so when a stage had nothing to do (a family off, no request logs); True then."""
    if summary.get("skipped"):
        typer.echo(f"{stage} skipped: {summary['reason']}")
    return bool(summary.get("skipped"))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def config(params: ParamsOpt = None, overrides: SetOpt = None) -> None:
    """Validate the configuration and print it with every default filled in."""
    import yaml

    from fulcrum.secrets import redact

    cfg = _config(params, overrides)
    typer.echo(redact(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))


@app.command()
def collect(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 1: collect RCT logs (simulator or your own logs) and write the data report."""
    from pipelines.collect import run_collect

    cfg, rep = _run_stage(run_collect, params, overrides, root)
    typer.echo(f"collected {rep['rows']:,} users; report: {Path(cfg.paths.reports) / 'collect.md'}")


@app.command("training-set")
def training_set(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 2: the point-in-time training set from Feast (features as of each assignment)."""
    from pipelines.training_set import run_training_set

    cfg, s = _run_stage(run_training_set, params, overrides, root)
    typer.echo(f"training set: {s['rows']:,} users, snapshots {s['snapshot_age_days_mean']:.2f} days old on "
               f"average; report: {Path(cfg.paths.reports) / 'training_set.json'}")


def _torchrun(processes: int) -> list[str]:
    """The command that starts ``processes`` ranks of this CLI: torchrun beside this interpreter.

    Without that script, its module under this interpreter: the same launcher, the same venv.
    """
    exe = Path(sys.executable)
    runner = exe.parent / "torchrun"
    head = [str(runner)] if runner.exists() else [str(exe), "-m", "torch.distributed.run"]
    return [*head, "--standalone", "--nproc_per_node", str(processes), "-m", "fulcrum.cli"]


def _train_under_torchrun(processes: int, params: Path | None, overrides: list[str] | None, root: Path) -> None:
    """Run `fulcrum train` as ``processes`` DDP ranks; this process holds the workspace lock for them."""
    import subprocess

    from fulcrum.lock import LockBusy, workspace_lock

    args = ["-v"] if logging.getLogger().level <= logging.DEBUG else []
    args += ["train", "--root", str(root), *(["--params", str(params)] if params else [])]
    args += [arg for item in overrides or [] for arg in ("--set", item)]
    try:
        with workspace_lock(root, "fulcrum train", notify=typer.echo):  # the ranks inherit it (FULCRUM_LOCK_HELD)
            code = subprocess.run(_torchrun(processes) + args, check=False).returncode
    except LockBusy as e:
        _fail(f"train did not start: {e}")
    if code:
        _fail(f"train stopped: torchrun ({processes} processes) exited with code {code}", code)


@app.command()
def train(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 3: train HUM (or a baseline: --set train.model=tarnet); cross-fitted on small data (evaluate.protocol).

    With train.processes > 1 it restarts itself as that many data-parallel processes (torchrun, DDP over gloo on CPU).
    """
    import os

    from pipelines.train import run_train

    if "WORLD_SIZE" not in os.environ:  # not a rank of a torchrun group
        processes = _config(params, overrides).train.processes
        if processes > 1:
            _train_under_torchrun(processes, params, overrides, root)
            return
    elif int(os.environ.get("RANK", "0")) > 0:
        from fulcrum.lock import HELD_ENV, lock_path

        os.environ[HELD_ENV] = str(lock_path(root))  # rank 0 takes the workspace lock for the group
    cfg, s = _run_stage(run_train, params, overrides, root)
    if "rank" in s:  # rank 0 reports for the group
        return
    if s["protocol"] == "cross_fit":
        typer.echo(f"trained {s['model']} {s['version']} on all {s['n_train']:,} users for {s['epochs_run']} epochs "
                   f"after cross-fitting {s['folds']} folds × {len(s['fold_seeds'])} repeats (fold models' mean "
                   f"validation loss {s['val_loss']:.5f}, QINI {s['val_qini']:.4f})")
        return
    typer.echo(f"trained {s['model']} {s['version']}: best epoch {s['best_epoch']} of {s['epochs_run']} by validation "
               f"{s['select']} (loss {s['val_loss']:.5f}, QINI {s['val_qini']:.4f})")


@app.command()
def evaluate(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 4: evaluate the model on held-out users, or every user out of fold (table, curves, HTML report)."""
    from pipelines.evaluate import run_evaluate

    cfg, s = _run_stage(run_evaluate, params, overrides, root)
    typer.echo(f"evaluated {s['model']} {s['version']} ({s['protocol']}, {s['n_test']:,} users): "
               f"mean QINI {s['mean_qini']:.4f}; "
               f"report: {Path(cfg.paths.reports) / 'evaluate.html'}")


@app.command()
def score(
    params: ParamsOpt = None,
    overrides: SetOpt = None,
    root: RootOpt = Path("."),
    part: Annotated[int | None, typer.Option(
        "--part", metavar="I", help="score only the users of partition I (of score.partitions) into its part "
                                    "file: DVC stage score_part@I")] = None,
    combine: Annotated[bool, typer.Option(
        "--combine", help="only check and combine the parts into the dated snapshot and scores.parquet: "
                          "DVC stage score")] = False,
) -> None:
    """Stage 5: δ for every user from their latest features, as a dated parquet snapshot.

    Without --part or --combine: every partition in turn, then the combine.
    """
    from pipelines.score import part_stage, run_combine, run_score

    if part is not None and combine:
        _fail("--part and --combine exclude each other")
    if part is not None:
        cfg, s = _run_stage(part_stage(part), params, overrides, root)
        typer.echo(f"scored part {s['part']} of {s['partitions']}: {s['n_users']:,} of {s['users_total']:,} users "
                   f"for {s['score_date']} with model {s['model_version']} ({s['users_per_s']:,} users/s)")
        return
    cfg, s = _run_stage(run_combine if combine else run_score, params, overrides, root)
    parts = f"{s['partitions']} parts" if s["partitions"] > 1 else "1 part"
    typer.echo(f"scored {s['n_users']:,} users for {s['score_date']} with model {s['model_version']} "
               f"({parts}, {s['users_per_s']:,} users/s)")


@app.command()
def publish(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 6: write the latest scores to Feast's online store (marker says what is served)."""
    from pipelines.publish import PublishError, run_publish

    try:
        cfg, s = _run_stage(run_publish, params, overrides, root)
    except PublishError as e:
        _fail(f"publish stopped, the previous scores stay served: {e}")
    if s["blocked"]:
        served = s["served"]
        still = f"{served['score_date']} (model {served['model_version']})" if served else "nothing yet"
        typer.echo(f"publish BLOCKED by the drift gate: {s['reason']}; still serving {still}")
        return
    typer.echo(f"published {s['n_users']:,} users for {s['score_date']} (model {s['model_version']}, "
               f"{s['users_per_s']:,} users/s)")


@app.command()
def drift(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Gate: Evidently drift checks (features, δ, responses); a failure blocks publishing."""
    from pipelines.drift import run_drift

    cfg, s = _run_stage(run_drift, params, overrides, root)
    state = "open" if s["publish_allowed"] else "CLOSED (publish will be skipped)"
    forced = " (forced)" if s.get("forced") else ""
    typer.echo(f"drift gate {state}{forced}; report: {Path(cfg.paths.reports) / 'drift'}")


@app.command("train-ddm")
def train_ddm(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 7: train DDM (per-request value weights) on the request logs."""
    from pipelines.train_ddm import run_train_ddm

    cfg, s = _run_stage(run_train_ddm, params, overrides, root)
    if _skipped("train-ddm", s):
        return
    corr = s.get("corr_w_true_mix_mean")
    extra = f", corr(w, true mix) {corr:.3f}" if corr is not None else ""
    typer.echo(f"trained DDM {s['version']}: validation MSE {s['val_mse']:.5f} "
               f"(mean-only baseline {s['val_mse_baseline']:.5f}){extra}")


@app.command("train-cpm")
def train_cpm(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """CDUM: train CPM (daily ŷ^k, ŷ^0 per user) when `families` has cdum; else record the skip."""
    from pipelines.train_cpm import run_train_cpm

    cfg, s = _run_stage(run_train_cpm, params, overrides, root)
    if _skipped("train-cpm", s):
        return
    t = s["test"]
    typer.echo(f"trained CPM {s['version']} (best epoch {s['best_epoch']}): test mean QINI {t['mean_qini']:.4f}"
               + (f", mean ρ(true) {t['mean_spearman']:.3f}" if "mean_spearman" in t else ""))


@app.command("train-fic")
def train_fic(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """CDUM: train FIC (per-request real-time interest per treatment) on the request logs' play labels."""
    from pipelines.train_fic import run_train_fic

    cfg, s = _run_stage(run_train_fic, params, overrides, root)
    if _skipped("train-fic", s):
        return
    corr = s.get("corr_true_interest_mean")
    typer.echo(f"trained FIC {s['version']}: validation MSE {s['val_mse']:.5f} (mean-only baseline "
               f"{s['val_mse_baseline']:.5f})" + (f", corr(r̂, true interest) {corr:.3f}" if corr is not None else ""))


@app.command()
def policy(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 8: offline policy evaluation (IPS / SNIPS / DR), σ calibration, trade-off frontier, policy gate.

    Calibrates σ on validation users for the objective Σ_r λ_r·relative lift_r under the guard-rails and budget of `policy` in params.yaml, values every built-in policy on the test users and writes reports/policy.{md,html,json}, reports/frontier.png and data/policy/policy.json, which deploy reads (a blocked gate stops the release).
    """  # noqa: E501 - one paragraph: the help renderer keeps line breaks
    from pipelines.policy import run_policy

    cfg, s = _run_stage(run_policy, params, overrides, root)
    hm = s["policies"]["hmum"]
    lifts = ", ".join(f"{r} {v:+.2%}" for r, v in zip(s["objective_weights"], hm["dr_rel_lift"], strict=True))
    gate = "passed" if s["gate_passed"] else "BLOCKED (deploy will refuse the release unless policy.force)"
    typer.echo(f"policy: σ {s['sigma']} ({s['sigma_source']}), HMUM DR relative lift {lifts} on "
               f"{s['n_test']:,} test users; gate {gate}; report: {Path(cfg.paths.reports) / 'policy.html'}")


@app.command()
def deploy(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stage 9: build the decision service's Bento, smoke-test it on 127.0.0.1, then release it."""
    from pipelines.deploy import DeployError, run_deploy

    try:
        cfg, s = _run_stage(run_deploy, params, overrides, root)
    except DeployError as e:
        _fail(f"deploy stopped: {e}")
    gate = {"passed": "policy gate passed", "forced": "policy gate FORCED", "off": "policy gate off",
            "blocked": "policy gate BLOCKED the calibrated σ: every treatment off, see reports/policy.html"}
    typer.echo(f"released {s['bento']} (DDM {s['ddm_version']}, HUM {s['hum_version']}, scores of {s['score_date']}; "
               f"σ {s['sigma']} from {s['policy']['sigma_source']}, {gate[s['policy']['gate']]}); "
               "start it with `make serve` (or `fulcrum serve`)")


@app.command()
def serve(
    params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path("."),
    port: Annotated[int | None, typer.Option(help="port (default: serve.port)")] = None,
    background: Annotated[bool, typer.Option(
        "--background", help="start in the background, wait until ready, print an example request")] = False,
) -> None:
    """Start the released decision service (from `fulcrum deploy`) on serve.host (127.0.0.1)."""
    import os

    from pipelines.deploy import read_release, use_bentoml_home
    from serving.process import serve_command, server_env

    cfg = _config(params, overrides)
    release = read_release(cfg, root)
    if release is None:
        _fail("nothing is released yet: run the deploy stage first (dvc repro, or fulcrum deploy)")
    use_bentoml_home(cfg, root)
    port = port or cfg.serve.port
    url = f"http://{cfg.serve.host}:{port}"
    if background:
        from pipelines.serve import serve_in_background

        try:
            serve_in_background(cfg, root, release, port, typer.echo)
        except RuntimeError as e:
            _fail(str(e))
        return
    typer.echo(f"serving {release['bento']} on {url} (scores of {release['score_date']}); "
               f"try: curl -s {url}/ops/health")
    cmd = serve_command(release["bento"], cfg.serve.host, port)
    os.execve(cmd[0], cmd, server_env(dict(os.environ), cfg.serve))


@app.command()
def stop(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Stop the decision service started with `fulcrum serve --background` (make run)."""
    from pipelines.serve import stop_background

    cfg = _config(params, overrides)
    typer.echo(stop_background(cfg, root))


@app.command("airflow-env")
def airflow_env_cmd(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Print `export AIRFLOW_...` lines for this project (profile: airflow.profile)."""
    import shlex

    from fulcrum.airflow_env import SECRET_REFERENCES, airflow_env
    from fulcrum.secrets import env_secret

    cfg = _config(params, overrides)
    for key, value in airflow_env(cfg, root).items():
        ref = SECRET_REFERENCES.get(key)
        if ref and env_secret(ref) == value:  # the secret stays in its variable: eval sees "$VAR", logs see nothing
            typer.echo(f'export {key}="${ref}"')
        else:
            typer.echo(f"export {key}={shlex.quote(value)}")


@app.command("params-set")
def params_set(
    overrides: SetOpt = None,
    params: ParamsOpt = None,
) -> None:
    """Change settings in params.yaml in place (comments kept; validated first): --set key.sub=value."""
    from fulcrum.config import DEFAULT_PARAMS, ConfigError, parse_overrides
    from fulcrum.lock import LockBusy, workspace_lock
    from fulcrum.params_edit import ABSENT, set_params

    path = Path(params or DEFAULT_PARAMS)
    try:
        changes = parse_overrides(overrides)
        with workspace_lock(path.resolve().parent, "fulcrum params-set", notify=typer.echo):
            previous = set_params(path, changes)
    except (ConfigError, LockBusy) as e:
        _fail(str(e))
    for key, value in changes.items():
        old = previous.get(key, ABSENT)  # a new key: recorded under its outermost missing part
        typer.echo(f"{key}: {'(not set)' if old == ABSENT else repr(old)} -> {value!r}")


@app.command("example-logs")
def example_logs(
    out: Annotated[Path, typer.Option(help="folder for the CSV files")] = Path("data/example_logs"),
    users: Annotated[int, typer.Option(min=500, help="users in the RCT")] = 20_000,
    requests: Annotated[bool, typer.Option("--requests/--no-requests", help="also write request logs")] = True,
    seed: Annotated[int, typer.Option(help="simulator seed")] = 7,
    apply: Annotated[bool, typer.Option(help="point params.yaml's source at the files (comments kept)")] = False,
    params: ParamsOpt = None,
) -> None:
    """Write a small RCT as your own CSV logs would look, and the `source` mapping that reads them (README: Bring your own logs)."""  # noqa: E501
    import yaml

    from fulcrum.config import DEFAULT_PARAMS, ConfigError
    from fulcrum.lock import LockBusy, workspace_lock
    from fulcrum.params_edit import set_params
    from pipelines.example_logs import write_example_logs

    source = write_example_logs(out, users, requests, seed)
    typer.echo(f"wrote {', '.join(sorted(p.name for p in out.glob('*.csv')))} under {out}")
    if not apply:
        typer.echo("the mapping (params.yaml `source:`; `--apply` sets it):\n"
                   + yaml.safe_dump({"source": source}, sort_keys=False))
        return
    path = Path(params or DEFAULT_PARAMS)
    try:
        with workspace_lock(path.resolve().parent, "fulcrum example-logs", notify=typer.echo):
            set_params(path, {"source": source})
    except (ConfigError, LockBusy) as e:
        _fail(str(e))
    typer.echo(f"{path}: source now reads these logs" + ("" if requests else
               " (no request logs: the decision uses fixed weights, decision.weights or equal)")
               + ". Next: make run")


@app.command()
def compare(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Compare HUM with every baseline over several seeds (long: its own DVC stage)."""
    from pipelines.compare import run_compare

    cfg, s = _run_stage(run_compare, params, overrides, root)
    typer.echo(f"{s['reference']} best or tied everywhere: {s['best_or_tied_everywhere']}; "
               f"report: {Path(cfg.paths.reports) / 'compare.html'}")
    for cell, v in s.get("seed_spread", {}).items():
        typer.echo(f"  {cell}: seed std of ρ {v['std']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] vs ≤ {v['target']}: {v['status']}")


@app.command()
def report(params: ParamsOpt = None, overrides: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Print the latest reports: data (collect), evaluation, policy and, if run, the comparison."""
    from rich.console import Console
    from rich.markdown import Markdown

    cfg = _config(params, overrides)
    reports = root / cfg.paths.reports
    found = [reports / f"{name}.md" for name in ("collect", "evaluate", "policy", "compare")]
    found = [p for p in found if p.exists()]
    if not found:
        _fail(f"no reports in {reports}: run `dvc repro` (or `fulcrum collect`) first", 1)
    console = Console()
    for path in found:
        console.print(Markdown(path.read_text()))
        console.print(f"[dim]{path}[/dim]\n")


if __name__ == "__main__":
    app()
