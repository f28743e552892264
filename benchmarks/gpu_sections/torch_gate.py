"""Section 5, ``torch_gate``: the torch engine (``perf_tests/torch_engine.py``) through the whole GPU gate: its
perf test recorded, then checked strictly; then in-process, exact match and ``llmperf``'s measurement."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpu_sections.common import ROOT, Context, Section, by_test, run_pytest, tail, unavailable

TORCH_TEST = "perf_tests/test_gpu.py::test_torch_addition_decode"


def report_entry(path: Path, test: str) -> dict[str, Any] | None:
    """The test's entry of a pytest-llmperf JSON report: status, message and each metric's verdict."""
    if not path.is_file():
        return None
    for entry in json.loads(path.read_text())["tests"]:
        if entry["test"] == test:
            return {"status": entry["status"], "message": entry["message"], "warnings": entry["warnings"],
                    "metrics": {m["metric"]: {key: m.get(key) for key in ("current", "baseline", "delta_pct",
                                                                             "verdict")} for m in entry["metrics"]},
                    "hardware_class": entry["fingerprint"].get("hardware", {}).get("class")}
    return None


def exact_match(engine: Any, pairs: Sequence[tuple[int, int]]) -> float:
    """Greedy exact match of ``a+b=`` on ``engine``, the questions batched by prompt length."""
    from pytest_llmperf.assets import addition

    by_length: dict[int, list[tuple[int, int]]] = {}
    for a, b in pairs:
        by_length.setdefault(len(addition.encode(addition.prompt(a, b))), []).append((a, b))
    correct = 0
    for group in by_length.values():
        outputs, _ = engine.generate([addition.encode(addition.prompt(a, b)) for a, b in group], 5)
        correct += sum(addition.decode(out) == addition.answer(a, b)
                       for out, (a, b) in zip(outputs, group, strict=True))
    return correct / len(pairs)


def torch_engine_module() -> Any:
    """``perf_tests/torch_engine.py`` (the test-only engine), imported by its path as ``torch_engine``."""
    import importlib.util

    if "torch_engine" not in sys.modules:
        spec = importlib.util.spec_from_file_location("torch_engine", ROOT / "perf_tests" / "torch_engine.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["torch_engine"] = module
        spec.loader.exec_module(module)
    return sys.modules["torch_engine"]


def torch_in_process(device: str, batches: Sequence[int], pairs: int = 200) -> dict[str, Any]:
    """The torch engine on ``device``: held-out exact match, then ``llmperf.measure``'s measurement (tracked by
    NVML, not gated) at each batch size."""
    from pytest_llmperf.assets.addition import heldout_pairs
    from pytest_llmperf.core.workload import Workload
    from pytest_llmperf.measure.calls import measure

    engine = torch_engine_module().TorchAdditionEngine("addition-full-f16", device=device)
    try:
        em = exact_match(engine, heldout_pairs()[:pairs])
        rows = []
        for batch in batches:
            workload = Workload(n_prompt=16, n_predict=64, requests=batch, concurrency=batch, warmup=batch,
                                repetitions=3, max_repetitions=3)
            result, _ = measure(engine, workload, gate=(), track_gpu=True, check=False)
            rows.append({"batch": batch, **{name: result.metrics.get(name) for name in (
                "completion_tok_s", "tpot_p50", "ttft_p50", "e2e_p50", "mem_max_gib", "mem_process_gib",
                "gpu_util_pct", "gpu_power_w", "gpu_energy_j", "gpu_j_per_token", "rss_peak_gib")}})
    finally:
        engine.close()
    return {"device": device, "heldout_exact_match": em, "questions": pairs, "measure": rows}


def torch_gate_section(ctx: Context, section: Section) -> None:
    from pytest_llmperf.core.baseline import baseline_path

    baselines = ctx.work_dir / "gate-baselines"
    reports = ctx.work_dir / "gate-reports"
    reports.mkdir()
    section.results["runs"] = runs = {}
    if ctx.no_gpu:  # every GPU test skips, or fails in strict mode
        plans = {"not strict": ["-m", "perf"], "strict": ["-m", "perf", "--llmperf-strict"]}
    else:
        plans = {"record": ["-m", "perf", "-k", "torch_addition", "--update-baselines"],
                 "check (strict)": ["-m", "perf", "--llmperf-strict"]}
    for label, args in plans.items():
        report = reports / f"{label.split()[0]}.json"
        runs[label] = run_pytest(["perf_tests/test_gpu.py", *args, f"--llmperf-baseline-dir={baselines}",
                                  f"--llmperf-report={report}"], ROOT, ctx.timeout(240), label.split()[0], reports)
        runs[label]["torch_test"] = report_entry(report, TORCH_TEST)
    if ctx.no_gpu:
        quiet, strict = (by_test(run["outcomes"]) for run in runs.values())
        names = {"test_vllm_decode", "test_vllm_accuracy", "test_torch_addition_decode"}
        section.check("no GPU: every GPU test skips", quiet == dict.fromkeys(names, "skipped"), str(quiet))
        section.check("no GPU, strict: every GPU test fails", strict == dict.fromkeys(names, "error"), str(strict))
        section.results["baseline"] = section.results["in_process"] = unavailable(ctx.no_gpu)
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
        return
    recorded, checked = runs["record"], runs["check (strict)"]
    section.check("record: the torch test passed", by_test(recorded["outcomes"]).get("test_torch_addition_decode")
                  == "passed", tail(recorded["output_tail"], 600))
    section.check("check (strict): the torch test passed against its baseline",
                  by_test(checked["outcomes"]).get("test_torch_addition_decode") == "passed",
                  tail(checked["output_tail"], 600))
    entry = checked["torch_test"] or {}
    verdicts = {name: m["verdict"] for name, m in entry.get("metrics", {}).items() if m["verdict"] != "not gated"}
    section.check("every gated metric was judged ok (none new, unavailable or not judged)",
                  bool(verdicts) and set(verdicts.values()) <= {"ok", "improved"}, str(verdicts))
    stored = baseline_path(baselines, TORCH_TEST)
    relative = baseline_path(Path("baselines"), TORCH_TEST)
    content = json.loads(stored.read_text()) if stored.is_file() else None
    section.results["baseline"] = {"commit_as": str(relative), "content": content}
    hardware_class = content["fingerprint"]["hardware"]["class"] if content else None
    section.check("the baseline's hardware class is the GPU's", str(hardware_class).startswith("gpu:"),
                  str(hardware_class))
    if ctx.remaining() > 60:
        inside = section.results["in_process"] = torch_in_process("cuda", (1, 32) if ctx.quick else (1, 8, 32))
        section.check("the model adds on CUDA (held-out exact match >= 0.95)", inside["heldout_exact_match"] >= 0.95,
                      f"{inside['heldout_exact_match']:.3f}")
    else:
        section.results["in_process"] = "not run: out of time"
    section.status = "ok"
