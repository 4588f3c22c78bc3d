"""One DVC stage on a worker that shares no disk with the others (Airflow's distributed profile).

A run's state travels through the remote (a directory, or an ``s3://`` prefix):

    <remote>/cache/                        DVC's content-addressed cache (``dvc push`` / ``dvc pull``)
    <remote>/runs/<run>/overrides.json     the trigger's ``params.yaml`` overrides
    <remote>/runs/<run>/lock/<stage>.json  every finished stage's ``dvc.lock`` entry
    <remote>/runs/<run>/files/<path>       every finished stage's uncached outputs (reports, gate, policy)
    <remote>/runs/<run>/dvc.lock           the whole run's lock, written by ``promote``
    <remote>/current/                      the last successful run: ``dvc.lock`` and ``files/``

Before a stage (``pull_inputs``): ``dvc.lock`` = the current one with this run's entries on top,
the run's overrides applied to ``params.yaml``, the uncached inputs and the stage's persistent
outputs fetched (this run's, else the current run's), and ``dvc pull`` of the stages that
produce its cached inputs and of its own outputs. Then ``dvc repro --single-item`` exactly as
on one machine. After (``push_outputs``): ``dvc push`` of its outputs, its uncached outputs and
its lock entry into ``runs/<run>/``. ``promote`` makes a finished run current; a failed run never
does, so the next run starts from the last good state. Everything here shells out to the
worker's own ``dvc`` in its own checkout: a worker needs the code at the same commit, the
remote and nothing else.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fulcrum.airflow_env import REMOTE_ENDPOINT_ENV, REMOTE_ENV

DVC_REMOTE = "fulcrum"  # the name this module gives the remote in each checkout's .dvc/config.local
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


# --------------------------------------------------------------------------- the pipeline's shape


@dataclass
class StageIO:
    """What one DVC stage reads and writes (paths relative to the project root)."""

    name: str
    deps: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # outputs DVC caches: they travel by dvc push/pull
    uncached: list[str] = field(default_factory=list)  # cache: false outputs: they travel as plain files
    persist: list[str] = field(default_factory=list)  # outputs kept from one run to the next


@functools.cache
def pipeline(root: Path) -> dict[str, StageIO]:
    """Every stage of ``root/dvc.yaml`` as DVC resolves it (``foreach``/``matrix`` expanded).

    Read once per process: the stages' shapes do not change while a task runs.
    """
    from dvc.repo import Repo

    out: dict[str, StageIO] = {}
    with Repo(str(root)) as repo:
        main = (Path(root) / "dvc.yaml").resolve()
        for st in repo.index.stages:
            if Path(st.dvcfile.path).resolve() != main:  # another pipeline's stage (experiments/*/dvc.yaml)
                continue
            io = StageIO(st.name, deps=[d.def_path for d in st.deps])
            for o in st.outs:
                (io.cached if o.use_cache else io.uncached).append(o.def_path)
                if o.persist:
                    io.persist.append(o.def_path)
            out[io.name] = io
    return out


def _covers(a: str, b: str) -> bool:
    """Is path ``a`` the same as ``b``, inside it, or a folder holding it?"""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def producers(stages: dict[str, StageIO], stage: str) -> list[str]:
    """The stages whose cached outputs ``stage`` reads."""
    deps = stages[stage].deps
    return sorted(n for n, s in stages.items() if n != stage and any(_covers(d, o) for d in deps for o in s.cached))


def uncached_inputs(stages: dict[str, StageIO], stage: str) -> list[str]:
    """Uncached outputs of other stages that ``stage`` reads, and every persistent output.

    Persistent outputs are the state carried from one run to the next (the last publication's
    references), which stages read without declaring them (drift reads what publish wrote).
    """
    deps = stages[stage].deps
    paths = [o for n, s in stages.items() if n != stage for o in s.uncached if any(_covers(d, o) for d in deps)]
    return sorted(set(paths) | {o for s in stages.values() for o in s.persist})


def side_outputs(root: Path, stage: str) -> list[str]:
    """Files a stage writes outside DVC that other hosts need: deploy's release and its BentoML store."""
    if stage != "deploy":
        return []
    from fulcrum.config import load_config

    cfg = load_config(root / "params.yaml")
    home = Path(cfg.serve.bentoml_home)
    home = home.relative_to(root) if home.is_absolute() and home.is_relative_to(root) else home
    return [f"{cfg.paths.data}/release.json", *([] if home.is_absolute() else [home.as_posix()])]


# --------------------------------------------------------------------------- the remote


class Exchange:
    """The remote seen as files (fsspec: a local directory or s3://); one run's folder under it."""

    def __init__(self, url: str, run_id: str):
        import fsspec

        self.url = url.rstrip("/")
        endpoint = os.environ.get(REMOTE_ENDPOINT_ENV)
        # s3:// needs s3fs (pip install dvc-s3 brings it and DVC's own S3 support)
        opts = {"endpoint_url": endpoint} if endpoint and self.url.startswith("s3://") else {}
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **opts)
        self.run = f"{self.base}/runs/{safe_run_id(run_id)}"
        self.current = f"{self.base}/current"

    @property
    def dvc_url(self) -> str:
        return f"{self.url}/cache"

    def put_json(self, path: str, obj) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, json.dumps(obj, indent=1, default=str).encode())

    def get_json(self, path: str, default=None):
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else default

    def put_json_run(self, rel: str, obj) -> None:
        self.put_json(f"{self.run}/{rel}", obj)

    def get_json_run(self, rel: str, default=None):
        return self.get_json(f"{self.run}/{rel}", default)

    def put_path(self, local: Path, path: str) -> int:
        """Upload a file or a folder's files; how many files."""
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            dest = path if f == local else f"{path}/{f.relative_to(local).as_posix()}"
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(f), dest)
        return len(files)

    def get_path(self, path: str, local: Path, replace: bool = True) -> int:
        """Download a file or a folder; how many files (0: not in the remote).

        ``replace``: a folder replaces what is at ``local`` (an output folder's stale files go);
        off, the files are laid over it (``sync`` into a whole checkout).
        """
        import shutil

        if not self.fs.exists(path):
            return 0
        if self.fs.isdir(path):
            if replace:
                shutil.rmtree(local, ignore_errors=True)
            files = [p for p in self.fs.find(path) if not self.fs.isdir(p)]
            for f in files:
                dest = local / f[len(path) + 1:]
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f, str(dest))
            return len(files)
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(path, str(local))
        return 1

    def lock_entries(self) -> dict[str, dict]:
        """The ``dvc.lock`` entries of this run's finished stages."""
        folder = f"{self.run}/lock"
        if not self.fs.exists(folder):
            return {}
        return {Path(p).stem: json.loads(self.fs.cat_file(p)) for p in self.fs.find(folder) if p.endswith(".json")}


def safe_run_id(run_id: str) -> str:
    """An Airflow run id (``manual__2026-11-26T10:00:00+00:00``) as one path component."""
    if not run_id:
        raise ValueError("a run id is required")
    return _SAFE.sub("_", run_id)


# --------------------------------------------------------------------------- one stage


def _dvc(root: Path, *args: str) -> str:
    """Run the worker's own dvc in ``root``; its output, or RuntimeError with it."""
    exe = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(exe), *args], cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {root}:\n{(res.stdout + res.stderr)[-3000:]}")
    return res.stdout


def configure_remote(root: Path, ex: Exchange) -> None:
    """Point this checkout's DVC at the remote's cache (``.dvc/config.local``: never committed)."""
    local = root / ".dvc" / "config.local"
    endpoint = os.environ.get(REMOTE_ENDPOINT_ENV)
    if local.exists() and ex.dvc_url in local.read_text() and not endpoint:
        return  # already set by an earlier task in this checkout (each dvc call costs a second)
    _dvc(root, "remote", "add", "--local", "--force", "--default", DVC_REMOTE, ex.dvc_url)
    if endpoint:
        _dvc(root, "remote", "modify", "--local", DVC_REMOTE, "endpointurl", endpoint)


def merged_lock(root: Path, ex: Exchange) -> dict:
    """The current run's ``dvc.lock`` (else this checkout's) with this run's finished stages on top."""
    base = ex.get_json(f"{ex.current}/dvc.lock")
    if base is None:  # no run has finished yet: the committed lock (not this checkout's, which an
        # earlier failed run may have written), else nothing (every stage runs)
        res = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=root, capture_output=True, text=True)
        base = yaml.safe_load(res.stdout) if res.returncode == 0 else {}
    base = base or {}
    stages = dict(base.get("stages") or {})
    stages.update(ex.lock_entries())
    return {"schema": base.get("schema", "2.0"), "stages": stages}


def pull_inputs(root: Path, ex: Exchange, stage: str) -> dict:
    """Everything ``stage`` reads, from the remote into this checkout; what was fetched."""
    from fulcrum.params_edit import set_params

    configure_remote(root, ex)
    stages = pipeline(root)
    if stage not in stages:
        raise ValueError(f"no stage {stage!r} in {root / 'dvc.yaml'}; stages: {sorted(stages)}")
    lock = merged_lock(root, ex)
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    overrides = ex.get_json(f"{ex.run}/overrides.json", {}) or {}
    if overrides:
        set_params(root / "params.yaml", overrides)
    files = {}
    # Its own uncached outputs too: with every output in place, DVC skips a stage whose inputs
    # did not change, as it would in the checkout that ran it.
    for rel in sorted(set(uncached_inputs(stages, stage)) | set(stages[stage].uncached)):
        n = ex.get_path(f"{ex.run}/files/{rel}", root / rel) or ex.get_path(f"{ex.current}/files/{rel}", root / rel)
        files[rel] = n
    # Only stages already in the lock have outputs to pull; --allow-missing: a stage's own
    # outputs are absent from the remote the first time it runs.
    targets = [s for s in [*producers(stages, stage), stage] if s in lock["stages"]]
    if targets:
        _dvc(root, "pull", "--allow-missing", *targets)
    return {"overrides": overrides, "files": files, "pulled": targets}


def push_outputs(root: Path, ex: Exchange, stage: str) -> dict:
    """After ``dvc repro --single-item stage``: its outputs and lock entry into the run's folder."""
    stages = pipeline(root)
    io = stages[stage]
    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None:
        raise RuntimeError(f"dvc.lock has no entry for {stage} after it ran")
    if io.cached:
        _dvc(root, "push", stage)
    files = {rel: ex.put_path(root / rel, f"{ex.run}/files/{rel}")
             for rel in [*io.uncached, *side_outputs(root, stage)] if (root / rel).exists()}
    ex.put_json(f"{ex.run}/lock/{stage}.json", entry)
    # Provenance: which host and checkout ran the stage (Airflow records only the machine's name).
    ex.put_json(f"{ex.run}/ran/{stage}.json", {"host": socket.gethostname(), "workdir": str(root), "pid": os.getpid()})
    return {"files": files, "pushed": io.cached}


def promote(root: Path, ex: Exchange) -> dict:
    """A finished run becomes the state the next run starts from (and what ``sync`` brings home)."""
    lock = merged_lock(root, ex)
    ex.put_json(f"{ex.run}/dvc.lock", lock)
    files = f"{ex.run}/files"
    n = 0
    if ex.fs.exists(files):
        for f in ex.fs.find(files):
            dest = f"{ex.current}/files/{f[len(files) + 1:]}"
            ex.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            ex.fs.copy(f, dest)
            n += 1
    ex.put_json(f"{ex.current}/dvc.lock", lock)
    ex.put_json(f"{ex.current}/run.json", {"run": ex.run.rsplit("/", 1)[-1]})
    return {"stages": len(lock["stages"]), "files": n}


def sync(root: Path, ex: Exchange, which: str = "current") -> dict:
    """Bring a run's state (``dvc.lock``, uncached outputs, cached outputs) into the checkout ``root``."""
    configure_remote(root, ex)
    folder = ex.current if which == "current" else ex.run
    lock = ex.get_json(f"{folder}/dvc.lock")
    if lock is None:
        raise FileNotFoundError(f"the remote {ex.url} holds no finished run ({folder}/dvc.lock)")
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    n = ex.get_path(f"{folder}/files", root, replace=False)  # over the checkout, never replacing it
    _dvc(root, "pull", "--allow-missing")
    return {"stages": len(lock["stages"]), "files": n}


def run_stage(root: Path, ex: Exchange, stage: str, command: list[str], wait_s: float = 3600) -> int:
    """Pull, run ``command`` (the stage), push, all under the checkout's workspace lock; its exit code.

    ``params.yaml`` is put back afterwards: the run's overrides belong to that run only.
    """
    from fulcrum.lock import workspace_lock

    with workspace_lock(root, f"remote stage {stage}", wait_s=wait_s):
        params = (root / "params.yaml").read_text()
        try:
            got = pull_inputs(root, ex, stage)
            print(f"[remote] {stage}: pulled {got['pulled'] or 'nothing'}; files {got['files'] or 'none'}"
                  + (f"; overrides {got['overrides']}" if got["overrides"] else ""), flush=True)
            code = subprocess.call(command, cwd=root)
            if code == 0:
                sent = push_outputs(root, ex, stage)
                print(f"[remote] {stage}: pushed {sent['pushed'] or 'no cached outputs'}; "
                      f"files {sent['files'] or 'none'}", flush=True)
            return code
        finally:
            (root / "params.yaml").write_text(params)


def _exchange(args) -> Exchange:
    url = args.remote or os.environ.get(REMOTE_ENV)
    if not url:
        raise SystemExit(f"no remote: pass --remote or set {REMOTE_ENV}")
    return Exchange(url, args.run_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fulcrum.remote_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("."), help="the worker's checkout (default: .)")
    p.add_argument("--remote", help=f"the remote's URL (default: ${REMOTE_ENV})")
    p.add_argument("--run-id", default="current", help="the Airflow run id")
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stage", help="pull a stage's inputs, run the command after --, push its outputs")
    st.add_argument("stage")
    st.add_argument("command", nargs=argparse.REMAINDER, help="-- then the stage's command")
    ov = sub.add_parser("overrides", help="record the run's params.yaml overrides (JSON) for every worker")
    ov.add_argument("json")
    sub.add_parser("promote", help="make a finished run the state the next run starts from")
    sy = sub.add_parser("sync", help="bring the current (or --run-id) run's outputs into --root")
    sy.add_argument("--run", action="store_true", help="the run --run-id, not the current one")
    args = p.parse_args(argv)
    root = args.root.resolve()
    ex = _exchange(args)
    if args.cmd == "stage":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise SystemExit("give the stage's command after --")
        return run_stage(root, ex, args.stage, command)
    if args.cmd == "overrides":
        ex.put_json(f"{ex.run}/overrides.json", json.loads(args.json))
    elif args.cmd == "promote":
        print(json.dumps(promote(root, ex)))
    else:
        print(json.dumps(sync(root, ex, "run" if args.run else "current")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
