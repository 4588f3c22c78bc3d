"""Helpers of the serving tests: a tiny world built through the real stages."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from fulcrum.config import FulcrumConfig

# Copies bundle folders into a BentoML store as models (argv: name=folder ...); prints each tag.
MAKE_MODELS = """import shutil, sys
import bentoml
for arg in sys.argv[1:]:
    name, folder = arg.split("=", 1)
    with bentoml.models.create(name) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    print(model.tag)
"""


def make_models(bentoml_home: Path, bundles: dict[str, Path]) -> list[str]:
    """The bundles as models of a fresh BentoML store (a subprocess: BentoML reads its home at import)."""
    made = subprocess.run([sys.executable, "-c", MAKE_MODELS, *(f"{n}={p}" for n, p in bundles.items())],
                          env={**os.environ, "BENTOML_HOME": str(bentoml_home)}, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    return made.stdout.strip().splitlines()[-len(bundles):]


@contextmanager
def serving_at(target: str, env: dict, log: Path, serve=None) -> Iterator[httpx.Client]:
    """`bentoml serve` of ``target`` on a free loopback port; a client for it, then the server stopped."""
    from serving.process import free_port, start_server, stop_server, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(target, port, {**os.environ, **env}, log, serve=serve)
    try:
        wait_ready(url, proc, 120)
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client
    finally:
        stop_server(proc)


def build_world(settings: dict, root: Path, policy: bool = False) -> FulcrumConfig:
    """Simulator -> Feast training set -> HUM (and CPM, FIC with CDUM) -> score -> publish -> DDM, under ``root``.

    ``policy``: also run the policy stage (σ, and ξ with CDUM, for a release).
    """
    from pipelines.collect import run_collect
    from pipelines.policy import run_policy
    from pipelines.publish import run_publish
    from pipelines.score import run_score
    from pipelines.train import run_train
    from pipelines.train_cpm import run_train_cpm
    from pipelines.train_ddm import run_train_ddm
    from pipelines.train_fic import run_train_fic
    from pipelines.training_set import run_training_set

    cfg = FulcrumConfig.model_validate(settings)
    stages = [run_collect, run_training_set, run_train]
    if cfg.cdum_on:
        stages += [run_train_cpm, run_train_fic]
    stages += [run_score, run_publish, run_train_ddm] + ([run_policy] if policy else [])
    for stage in stages:
        stage(cfg, root)
    return cfg
