"""The service's log: client errors as one rate-limited line, and a log file that rotates.

- :class:`ClientErrorLog` is a logging filter for BentoML's request-error logger. BentoML
  logs every rejected request (a 400 included) at ERROR with its ~2 KB traceback: a flood of
  bad requests grew ``serve.log`` by ~8 GB an hour. A client error becomes one WARNING line
  naming the path and the error, at most one per ``every`` seconds (the line says how many
  were left out); server errors keep their traceback.
- ``python -m serving.logs --log FILE -- CMD...`` runs CMD (``bentoml serve``) with its output
  written to FILE, rotated at ``--max-bytes`` with ``--backups`` old files (FILE.1, FILE.2, ...).
  It is the process group's leader: a TERM to the group stops CMD, and the relay keeps
  reading until CMD's output ends, so the last lines are kept; it exits with CMD's code.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The logger BentoML's HTTP app reports request exceptions on (bentoml._internal.server.http_app).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def is_client_error(exc: BaseException | None) -> bool:
    """A request the client got wrong: pydantic validation, or a BentoML error with a 4xx code."""
    if exc is None:
        return False
    try:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            return True
    except ImportError:  # pragma: no cover - pydantic is a dependency
        pass
    code = getattr(getattr(exc, "error_code", None), "value", None)
    return isinstance(code, int) and 400 <= code < 500


class ClientErrorLog(logging.Filter):
    """Client errors: one WARNING line without traceback, at most one per ``every`` seconds."""

    def __init__(self, every: float = 10.0, clock=time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self.last: float | None = None
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not is_client_error(exc):
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            self.left_out += 1
            return False
        where = record.getMessage()  # "Exception on /decide [POST]"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        more = f" ({self.left_out} more client errors in the last {now - self.last:.0f} s not logged)" \
            if self.last is not None and self.left_out else ""
        record.msg, record.args = "client error, %s: %s%s", (where.replace("Exception on ", ""), first, more)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.last, self.left_out = now, 0
        return True


def install_client_error_log(every: float = 10.0) -> ClientErrorLog:
    """Attach the filter to BentoML's request-error logger (idempotent); returns it."""
    logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    for f in logger.filters:
        if isinstance(f, ClientErrorLog):
            return f
    f = ClientErrorLog(every)
    logger.addFilter(f)
    return f


class RotatingFile:
    """Appends bytes to ``path``; past ``max_bytes`` the file moves to ``path.1`` (older ones shift)."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path, self.max_bytes, self.backups = Path(path), max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.path, "ab")  # noqa: SIM115 - kept open for the relay's lifetime

    def write(self, data: bytes) -> None:
        if self.out.tell() + len(data) > self.max_bytes and self.out.tell() > 0:
            self.rotate()
        self.out.write(data)
        self.out.flush()

    def rotate(self) -> None:
        self.out.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.out = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self.out.close()


def relay(cmd: list[str], log: Path, max_bytes: int, backups: int) -> int:
    """Run ``cmd`` with stdout+stderr into the rotating ``log``; CMD's exit code."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the group's TERM is for CMD; we stop when its output ends
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)])
    out = RotatingFile(log, max_bytes, backups)
    try:
        for line in iter(proc.stdout.readline, b""):
            out.write(line)
    finally:
        out.close()
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.logs",
                                 description="Run a command with its output in a rotating log file.")
    ap.add_argument("--log", type=Path, required=True, help="the log file")
    ap.add_argument("--max-bytes", type=int, default=20 << 20, help="rotate past this size (default 20 MiB)")
    ap.add_argument("--backups", type=int, default=3, help="rotated files kept (FILE.1 ... FILE.N)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given (… -- CMD ARGS)")
    return relay(cmd, args.log, args.max_bytes, args.backups)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
