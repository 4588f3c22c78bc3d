"""One lock for everything that writes the workspace: ``.fulcrum.lock`` in the project root.

Airflow's stage tasks, ``make run``, a hand-run ``dvc repro`` and every ``fulcrum`` stage that
writes shared state (data, reports, the online store, the release, ``params.yaml``) take it,
so two writers never interleave (two ``fulcrum publish`` at once crashed on the shared
staging table). An OS ``flock`` on the file: released by the kernel when the holder dies.

- Who holds it is written beside it (``.fulcrum.lock.holder``: pid, command, since) and is
  named when another process waits (a line every 30 s) or gives up.
- Re-entrant across processes by inheritance: the holder exports ``FULCRUM_LOCK_HELD`` to
  its children (``make run`` → ``dvc repro`` → ``fulcrum train``), which then run without
  taking it again (else the child would wait for its own parent).
- ``python -m fulcrum.lock [--wait S] -- CMD ...`` runs CMD under the lock (the DAG and the
  Makefile use it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".fulcrum.lock"
HOLDER_SUFFIX = ".holder"
HELD_ENV = "FULCRUM_LOCK_HELD"  # set for the holder's children: the lock file they already hold
WAIT_ENV = "FULCRUM_LOCK_WAIT"  # seconds a writer waits for the lock before giving up
DEFAULT_WAIT_S = 3600.0
NOTICE_EVERY_S = 30.0
FIRST_NOTICE_S = 0.5

log = logging.getLogger("fulcrum")


class LockBusy(RuntimeError):
    """Another process held the workspace lock for longer than we were willing to wait."""


def lock_path(root: Path) -> Path:
    return Path(root).resolve() / LOCK_FILE


def holder(path: Path) -> dict | None:
    """What the holder wrote about itself (None if nothing readable)."""
    try:
        return json.loads(path.with_name(path.name + HOLDER_SUFFIX).read_text())
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} ({info.get('command', '?')}, since {info.get('since', '?')})"


def default_wait() -> float:
    return float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S))


@contextlib.contextmanager
def workspace_lock(root: Path, command: str, wait_s: float | None = None,
                   notify: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the project lock while the block runs; LockBusy naming the holder after ``wait_s`` seconds.

    Inside a process that inherited the lock (``FULCRUM_LOCK_HELD`` names this lock file) it
    only yields: the parent holds it for us.
    """
    path = lock_path(root)
    if os.environ.get(HELD_ENV) == str(path):
        yield path
        return
    notify = notify or log.warning
    wait_s = default_wait() if wait_s is None else wait_s
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = last = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now - t0 >= wait_s:
                    raise LockBusy(f"the workspace {path.parent} is locked by {describe(holder(path))}; gave up "
                                   f"after {wait_s:.0f} s ({WAIT_ENV} sets how long to wait)") from None
                # The first notice after half a second: a short wait needs no message, and the
                # holder has written its note by then (it writes it right after taking the lock).
                if (not told and now - t0 >= FIRST_NOTICE_S) or (told and now - last >= NOTICE_EVERY_S):
                    notify(f"{command}: waiting for the workspace lock {path} held by {describe(holder(path))}")
                    told, last = True, now
                time.sleep(0.2)
        info = {"pid": os.getpid(), "command": command,
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        side = path.with_name(path.name + HOLDER_SUFFIX)
        side.write_text(json.dumps(info) + "\n")
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(path)  # our children (subprocesses) inherit it
        try:
            yield path
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            with contextlib.suppress(OSError):
                side.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fulcrum.lock",
                                 description="Run a command holding the project's workspace lock (.fulcrum.lock).")
    ap.add_argument("--root", type=Path, default=Path("."), help="project root (where .fulcrum.lock lives)")
    ap.add_argument("--wait", type=float, default=None, help=f"seconds to wait for it (default ${WAIT_ENV} or "
                                                             f"{DEFAULT_WAIT_S:.0f})")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given (… -- CMD ARGS)")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        with workspace_lock(args.root, " ".join(cmd)[:200], args.wait, notify=say):
            return subprocess.call(cmd)
    except LockBusy as e:
        say(f"error: {e}")
        return 75  # EX_TEMPFAIL: try again later


if __name__ == "__main__":
    sys.exit(main())
