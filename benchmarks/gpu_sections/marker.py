"""Section 3, ``gpu_marker``: ``gpu(count=1, min_vram_gib=...)`` in a pytest child run (passing, skipping,
failing in strict mode) and the GPU hardware class string in a recorded baseline."""

from __future__ import annotations

import json
import math
from typing import Any

from gpu_sections.common import Context, Section, by_test, run_pytest, unavailable

MARKER_TESTS = """
import time

import pytest

FITS = {fits!r}
TOO_BIG = {too_big!r}


@pytest.mark.gpu
def test_default():
    pass


@pytest.mark.gpu(count=1, min_vram_gib=FITS)
def test_fits():
    pass


@pytest.mark.gpu(count=2)
def test_two_gpus():
    pass


@pytest.mark.gpu(count=1, min_vram_gib=TOO_BIG)
def test_too_big():
    pass


@pytest.mark.perf
@pytest.mark.gpu(count=1)
def test_records_hardware_class(llmperf, nvml_tracker):
    with nvml_tracker(interval_s=0.05) as gpu:
        time.sleep(0.2)
    llmperf.check({{"mem_max_gib": gpu.metrics()["mem_max_gib"]}})
"""


def expected_marker_outcomes(gpus: int, total_gib: float | None, strict: bool) -> dict[str, str]:
    """What ``MARKER_TESTS`` should give with ``gpus`` visible GPUs of ``total_gib`` each (``FITS`` is one GiB
    under it, ``TOO_BIG`` twice it): a missing GPU skips, or errors at setup in strict mode."""
    missing = "error" if strict else "skipped"
    one = "passed" if gpus >= 1 and total_gib else missing
    return {"test_default": one, "test_fits": one, "test_two_gpus": "passed" if gpus >= 2 else missing,
            "test_too_big": missing, "test_records_hardware_class": one}


def marker_section(ctx: Context, section: Section) -> None:
    gpus = 0 if ctx.no_gpu else len(ctx.devices)
    total = None if ctx.no_gpu else min(device["memory_total_gib"] for device in ctx.devices)
    fits = max(1, math.floor(total) - 1) if total else 1
    too_big = 2 * math.ceil(total) if total else 100_000
    directory = ctx.work_dir / "marker"
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_marker.py").write_text(MARKER_TESTS.format(fits=fits, too_big=too_big))
    section.results["min_vram_gib"] = {"fits": fits, "too_big": too_big, "device_total_gib": total}
    baselines = directory / "baselines"
    runs = {"record (not strict, --update-baselines)": ["--update-baselines", f"--llmperf-baseline-dir={baselines}"],
            "strict": ["--llmperf-strict", f"--llmperf-baseline-dir={baselines}"]}
    if not ctx.quick:
        runs["--llmperf-require-gpu"] = ["--llmperf-require-gpu", f"--llmperf-baseline-dir={baselines}"]
    section.results["runs"] = {}
    for label, args in runs.items():
        run = section.results["runs"][label] = run_pytest(["test_marker.py", *args], directory, ctx.timeout(120),
                                                           label.split()[0].strip("-"), directory)
        expected = expected_marker_outcomes(gpus, total, strict=not label.startswith("record"))
        section.check(f"{label}: outcomes as expected with {gpus} GPU(s)", by_test(run["outcomes"]) == expected,
                      f"got {by_test(run['outcomes'])}, expected {expected}")
    stored = baselines / "test_marker" / "test_records_hardware_class.json"
    if ctx.no_gpu:
        section.results["hardware_class"] = unavailable(ctx.no_gpu)
        section.check("no GPU: no baseline was recorded (the test skipped)", not stored.exists(), str(stored))
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
        return
    hardware: dict[str, Any] = json.loads(stored.read_text())["fingerprint"]["hardware"] if stored.exists() else {}
    section.results["hardware"] = hardware or None
    hardware_class = str(hardware.get("class"))
    section.results["hardware_class"] = hardware_class
    name = ctx.devices[0]["name"]
    section.check("the recorded hardware class is the GPU's", hardware_class.startswith(f"gpu:{name}x{gpus}:"),
                  hardware_class)
    section.status = "ok"
