"""A scripted OpenAI-compatible completions server for fault tests: ``python scripted_server.py PORT MODE``.

Modes: ``ok`` (a well-formed stream with usage when asked), ``http500`` (every completion fails), ``slow`` (the
stream stalls after the first chunk), ``not-json`` (a data line that is not JSON), ``no-end`` (the stream stops
without a finish_reason or ``[DONE]``), ``error-event`` (an ``{"error": ...}`` event mid-stream), ``auth`` (like
``ok`` but requires ``Authorization: Bearer $SCRIPTED_KEY``), ``basic`` (requires HTTP Basic
``$SCRIPTED_USER:$SCRIPTED_PASSWORD``), ``not-sse`` (answers one JSON body, no stream).
Completions record their JSON bodies in
``$SCRIPTED_LOG`` (one per line) when it is set.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = sys.argv[2] if len(sys.argv) > 2 else "ok"


def chunk(text: str, finish: str | None = None) -> bytes:
    event = {"id": "c", "object": "text_completion", "model": "scripted",
             "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"scripted {self.command} {self.path}\n")

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if MODE not in ("auth", "basic"):
            return True
        if MODE == "auth" and self.headers.get("Authorization") == f"Bearer {os.environ['SCRIPTED_KEY']}":
            return True
        if MODE == "basic":
            token = base64.b64encode(f"{os.environ['SCRIPTED_USER']}:{os.environ['SCRIPTED_PASSWORD']}".encode())
            if self.headers.get("Authorization") == f"Basic {token.decode()}":
                return True
        self._json(401, {"error": {"message": "invalid api key"}})
        return False

    def do_GET(self) -> None:
        # ``basic`` guards completions only, so the launch's health check (no credentials) sees it up.
        if self.path == "/v1/models" and (MODE == "basic" or self._authorised()):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        elif self.path == "/health":  # like vLLM's: 200 with an empty body
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path != "/v1/models":
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/completions":
            self._json(404, {"error": "not found"})
            return
        if not self._authorised():
            return
        if os.environ.get("SCRIPTED_LOG"):
            with open(os.environ["SCRIPTED_LOG"], "a") as log:
                log.write(json.dumps(body) + "\n")
        if MODE == "http500":
            self._json(500, {"error": {"message": "scripted failure"}})
            return
        if MODE == "not-sse":
            self._json(200, {"choices": [{"text": "whole answer", "finish_reason": "length"}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        n = int(body.get("max_tokens", 4))
        out = [chunk(" tok") for _ in range(n - 1)] + [chunk(" end", "length")]
        if MODE == "not-json":
            out[1] = b"data: {this is not json\n\n"
        if MODE == "error-event":
            out[1] = b'data: {"error": {"message": "scripted engine crash", "code": 500}}\n\n'
        if MODE == "no-end":
            out = out[:-1]
        for index, piece in enumerate(out):
            self.wfile.write(piece)
            self.wfile.flush()
            if MODE == "slow" and index == 0:
                time.sleep(30)
        if MODE != "no-end":
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": len(str(body["prompt"]).split()), "completion_tokens": n}
                self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(f"scripted server ({MODE}) on port {sys.argv[1]}", flush=True)
    server.serve_forever()
