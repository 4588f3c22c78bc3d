"""Per-arm evaluation for K treatments and R responses.

Multi-treatment uplift is evaluated one arm at a time: for treatment ``k`` and
response ``r`` take the rows observed under control or under ``k``
(``arm in {0, k}``), use ``arm == k`` as the treatment indicator, and rank the rows
by the predicted effect of ``k`` on ``r``, ``tau_hat[:, k - 1, r]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fulcrum.metrics.scores import (
    pehe,
    qini_auc_score,
    rank_correlation,
    true_uplift_at_k,
    uplift_at_k,
    uplift_auc_score,
)
from fulcrum.metrics.truth import true_qini

__all__ = ["mean_qini", "per_arm_table"]


def _treatment_names(arms: Sequence[str], n_treatments: int) -> list[str]:
    names = [str(a) for a in arms]
    if len(names) == n_treatments + 1:  # all arms, control first (as in Manifest.arms)
        return names[1:]
    if len(names) == n_treatments:
        return names
    raise ValueError(
        f"arms must name the {n_treatments} treatments (or all {n_treatments + 1} arms, "
        f"control first), got {len(names)} names: {names}"
    )


def per_arm_table(
    y,
    arm,
    tau_hat,
    arms: Sequence[str],
    responses: Sequence[str],
    k=0.3,
    tau_true=None,
    negative_effect: bool = True,
    mu_true=None,
) -> list[dict]:
    """Uplift metrics for every (treatment, response) cell.

    Args:
        y: observed responses, shape (n, R) (a 1-D array is read as R = 1).
        arm: observed arm per row, integers in 0..K with 0 = control, shape (n,).
        tau_hat: predicted effects, shape (n, K, R): ``tau_hat[i, k - 1, r]`` is the
            predicted effect of treatment ``k`` on response ``r`` for row ``i``.
        arms: names of the K treatments, or of all K + 1 arms with control first.
        responses: names of the R responses.
        k: top share (or count) for ``lift30`` and ``true_lift30``
            (see :func:`fulcrum.metrics.scores.uplift_at_k`); the key names keep the
            default of 30 %.
        tau_true: true effects, shape (n, K, R), when known (simulated data).
        negative_effect: passed to :func:`fulcrum.metrics.scores.qini_auc_score`.
        mu_true: true expected outcomes, shape (n, K + 1, R), control first, when known:
            adds ``true_qini`` (:func:`fulcrum.metrics.truth.true_qini` of the ranking).

    Returns:
        One dict per cell, treatments in order, responses within a treatment:
        ``treatment``, ``response``, ``qini``, ``auuc``, ``lift30`` (overall strategy)
        and ``n`` (rows used: control + arm ``k``); with ``tau_true`` also ``pehe``,
        ``true_lift30`` (mean true effect among the top ``k`` by predicted effect) and
        ``spearman`` (rank correlation of predicted and true effects), all computed
        on the same rows.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"y must have shape (n, R), got {y.shape}")
    n, n_responses = y.shape

    arm = np.asarray(arm)
    if arm.shape != (n,):
        raise ValueError(f"arm must have shape ({n},), got {arm.shape}")
    try:
        arm_float = arm.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError("arm must hold integer arm indices (0 = control)") from None
    if not (np.all(np.isfinite(arm_float)) and np.all(arm_float == np.round(arm_float))):
        raise ValueError("arm must hold integer arm indices (0 = control)")
    arm = arm_float.astype(np.int64)

    tau_hat = np.asarray(tau_hat, dtype=np.float64)
    if tau_hat.ndim != 3 or tau_hat.shape[0] != n or tau_hat.shape[2] != n_responses:
        raise ValueError(f"tau_hat must have shape ({n}, K, {n_responses}), got {tau_hat.shape}")
    n_treatments = tau_hat.shape[1]
    if n_treatments < 1:
        raise ValueError("tau_hat must hold at least one treatment")
    if tau_true is not None:
        tau_true = np.asarray(tau_true, dtype=np.float64)
        if tau_true.shape != tau_hat.shape:
            raise ValueError(
                f"tau_true must have the shape of tau_hat {tau_hat.shape}, got {tau_true.shape}"
            )

    if mu_true is not None:
        mu_true = np.asarray(mu_true, dtype=np.float64)
        if mu_true.shape != (n, n_treatments + 1, n_responses):
            raise ValueError(f"mu_true must have shape ({n}, {n_treatments + 1}, {n_responses}), got {mu_true.shape}")

    if arm.size and (arm.min() < 0 or arm.max() > n_treatments):
        raise ValueError(f"arm values must lie in 0..{n_treatments}, got {np.unique(arm)}")
    treatment_names = _treatment_names(arms, n_treatments)
    response_names = [str(r) for r in responses]
    if len(response_names) != n_responses:
        raise ValueError(
            f"responses must name the {n_responses} columns of y, got {len(response_names)}"
        )

    table: list[dict] = []
    for j, treatment in enumerate(treatment_names, start=1):
        rows = (arm == 0) | (arm == j)
        treated = (arm[rows] == j).astype(np.float64)
        if treated.sum() == 0 or treated.sum() == treated.size:
            raise ValueError(
                f"arm {j} ({treatment!r}) needs rows of both control and the treatment, "
                f"got {int(treated.sum())} treated and {int(treated.size - treated.sum())} control"
            )
        for r, response in enumerate(response_names):
            y_r = y[rows, r]
            score = tau_hat[rows, j - 1, r]
            cell = {
                "treatment": treatment,
                "response": response,
                "qini": qini_auc_score(y_r, score, treated, negative_effect=negative_effect),
                "auuc": uplift_auc_score(y_r, score, treated),
                "lift30": uplift_at_k(y_r, score, treated, k=k, strategy="overall"),
                "n": int(rows.sum()),
            }
            if tau_true is not None:
                truth = tau_true[rows, j - 1, r]
                cell["pehe"] = pehe(score, truth)
                cell["true_lift30"] = true_uplift_at_k(truth, score, k=k)
                cell["spearman"] = rank_correlation(score, truth)
            if mu_true is not None:
                cell["true_qini"] = true_qini(score, mu_true[rows, 0, r], mu_true[rows, j, r])
            table.append(cell)
    return table


def mean_qini(table: Sequence[dict]) -> float:
    """Mean of the ``qini`` entries of a :func:`per_arm_table` (NaN if empty; NaN propagates)."""
    values = [float(cell["qini"]) for cell in table]
    return float(np.mean(values)) if values else math.nan
