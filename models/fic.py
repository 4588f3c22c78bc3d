"""FIC: CDUM's real-time interest model (spec §3), per request and treatment.

Treatment k boosts one class of video durations (short / medium / long). FIC reads the
request the way DDM does (the user's recent videos and this request's candidates: duration
bucket, category, score percentiles), so it is DDM's network (``models.ddm.DDMNet``) with one
softplus tower per treatment instead of per response, starting at 1: ``r̂^k`` says how much
more (> 1) or less (< 1) than usual the user wants class ``c_k`` right now. Its labels are
the request's play ratios (``models.fic_labels.play_ratio_labels``); the service runs the numpy twin
(``models.ddm_numpy.NumpyDDM.outputs``, tested equal to torch).
"""

from __future__ import annotations

from models.ddm import DDMNet, DDMNetConfig
from models.ddm_numpy import PARTS


def fic_config(n_responses: int, n_treatments: int, n_durations: int, n_categories: int, emb_dim: int = 16,
               n_experts: int = 4, expert_hidden: tuple[int, ...] = (64, 32),
               tower_hidden: tuple[int, ...] = (16,)) -> DDMNetConfig:
    return DDMNetConfig(n_responses=n_responses, n_parts=len(PARTS), n_durations=n_durations,
                        n_categories=n_categories, emb_dim=emb_dim, n_experts=n_experts, expert_hidden=expert_hidden,
                        tower_hidden=tower_hidden, n_outputs=n_treatments, output_init=1.0)


def fic_net(cfg: DDMNetConfig) -> DDMNet:
    if not cfg.n_outputs:
        raise ValueError("a FIC network has one output per treatment: build its config with fic_config")
    return DDMNet(cfg)
