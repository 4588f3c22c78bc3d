"""Helpers of the serving tests: a tiny world built through the real stages."""

from __future__ import annotations

from pathlib import Path

from fulcrum.config import FulcrumConfig


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
