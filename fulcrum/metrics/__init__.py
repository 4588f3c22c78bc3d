"""Uplift evaluation metrics: pure numpy, binary or continuous responses.

Curves (:mod:`.curves`), scalar scores (:mod:`.scores`), per-arm multi-treatment
tables (:mod:`.multi`), plots (:mod:`.plots`) and true curves from known expected
outcomes (:mod:`.truth`, simulated data). On binary responses the curves and
scores agree exactly with scikit-uplift; the continuous variant is defined in the
docstring of :mod:`fulcrum.metrics.curves`.
"""

from fulcrum.metrics.curves import (
    perfect_qini_curve,
    perfect_uplift_curve,
    qini_curve,
    uplift_curve,
)
from fulcrum.metrics.multi import mean_qini, per_arm_table
from fulcrum.metrics.plots import curve_points, plot_qini_curves, plot_uplift_curves
from fulcrum.metrics.scores import (
    pehe,
    qini_auc_score,
    rank_correlation,
    true_uplift_at_k,
    uplift_at_k,
    uplift_auc_score,
)
from fulcrum.metrics.truth import true_qini, true_qini_curve, true_qini_table

__all__ = [
    "curve_points",
    "mean_qini",
    "pehe",
    "per_arm_table",
    "perfect_qini_curve",
    "perfect_uplift_curve",
    "plot_qini_curves",
    "plot_uplift_curves",
    "qini_auc_score",
    "qini_curve",
    "rank_correlation",
    "true_qini",
    "true_qini_curve",
    "true_qini_table",
    "true_uplift_at_k",
    "uplift_at_k",
    "uplift_auc_score",
    "uplift_curve",
]
