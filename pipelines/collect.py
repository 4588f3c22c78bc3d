"""Stage ``collect``: get the RCT data from the configured source and write the data report.

The dataset is written to ``<data>/rct.tmp`` and swapped into ``<data>/rct`` only
when everything succeeded, so a failed run leaves the previous dataset in place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fulcrum import schema as S
from fulcrum.config import FulcrumConfig
from pipelines.rct_report import build_report, report_markdown
from pipelines.sources import collect_source

log = logging.getLogger("fulcrum")


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def data_report(rct_dir: Path, level: float) -> dict:
    """Report of the dataset in ``rct_dir`` (reads only the columns it needs)."""
    man = S.Manifest.read(rct_dir)
    exp = pq.read_table(rct_dir / S.EXPERIMENT_FILE, columns=[S.ARM_INDEX, *man.responses])
    arm_index = exp.column(S.ARM_INDEX).to_numpy().astype(np.int64)
    # The report compares each single treatment with control; combined-arm users are
    # only counted (they are there for offline policy evaluation).
    single = arm_index < len(man.arms)
    y = np.stack([exp.column(r).to_numpy() for r in man.responses], axis=1)[single]
    true_mu = None
    if man.has_truth:
        cols = [S.truth_column(a, r) for a in man.arms for r in man.responses]
        t = pq.read_table(rct_dir / S.TRUTH_FILE, columns=cols)
        # All users: the true ATE is a population quantity, whatever arm a user drew.
        true_mu = np.stack([t.column(c).to_numpy() for c in cols], axis=1).reshape(len(t), len(man.arms), -1)
    rep = build_report(man.arms, man.responses, arm_index[single], y, level, true_mu)
    rep["combined_arm_users"] = {
        name: int((arm_index == len(man.arms) + c).sum()) for c, name in enumerate(man.combined_arms)
    }
    rep["source"] = man.source
    rep["n_feature_rows"] = man.n_feature_rows
    rep["n_requests"] = man.n_requests
    return rep


def run_collect(cfg: FulcrumConfig, root: Path = Path(".")) -> dict:
    """Collect from ``cfg.source`` into ``<data>/rct`` and write ``<reports>/collect.{json,md}``."""
    t0 = time.perf_counter()
    final = cfg.paths.rct_dir(root)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = collect_source(cfg.source, tmp, base_dir=root)
        manifest.write(tmp)
        rep = data_report(tmp, cfg.collect.ci_level)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, final)
    rep["seconds"] = round(time.perf_counter() - t0, 2)
    reports = root / cfg.paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "collect.json").write_text(json.dumps(rep, indent=2) + "\n")
    (reports / "collect.md").write_text(report_markdown(rep))
    log.info("collect: %s users, %s feature rows, %s requests in %.1f s -> %s",
             f"{manifest.n_users:,}", f"{manifest.n_feature_rows:,}", f"{manifest.n_requests:,}",
             rep["seconds"], final)
    return rep
