"""lm-eval's own model types for OpenAI-compatible servers, pointed at an ``openai`` engine (imported only when
accuracy is scored).

``endpoint="completions"`` (the default) scores with lm-eval's ``local-completions`` (``LocalCompletionsAPI``):
log-likelihoods from ``echo`` + ``logprobs`` on ``/v1/completions``, generation there too.
``endpoint="chat"`` scores with ``local-chat-completions`` (``LocalChatCompletion``): generation only, the
prompt sent as chat messages (lm-eval's ``apply_chat_template``); a chat route gives no prompt log-probabilities.

lm-eval needs a tokenizer for log-likelihood requests (to know where the context ends). Chosen in this order:

1. ``model_args={"tokenizer": "<HF name or folder>"}``: lm-eval's ``huggingface`` backend (needs transformers);
2. a server with lm-eval's remote-tokenizer routes (vLLM's ``/tokenizer_info``, ``/tokenize``): lm-eval's
   ``remote`` backend, with token-id prompts (``tokenized_requests``), as lm-eval picks it itself;
3. a server with a tokenize route the engine found (llama_cpp.server's ``/extras/tokenize``, llama-server's
   ``/tokenize``): :class:`ServerTokenizer`, the server's own tokenizer over HTTP, in lm-eval's ``remote`` slot;
   prompts go as text (llama_cpp.server takes no token ids), which the server tokenizes back to the same ids;
4. none: generation tasks only; a log-likelihood task fails naming ``model_args={"tokenizer": ...}``.

Everything else is lm-eval's: request building, retries (``max_retries``), ``num_concurrent``, ``batch_size``,
parsing. The fingerprint records the model type and where the tokenizer came from.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from typing import Any

from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

from pytest_llmperf.errors import EngineError, LlmperfError

#: The ``OpenAIEngine`` (engines/openai.py imports this module when scoring; typed loosely to keep it one-way).
OpenAIEngine = Any

#: lm-eval ``model_args`` a test may set (the rest are the engine's: URL, model, key, timeout).
MODEL_ARGS = ("tokenizer", "num_concurrent", "max_retries", "max_length", "max_gen_toks", "batch_size",
              "tokenized_requests", "add_bos_token", "eos_string", "timeout", "seed")


class ServerTokenizer:
    """The server's own tokenizer over its tokenize/detokenize routes, shaped like lm-eval's ``RemoteTokenizer``.

    ``encode`` returns the ids the server gives a text prompt, without the BOS it adds in front (llama_cpp.server
    echoes prompt log-probabilities from the first text token on), so lm-eval's context length lines up with the
    echoed tokens; ``decode`` drops a leading BOS for the same reason. vLLM echoes its BOS too (``"<s>"``, with no
    log-probability): ``bos_piece``, the BOS's text, lets the parser see that and skip it.
    """

    def __init__(self, engine: OpenAIEngine) -> None:
        self._engine = engine
        empty = engine.tokenize("")
        self.bos_token_id: int | None = empty[0] if len(empty) == 1 else None
        self.bos_piece: str | None = None
        if self.bos_token_id is not None:
            with contextlib.suppress(EngineError):
                self.bos_piece = engine.detokenize([self.bos_token_id]) or None
        self.eos_token_id: int | None = None  # not on these routes; the server stops at EOS by itself
        self.eos_token: str | None = None
        self.bos_token: str | None = None
        self.pad_token: str | None = None

    @property
    def eot_token(self) -> int | None:
        return self.eos_token_id

    def encode(self, text: str) -> list[int]:
        tokens = [int(token) for token in self._engine.tokenize(text)]
        return tokens[1:] if tokens and tokens[0] == self.bos_token_id else tokens

    def decode(self, tokens: Sequence[int]) -> str:
        tokens = list(tokens)
        if tokens and tokens[0] == self.bos_token_id:
            tokens = tokens[1:]
        return str(self._engine.detokenize(tokens)) if tokens else ""

    def batch_decode(self, batch: Sequence[Sequence[int]], **_: Any) -> list[str]:
        return [self.decode(tokens) for tokens in batch]


def _logprob_problem(engine: OpenAIEngine) -> str | None:
    """Why the server cannot give prompt log-probabilities (None: it can)."""
    body = {"model": engine.model_name, "prompt": "The sky is blue.", "max_tokens": 1, "echo": True,
            "logprobs": 1, "temperature": 0}
    try:
        answer = engine.post("/v1/completions", body)
        values = answer["choices"][0]["logprobs"]["token_logprobs"]
        if not isinstance(values, list) or not any(isinstance(value, (int, float)) for value in values[:-1]):
            return f"its answer has no prompt token_logprobs: {str(answer)[:200]}"
    except EngineError as error:
        return str(error)
    except (KeyError, IndexError, TypeError):
        return f"its answer has no logprobs: {str(answer)[:200]}"
    return None


class _Checked:
    """Turns what lm-eval's API models raise for a server that cannot score into an error that says why."""

    engine: OpenAIEngine
    _checked: bool

    def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
        if self.engine.endpoint == "chat":
            raise LlmperfError(
                f"{self.engine.describe_where()}: endpoint='chat' gives no log-probabilities of a prompt, which "
                "multiple-choice (log-likelihood) tasks need; score them with endpoint='completions' on a server "
                "with /v1/completions, or score only generation tasks here"
            )
        if getattr(self, "tokenizer", None) is None:
            raise LlmperfError(
                f"{self.engine.describe_where()} has no tokenize route, and log-likelihood tasks need a tokenizer "
                "to know where the context ends: give lm_eval_scorer(..., model_args={'tokenizer': '<Hugging Face "
                "tokenizer name or folder>'}) (needs transformers), or score only generation tasks"
            )
        if not self._checked:
            problem = _logprob_problem(self.engine)
            if problem is not None:
                raise LlmperfError(
                    f"{self.engine.describe_where()} cannot give the log-probabilities of a prompt (echo + "
                    f"logprobs on /v1/completions), which log-likelihood tasks need: {problem}. For "
                    "llama_cpp.server launch it with server_args=['--logits_all', 'True'] (its default); vLLM "
                    "serves them; llama.cpp's llama-server does not (it echoes no prompt log-probabilities): score "
                    "only generation tasks there, or log-likelihood tasks on the in-process llama_cpp engine"
                )
            self._checked = True
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)  # type: ignore[misc]


class ServerCompletionsLM(_Checked, LocalCompletionsAPI):  # type: ignore[misc]
    """lm-eval's ``local-completions`` on the engine's server, with one fix to its parser.

    lm-eval takes the echoed log-probabilities ``[ctxlen:-1]``, assuming the echo ends with one generated token.
    llama_cpp.server leaves a generated EOS out of the echo, so where the model would end after the
    continuation (an addition model after ``12+34=46``) the continuation's last token was dropped. The slice
    ends at the request's own length instead: the same tokens whether or not the server appended one.
    """

    def parse_logprobs(
        self, outputs: Any, tokens: list[list[int]] | None = None, ctxlens: list[int] | None = None, **_: Any
    ) -> list[tuple[float, bool]]:
        if tokens is None or ctxlens is None:
            return list(LocalCompletionsAPI.parse_logprobs(outputs, tokens, ctxlens))
        # A request that starts with the BOS lm-eval puts before an empty context reaches the server without it
        # (ServerTokenizer.decode); the server adds its own and echoes from the first text token on.
        bos = self.tokenizer.bos_token_id if isinstance(self.tokenizer, ServerTokenizer) else None
        results = []
        for out in outputs if isinstance(outputs, list) else [outputs]:
            choices = sorted(out["choices"], key=lambda choice: choice["index"])
            for choice, ctxlen, request in zip(choices, ctxlens, tokens, strict=False):
                shift = 1 if bos is not None and request and request[0] == bos else 0
                logprobs = choice["logprobs"]
                # A server that echoes its own BOS first (vLLM: "<s>" with no log-probability) puts every prompt
                # token one further on.
                echoed = logprobs.get("tokens") or []
                bos_piece = getattr(self.tokenizer, "bos_piece", None)
                if bos_piece and echoed and echoed[0] == bos_piece and logprobs["token_logprobs"][0] is None:
                    shift -= 1
                chosen = logprobs["token_logprobs"][ctxlen - shift : len(request) - shift]
                top = logprobs["top_logprobs"][ctxlen - shift : len(request) - shift]
                if len(chosen) != len(request) - ctxlen:
                    raise LlmperfError(
                        f"{self.engine.describe_where()} echoed {len(logprobs['token_logprobs'])} log-probabilities "
                        f"for a prompt of {len(request) - shift} tokens: its echo does not line up with its tokenizer"
                    )
                if any(value is None for value in chosen):
                    raise LlmperfError(
                        f"{self.engine.describe_where()} gives no log-probability for a prompt's first token, so a "
                        "request with an empty context (loglikelihood_rolling: perplexity tasks) cannot be scored "
                        "through it; score such tasks on an in-process engine"
                    )
                greedy = all(value >= max(row.values()) for value, row in zip(chosen, top, strict=True))
                results.append((float(sum(chosen)), greedy))
        return results


class ServerChatLM(_Checked, LocalChatCompletion):  # type: ignore[misc]
    """lm-eval's ``local-chat-completions`` on the engine's server."""


def lm_eval_model(engine: OpenAIEngine, **model_args: Any) -> Any:
    """lm-eval's model for ``engine``'s server; ``model_args`` as for lm-eval's ``--model_args``."""
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise LlmperfError(f"lm_eval_scorer: unknown model_args {unknown}; known: {', '.join(MODEL_ARGS)}")
    chat = engine.endpoint == "chat"
    route = "/v1/chat/completions" if chat else "/v1/completions"
    args: dict[str, Any] = {
        "base_url": engine.base_url + route,
        "model": engine.model_name,
        "header": dict(engine.headers),
        "timeout": int(max(1.0, engine.request_timeout_s)),
        **model_args,
    }
    hf_tokenizer = model_args.get("tokenizer")
    remote = not chat and hf_tokenizer is None and engine.has_route("/tokenizer_info")
    if hf_tokenizer is not None:
        if importlib.util.find_spec("transformers") is None:
            raise LlmperfError("model_args={'tokenizer': ...} needs transformers: `pip install transformers`")
        args["tokenizer_backend"] = "huggingface"
    elif remote:
        args["tokenizer_backend"] = "remote"
        args["auth_token"] = engine.bearer_token()
    else:
        args["tokenizer_backend"] = None
        args.setdefault("tokenized_requests", False)
    model_class = ServerChatLM if chat else ServerCompletionsLM
    try:
        lm = model_class(**args)
    except (OSError, ValueError, RuntimeError, ModuleNotFoundError) as error:
        raise LlmperfError(f"lm-eval's {model_class.__mro__[2].__name__} on {engine.describe_where()}: {error}") \
            from None
    if args["tokenizer_backend"] is None and not chat and engine.tokenize_path is not None:
        lm.tokenizer_backend = "remote"  # lm-eval calls encode/batch_decode on a remote-slot tokenizer
        lm.tokenizer = ServerTokenizer(engine)
    lm.engine = engine
    lm._checked = False
    tokenizer = lm.tokenizer
    lm.llmperf_describe = {
        "model_type": "local-chat-completions" if chat else "local-completions",
        "tokenizer": "none" if tokenizer is None else "server" if isinstance(tokenizer, ServerTokenizer)
        else args["tokenizer_backend"],
        **{key: value for key, value in model_args.items() if key != "tokenizer"},
    }
    return lm
