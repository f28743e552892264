"""The ``openai`` backend: any server that speaks the OpenAI completions API, launched by the plugin or attached.

Launch: ``launch`` is a preset (``llama_cpp_server``, ``llama_server``, ``vllm``) or a command template with
the placeholders ``{python}``, ``{model}``, ``{host}``, ``{port}``, ``{api_key}``; the server runs on 127.0.0.1
on a free port, the engine waits for its health route, and stops it (and its children) at teardown
(``pytest_llmperf.engines.server``: the presets, the launch and the server process). Attach: ``base_url`` of a
running server.

Load: requests stream (``stream: true``) through ``pytest_llmperf.engines.openai_stream``, to
``/v1/completions`` or, with ``endpoint="chat"``, to ``/v1/chat/completions`` (the prompt as one user message).
Token counts come from the server's ``usage`` (asked for with ``stream_options.include_usage``) when it sends
one; otherwise output tokens are the counted text chunks and prompt tokens come from the server's tokenize route
(or are unavailable). ``describe()["token_counts"]`` says which was used. EOS is suppressed with ``min_tokens``
and/or ``ignore_eos`` (``eos`` knob; presets know what their server accepts) and every prompt is unique, so no
prefix cache inflates the numbers. Everything else the engine asks the server (health, models, tokenize) is
one synchronous request at a time, outside the measured part (``server.http_request``).

The API key is read from the environment variable named by ``api_key_env`` and is never stored: not in the
fingerprint, not in an error message, not in a log excerpt.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import json
import os
import random
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.engines.openai_stream import ROUTES, Load, RequestFailed, drive, run_sync
from pytest_llmperf.engines.server import (
    HttpStatus,
    NoAnswer,
    Preset,
    Redactor,
    ServerProcess,
    http_request,
    launch_server,
)
from pytest_llmperf.errors import EngineError

EOS_MODES = ("min_tokens", "ignore_eos", "both", "none")

# Tokenize routes tried, in order, on a server of unknown kind: llama-cpp-python's, then vLLM's/llama-server's.
_TOKENIZE_PATHS = ("/extras/tokenize", "/tokenize")

# Common English words: one token each in most tokenizers, so prompts are close to their target length before
# fitting, and look like text to any model.
_WORD_TEXT = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part "
    "over new sound take only little work know place year live me back give most very after thing our just name "
    "good sentence man think say great where help through much before line right too mean old any same tell boy "
    "follow came want show also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind hand picture again change "
    "off play spell air away animal house point page letter mother answer found study still learn should world"
)
_WORDS = tuple(_WORD_TEXT.split())


class _Refused(EngineError):
    """Nothing listens at the server's address."""


def _normalise_base_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without user info, a trailing slash or ``/v1``, and the ``(user, password)`` it carried.

    Credentials in a URL go into an ``Authorization: Basic`` header (urllib does not send them itself) and
    never into a message: the URL shown everywhere is the one without them.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EngineError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000, got {_public_url(url)!r}")
    credentials = None
    if parts.username is not None or parts.password is not None:
        credentials = (unquote(parts.username or ""), unquote(parts.password or ""))
    base = _public_url(url).rstrip("/")
    return (base[: -len("/v1")] if base.endswith("/v1") else base), credentials


def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (for fingerprints and messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port that is not a number: show what was given, without the user info
        port = ":" + parts.netloc.rpartition("@")[2].rpartition(":")[2]
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}"


class OpenAIEngine:
    """An OpenAI-compatible completions server, measured over HTTP with streaming requests."""

    backend = "openai"

    _KNOBS = (
        "model", "base_url", "launch", "server_args", "server_env", "api_key_env", "api_key_server_env", "health_path",
        "startup_timeout_s", "request_timeout_s", "eos", "tokenize", "stream_usage", "sampling", "served_model",
        "endpoint", "keep_alive",
    )

    def __init__(self, **config: Any) -> None:
        self._check_knobs(config)
        self._read_settings(config)
        api_key = self._read_api_key(config)
        attach_url = self._set_headers(config.get("base_url"), api_key)
        self.launch_name: str | None = None
        self.model_path: Path | None = None
        self.model = config.get("model")
        self._server: ServerProcess | None = None
        preset = None
        if config.get("launch") is not None:
            preset = self._launch(config, api_key)
        else:
            self._attach(config, attach_url)
        try:  # a launched server is running from here on: stopped again when the engine cannot be built
            self._read_request_settings(config, preset)
            self.served_model = config.get("served_model") or self._first_model()
            self._tokenize_path = self._find_tokenize(config.get("tokenize", "auto"), preset)
        except BaseException:
            self.close()
            raise
        self._prompt_tokens: dict[str, int] = {}
        self._tokens_per_word: float | None = None
        self._counts: dict[str, str] = {}  # how token counts were obtained, once a run has shown it

    # --- building the engine: the steps of __init__ --------------------------------------------------------

    def _check_knobs(self, config: dict[str, Any]) -> None:
        """aiohttp is installed, every knob is known, and exactly one of ``base_url`` and ``launch`` is given."""
        try:
            import aiohttp  # noqa: F401  (the load generator's client; checked before any server starts)
        except ImportError:
            raise EngineError("the openai backend needs aiohttp: `pip install 'pytest-llmperf[openai]'`") from None
        unknown = sorted(set(config) - set(self._KNOBS))
        if unknown:
            hints = [
                f"{name!r} (did you mean {', '.join(repr(m) for m in close)}?)"
                if (close := difflib.get_close_matches(name, self._KNOBS, n=2))
                else repr(name)
                for name in unknown
            ]
            raise EngineError(
                f"unknown openai engine knob {', '.join(hints)}; knobs are {', '.join(self._KNOBS)} "
                "(request fields such as temperature or top_p go in sampling={...})"
            )
        if (config.get("base_url") is None) == (config.get("launch") is None):
            raise EngineError("the openai backend needs exactly one of base_url (attach) or launch (start a server)")

    def _read_settings(self, config: dict[str, Any]) -> None:
        """Timeouts, the route and request fields, and what a launched server gets beyond its preset."""
        self.startup_timeout_s = float(config.get("startup_timeout_s", 120.0))
        self.request_timeout_s = float(config.get("request_timeout_s", 300.0))
        self.stream_usage = bool(config.get("stream_usage", True))
        self.endpoint = str(config.get("endpoint", "completions"))
        if self.endpoint not in ROUTES:
            raise EngineError(f"endpoint={self.endpoint!r} is not one of {', '.join(ROUTES)}")
        self.sampling: dict[str, Any] = {"temperature": 0.0, **dict(config.get("sampling") or {})}
        self.server_args = [str(arg) for arg in config.get("server_args") or ()]
        self.server_env = {str(key): str(value) for key, value in dict(config.get("server_env") or {}).items()}

    def _read_api_key(self, config: dict[str, Any]) -> str | None:
        """The API key from the environment variable ``api_key_env`` names (None: no key)."""
        self._api_key_env: str | None = config.get("api_key_env")
        if self._api_key_env is None:
            return None
        api_key = os.environ.get(self._api_key_env)
        if not api_key:
            raise EngineError(f"api_key_env names {self._api_key_env!r}, but that environment variable is not set")
        return api_key

    def _set_headers(self, base_url: Any, api_key: str | None) -> str:
        """The request headers (the API key as a bearer token, else ``base_url``'s credentials as basic auth) and
        the redactor of every secret; returns ``base_url`` normalised ("" when launching)."""
        attach_url, credentials = _normalise_base_url(str(base_url)) if base_url is not None else ("", None)
        secrets = [api_key or ""]
        self._headers = {"Content-Type": "application/json"}
        if credentials is not None:
            user, password = credentials
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
            secrets += [password, token, urlsplit(str(base_url)).netloc.rpartition("@")[0]]
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._redact = Redactor(secrets)
        return attach_url

    def _launch(self, config: dict[str, Any], api_key: str | None) -> Preset | None:
        """Start the server ``launch`` names and wait until it is healthy; returns its preset (None: a command)."""
        launched = launch_server(
            config["launch"], model=self.model, server_args=self.server_args, server_env=self.server_env,
            api_key=api_key, api_key_server_env=config.get("api_key_server_env"),
            health_path=config.get("health_path"), startup_timeout_s=self.startup_timeout_s, redact=self._redact,
            headers=self._headers,
        )
        self._server = launched.server
        self.launch_name, self.template, self.model_path = launched.name, launched.template, launched.model_path
        self.base_url, self.health_path = launched.server.base_url, launched.server.health_path
        return launched.preset

    def _attach(self, config: dict[str, Any], base_url: str) -> None:
        """Wait until the running server at ``base_url`` is healthy."""
        self.template = []
        self.base_url = base_url
        self.health_path = str(config.get("health_path") or "/v1/models")
        self._wait_attached()

    def _read_request_settings(self, config: dict[str, Any], preset: Preset | None) -> None:
        """Connection reuse and EOS suppression: the knob, else the preset's, else the defaults."""
        self.keep_alive = bool(config.get("keep_alive", preset.keep_alive if preset else True))
        eos = config.get("eos") or (preset.eos if preset else "both")
        if eos not in EOS_MODES:
            raise EngineError(f"eos={eos!r} is not one of {', '.join(EOS_MODES)}")
        self.eos = eos

    # --- server and HTTP plumbing (synchronous, outside the measured part) ---------------------------------

    def _where(self) -> str:
        return f"server {self._server.name} at {self.base_url}" if self._server else f"server at {self.base_url}"

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0,
              *, answer_is_json: bool = True) -> Any:
        """The decoded JSON answer of ``method path`` (the raw bytes: ``answer_is_json=False``, for a health route
        that answers 200 with an empty body, as vLLM's ``/health``)."""
        try:
            _, answer = http_request(self.base_url + path, method=method, body=body, headers=self._headers,
                                     timeout=timeout)
            return json.loads(answer) if answer_is_json else answer
        except HttpStatus as error:
            message = f"{self._where()}: {method} {path} -> HTTP {error.status}: {error.detail}"
            if error.status in (401, 403):
                message += f" (check the API key: api_key_env={self._api_key_env!r})"
            raise HttpStatus(self._redact(message), error.status) from None
        except (NoAnswer, ValueError) as error:
            exited = self._server.describe_exit() if self._server is not None else None
            if exited is not None and self._server is not None:
                raise self._server.failure(f"{exited}; {method} {path} failed: {error}") from None
            if isinstance(error, NoAnswer) and error.refused:
                raise _Refused(self._redact(f"{self._where()}: {method} {path}: connection refused")) from None
            raise EngineError(self._redact(f"{self._where()}: {method} {path} failed: {error}")) from None

    def _wait_attached(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            try:
                self._http("GET", self.health_path, timeout=5, answer_is_json=False)
                return
            except HttpStatus as error:
                if error.status in (401, 403, 404):  # up, and waiting will not change the answer
                    raise
                last: EngineError = error
            except _Refused as error:
                # Nothing listens there: an answer, not a server still starting.
                raise EngineError(f"{error}; is a server running at base_url {self.base_url}?") from None
            except EngineError as error:
                last = error
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{last} (not healthy within {self.startup_timeout_s:g} s, config key 'startup_timeout_s')"
                ) from None
            time.sleep(0.5)

    def _first_model(self) -> str:
        if self.model is not None and self._server is None:
            return str(self.model)
        listing = self._http("GET", "/v1/models")
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise EngineError(f"{self._where()}: GET /v1/models lists no model: {str(listing)[:200]}") from None

    def _find_tokenize(self, setting: Any, preset: Preset | None) -> str | None:
        if setting is None or setting is False:
            return None
        if setting != "auto":
            return str(setting)
        candidates = (preset.tokenize_path,) if preset and preset.tokenize_path else _TOKENIZE_PATHS
        for path in candidates:
            try:
                self._tokenize_with(path, "hello world")
                return path
            except EngineError:
                continue
        return None

    def _tokenize_with(self, path: str, text: str) -> int:
        return len(self._tokens_with(path, text))

    def _tokens_with(self, path: str, text: str) -> list[int]:
        # One body for every known route: llama-cpp-python reads "input", vLLM "prompt", llama-server "content".
        body = {"input": text, "prompt": text, "content": text, "add_special": True, "model": self.model_name}
        answer = self._http("POST", path, body)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            raise EngineError(f"{self._where()}: POST {path} answered without a token list")
        return [int(token) for token in tokens]

    # --- what lm-eval's server model types need (engines/openai_lm.py) ------------------------------------

    @property
    def tokenize_path(self) -> str | None:
        """The tokenize route found on the server (None: it has none)."""
        return self._tokenize_path

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def bearer_token(self) -> str | None:
        scheme, _, token = self._headers.get("Authorization", "").partition(" ")
        return token if scheme == "Bearer" else None

    def describe_where(self) -> str:
        return self._where()

    def has_route(self, path: str) -> bool:
        """The server answers GET ``path`` with a success."""
        try:
            self._http("GET", path, timeout=5)
        except EngineError:
            return False
        return True

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._http("POST", path, body, timeout=self.request_timeout_s)

    def tokenize(self, text: str) -> list[int]:
        """The ids the server gives ``text`` as a prompt (with the BOS it adds)."""
        if self._tokenize_path is None:
            raise EngineError(f"{self._where()} has no tokenize route (config key 'tokenize')")
        return self._tokens_with(self._tokenize_path, text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``, from the detokenize route beside the tokenize one."""
        if self._tokenize_path is None:
            raise EngineError(f"{self._where()} has no tokenize route (config key 'tokenize')")
        path = self._tokenize_path.replace("tokenize", "detokenize")
        answer = self._http("POST", path, {"tokens": list(tokens), "model": self.model_name})
        # llama-cpp-python answers "text", llama-server "content", vLLM "prompt".
        for key in ("text", "content", "prompt"):
            if isinstance(answer, dict) and isinstance(answer.get(key), str):
                return str(answer[key])
        raise EngineError(f"{self._where()}: POST {path} answered without a text: {str(answer)[:200]}")

    def lm_eval_model(self, **model_args: Any) -> Any:
        """lm-eval's own model type for this server (``engines/openai_lm.py``); ``model_args`` as lm-eval's."""
        from pytest_llmperf.engines.openai_lm import lm_eval_model

        return lm_eval_model(self, **model_args)

    @property
    def model_name(self) -> str:
        return str(getattr(self, "served_model", None) or self.model or "")

    def _count(self, text: str) -> int | None:
        if self._tokenize_path is None:
            return None
        return self._tokenize_with(self._tokenize_path, text)

    # --- Engine protocol ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        server: dict[str, Any]
        if self._server is not None:
            server = {"launch": self.launch_name, "command": self.template, "health_path": self.health_path}
            if self.server_env:
                server["env"] = sorted(self.server_env)  # names only: values may be secrets
        else:
            server = {"base_url": _public_url(self.base_url), "model": self.served_model}
        description: dict[str, Any] = {
            "backend": self.backend,
            "server": server,
            "sampling": self.sampling,
            "eos": self.eos,
        }
        if self.endpoint != "completions":  # absent for the default, so older baselines see no change
            description["endpoint"] = self.endpoint
        if not self.keep_alive:  # a connection per request: part of what TTFT measures
            description["keep_alive"] = False
        if self._counts:
            description["token_counts"] = dict(self._counts)
        if self.launch_name == "llama_cpp_server":
            description["distributions"] = ["llama-cpp-python"]  # the server's library (fingerprint versions)
        if self.model_path is not None:
            description["model_path"] = str(self.model_path)
        elif self._server is not None and self.model is not None:
            description["model"] = {"name": Path(str(self.model)).name}
        return description

    def make_prompt(self, seed: int, n_tokens: int) -> str:
        """Seeded random words, fitted to ``n_tokens`` with the server's tokenizer when it has a tokenize route."""
        rng = random.Random(seed)
        pool = [rng.choice(_WORDS) for _ in range(4 * n_tokens + 8)]

        def text(words: int) -> str:
            return " ".join(pool[:words])

        if self._tokenize_path is None:
            return text(n_tokens)
        counts: dict[int, int] = {}

        def count(words: int) -> int:
            if words not in counts:
                counts[words] = self._count(text(words)) or 0
            return counts[words]

        if self._tokens_per_word is None:
            self._tokens_per_word = max(count(len(pool)) / len(pool), 0.05)
        words = min(max(1, round(n_tokens / self._tokens_per_word)), len(pool))
        # Walk to the longest prefix of words that does not exceed n_tokens.
        while words > 1 and count(words) > n_tokens:
            words -= 1
        while words < len(pool) and count(words + 1) <= n_tokens:
            words += 1
        best, best_count = text(words), count(words)
        # Pad with short pieces until the count is exact (each piece is usually one token).
        for piece in (" a", " I", ".", ",", " 1", "a", "!", " -"):
            if best_count >= n_tokens:
                break
            candidate = best + piece
            candidate_count = self._count(candidate) or 0
            if best_count < candidate_count <= n_tokens:
                best, best_count = candidate, candidate_count
        self._prompt_tokens[best] = best_count
        return best

    def tag_prompt(self, text: str, seed: int) -> str:
        tagged = f"[request {seed}] {text}"
        # A chat prompt is wrapped in the server's chat template: only the server's usage can count it.
        count = self._count(tagged) if self.endpoint == "completions" else None
        if count is not None:
            self._prompt_tokens[tagged] = count
        return tagged

    def _body(self, request: Request) -> bytes:
        if not isinstance(request.prompt, str):
            raise EngineError("the openai backend sends text prompts; build requests with its make_prompt()")
        # The chat route gets the prompt as one user message; the server's chat template wraps it, so its
        # prompt tokens (from usage) are more than the workload's n_prompt.
        prompt = {"messages": [{"role": "user", "content": request.prompt}]} if self.endpoint == "chat" \
            else {"prompt": request.prompt}
        body: dict[str, Any] = {
            "model": self.model_name,
            **prompt,
            "max_tokens": request.max_tokens,
            "stream": True,
            **self.sampling,
        }
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.eos in ("min_tokens", "both"):
            body["min_tokens"] = request.max_tokens
        if self.eos in ("ignore_eos", "both"):
            body["ignore_eos"] = True
        return json.dumps(body).encode()

    def run(
        self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None, seed: int = 0
    ) -> list[RequestRecord]:
        bodies = [self._body(request) for request in requests]
        known = [self._prompt_tokens.get(request.prompt)
                 if isinstance(request.prompt, str) and self.endpoint == "completions" else None
                 for request in requests]
        try:
            load = Load(self.base_url + ROUTES[self.endpoint], self._headers, self.request_timeout_s, self.endpoint,
                        keep_alive=self.keep_alive)
            records = run_sync(drive(load, bodies, known, concurrency, request_rate, seed))
        except RequestFailed as failure:
            raise self._failure(failure) from None
        self._counts = {
            "output_tokens": "usage" if all(r.counted_by == "usage" for r in records) else "chunks",
            "prompt_tokens": "usage" if all(r.counted_by == "usage" for r in records)
            else ("tokenize" if all(r.prompt_tokens is not None for r in records) else "unavailable"),
        }
        return records

    def _failure(self, failure: RequestFailed) -> EngineError:
        route = ROUTES[self.endpoint]
        what = f"request {failure.index} (POST {self.base_url}{route}): {self._redact(failure.what)}"
        if self._server is not None:
            # A connection error can arrive a moment before the process is gone.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.process.wait(timeout=2)
            exited = self._server.describe_exit()
            if exited is not None:
                return self._server.failure(f"{exited} during the run; {what}")
            return self._server.failure(f"failed a request: {what}")
        return EngineError(f"{self._where()} failed a request: {what}")

    def fidelity_logprobs(self, prompt: str, top_k: int, context: str = "") -> tuple[list[Any], str]:
        """The server's top-``top_k`` next-token log-probabilities at every prompt position (``echo`` with
        ``logprobs``), keyed by token text, from the last token of ``context`` on; the last one is the position
        after the prompt."""
        from pytest_llmperf.core.distributions import TopDistribution

        body = {"model": self.model_name, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": top_k,
                **self.sampling, "stream": False}
        try:
            answer = self._http("POST", "/v1/completions", body, timeout=self.request_timeout_s)
        except HttpStatus as error:
            raise EngineError(
                f"{self._where()} returned no prompt log-probabilities for echo + logprobs ({error}); "
                "llama_cpp.server needs server_args ['--logits_all', 'True']"
            ) from None
        try:
            logprobs = answer["choices"][0]["logprobs"]
            top = logprobs["top_logprobs"]
            # top_logprobs[i] predicts token i (the first has none): keep those predicting the continuation.
            offsets = logprobs.get("text_offset") or []
            first = next((i for i, offset in enumerate(offsets) if offset >= len(context)), len(top)) if context else 0
            rows = [TopDistribution({str(k): float(v) for k, v in entry.items()}) for entry in top[first:] if entry]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise EngineError(
                f"{self._where()} returned no prompt log-probabilities for echo + logprobs "
                f"(llama_cpp.server needs server_args ['--logits_all', 'True']): {str(answer)[:300]}"
            ) from None
        if not rows:
            raise EngineError(f"{self._where()} returned no prompt log-probabilities for {prompt[:40]!r}")
        return rows, "text"

    def ended(self) -> str | None:
        """How a launched server ended ("exited with code 1"), None while it runs (or when attached); the
        engine cache launches a new one for an ended server."""
        return self._server.describe_exit() if self._server is not None else None

    def host_memory_pids(self) -> list[int] | None:
        """The launched server's process (its children count too); None when attached (not measurable here)."""
        return [self._server.pid] if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
