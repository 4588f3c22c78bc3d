"""Helpers of the serving tests: a tiny world built through the real stages."""

from __future__ import annotations

from pathlib import Path

from fulcrum.config import FulcrumConfig


def build_world(settings: dict, root: Path) -> FulcrumConfig:
    """Simulator -> Feast training set -> HUM -> score -> publish -> DDM, under ``root``."""
    from pipelines.collect import run_collect
    from pipelines.publish import run_publish
    from pipelines.score import run_score
    from pipelines.train import run_train
    from pipelines.train_ddm import run_train_ddm
    from pipelines.training_set import run_training_set

    cfg = FulcrumConfig.model_validate(settings)
    for stage in (run_collect, run_training_set, run_train, run_score, run_publish, run_train_ddm):
        stage(cfg, root)
    return cfg
