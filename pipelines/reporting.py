"""Report building blocks: per-cell metric tables, curve data for DVC plots, markdown/HTML.

Pure functions except ``write_html`` and ``save_figure`` (files).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from fulcrum.metrics import qini_curve, uplift_curve

METRIC_LABELS = {"qini": "QINI", "auuc": "AUUC", "lift30": "LIFT@k", "pehe": "PEHE",
                 "spearman": "ρ(true)", "true_lift30": "true LIFT@k",
                 "true_qini": "true QINI", "qini_abs": "QINI ranked by ŷ_k − ŷ_0", "auuc_abs": "AUUC ranked by ŷ_k − ŷ_0"}


def relative_truth(mu: np.ndarray) -> np.ndarray:
    """True δ (n, K, R) from true expected outcomes (n, K+1, R)."""
    return mu[:, 1:] / mu[:, :1] - 1


def absolute_uplift(mu: np.ndarray) -> np.ndarray:
    """Absolute effects ŷ_k − ŷ_0 (n, K, R) from expected outcomes (n, K+1, R)."""
    return mu[:, 1:] - mu[:, :1]


def cell_key(c: dict) -> str:
    return f"{c['treatment']}__{c['response']}"


def curve_on_grid(y, score, t, kind: str = "qini", n_grid: int = 101) -> np.ndarray:
    """A Qini or uplift curve resampled at population fractions 0, 0.01, ..., 1."""
    x, q = (qini_curve if kind == "qini" else uplift_curve)(y, score, t)
    return np.interp(np.linspace(0, 1, n_grid), x / x[-1], q)


def cell_curves(y, arm, scores: dict[str, np.ndarray], arms, responses, kind: str, n_grid: int = 101) -> dict:
    """{cell: {"fraction": [...], model: [...], ..., "random": [...]}} for every (k, r)."""
    out: dict[str, dict[str, list[float]]] = {}
    grid = np.linspace(0, 1, n_grid)
    for k, treat in enumerate(arms[1:], start=1):
        rows = (arm == 0) | (arm == k)
        t = (arm[rows] == k).astype(int)
        for r, resp in enumerate(responses):
            cell = {"fraction": grid.round(4).tolist()}
            last = 0.0
            for name, s in scores.items():
                c = curve_on_grid(y[rows, r], s[rows, k - 1, r], t, kind, n_grid)
                cell[name] = c.round(6).tolist()
                last = c[-1]
            cell["random"] = (grid * last).round(6).tolist()
            out[f"{treat}__{resp}"] = cell
    return out


def curve_rows(cell: dict) -> list[dict]:
    """Column-wise curve dict -> list of row dicts (DVC plot data)."""
    keys = list(cell)
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*cell.values(), strict=True)]


def plot_cells(curves: dict, kind: str, title: str):
    """One panel per (treatment, response) with every model's curve. Returns a Figure."""
    from matplotlib.figure import Figure

    cells = list(curves)
    ncol = min(len(cells), 2)
    nrow = -(-len(cells) // ncol)
    fig = Figure(figsize=(6 * ncol, 4 * nrow), layout="constrained")
    for i, cell in enumerate(cells):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        data = curves[cell]
        for name, vals in data.items():
            if name == "fraction":
                continue
            style = {"linestyle": "--", "color": "grey"} if name == "random" else {}
            ax.plot(data["fraction"], vals, label=name, **style)
        ax.set_title(cell.replace("__", " → "))
        ax.set_xlabel("share of users targeted (ranked by predicted uplift)")
        ax.set_ylabel("Qini Q(n)" if kind == "qini" else "uplift U(n)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def save_figure(fig, path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def fmt(mean: float, std: float | None = None, digits: int = 4) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def as_results(cells: list[dict]) -> dict[str, dict[str, list]]:
    """per_arm_table output of one run -> {cell: {metric: [value, None]}}."""
    skip = ("treatment", "response", "n")
    return {cell_key(c): {m: [v, None] for m, v in c.items() if m not in skip} for c in cells}


def metric_tables(results: dict[str, dict[str, dict[str, list]]], metrics: list[str], digits: int = 4) -> str:
    """One markdown table per metric: rows = models, columns = response / treatment cells.

    ``results``: {model: {"<treatment>__<response>": {metric: [mean, std or None]}}}.
    """
    cells = list(next(iter(results.values())))
    header = ["model"] + [f"{c.split('__')[1]} / {c.split('__')[0]}" for c in cells]
    out = []
    for m in metrics:
        rows = [[model] + [fmt(*by_cell[c][m], digits=digits) if m in by_cell[c] else "n/a" for c in cells]
                for model, by_cell in results.items()]
        out += [f"### {METRIC_LABELS[m]}", "", markdown_table(header, rows), ""]
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_html(path: Path, title: str, markdown: str, images: list[tuple[str, bytes]]) -> None:
    """A self-contained HTML page: the markdown tables rendered, the PNGs embedded."""
    body = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    for caption, png in images:
        b64 = base64.b64encode(png).decode()
        body.append(f"<figure><img src='data:image/png;base64,{b64}'/><figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
