"""What a stage does when it has nothing to do: a model family that is off, a data set without request logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fulcrum.config import CDUM

log = logging.getLogger("fulcrum")
SKIPPED = "SKIPPED"  # the note a skipped stage leaves in its output folder (DVC needs the folder)


def skip_family_stage(out_dir: Path, report: Path, stage: str, families: list[str]) -> dict:
    """A CDUM stage when the cycle runs without CDUM: empty its output folder but for a note; say so."""
    return skip_stage(out_dir, report, stage, f"families is {families}: add {CDUM!r} to run {stage}")


def skip_stage(out_dir: Path, report: Path, stage: str, why: str) -> dict:
    """A stage with nothing to do: its output folder holds only a note saying why (DVC needs the folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():
        if old.is_file():
            old.unlink()
    (out_dir / SKIPPED).write_text(why + "\n")
    summary = {"skipped": True, "reason": why}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("%s: skipped (%s)", stage, why)
    return summary
