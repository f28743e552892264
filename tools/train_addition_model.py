"""Train the two-digit addition Llamas shipped in ``pytest_llmperf/models/`` and check llama.cpp runs them.

    .venv/bin/pip install torch==2.13.0   # the CPU build on this disk; not a plugin dependency
    .venv/bin/python tools/train_addition_model.py [--out-dir DIR] [--steps 1500] [--partial-step 400]

Trains on CPU (2 threads, every seed fixed) the Llama of ``pytest_llmperf.assets.addition`` (n_embd 256, 2 layers,
4 heads, n_ff 512, RMSNorm 1e-5, rope base 10000 in llama.cpp's interleaved-pair convention, untied output head)
on the 8,000 training pairs, loss on the answer digits and EOS only; AdamW lr 2e-3, betas (0.9, 0.98),
weight decay 0.1 on matrices, 100 warm-up steps then cosine to zero, batch 256, gradient clip 1.0.

Writes two F16 GGUFs: ``addition-partial-f16.gguf`` (the weights at ``--partial-step`` of the same run: a
half-trained model on which 4-bit quantisation visibly costs exact match) and ``addition-full-f16.gguf``
(after ``--steps``), plus ``addition-models.json``. Step 400 is the default partial step because it showed the
clearest Q4_0 loss of the steps tried (150-1000): held-out EM 0.798 in F16, 0.7795 in Q4_0 (60 questions lost,
23 gained); at step 300 (EM 0.590) the Q4_0 loss was -0.0105, within the binomial stderr of 0.011.

Then, for each checkpoint, loads the GGUF in llama.cpp (F32 KV cache), checks the tokenizer against
:func:`pytest_llmperf.assets.addition.encode`, compares llama.cpp's last-position logits with torch's on the same
F16-rounded weights (exit 1 beyond ``--max-logit-diff``), and measures held-out exact match by greedy
decoding in llama.cpp.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pytest_llmperf.assets import addition

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "pytest_llmperf" / "models"
PARTIAL_NAME = "addition-partial-f16.gguf"
FULL_NAME = "addition-full-f16.gguf"
SUMMARY_NAME = "addition-models.json"

INIT_SEED = 1234
DATA_SEED = 5678
THREADS = 2
LR = 2e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.1
WARMUP_STEPS = 100
BATCH_SIZE = 256
CLIP_NORM = 1.0
INIT_STD = 0.02
IGNORE = -100
#: llama.cpp vs torch (float64, same F16 weights, activations rounded to F16 before each matmul as llama.cpp's
#: CPU backend does): measured <= 2.1e-3 on logits up to ~19 (6.1e-3 without the activation rounding). A wrong
#: rotary convention or tensor layout differs by ~1 or more.
DEFAULT_MAX_LOGIT_DIFF = 1e-2
N_LOGIT_PROMPTS = 16
TOKENIZER_PROBES = (
    "",
    "0+0=",
    "99+99=198",
    " 12 + 34 = 46",
    "1  2\n3\t4",
    "hello, world",
    "<s>3</s>+<unk>",
    "\u2581\u2581x",
    "\u00fcn\u00efc\u00f8d\u00e9 \U0001f600 \u4e2d",
    "<0x41>",
)

Params = dict[str, torch.Tensor]


# --- the model -----------------------------------------------------------------------------------------------


def init_params(config: addition.AdditionModelConfig, seed: int = INIT_SEED) -> Params:
    """Norms 1; matrices N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layer)."""
    generator = torch.Generator().manual_seed(seed)
    params: Params = {}
    for name, shape in addition.tensor_shapes(config).items():
        if len(shape) == 1:
            params[name] = torch.ones(shape)
        else:
            std = INIT_STD
            if name.endswith(("attn_output.weight", "ffn_down.weight")):
                std /= math.sqrt(2 * config.n_layer)
            params[name] = torch.randn(shape, generator=generator) * std
        params[name].requires_grad_(True)
    return params


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """llama.cpp's LLAMA (``rope_type`` NORM) rotary: rotate interleaved pairs (x[2i], x[2i+1]) of each head.

    ``x`` is (batch, time, heads, head_dim); positions start at 0 (the BOS token).
    """
    _, time_steps, _, head_dim = x.shape
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(time_steps, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos = angles.cos().to(x.dtype)[None, :, None, :]
    sin = angles.sin().to(x.dtype)[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def forward(
    params: Params, tokens: torch.Tensor, config: addition.AdditionModelConfig, f16_activations: bool = False
) -> torch.Tensor:
    """Logits (batch, time, n_vocab) of a causal Llama, computed in the dtype of ``params``.

    ``f16_activations`` rounds the input of every weight matmul to F16 first, as llama.cpp's CPU backend does
    when it multiplies by an F16 weight.
    """
    batch, time_steps = tokens.shape
    heads, head_dim = config.n_head, config.head_dim
    kv_heads = config.n_head_kv

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        if f16_activations:
            x = x.to(torch.float16).to(params[name].dtype)
        return x @ params[name].T

    x = params["token_embd.weight"][tokens]
    for block in range(config.n_layer):
        prefix = f"blk.{block}."
        h = rms_norm(x, params[prefix + "attn_norm.weight"], config.rms_eps)
        q = linear(h, prefix + "attn_q.weight").view(batch, time_steps, heads, head_dim)
        k = linear(h, prefix + "attn_k.weight").view(batch, time_steps, kv_heads, head_dim)
        v = linear(h, prefix + "attn_v.weight").view(batch, time_steps, kv_heads, head_dim)
        q, k = rotary(q, config.rope_base), rotary(k, config.rope_base)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=kv_heads != heads,
        )
        x = x + linear(attended.transpose(1, 2).reshape(batch, time_steps, -1), prefix + "attn_output.weight")
        h = rms_norm(x, params[prefix + "ffn_norm.weight"], config.rms_eps)
        gated = F.silu(linear(h, prefix + "ffn_gate.weight")) * linear(h, prefix + "ffn_up.weight")
        x = x + linear(gated, prefix + "ffn_down.weight")
    x = rms_norm(x, params["output_norm.weight"], config.rms_eps)
    return linear(x, "output.weight")


def as_stored(params: Params, dtype: torch.dtype = torch.float64) -> Params:
    """The weights as the F16 GGUF stores them (matrices rounded to F16, norms F32), cast to ``dtype``."""
    stored: Params = {}
    for name, value in params.items():
        value = value.detach()
        if value.ndim == 2:
            value = value.to(torch.float16)
        stored[name] = value.to(dtype)
    return stored


# --- the data ------------------------------------------------------------------------------------------------


def sequences(pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (N, T) of ``<s>a+b=c</s>``; targets are IGNORE except the answer digits and EOS."""
    rows = []
    for a, b in pairs:
        prompt_ids = addition.encode(addition.prompt(a, b))
        full = prompt_ids + addition.encode(addition.answer(a, b), add_bos=False) + [addition.EOS_ID]
        rows.append((full, len(prompt_ids)))
    width = max(len(full) for full, _ in rows) - 1
    inputs = torch.full((len(rows), width), addition.EOS_ID, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for index, (full, n_prompt) in enumerate(rows):
        inputs[index, : len(full) - 1] = torch.tensor(full[:-1])
        # Position j predicts token j + 1; the first answer token follows the last prompt token.
        targets[index, n_prompt - 1 : len(full) - 1] = torch.tensor(full[n_prompt:])
    return inputs, targets


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up over WARMUP_STEPS, then cosine to zero at ``steps`` (``step`` counts from 1)."""
    if step <= WARMUP_STEPS:
        return LR * step / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return LR * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    config: addition.AdditionModelConfig, steps: int, snapshot_steps: Iterable[int]
) -> tuple[dict[int, Params], float]:
    """Train for ``steps``; return detached copies of the weights after each of ``snapshot_steps`` (and
    ``steps``), and the training wall time in seconds."""
    torch.manual_seed(INIT_SEED)
    params = init_params(config)
    inputs, targets = sequences(addition.train_pairs())
    matrices = [value for value in params.values() if value.ndim == 2]
    vectors = [value for value in params.values() if value.ndim != 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": WEIGHT_DECAY}, {"params": vectors, "weight_decay": 0.0}],
        lr=LR,
        betas=BETAS,
    )
    generator = torch.Generator().manual_seed(DATA_SEED)
    wanted = set(snapshot_steps) | {steps}
    snapshots: dict[int, Params] = {}
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        batch = torch.randint(0, inputs.shape[0], (BATCH_SIZE,), generator=generator)
        logits = forward(params, inputs[batch], config)
        loss = F.cross_entropy(logits.reshape(-1, config.n_vocab), targets[batch].reshape(-1), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP_NORM)
        optimizer.step()
        if step in wanted:
            snapshots[step] = {name: value.detach().clone() for name, value in params.items()}
        if step % 100 == 0 or step == 1:
            elapsed = time.perf_counter() - started
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {learning_rate(step, steps):.2e}  {elapsed:6.1f} s")
    return snapshots, time.perf_counter() - started


# --- evaluation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def torch_exact_match(params: Params, pairs: Sequence[tuple[int, int]], config: addition.AdditionModelConfig) -> float:
    """Greedy exact match, computed with teacher forcing: greedy decoding reproduces ``c</s>`` exactly when
    the argmax at every answer position (digits and EOS) is the target given the correct prefix."""
    inputs, targets = sequences(pairs)
    predicted = forward(params, inputs, config).argmax(-1)
    answered = targets != IGNORE
    correct = ((predicted == targets) | ~answered).all(dim=1)
    return int(correct.sum()) / len(pairs)


def load_llama(path: Path) -> Any:
    """The GGUF in llama.cpp with an F32 KV cache and all logits kept."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=256,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=True,
        type_k=0,
        type_v=0,
        seed=0,
        verbose=False,
    )


def check_tokenizer(llm: Any) -> list[str]:
    """Texts on which llama.cpp's tokenizer and :func:`addition.encode` disagree."""
    texts = [*TOKENIZER_PROBES, *(addition.prompt(a, b) + addition.answer(a, b) for a, b in addition.all_pairs())]
    return [text for text in texts if llm.tokenize(text.encode(), add_bos=True, special=False) != addition.encode(text)]


def llama_logits(llm: Any, tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits (time, n_vocab) for ``tokens``, from an empty cache."""
    llm.reset()
    llm.eval(list(tokens))
    return np.array(llm.scores[: len(tokens)], dtype=np.float64)


def max_logit_difference(
    llm: Any, params: Params, pairs: Sequence[tuple[int, int]], config: addition.AdditionModelConfig
) -> dict[str, float]:
    """Largest |llama.cpp - torch| logit at the last prompt position over ``pairs``, torch in float64 on the
    F16-rounded weights: ``emulated`` with activations rounded to F16 before each matmul as llama.cpp does
    (the gated one), ``plain`` without; and ``scale``, the largest |logit|."""
    stored = as_stored(params)
    worst = {"emulated": 0.0, "plain": 0.0, "scale": 0.0}
    for a, b in pairs:
        tokens = addition.encode(addition.prompt(a, b))
        ours = llama_logits(llm, tokens)[-1]
        with torch.no_grad():
            batch = torch.tensor([tokens])
            emulated = forward(stored, batch, config, f16_activations=True)[0, -1].numpy()
            plain = forward(stored, batch, config)[0, -1].numpy()
        worst["emulated"] = max(worst["emulated"], float(np.abs(ours - emulated).max()))
        worst["plain"] = max(worst["plain"], float(np.abs(ours - plain).max()))
        worst["scale"] = max(worst["scale"], float(np.abs(plain).max()))
    return worst


def greedy_answer(llm: Any, a: int, b: int, max_new_tokens: int = 5) -> str | None:
    """llama.cpp's greedy completion of ``a+b=`` up to EOS; None when no EOS came within the limit."""
    llm.reset()
    llm.eval(addition.encode(addition.prompt(a, b)))
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token == addition.EOS_ID:
            return addition.decode(generated)
        generated.append(token)
        llm.eval([token])
    return None


def llama_exact_match(llm: Any, pairs: Sequence[tuple[int, int]]) -> list[bool]:
    """Per question: did greedy decoding in llama.cpp give exactly ``str(a + b)`` then EOS?"""
    return [greedy_answer(llm, a, b) == addition.answer(a, b) for a, b in pairs]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(path: Path, params: Params, config: addition.AdditionModelConfig, name: str) -> None:
    weights = {key: value.detach().to(torch.float32).numpy() for key, value in params.items()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        addition.write_gguf(temporary, weights, config, name=name, f16=True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def evaluate_checkpoint(
    path: Path, params: Params, config: addition.AdditionModelConfig, max_logit_diff: float
) -> dict[str, Any]:
    heldout = addition.heldout_pairs()
    llm = load_llama(path)
    mismatched = check_tokenizer(llm)
    diffs = max_logit_difference(llm, params, heldout[:: len(heldout) // N_LOGIT_PROMPTS], config)
    started = time.perf_counter()
    correct = llama_exact_match(llm, heldout)
    eval_seconds = time.perf_counter() - started
    em = sum(correct) / len(correct)
    result = {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "sha256": sha256(path),
        "heldout_em_torch_f32": torch_exact_match(params, heldout, config),
        "heldout_em_torch_f16_weights": torch_exact_match(as_stored(params, torch.float32), heldout, config),
        "heldout_em_llama_cpp": em,
        "heldout_em_llama_cpp_stderr": math.sqrt(em * (1 - em) / len(correct)),
        "llama_cpp_eval_seconds": round(eval_seconds, 2),
        "max_abs_logit_diff": diffs["emulated"],
        "max_abs_logit_diff_without_f16_activations": diffs["plain"],
        "max_abs_logit": diffs["scale"],
        "logit_prompts": N_LOGIT_PROMPTS,
        "tokenizer_mismatches": mismatched,
        "logits_ok": diffs["emulated"] <= max_logit_diff,
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--partial-step", type=int, default=400)
    parser.add_argument("--max-logit-diff", type=float, default=DEFAULT_MAX_LOGIT_DIFF)
    args = parser.parse_args(argv)
    if not 0 < args.partial_step < args.steps:
        parser.error("--partial-step must lie strictly between 0 and --steps")

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    config = addition.DEFAULT_CONFIG
    args.out_dir.mkdir(parents=True, exist_ok=True)

    snapshots, train_seconds = train(config, args.steps, [args.partial_step])
    print(f"training: {args.steps} steps in {train_seconds:.1f} s")

    checkpoints = {
        "partial": (args.partial_step, args.out_dir / PARTIAL_NAME),
        "full": (args.steps, args.out_dir / FULL_NAME),
    }
    results: dict[str, Any] = {}
    failed = False
    for label, (step, path) in checkpoints.items():
        write_checkpoint(path, snapshots[step], config, name=f"llmperf-addition-{label}-step{step}")
        result = {"step": step, **evaluate_checkpoint(path, snapshots[step], config, args.max_logit_diff)}
        results[label] = result
        print(
            f"{label:8s} step {step:5d}  {path.name}  {result['size_bytes']} bytes  "
            f"EM torch {result['heldout_em_torch_f32']:.4f} (F16 weights {result['heldout_em_torch_f16_weights']:.4f})"
            f"  llama.cpp {result['heldout_em_llama_cpp']:.4f} ± {result['heldout_em_llama_cpp_stderr']:.4f}"
            f"  max |logit diff| {result['max_abs_logit_diff']:.2e}"
            f" (without F16 activations {result['max_abs_logit_diff_without_f16_activations']:.2e};"
            f" max |logit| {result['max_abs_logit']:.1f})"
        )
        if result["tokenizer_mismatches"]:
            print(f"FAIL {label}: llama.cpp tokenizes differently: {result['tokenizer_mismatches'][:5]!r}")
            failed = True
        if not result["logits_ok"]:
            print(f"FAIL {label}: llama.cpp and torch logits differ by {result['max_abs_logit_diff']:.3g}")
            failed = True

    import llama_cpp

    n_params = sum(math.prod(shape) for shape in addition.tensor_shapes(config).values())
    summary = {
        "task": "two-digit addition a+b=c, a, b in 0..99",
        "config": {**dataclasses.asdict(config), "n_params": n_params},
        "steps": args.steps,
        "seeds": {"init": INIT_SEED, "data": DATA_SEED, "holdout": addition.HOLDOUT_SEED},
        "training": {
            "lr": LR,
            "betas": list(BETAS),
            "weight_decay": WEIGHT_DECAY,
            "warmup_steps": WARMUP_STEPS,
            "schedule": "linear warm-up then cosine to 0",
            "batch_size": BATCH_SIZE,
            "clip_norm": CLIP_NORM,
            "threads": THREADS,
            "train_pairs": len(addition.train_pairs()),
            "heldout_pairs": addition.N_HELDOUT,
        },
        "training_seconds": round(train_seconds, 1),
        "max_logit_diff_bound": args.max_logit_diff,
        "checkpoints": results,
        "versions": {
            "torch": torch.__version__,
            "llama_cpp_python": llama_cpp.__version__,
            "python": platform.python_version(),
        },
    }
    (args.out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out_dir / SUMMARY_NAME}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
