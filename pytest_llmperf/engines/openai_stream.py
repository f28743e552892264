"""The ``openai`` backend's load generator: streamed requests from one asyncio event loop, timed per chunk.

At most ``concurrency`` requests are in flight, arrivals optionally a seeded Poisson process. Each request
records its send time, the arrival time of every chunk that carries text, and its end. Two routes:
``/v1/completions`` (a chunk's text is ``choices[i].text``) and ``/v1/chat/completions`` (``choices[i].delta.content``);
both report token counts in a final ``usage`` event when asked with ``stream_options.include_usage``.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from pytest_llmperf.core.workload import RequestRecord

_T = TypeVar("_T")

#: The route of each endpoint, and where a streamed chunk carries its text.
ROUTES = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class RequestFailed(Exception):
    """Request ``index`` failed; ``what`` says how (the engine turns it into an ``EngineError``)."""

    def __init__(self, index: int, what: str) -> None:
        super().__init__(what)
        self.index = index
        self.what = what


def run_sync(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion from synchronous code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name="llmperf-openai-client")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@dataclass(frozen=True)
class Load:
    """Where and how to send a run's requests."""

    url: str
    headers: dict[str, str]
    request_timeout_s: float
    endpoint: str = "completions"
    #: Reuse connections between requests. llama.cpp's llama-server closes a connection after a streamed answer
    #: without saying so: the next request on it fails to send ("Can not write request body"), so its preset
    #: opens a connection per request.
    keep_alive: bool = True


async def drive(
    load: Load, bodies: list[bytes], known: list[int | None], concurrency: int, rate: float | None, seed: int
) -> list[RequestRecord]:
    """Send ``bodies`` (``known``: each prompt's token count, where the engine counted it) and time them."""
    import aiohttp

    count = len(bodies)
    arrivals: list[float] | None = None
    if rate is not None:
        rng = random.Random(seed)
        arrivals, clock = [], 0.0
        for _ in range(count):
            arrivals.append(clock)
            clock += rng.expovariate(rate)
    records: list[RequestRecord | None] = [None] * count
    timeout = aiohttp.ClientTimeout(total=load.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=not load.keep_alive)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=load.headers) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < count:
                index = position
                position += 1
                if arrivals is not None:
                    delay = start + arrivals[index] - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                records[index] = await _one(session, load, index, bodies[index], known[index])

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, count))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    return [record for record in records if record is not None]


def _chunk_texts(event: dict[str, Any], chat: bool) -> list[tuple[Any, Any]]:
    """``(text, finish_reason)`` of each choice of a streamed chunk; raises on a chunk of another shape."""
    if chat:
        return [(choice["delta"].get("content"), choice.get("finish_reason")) for choice in event["choices"]]
    return [(choice.get("text"), choice.get("finish_reason")) for choice in event["choices"]]


async def _one(session: Any, load: Load, index: int, body: bytes, prompt_tokens: int | None) -> RequestRecord:
    import aiohttp

    chat = load.endpoint == "chat"
    chunk_times: list[float] = []
    usage: Any = None
    finished = done = False
    perf_counter = time.perf_counter
    loads = json.loads
    t_send = perf_counter()
    answered = False
    try:
        async with session.post(load.url, data=body) as response:
            answered = True
            if response.status != 200:
                detail = (await response.read())[:300].decode(errors="replace")
                raise RequestFailed(index, f"HTTP {response.status}: {detail}")
            if response.content_type != "text/event-stream":
                detail = (await response.read())[:200].decode(errors="replace")
                raise RequestFailed(
                    index,
                    f"the server did not stream (Content-Type {response.content_type}, expected "
                    f"text/event-stream); does it support stream: true? Body: {detail}",
                )
            pending = b""
            async for data in response.content.iter_any():
                now = perf_counter()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments, event/id fields
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        continue
                    try:
                        event = loads(payload)
                        texts = _chunk_texts(event, chat)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        if isinstance(event_error := error_of(payload), str):
                            what = f"the server sent an error in the stream: {event_error}"
                            raise RequestFailed(index, what) from None
                        shape = "chat completion" if chat else "completion"
                        raise RequestFailed(
                            index, f"malformed stream: an event is not a {shape} chunk: {payload[:200]!r}"
                        ) from None
                    for text, finish_reason in texts:
                        if text:
                            chunk_times.append(now)
                        if finish_reason:
                            finished = True
                    if event.get("usage"):
                        usage = event["usage"]
    except asyncio.TimeoutError:
        raise RequestFailed(
            index, f"timed out after {load.request_timeout_s:g} s (config key 'request_timeout_s')"
        ) from None
    except aiohttp.ClientError as error:
        where = "while streaming" if answered else "before the server answered"
        hint = ""
        if not answered and load.keep_alive and isinstance(error, (aiohttp.ClientOSError,
                                                                    aiohttp.ServerDisconnectedError)):
            hint = (" (a reused connection the server had closed? llama.cpp's llama-server closes them after a "
                    "streamed answer: build the engine with keep_alive=False)")
        raise RequestFailed(index, f"connection failed {where}: {type(error).__name__}: {error}{hint}") from None
    t_done = perf_counter()
    if not (done or finished):
        raise RequestFailed(index, "malformed stream: it ended without a finish_reason or 'data: [DONE]'")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return RequestRecord(
            t_send, t_done, int(usage.get("prompt_tokens") or 0) or prompt_tokens, usage["completion_tokens"],
            chunk_times, counted_by="usage",
        )
    return RequestRecord(t_send, t_done, prompt_tokens, len(chunk_times), chunk_times, counted_by="chunks")


def error_of(payload: bytes) -> str | None:
    """The message of an ``{"error": ...}`` event, or None."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if isinstance(event, dict) and "error" in event:
        error = event["error"]
        return str(error.get("message", error)) if isinstance(error, dict) else str(error)
    return None
