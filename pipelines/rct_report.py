"""Data report of a collected RCT: rows per arm, means per arm, naive ATE with a CI (pure numpy)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def arm_moments(arm_index: np.ndarray, y: np.ndarray, n_arms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (A,), means (A, R) and unbiased variances (A, R) per arm; y is (n, R)."""
    counts = np.bincount(arm_index, minlength=n_arms).astype(np.float64)
    sums = np.stack([np.bincount(arm_index, y[:, r], n_arms) for r in range(y.shape[1])], axis=1)
    sq = np.stack([np.bincount(arm_index, y[:, r] ** 2, n_arms) for r in range(y.shape[1])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
        var = (sq - counts[:, None] * means**2) / (counts[:, None] - 1)
    return counts, means, np.maximum(var, 0.0)


def naive_ate(
    arm_index: np.ndarray, y: np.ndarray, n_arms: int, level: float = 0.95
) -> dict[str, np.ndarray]:
    """Difference in means of every arm vs control (arm 0), with a Welch normal CI.

    Returns arrays of shape (A-1, R): ``ate``, ``lo``, ``hi``, ``se`` and ``rel``
    (ATE relative to the control mean).
    """
    counts, means, var = arm_moments(arm_index, y, n_arms)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    ate = means[1:] - means[0]
    se = np.sqrt(var[1:] / counts[1:, None] + var[0] / counts[0])
    return {"ate": ate, "se": se, "lo": ate - z * se, "hi": ate + z * se, "rel": ate / means[0]}


def build_report(
    arms: list[str],
    responses: list[str],
    arm_index: np.ndarray,
    y: np.ndarray,
    level: float,
    true_mu: np.ndarray | None = None,
) -> dict:
    """A JSON-able report; ``true_mu`` (n, A, R) adds the true ATE when the source knows it."""
    counts, means, _ = arm_moments(arm_index, y, len(arms))
    ate = naive_ate(arm_index, y, len(arms), level)
    rep: dict = {
        "rows": int(len(arm_index)),
        "ci_level": level,
        "arms": {a: {"rows": int(counts[i]), "share": float(counts[i] / len(arm_index))} for i, a in enumerate(arms)},
        "means": {a: {r: float(means[i, j]) for j, r in enumerate(responses)} for i, a in enumerate(arms)},
        "ate": {},
    }
    true_ate = None if true_mu is None else (true_mu[:, 1:, :] - true_mu[:, :1, :]).mean(axis=0)
    for k, a in enumerate(arms[1:]):
        rep["ate"][a] = {}
        for j, r in enumerate(responses):
            cell = {key: float(ate[key][k, j]) for key in ("ate", "lo", "hi", "se", "rel")}
            if true_ate is not None:
                cell["true_ate"] = float(true_ate[k, j])
            rep["ate"][a][r] = cell
    return rep


def report_markdown(rep: dict, title: str = "RCT data report") -> str:
    pct = int(round(rep["ci_level"] * 100))
    lines = [f"# {title}", "", f"{rep['rows']:,} users in the experiment.", "", "| arm | rows | share |"]
    lines.append("|---|---:|---:|")
    for a, v in rep["arms"].items():
        lines.append(f"| {a} | {v['rows']:,} | {v['share']:.3f} |")
    responses = list(next(iter(rep["means"].values())))
    lines += ["", "## Response means per arm", "", "| arm | " + " | ".join(responses) + " |"]
    lines.append("|---|" + "---:|" * len(responses))
    for a, v in rep["means"].items():
        lines.append(f"| {a} | " + " | ".join(f"{v[r]:.3f}" for r in responses) + " |")
    has_true = any("true_ate" in c for arm in rep["ate"].values() for c in arm.values())
    head = f"| treatment | response | naive ATE | {pct}% CI | relative |" + (" true ATE |" if has_true else "")
    lines += ["", f"## Naive ATE vs control ({pct}% CI, Welch)", "", head]
    lines.append("|---|---|---:|---|---:|" + ("---:|" if has_true else ""))
    for a, cells in rep["ate"].items():
        for r, c in cells.items():
            row = f"| {a} | {r} | {c['ate']:+.4f} | [{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['rel']:+.2%} |"
            if has_true:
                row += f" {c['true_ate']:+.4f} |"
            lines.append(row)
    return "\n".join(lines) + "\n"
