"""``benchmarks/gpu_check.py`` (its sections in ``benchmarks/gpu_sections/``) in its CPU mode, the test-only torch
engine (``perf_tests/torch_engine.py``) on the CPU (the tracker's per-process view where NVML cannot vouch for a
number is tested in tests/test_gpu.py).

There is no GPU here, so the script must run every section that needs none (the tracker's "unavailable", the
marker's skips and strict failures, xdist without pinning, the GPU tests' skips) and report every GPU-only number
as "unavailable: no GPU (...)", never as 0. The torch engine is checked against llama.cpp on the same shipped
weights: the same greedy answers and logits within the training script's bound.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_llmperf.core.workload import Request
from pytest_llmperf.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
#: Readings that are real zeros on a machine without a GPU (torch counts no device), not stand-ins for a number.
REAL_ZEROS = {"exit_code", "torch_device_count", "device_count"}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", SCRIPT)  # which puts benchmarks/ on sys.path for its gpu_sections package
#: The sections' modules, named after their sections.
visible_devices = importlib.import_module("gpu_sections.devices")
gpu_marker = importlib.import_module("gpu_sections.marker")
xdist_pinning = importlib.import_module("gpu_sections.pinning")
torch_gate = importlib.import_module("gpu_sections.torch_gate")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One ``--quick`` run of the script here (no GPU): exit status, its JSON, its output."""
    pytest.importorskip("pynvml")
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    environ = {key: value for key, value in os.environ.items() if key not in ("CI", "OUT")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=180, env=environ, cwd=out.parent)
    return done.returncode, json.loads(out.read_text()), done.stdout + done.stderr


def _numbers(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            yield from _numbers(inner, str(inner_key))
    elif isinstance(value, list):
        for inner in value:
            yield from _numbers(inner, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, float(value)


def test_cpu_mode_runs_every_section_and_exits_0(cpu_run: tuple[int, dict[str, Any], str]) -> None:
    code, document, output = cpu_run
    assert code == 0, output
    assert document["mode"] == "cpu" and "NVML Shared Library Not Found" in document["no_gpu"]
    assert list(document["sections"]) == list(gpu_check.SECTIONS)
    vllm_installed = importlib.util.find_spec("vllm") is not None  # vLLM's CPU build (.ci/run installs it)
    for name, section in document["sections"].items():
        expected = "ok" if name == "vllm" and vllm_installed else "unavailable"
        assert section["status"] == expected, (name, section["status"], section["reason"])
        assert all(check["passed"] for check in section["checks"]), (name, section["checks"])
        assert section["checks"] or name == "vllm", name  # each ran something it could check
    # The readable summary: one line per section, then where the JSON went.
    assert "[5 torch_gate] unavailable" in output and "every check held" in output
    assert not list(ROOT.glob("junit-*.xml"))  # the child runs wrote nothing into the checkout


def test_gpu_only_numbers_are_unavailable_never_zero(cpu_run: tuple[int, dict[str, Any], str]) -> None:
    sections = cpu_run[1]["sections"]
    for name, key in [("tracker", "allocations"), ("tracker", "short_peak"), ("tracker", "energy"),
                      ("gpu_marker", "hardware_class"), ("torch_gate", "baseline"), ("torch_gate", "in_process")]:
        assert sections[name]["results"][key].startswith("unavailable: no GPU (NVML is unavailable"), (name, key)
    assert set(sections["tracker"]["results"]["without_gpu"]["metrics"].values()) == {None}
    results = {name: section["results"] for name, section in sections.items()}
    zeros = [key for key, value in _numbers(results) if value == 0 and key not in REAL_ZEROS]
    assert zeros == []


def test_cpu_parts_behave_as_without_a_gpu(cpu_run: tuple[int, dict[str, Any], str]) -> None:
    sections = cpu_run[1]["sections"]
    marker = sections["gpu_marker"]["results"]["runs"]
    recorded = {case["test"]: case for case in marker["record (not strict, --update-baselines)"]["outcomes"]}
    assert {case["outcome"] for case in recorded.values()} == {"skipped"}
    assert "needs 2 GPU(s): NVML is unavailable" in recorded["test_two_gpus"]["message"]
    assert {case["outcome"] for case in marker["strict"]["outcomes"]} == {"error"}
    seen = sections["xdist_pinning"]["results"]["seen"]
    assert sorted(seen) == ["gw0-test_sees", "gw1-test_sees"]  # the gpu test ran on neither worker
    assert all(view["LLMPERF_WORKER_GPUS"] is None for view in seen.values())  # nothing pinned without NVML
    gate = sections["torch_gate"]["results"]["runs"]
    skipped = {case["test"]: case["message"] for case in gate["not strict"]["outcomes"]}
    assert set(skipped) == {"test_vllm_decode", "test_vllm_accuracy", "test_torch_addition_decode"}
    assert all("needs 1 GPU(s)" in message for message in skipped.values())  # the GPU is checked before vLLM
    assert sections["vllm"]["results"]["vllm_importable"] is (importlib.util.find_spec("vllm") is not None)
    assert "Nothing of the vLLM adapter can be checked" in sections["vllm"]["results"]["statement"]


def test_expected_outcomes_and_pinning() -> None:
    assert gpu_marker.expected_marker_outcomes(1, 140.4, strict=False) == {
        "test_default": "passed", "test_fits": "passed", "test_two_gpus": "skipped", "test_too_big": "skipped",
        "test_records_hardware_class": "passed"}
    assert set(gpu_marker.expected_marker_outcomes(0, None, strict=True).values()) == {"error"}
    assert xdist_pinning.expected_pinning(["GPU-a"], None) == {"gw0": "GPU-a", "gw1": ""}
    assert xdist_pinning.expected_pinning(["GPU-a", "GPU-b", "GPU-c", "GPU-d"], None) == {"gw0": "GPU-a,GPU-b",
                                                                                          "gw1": "GPU-c,GPU-d"}
    assert xdist_pinning.expected_pinning([], "3") == {"gw0": "3", "gw1": "3"}
    cases = visible_devices.visible_cases("GPU-0123abcd-4567")
    assert cases["UUID prefix (12 chars)"] == "GPU-0123abcd" and cases["UUID without 'GPU-'"] == "0123abcd-4567"
    assert visible_devices.visible_cases(None) == {"unset": None, "empty": ""}


def test_sections_by_name_or_number_and_prepare(tmp_path: Path) -> None:
    assert gpu_check.parse_sections("5,tracker") == ["tracker", "torch_gate"]
    with pytest.raises(SystemExit, match="unknown section 'gpus'"):
        gpu_check.parse_sections("gpus")
    assert gpu_check.main(["--prepare", str(tmp_path / "carry")]) == 0
    assert (tmp_path / "carry" / "gguf" / "gguf_reader.py").is_file()
    assert not list((tmp_path / "carry").rglob("__pycache__"))


# --- the torch engine on the CPU -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    pytest.importorskip("torch")
    built = torch_gate.torch_engine_module().TorchAdditionEngine("addition-full-f16", device="cpu", threads=1)
    yield built
    built.close()


def test_torch_engine_matches_llama_cpp(engine: Any) -> None:
    from pytest_llmperf.assets.addition import answer, encode, heldout_pairs, prompt
    from pytest_llmperf.assets.model import trained_model_path

    train = torch_gate.torch_engine_module().training_module()
    llm = train.load_llama(trained_model_path("addition-full-f16"))  # F32 KV cache, as the training check
    try:
        pairs = heldout_pairs()[::250]
        answers = [engine.answer(a, b) for a, b in pairs]
        assert answers == [train.greedy_answer(llm, a, b) for a, b in pairs]
        assert sum(given == answer(a, b) for given, (a, b) in zip(answers, pairs, strict=True)) >= len(pairs) - 1
        tokens = encode(prompt(*pairs[0]))
        difference = abs(engine.logits(tokens).numpy() - train.llama_logits(llm, tokens)[-1]).max()
        assert difference < train.DEFAULT_MAX_LOGIT_DIFF
    finally:
        llm.close()


def test_torch_engine_runs_whole_requests_in_batches(engine: Any) -> None:
    requests = [Request(engine.make_prompt(seed, 6), 5) for seed in range(3)] + [Request("7+8=", 4)]
    records = engine.run(requests, concurrency=3)
    assert [(r.prompt_tokens, r.output_tokens, len(r.chunk_times)) for r in records] == [(6, 5, 5)] * 3 + [
        (len(engine.tag_prompt("7+8=", 3)), 4, 4)]
    assert all(r.t_send < r.chunk_times[0] <= r.t_done == r.chunk_times[-1] for r in records)
    with pytest.raises(EngineError, match="request_rate needs a server"):
        engine.run(requests, request_rate=1.0)
    with pytest.raises(EngineError, match="exceed the model's context of 256"):
        engine.generate([engine.make_prompt(0, 250)], 10)


def test_forward_runs_on_the_engine_device() -> None:
    """The training forward makes its rotary tables with ``torch.arange`` and no device; on a GPU they must follow
    the activations. The "meta" device stands in for CUDA: a CPU table meeting meta activations fails the same way."""
    torch = pytest.importorskip("torch")
    engines = torch_gate.torch_engine_module()
    on_meta = engines.TorchAdditionEngine(device="meta")
    tokens = torch.zeros((2, 5), dtype=torch.long, device="meta")
    with pytest.raises(RuntimeError, match="not on the expected device meta"):  # the forward alone, off the CPU
        engines.training_module().forward(on_meta._live(), tokens, on_meta.config)
    logits = on_meta._run_forward(on_meta._live(), tokens)
    assert logits.device.type == "meta" and tuple(logits.shape) == (2, 5, on_meta.config.n_vocab)


def test_torch_engine_bad_settings_are_named() -> None:
    pytest.importorskip("torch")
    engines = torch_gate.torch_engine_module()
    with pytest.raises(EngineError, match="dtype='float64'"):
        engines.TorchAdditionEngine(device="cpu", dtype="float64")
    with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
        engines.TorchAdditionEngine(device="cuda")


def test_torch_engine_through_llmperf_measure_on_cpu() -> None:
    """The script's in-process part of the torch gate, here on the CPU: the model adds, the workload's tokens
    are all there, and every NVML number is None (no GPU), never 0."""
    pytest.importorskip("torch")
    result = torch_gate.torch_in_process("cpu", (2,), pairs=20)
    assert result["heldout_exact_match"] >= 0.9
    (row,) = result["measure"]
    assert row["completion_tok_s"] > 0 and row["tpot_p50"] > 0
    assert all(row[name] is None for name in ("mem_max_gib", "mem_process_gib", "gpu_power_w", "gpu_j_per_token"))
