"""A zero-work OpenAI-compatible completions server, for measuring load-generator (client) capacity.

It shares the CPU with the client being measured, so it does as little as possible: a raw
``asyncio.Protocol`` (uvloop when importable), HTTP/1.1 keep-alive with pipelining, minimal parsing
(request line, Content-Length, body), precomputed response bytes and one ``write`` per response.
Standard library only; Python >= 3.10.

Routes:

- ``GET /v1/models`` -> the single model ``zero``; ``GET /health`` -> 200.
- ``POST /v1/completions`` (JSON body): ``max_tokens`` (default 16; ``max_completion_tokens`` is read when
  ``max_tokens`` is absent), ``stream``,
  ``stream_options.include_usage``, ``prompt`` (string, list of strings, or token ids). Streaming answers
  ``max_tokens`` SSE events whose text is ``" hello"`` (the last with ``finish_reason: "length"``), an optional
  usage event (``choices: []``), then ``data: [DONE]``. ``prompt_tokens`` is the number of whitespace-separated
  words in the prompt (the length of a token-id list). Non-streaming answers one JSON completion.
- anything else -> 404.

    python benchmarks/zero_server.py --host 127.0.0.1 --port 8000

Importable: ``serve(host, port)`` blocks; ``await start_server(host, port)`` returns the ``asyncio.Server``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time

MODEL = "zero"
TOKEN_TEXT = " hello"
DEFAULT_MAX_TOKENS = 16
MAX_HEADER_BYTES = 65536

_MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": MODEL}]},
    separators=(",", ":"),
).encode()
_HEALTH_BODY = b'{"status":"ok"}'
_NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error","code":404}}'
_BAD_REQUEST_BODY = b'{"error":{"message":"bad request","type":"invalid_request_error","code":400}}'

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
_SSE_DONE = b"data: [DONE]\n\n"
_CHUNK_DONE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_SSE_DONE), _SSE_DONE)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_ids = itertools.count(1)


def _response(status: bytes, body: bytes, close: bool = False, ctype: bytes = b"application/json") -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\nContent-Type: ",
            ctype,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n",
            body,
        )
    )


_MODELS_RESP = _response(b"200 OK", _MODELS_BODY)
_HEALTH_RESP = _response(b"200 OK", _HEALTH_BODY)
_NOT_FOUND_RESP = _response(b"404 Not Found", _NOT_FOUND_BODY)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _prompt_words(prompt: object) -> int:
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) for p in prompt):
            return len(prompt)  # token ids
        n = 0
        for p in prompt:
            if isinstance(p, str):
                n += len(p.split())
            elif isinstance(p, list):
                n += len(p)
        return n
    return 0


def _stream_body(cid: bytes, created: bytes, max_tokens: int, usage: bytes | None) -> bytes:
    """All the chunked SSE frames of one streamed completion (one HTTP chunk per event)."""
    head = b'data: {"id":"cmpl-' + cid + b'","object":"text_completion","created":' + created
    head += b',"model":"' + MODEL.encode() + b'","choices":'
    text = json.dumps(TOKEN_TEXT).encode()
    mid = _chunk(head + b'[{"index":0,"text":' + text + b',"logprobs":null,"finish_reason":null}]}\n\n')
    last = _chunk(head + b'[{"index":0,"text":' + text + b',"logprobs":null,"finish_reason":"length"}]}\n\n')
    parts = [mid * (max_tokens - 1), last] if max_tokens > 0 else []
    if usage is not None:
        parts.append(_chunk(head + b'[],"usage":' + usage + b"}\n\n"))
    parts.append(_CHUNK_DONE)
    return b"".join(parts)


def _completion(body: bytes, close: bool) -> bytes:
    try:
        req = json.loads(body) if body else {}
        if not isinstance(req, dict):
            raise ValueError
        max_tokens = req.get("max_tokens")
        if max_tokens is None:
            max_tokens = req.get("max_completion_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
        if max_tokens < 0:
            raise ValueError
    except (ValueError, TypeError):
        return _response(b"400 Bad Request", _BAD_REQUEST_BODY, close)
    cid = str(next(_ids)).encode()
    created = str(int(time.time())).encode()
    ptoks = _prompt_words(req.get("prompt"))
    usage = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (ptoks, max_tokens, ptoks + max_tokens)
    if req.get("stream"):
        so = req.get("stream_options")
        include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
        body_bytes = _stream_body(cid, created, max_tokens, usage if include_usage else None)
        if close:
            return _SSE_HEAD[:-2] + b"Connection: close\r\n\r\n" + body_bytes
        return _SSE_HEAD + body_bytes
    out = (
        b'{"id":"cmpl-'
        + cid
        + b'","object":"text_completion","created":'
        + created
        + b',"model":"'
        + MODEL.encode()
        + b'","choices":[{"index":0,"text":'
        + json.dumps(TOKEN_TEXT * max_tokens).encode()
        + b',"logprobs":null,"finish_reason":"length"}],"usage":'
        + usage
        + b"}"
    )
    return _response(b"200 OK", out, close)


class ZeroProtocol(asyncio.Protocol):
    __slots__ = ("buf", "continued", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        close = False
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    out.append(_response(b"431 Request Header Fields Too Large", b"", True))
                    close = True
                break
            head = bytes(buf[:end])
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                out.append(_response(b"400 Bad Request", _BAD_REQUEST_BODY, True))
                close = True
                break
            method, target, version = parts
            lower = head.lower() if line_end >= 0 else b""
            clen = 0
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 17)
                try:
                    clen = int(lower[i + 17 : j if j >= 0 else len(lower)])
                except ValueError:
                    out.append(_response(b"400 Bad Request", _BAD_REQUEST_BODY, True))
                    close = True
                    break
            elif b"\r\ntransfer-encoding:" in lower:  # chunked request bodies: not supported
                out.append(_response(b"411 Length Required", _BAD_REQUEST_BODY, True))
                close = True
                break
            total = end + 4 + clen
            if len(buf) < total:
                if not self.continued and b"\r\nexpect: 100-continue" in lower:
                    self.continued = True
                    out.append(_CONTINUE)
                break
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.continued = False
            conn_close = (b"\r\nconnection: close" in lower) or (
                version == b"HTTP/1.0" and b"\r\nconnection: keep-alive" not in lower
            )
            q = target.find(b"?")
            path = target if q < 0 else target[:q]
            if method == b"POST" and path == b"/v1/completions":
                out.append(_completion(body, conn_close))
            elif method == b"GET" and path == b"/v1/models" and not conn_close:
                out.append(_MODELS_RESP)
            elif method == b"GET" and path == b"/health" and not conn_close:
                out.append(_HEALTH_RESP)
            elif method == b"GET" and path == b"/v1/models":
                out.append(_response(b"200 OK", _MODELS_BODY, True))
            elif method == b"GET" and path == b"/health":
                out.append(_response(b"200 OK", _HEALTH_BODY, True))
            else:
                out.append(_response(b"404 Not Found", _NOT_FOUND_BODY, True) if conn_close else _NOT_FOUND_RESP)
            if conn_close:
                close = True
                break
        t = self.transport
        if t is None:
            return
        if out:
            t.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            buf.clear()
            t.close()


def _install_loop_policy() -> str:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def start_server(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> asyncio.AbstractServer:
    """Start listening (port 0 picks a free port: read it from ``server.sockets[0].getsockname()[1]``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(ZeroProtocol, host, port, backlog=backlog, reuse_address=True)


async def _serve(host: str, port: int) -> None:
    server = await start_server(host, port)
    bound = server.sockets[0].getsockname()
    h = bound[0] if ":" not in bound[0] else f"[{bound[0]}]"
    print(f"listening on http://{h}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted (blocks)."""
    _install_loop_policy()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    args = ap.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
