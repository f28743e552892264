"""A test-only engine: the shipped trained addition Llama run by its own torch forward, on CUDA or the CPU.

It exists so that a GPU machine with torch but neither vLLM nor llama.cpp's CUDA build can run the whole GPU
gate for real (``perf_tests/test_gpu.py``, ``benchmarks/gpu_check.py``): throughput and latency from a real
decode on the GPU, VRAM and energy from NVML. It is not a shipped backend: it serves one 1.45 M-parameter
model, has no KV cache, and users measure their own engines (llama.cpp, vLLM, servers), so nothing in
``pytest_llmperf`` depends on it. A test builds it directly and passes it to ``llmperf.measure``, which takes
any object with the ``pytest_llmperf.engines.Engine`` methods.

- Weights: read from the shipped GGUF (``pytest_llmperf/assets/models/addition-*-f16.gguf``) with the ``gguf``
  package; matrices are F16 in the file and computed in ``dtype`` (float32 by default).
- Model: ``forward`` of ``tools/train_addition_model.py``, the very function the model was trained with (llama.cpp's
  interleaved-pair rotary), loaded from that file so the two cannot drift apart. It was written for the CPU: its
  rotary tables come from ``torch.arange`` without a device, so it runs under ``torch.device(device)`` as the
  default device (otherwise CUDA activations would meet CPU tables).
- Decoding: greedy; no KV cache, so every step runs the forward over the whole sequence so far (for this tiny
  model and <= 256 positions that costs a few kernel launches more per token, not a different shape of work).
  EOS is suppressed in ``run`` (every request generates exactly ``max_tokens``), allowed in ``generate``.
- Batching: ``run(requests, concurrency=N)`` decodes N requests at a time as one batch (the way the ``vllm``
  engine sends N per ``generate`` call); requests of different prompt lengths go in separate batches. Every
  token of a batch is timestamped when it reaches the host (``.tolist()`` waits for the GPU), as a stream would
  deliver it.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.assets import addition
from pytest_llmperf.assets.model import trained_model_path
from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.errors import EngineError

TRAINING_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "train_addition_model.py"
DTYPES = ("float32", "float16", "bfloat16")
#: Prompt tokens: the NORMAL pieces of the addition vocabulary (digits, '+', '=', '▁').
PROMPT_TOKENS = [addition.encode(piece, add_bos=False)[0] for piece in addition.NORMAL_PIECES]


def training_module() -> Any:
    """``tools/train_addition_model.py`` as a module (imports torch): its ``forward`` and llama.cpp helpers."""
    name = "llmperf_train_addition_model"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TRAINING_SCRIPT)
        if spec is None or spec.loader is None:
            raise EngineError(f"cannot load the addition model's forward from {TRAINING_SCRIPT}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_weights(path: Path, config: addition.AdditionModelConfig = addition.DEFAULT_CONFIG) -> dict[str, Any]:
    """Every tensor of the addition GGUF at ``path`` as a float32 numpy array in :func:`addition.tensor_shapes`
    order and shape; raises naming the file when a tensor is missing or shaped otherwise."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    try:
        tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}
    except (OSError, ValueError) as error:
        raise EngineError(f"{path}: not a readable GGUF file ({error})") from None
    weights = {}
    for name, shape in addition.tensor_shapes(config).items():
        tensor = tensors.get(name)
        if tensor is None:
            raise EngineError(f"{path}: no tensor {name!r}; is it an addition model (tools/train_addition_model.py)?")
        # A copy: the file is mapped read-only, and torch wants writable arrays.
        array = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if array.size != int(np.prod(shape)):
            raise EngineError(f"{path}: tensor {name} has {array.size} values, the addition model needs {shape}")
        weights[name] = array.reshape(shape)
    return weights


class TorchAdditionEngine:
    """The trained addition model on ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``), computed in ``dtype``.

    ``model``: a shipped F16 checkpoint name (``addition-full-f16``, ``addition-partial-f16``) or a GGUF path
    with the addition model's tensors. ``threads``: torch's CPU threads (CPU device only; None leaves torch's
    setting).
    """

    backend = "torch_addition"

    def __init__(self, model: str = "addition-full-f16", device: str = "cuda", dtype: str = "float32",
                 threads: int | None = None) -> None:
        import torch

        if dtype not in DTYPES:
            raise EngineError(f"torch_addition engine: dtype={dtype!r}; choose one of {', '.join(DTYPES)}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"torch_addition engine: device={device!r} but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); use device='cpu'")
        if threads is not None and not str(device).startswith("cuda"):
            torch.set_num_threads(threads)
        self.model_path = Path(model) if str(model).endswith(".gguf") else trained_model_path(str(model))
        if self.model_path.suffix != ".gguf" or not self.model_path.is_file():
            raise EngineError(f"torch_addition engine: model file not found: {self.model_path}")
        self.config = addition.DEFAULT_CONFIG
        self.engine_config = {"device": str(device), "dtype": dtype, "threads": threads, "kv_cache": False}
        self._torch = torch
        self._device = torch.device(device)
        self._forward = training_module().forward
        weights = load_weights(self.model_path, self.config)
        self._params: dict[str, Any] | None = {
            name: torch.from_numpy(array).to(self._device, getattr(torch, dtype)) for name, array in weights.items()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_path": str(self.model_path),
            "engine_config": dict(self.engine_config),
            "sampling": {"temperature": 0.0},
            "distributions": ["torch"],
        }

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        rng = random.Random(seed)
        return [addition.BOS_ID] + [rng.choice(PROMPT_TOKENS) for _ in range(n_tokens - 1)]

    def tag_prompt(self, text: str, seed: int) -> list[int]:
        return addition.encode(f"[request {seed}] {text}")

    def logits(self, prompt: Sequence[int]) -> Any:
        """The next-token logits (float32, on the CPU) after ``prompt``, for comparisons with llama.cpp."""
        params = self._live()
        with self._torch.inference_mode():
            tokens = self._torch.tensor([list(prompt)], device=self._device)
            return self._run_forward(params, tokens)[0, -1].float().cpu()

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int, stop_at_eos: bool = True,
                 ) -> tuple[list[list[int]], list[float]]:
        """Greedy continuations of ``prompts`` (all of one length), decoded as one batch: the tokens of each (up
        to and without EOS when ``stop_at_eos``), and the ``time.perf_counter()`` at which each step's tokens
        reached the host."""
        params = self._live()
        torch = self._torch
        lengths = {len(prompt) for prompt in prompts}
        if len(lengths) != 1:
            raise EngineError(f"torch_addition engine: one batch needs prompts of one length, got {sorted(lengths)}")
        if lengths.pop() + max_tokens > self.config.context_length:
            raise EngineError(
                f"torch_addition engine: {len(prompts[0])} prompt + {max_tokens} generated tokens exceed the "
                f"model's context of {self.config.context_length}; shorten the workload"
            )
        outputs: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        times: list[float] = []
        with torch.inference_mode():
            tokens = torch.tensor([list(prompt) for prompt in prompts], device=self._device)
            for _ in range(max_tokens):
                logits = self._run_forward(params, tokens)[:, -1, :]
                if not stop_at_eos:
                    logits[:, addition.EOS_ID] = float("-inf")
                chosen = logits.argmax(dim=-1)
                step = chosen.tolist()  # waits for the device: the tokens are on the host now
                times.append(time.perf_counter())
                for index, token in enumerate(step):
                    if finished[index]:
                        continue
                    if stop_at_eos and token == addition.EOS_ID:
                        finished[index] = True
                    else:
                        outputs[index].append(int(token))
                if all(finished):
                    break
                tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        return outputs, times

    def answer(self, a: int, b: int, max_tokens: int = 5) -> str | None:
        """Greedy answer to ``a+b=`` up to EOS (None: no EOS within ``max_tokens``), like
        ``train_addition_model.greedy_answer`` on llama.cpp."""
        prompt = addition.encode(addition.prompt(a, b))
        outputs, _ = self.generate([prompt], max_tokens)
        return addition.decode(outputs[0]) if len(outputs[0]) < max_tokens else None  # shorter: EOS came

    def run(self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None,
            seed: int = 0) -> list[RequestRecord]:
        if request_rate is not None:
            raise EngineError("the torch_addition engine runs requests in batches of `concurrency`; "
                              "request_rate needs a server engine")
        records: list[RequestRecord] = []
        size = max(concurrency, 1)
        for start in range(0, len(requests), size):
            batch = [list(r.prompt) if not isinstance(r.prompt, str) else self.tag_prompt(r.prompt, seed + start + i)
                     for i, r in enumerate(requests[start : start + size])]
            for length in sorted({len(prompt) for prompt in batch}):
                same = [index for index, prompt in enumerate(batch) if len(prompt) == length]
                records += self._run_batch([batch[i] for i in same], [requests[start + i].max_tokens for i in same])
        return records

    def _run_batch(self, prompts: list[list[int]], max_tokens: list[int]) -> list[RequestRecord]:
        t_send = time.perf_counter()
        _, times = self.generate(prompts, max(max_tokens), stop_at_eos=False)  # EOS suppressed: every step counts
        return [
            RequestRecord(t_send, times[wanted - 1], len(prompt), wanted, times[:wanted])
            for prompt, wanted in zip(prompts, max_tokens, strict=True)
        ]

    def _run_forward(self, params: dict[str, Any], tokens: Any) -> Any:
        with self._device:  # the default device for the tensors forward makes itself (the rotary tables)
            return self._forward(params, tokens, self.config)

    def _live(self) -> dict[str, Any]:
        if self._params is None:
            raise EngineError("the torch_addition engine is closed: build a new one")
        return self._params

    def close(self) -> None:
        self._params = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
