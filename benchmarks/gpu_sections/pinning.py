"""Section 4, ``xdist_pinning``: ``pytest -n 2 --dist each`` with the GPUs there: which worker is pinned to which
GPU and what a test sees (``CUDA_VISIBLE_DEVICES``, NVML, torch)."""

from __future__ import annotations

import json
import os

from gpu_sections.common import Context, Section, run_pytest, unavailable

PINNING_TESTS = """
import json
import os
from pathlib import Path

import pytest

RECORDS = Path({records!r})


def record(test):
    from pytest_llmperf.core.hardware import probe_gpus

    seen = {{"worker": os.environ.get("PYTEST_XDIST_WORKER"), "test": test,
             "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "LLMPERF_WORKER_GPUS": os.environ.get("LLMPERF_WORKER_GPUS")}}
    devices, _, reason = probe_gpus()
    seen["nvml_uuids"], seen["nvml_reason"] = [device.uuid for device in devices], reason
    try:
        import torch

        seen["torch_device_count"] = torch.cuda.device_count()
    except ImportError:
        seen["torch_device_count"] = "torch is not installed"
    (RECORDS / f"{{seen['worker']}}-{{test}}.json").write_text(json.dumps(seen))


@pytest.mark.perf
def test_sees():
    record("test_sees")


@pytest.mark.gpu
def test_needs_gpu():
    record("test_needs_gpu")
"""


def expected_pinning(uuids: list[str], parent: str | None) -> dict[str, str | None]:
    """``CUDA_VISIBLE_DEVICES`` each of 2 workers should see: blocks of ``len // 2`` GPUs (at least one), none
    for a worker past the last whole block; without GPUs the variable is left as it was (``parent``)."""
    if not uuids:
        return {"gw0": parent, "gw1": parent}
    per = max(1, len(uuids) // 2)
    blocks = [uuids[i * per : (i + 1) * per] for i in range(2)]
    return {f"gw{i}": ",".join(block) if len(block) == per else "" for i, block in enumerate(blocks)}


def pinning_section(ctx: Context, section: Section) -> None:
    directory = ctx.work_dir / "pinning"
    records = directory / "records"
    records.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_pinning.py").write_text(PINNING_TESTS.format(records=str(records)))
    run = section.results["run"] = run_pytest(["test_pinning.py", "-n", "2", "--dist", "each"], directory,
                                              ctx.timeout(180), "pinning", directory)
    seen = {path.stem: json.loads(path.read_text()) for path in sorted(records.glob("*.json"))}
    section.results["seen"] = seen
    uuids = [] if ctx.no_gpu else [device["uuid"] for device in ctx.devices]
    expected = expected_pinning(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    pinned_to = {worker: bool(uuids) and bool(visible) for worker, visible in expected.items()}
    for worker, visible in expected.items():
        view = seen.get(f"{worker}-test_sees")
        section.check(f"{worker}: CUDA_VISIBLE_DEVICES is {visible!r}", view is not None and
                      view["CUDA_VISIBLE_DEVICES"] == visible, str(view and view["CUDA_VISIBLE_DEVICES"]))
        pinned = pinned_to[worker]
        if not ctx.no_gpu:
            section.check(f"{worker}: torch sees {int(pinned)} GPU(s)", view is not None and
                          view["torch_device_count"] == (len(visible.split(",")) if visible else 0),
                          str(view and view["torch_device_count"]))
        section.check(f"{worker}: the gpu test {'ran' if pinned else 'did not run'}",
                      (f"{worker}-test_needs_gpu" in seen) == pinned, "")
    outcomes = sorted(case["outcome"] for case in run["outcomes"] if case["test"] == "test_needs_gpu")
    wanted = sorted("passed" if pinned else "skipped" for pinned in pinned_to.values())
    section.check("the gpu test passed where a GPU was pinned and skipped elsewhere", outcomes == wanted,
                  f"{outcomes}, expected {wanted}")
    if ctx.no_gpu:
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
    else:
        section.status = "ok"
