"""Section 2, ``visible_devices``: ``CUDA_VISIBLE_DEVICES`` by index, by UUID and by UUID prefix, as the tracker
reads it (a child process per setting) against what CUDA (torch) makes of it."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

from gpu_sections.common import CHILD_MARK, Context, Section, child_env, run_child, unavailable

VISIBLE_CHILD = f"""
import json, os
answer = {{"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}}
try:
    from pytest_llmperf.measure.gpu import NvmlTracker
    with NvmlTracker(interval_s=3600) as tracker:
        pass
    answer["tracker"] = {{"available": tracker.available, "reason": tracker.reason,
                          "uuids": [trace.device.uuid for trace in tracker.traces],
                          "positions": [trace.device.position for trace in tracker.traces]}}
except Exception as error:
    answer["tracker"] = {{"error": repr(error)}}
try:
    import torch
    count = torch.cuda.device_count()
    uuids = []
    for index in range(count):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        uuids.append(None if uuid is None else "GPU-" + str(uuid))
    answer["torch"] = {{"device_count": count, "uuids": uuids}}
except ImportError:
    answer["torch"] = {{"error": "torch is not installed"}}
except Exception as error:
    answer["torch"] = {{"error": repr(error)}}
print({CHILD_MARK!r} + json.dumps(answer))
"""


def visible_cases(uuid: str | None) -> dict[str, str | None]:
    """``CUDA_VISIBLE_DEVICES`` settings to try, given the first GPU's NVML UUID (None: no GPU)."""
    cases: dict[str, str | None] = {"unset": None, "empty": ""}
    if uuid is None:
        return cases
    cases.update({
        "index 0": "0", "index 1 (no such GPU)": "1", "0,1": "0,1", "1,0 (first entry invalid)": "1,0", "-1": "-1",
        "full UUID": uuid, "UUID prefix (12 chars)": uuid[:12], "UUID without 'GPU-'": uuid.removeprefix("GPU-"),
        "prefix 'GPU-' alone": "GPU-", "unknown UUID": "GPU-zzzzzzzz",
    })
    return cases


def visible_section(ctx: Context, section: Section) -> None:
    uuid = ctx.devices[0]["uuid"] if ctx.devices else None
    cases = visible_cases(None if ctx.no_gpu else uuid)
    section.results["parent_CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")

    def ask(setting: str | None) -> dict[str, Any]:
        return run_child(VISIBLE_CHILD, child_env(CUDA_VISIBLE_DEVICES=setting), ctx.timeout(120))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(cases))) as pool:
        answers = dict(zip(cases, pool.map(ask, cases.values()), strict=True))
    section.results["cases"] = {label: {"setting": cases[label], **answer} for label, answer in answers.items()}
    for label, answer in answers.items():
        tracker, torch = answer.get("tracker", {}), answer.get("torch", {})
        if ctx.no_gpu:
            section.check(f"{label}: the tracker reports unavailable with a reason",
                          tracker.get("available") is False and bool(tracker.get("reason")), str(tracker))
            continue
        if "error" in answer or "uuids" not in tracker or "uuids" not in torch:
            section.check(f"{label}: both views answered", False, f"{answer}")
            continue
        if None in torch["uuids"]:  # this torch has no device UUIDs: compare the counts
            section.check(f"{label}: the tracker sees as many GPUs as CUDA (torch)",
                          len(tracker["uuids"]) == torch["device_count"], f"tracker {tracker['uuids']}, torch "
                          f"{torch['device_count']} device(s), no UUIDs")
            continue
        section.check(f"{label}: the tracker sees what CUDA (torch) sees", tracker["uuids"] == torch["uuids"],
                      f"tracker {tracker['uuids']}, torch {torch['uuids']}")
    if ctx.no_gpu:
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
    else:
        section.status = "ok"
