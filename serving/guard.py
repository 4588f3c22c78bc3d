"""ASGI guard in front of the decision service: body size, content type, one error shape.

Pure ASGI (no BentoML import), so it is tested on its own and sits in front of the app:

- The body is read whole before the app sees it, at most ``max_bytes``: a declared
  ``Content-Length`` over the limit and a chunked body that grows past it are both a 413
  (inside the app an exception from ``receive`` becomes a 500).
- ``POST`` to a decision endpoint must carry JSON (``application/json``, ``…+json`` or no
  content type): anything else is a 415 before a form parser gets to it.
- Every 4xx from a decision endpoint leaves with one body shape,
  ``{"error": "<one line naming the field>", "status": 400, "detail": [{"field", "message"}]}``:
  pydantic's validation errors, BentoML's own errors (a one-element list) and the
  guard's 413/415 alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

JSON_MEDIA = ("application/json",)


def error_body(status: int, message: str, detail: list[dict] | None = None) -> bytes:
    return json.dumps({"error": message, "status": status, "detail": detail or []}).encode()


def _field(loc: Iterable) -> str:
    return ".".join(str(x) for x in loc)


def normalize_error(status: int, raw: bytes) -> bytes:
    """Any 4xx body (pydantic's, BentoML's, plain text) -> the service's one error shape."""
    try:
        got = json.loads(raw) if raw else None
    except ValueError:
        return error_body(status, raw.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}")
    if isinstance(got, list) and len(got) == 1 and isinstance(got[0], dict):
        got = got[0]  # BentoML answers its own 4xx errors as a one-element list
    if not isinstance(got, dict):
        return error_body(status, f"HTTP {status}")
    detail = []
    for e in got.get("detail") or []:
        if isinstance(e, dict):
            detail.append({"field": _field(e.get("loc") or ()), "message": str(e.get("msg", e))})
    message = str(got.get("error") or f"HTTP {status}")
    if detail:  # name the first failing field in the one-line message
        first = detail[0]
        message = f"{message}: {first['field'] or 'body'}: {first['message']}"
    return error_body(status, message, detail)


def is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return True  # BentoML reads a body without a type as JSON
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    return media in JSON_MEDIA or media.endswith("+json")


class RequestGuard:
    """ASGI middleware; ``paths`` are the decision endpoints (exact paths) whose errors are reshaped."""

    def __init__(self, app, max_bytes: int, paths: Iterable[str] = ("/decide", "/decide_batch")):
        self.app, self.max_bytes, self.paths = app, max_bytes, frozenset(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        decision = scope.get("path") in self.paths
        if decision and scope.get("method") == "POST" and not is_json(headers.get(b"content-type")):
            kind = headers[b"content-type"].decode("latin-1")[:100]
            return await _answer(send, 415, f"content type {kind!r} is not accepted: send JSON "
                                            "(content-type: application/json)")
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await _answer(send, 400, "Content-Length is not a number")
            if int(declared) > self.max_bytes:
                return await _answer(send, 413, self._too_large(int(declared)))
        chunks, seen = [], 0
        while True:  # read the whole body first, counting: chunked uploads declare no length
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await _answer(send, 413, self._too_large(seen, at_least=True))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replayed():
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()  # after the body: wait for a disconnect as the app expects

        return await self.app(scope, replayed, _Reshape(send) if decision else send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return f"request body of {'over ' if at_least else ''}{size} bytes is over the limit of {self.max_bytes}"


class _Reshape:
    """A ``send`` that holds a 4xx response until its body is complete, then sends it reshaped."""

    def __init__(self, send):
        self.send, self.start, self.parts = send, None, []

    async def __call__(self, message):
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            self.start = message
            return None
        if self.start is None or message["type"] != "http.response.body":
            return await self.send(message)
        self.parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return None
        status = self.start["status"]
        body = normalize_error(status, b"".join(self.parts))
        keep = [(k, v) for k, v in self.start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")]
        await self.send({"type": "http.response.start", "status": status,
                         "headers": keep + _json_headers(body)})
        return await self.send({"type": "http.response.body", "body": body})


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def _answer(send, status: int, message: str) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status, "headers": _json_headers(body)})
    await send({"type": "http.response.body", "body": body})
