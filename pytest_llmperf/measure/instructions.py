"""Instructions per token, counted under valgrind's callgrind: a speed figure that does not move with the machine.

Wall-clock speed on a shared runner drifts 2x within minutes; the number of instructions llama.cpp executes for a
token does not. ``instructions(engine)`` runs llama-bench's work on the engine's model and context
(``engines/llama_cpp_bench.py``: a prompt of ``n_prompt`` random tokens, then ``n_gen`` single-token decodes after
``n_depth`` context tokens) in a child process under::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=ggml_backend_sched_graph_compute_async
             --dump-after=ggml_backend_sched_graph_compute_async

so only llama.cpp's graph computations are counted (not Python, loading, repacking or tokenising), one file per
computation. The child (``measure/instructions_child.py``) says which computations were the warm-up, the prompt,
the context fill and the generation; ``pp_instructions_per_token`` is the prompt's instructions over ``n_prompt``,
``tg_instructions_per_token`` the generation's over ``n_gen``.

What makes the count repeat exactly: one thread (worker threads spin at their barriers for as long as the
scheduler makes them wait), seeded token ids (a few kernels take data-dependent branches), address-space
randomisation off (``setarch -R``), the same model file, config and llama.cpp build. What it depends on is in the
part's fingerprint: the build's CPU features as llama.cpp reports them and valgrind's version (the library
versions are there already). It does not see what the wall clock sees: memory bandwidth, cache misses, threads,
the server path (docs/noise.md).

Unavailable, with the reason, when valgrind is not installed or cannot run the build (valgrind 3.19 has no
AVX-512): never a guess.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import EngineError, LlmperfError
from pytest_llmperf.measure.bench import check_counts

COUNTED_FUNCTION = "ggml_backend_sched_graph_compute_async"
METRICS = ("pp_instructions_per_token", "tg_instructions_per_token")
#: A counted run of the default work takes ~15 s here; a stuck child is stopped after this many seconds.
TIMEOUT_S = 900.0
#: Repetitions counting further apart than this (relative) are reported: the count is meant to repeat.
SPREAD = 1e-4
_CHILD = Path(__file__).with_name("instructions_child.py")
_SUMMARY = re.compile(r"^summary:\s*(\d+)\s*$", re.MULTILINE)
#: valgrind's words when the build uses an instruction it cannot run (an AVX-512 build, say).
_UNSUPPORTED = ("unhandled instruction", "Illegal opcode", "SIGILL")


@dataclass(frozen=True)
class InstructionsResult:
    """Instructions per token of each repetition (empty when that test was not run, or unavailable)."""

    n_prompt: int
    n_gen: int
    n_depth: int
    pp: tuple[float, ...]
    tg: tuple[float, ...]
    #: What the count depends on beyond the engine's fingerprint: valgrind's version, the build's CPU features.
    counted_with: dict[str, str] = field(default_factory=dict)
    #: Why the counts are unavailable (valgrind missing, the build not runnable under it); None when counted.
    unavailable: str | None = None
    #: Seconds the counted run took (under valgrind: ~50x the native time).
    seconds: float = 0.0

    @property
    def pp_instructions_per_token(self) -> float | None:
        return statistics.median(self.pp) if self.pp else None

    @property
    def tg_instructions_per_token(self) -> float | None:
        return statistics.median(self.tg) if self.tg else None

    def metrics(self) -> dict[str, float | None]:
        return {"pp_instructions_per_token": self.pp_instructions_per_token,
                "tg_instructions_per_token": self.tg_instructions_per_token}

    def samples(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in zip(METRICS, (self.pp, self.tg), strict=True) if values}

    def describe(self) -> str:
        if self.unavailable:
            return f"instructions per token unavailable: {self.unavailable}"
        shown = [f"{name}{n} {value:,.0f} instr/token" for name, n, value in
                 (("pp", self.n_prompt, self.pp_instructions_per_token),
                  ("tg", self.n_gen, self.tg_instructions_per_token)) if value is not None]
        depth = f" at depth {self.n_depth}" if self.n_depth else ""
        return f"{', '.join(shown)}{depth} (callgrind, {self.seconds:.0f} s)"

    def spread(self) -> str | None:
        """A warning when the repetitions counted more than ``SPREAD`` apart. Within one process, repetitions after
        the first counted up to 2 in 10^5 less here (not traced further); across processes the count repeats."""
        moved = [f"{name} {min(values):,.0f}..{max(values):,.0f}" for name, values in
                 (("pp", self.pp), ("tg", self.tg)) if values and max(values) > min(values) * (1 + SPREAD)]
        return f"instruction counts differ between repetitions: {', '.join(moved)}" if moved else None


def valgrind_version() -> str | None:
    """``3.19.0``, or None when valgrind is not on PATH."""
    path = shutil.which("valgrind")
    if path is None:
        return None
    try:
        printed = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return printed.removeprefix("valgrind-") or None


def callgrind(out_dir: Path) -> list[str]:
    """valgrind's command line up to the program: callgrind counting only inside ``COUNTED_FUNCTION``, one dump
    per call, into ``out_dir/callgrind.out.<n>`` (``read_counts``)."""
    return ["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={COUNTED_FUNCTION}",
            f"--dump-after={COUNTED_FUNCTION}", "--dump-instr=no", "--dump-line=no",
            f"--callgrind-out-file={out_dir / 'callgrind.out'}"]


def _command(job: Path, out_dir: Path) -> list[str]:
    command = [*callgrind(out_dir), sys.executable, str(_CHILD), str(job)]
    setarch = shutil.which("setarch")
    return [setarch, platform.machine(), "-R", *command] if setarch else command


def _child_environment() -> dict[str, str]:
    environment = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    environment.pop("LD_PRELOAD", None)  # valgrind preloads its own; another would be counted beside llama.cpp
    return environment


def read_counts(out_dir: Path) -> list[int]:
    """The instructions of each dump callgrind wrote to ``out_dir`` (``callgrind.out.1``, ``.2``, ...), in order."""
    numbered = []
    for path in out_dir.glob("callgrind.out.*"):
        suffix = path.name.rsplit(".", 1)[1]
        if suffix.isdigit():
            numbered.append((int(suffix), path))
    counts = []
    for _, path in sorted(numbered):
        match = _SUMMARY.search(path.read_text(errors="replace"))
        if match is None:
            raise EngineError(f"callgrind wrote {path} without a 'summary:' line")
        counts.append(int(match[1]))
    return counts


def per_phase(counts: Sequence[int], phases: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Each phase with its instructions: ``phases`` lists, after each phase, how many dumps existed."""
    if phases and phases[-1][1] != len(counts):
        raise EngineError(f"callgrind wrote {len(counts)} dumps but the counted work made {phases[-1][1]} graph "
                          "computations: the dumps cannot be attributed to the prompt and generation tests")
    totals = []
    done = 0
    for name, until in phases:
        totals.append((name, sum(counts[done:until])))
        done = until
    return totals


def instructions(engine: Any, n_prompt: int = 32, n_gen: int = 16, n_depth: int = 0, repetitions: int = 1,
                 seed: int = 0) -> InstructionsResult:
    """Count the instructions per prompt token and per generated token of ``engine``'s model and config (the
    ``llama_cpp`` backend) under callgrind; unavailable with the reason when valgrind cannot count them."""
    check_counts(n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth, repetitions=repetitions)
    if repetitions < 1 or n_prompt + n_gen < 1:
        raise LlmperfError("instructions needs repetitions >= 1 and n_prompt or n_gen > 0")
    if not hasattr(engine, "native_params"):
        raise LlmperfError(f"instruction counts need the llama_cpp backend (in-process); {engine.backend!r} runs "
                           "its work where callgrind cannot count it")

    def unavailable(reason: str, **counted_with: str) -> InstructionsResult:
        return InstructionsResult(n_prompt, n_gen, n_depth, (), (), counted_with, reason)

    params = engine.native_params()
    offloaded = params["model_params"].get("n_gpu_layers")
    if offloaded:
        return unavailable(f"the engine offloads {offloaded} layers to a GPU (n_gpu_layers={offloaded}); "
                           "instructions are counted for llama.cpp's CPU work only")
    version = valgrind_version()
    if version is None:
        return unavailable("valgrind is not installed (a system package: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="llmperf-callgrind-") as work:
        out_dir = Path(work)
        job = out_dir / "job.json"
        job.write_text(json.dumps({**params, "n_prompt": n_prompt, "n_gen": n_gen,
                                   "n_depth": n_depth, "repetitions": repetitions, "seed": seed,
                                   "out_dir": str(out_dir)}))
        start = time.perf_counter()
        try:
            ran = subprocess.run(_command(job, out_dir), capture_output=True, text=True, timeout=TIMEOUT_S,
                                 env=_child_environment(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EngineError(f"the counted run under callgrind took over {TIMEOUT_S:.0f} s and was stopped "
                              f"(n_prompt={n_prompt}, n_gen={n_gen}, n_depth={n_depth}): under valgrind llama.cpp "
                              "runs tens of times slower than natively; count fewer tokens") from None
        seconds = time.perf_counter() - start
        if ran.returncode != 0:
            tail = "\n".join(ran.stderr.strip().splitlines()[-12:])
            if any(word in ran.stderr for word in _UNSUPPORTED):
                return unavailable(f"valgrind {version} cannot run this llama.cpp build (an instruction it does not "
                                   f"emulate, e.g. AVX-512: build llama-cpp-python for AVX2): {tail}",
                                   valgrind=version)
            raise EngineError(f"the counted run under callgrind failed (exit {ran.returncode}):\n{tail}")
        layout = json.loads((out_dir / "phases.json").read_text())
        totals = per_phase(read_counts(out_dir), [(name, int(until)) for name, until in layout["phases"]])
    pp = tuple(count / n_prompt for name, count in totals if name == "pp")
    tg = tuple(count / n_gen for name, count in totals if name == "tg")
    features = " ".join(str(layout["features"]).split())
    return InstructionsResult(n_prompt, n_gen, n_depth, pp, tg, {"valgrind": version, "llama_cpp_features": features},
                              None, seconds)
