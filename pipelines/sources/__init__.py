"""RCT sources: each writes the canonical dataset (``fulcrum.schema``) into a folder."""

from __future__ import annotations

from pathlib import Path

from fulcrum.config import LogsSource, SimulatorSource
from fulcrum.schema import Manifest


def collect_source(source: SimulatorSource | LogsSource, out_dir: Path, base_dir: Path) -> Manifest:
    """Write the dataset of ``source`` into ``out_dir``; relative log paths resolve from ``base_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.type == "simulator":
        from pipelines.sources.simulator import simulate_to

        return simulate_to(source, out_dir)
    from pipelines.sources.logs import ingest_logs

    return ingest_logs(source, out_dir, base_dir)
