"""The request guard (pure ASGI) and the service's log handling, without a server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from serving.guard import RequestGuard, normalize_error
from serving.logs import ClientErrorLog, RotatingFile


async def _echo_app(scope, receive, send):
    """Answers the body it read, or a pydantic-like 400 when the body says so."""
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    if body.startswith(b"bad"):
        out = json.dumps({"error": "1 validation error for Input",
                          "detail": [{"loc": ["recent", "scores", "usage_time", 3], "msg": "too big"}]}).encode()
        status = 400
    elif body.startswith(b"limit"):
        out, status = json.dumps([{"error": "at most 8 requests per batch"}]).encode(), 400
    else:
        out, status = body, 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


def _call(chunks: list[bytes], headers: dict[bytes, bytes] | None = None, path: str = "/decide",
          max_bytes: int = 100) -> tuple[int, bytes]:
    guard = RequestGuard(_echo_app, max_bytes=max_bytes)
    scope = {"type": "http", "method": "POST", "path": path, "headers": list((headers or {}).items())}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_chunked_body_over_the_limit_is_413_not_500():
    status, body = _call([b"x" * 60, b"x" * 60])  # no Content-Length: 120 > 100 only seen while reading
    assert status == 413
    assert json.loads(body) == {"error": "request body of over 120 bytes is over the limit of 100", "status": 413,
                                "detail": []}


def test_declared_length_and_bad_length():
    assert _call([b"{}"], {b"content-length": b"5000"})[0] == 413
    assert _call([b"{}"], {b"content-length": b"abc"})[0] == 400


def test_body_reaches_the_app_whole():
    assert _call([b"ab", b"cd", b"ef"]) == (200, b"abcdef")


@pytest.mark.parametrize("ctype,ok", [(b"application/json", True), (b"application/json; charset=utf-8", True),
                                      (b"application/vnd.api+json", True), (None, True),
                                      (b"multipart/form-data; boundary=x", False), (b"text/plain", False)])
def test_only_json_reaches_the_decision_endpoints(ctype, ok):
    status, body = _call([b"{}"], {b"content-type": ctype} if ctype else {})
    assert (status == 200) == ok
    if not ok:
        assert status == 415 and "send JSON" in json.loads(body)["error"]
    # other paths (the ops app) are not the guard's to judge by content type
    assert _call([b"{}"], {b"content-type": b"text/plain"}, path="/ops/health")[0] == 200


def test_every_4xx_has_one_shape_naming_the_field():
    status, body = _call([b"bad"])
    got = json.loads(body)
    assert status == 400 and set(got) == {"error", "status", "detail"}
    assert got["error"] == "1 validation error for Input: recent.scores.usage_time.3: too big"
    assert got["detail"] == [{"field": "recent.scores.usage_time.3", "message": "too big"}]
    status, body = _call([b"limit"])  # BentoML's one-element list
    assert json.loads(body) == {"error": "at most 8 requests per batch", "status": 400, "detail": []}
    assert json.loads(normalize_error(404, b"Not Found"))["error"] == "Not Found"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _record(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/decide", "POST"),
                             (type(exc), exc, None))


def test_client_errors_log_one_line_rate_limited_server_errors_keep_traces():
    from bentoml.exceptions import InvalidArgument
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        x: int

    try:
        M(x="no")
    except ValidationError as e:
        invalid = e
    clock = _Clock()
    f = ClientErrorLog(every=10, clock=clock)
    first = _record(invalid)
    assert f.filter(first) and first.levelno == logging.WARNING and first.exc_info is None
    assert first.getMessage().startswith("client error, /decide [POST]: 1 validation error")
    assert not f.filter(_record(InvalidArgument("too many")))  # within 10 s: left out
    assert not f.filter(_record(invalid))
    clock.t = 11
    nxt = _record(InvalidArgument("too many"))
    assert f.filter(nxt) and "2 more client errors" in nxt.getMessage()
    boom = _record(RuntimeError("bug"))
    assert f.filter(boom) and boom.exc_info is not None and boom.levelno == logging.ERROR


def test_rotating_file_keeps_size_and_backups(tmp_path):
    log = tmp_path / "serve.log"
    out = RotatingFile(log, max_bytes=100, backups=2)
    for i in range(50):
        out.write(b"line %02d ..........\n" % i)  # 20 bytes
    out.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["serve.log", "serve.log.1", "serve.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert log.read_bytes().endswith(b"line 49 ..........\n")


def test_relay_runs_the_command_and_keeps_its_exit_code(tmp_path):
    log = tmp_path / "out.log"
    cmd = [sys.executable, "-m", "serving.logs", "--log", str(log), "--max-bytes", "1000", "--",
           sys.executable, "-c", "import sys; [print('x' * 99) for _ in range(50)]; sys.exit(3)"]
    assert subprocess.run(cmd, timeout=60).returncode == 3
    assert len(list(tmp_path.glob("out.log*"))) == 4  # the file and its 3 backups, each under 1000 bytes
    assert max(p.stat().st_size for p in tmp_path.glob("out.log*")) <= 1000
