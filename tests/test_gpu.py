"""nvml_tracker and the gpu marker: the real NVML here (no GPU), scripted GPUs behind a fake ``pynvml``."""

from __future__ import annotations

import sys

import pytest

from pytest_llmperf.core import hardware as fingerprint
from pytest_llmperf.measure import gpu
from pytest_llmperf.measure.gpu import NvmlTracker, visible_devices
from tests.fake_nvml import GIB, FakeGpu, make_pynvml

FOREVER = 3600.0  # the thread never samples: start(), the test's sample() calls and stop() make the trace


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[FakeGpu]:
    gpus: list[FakeGpu] = []
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fingerprint.gpu_info.cache_clear()
    yield gpus
    fingerprint.gpu_info.cache_clear()


def test_no_gpu_here_is_unavailable_with_nvml_reason() -> None:
    pytest.importorskip("pynvml")
    with NvmlTracker() as tracker:
        pass
    assert not tracker.available
    assert "NVML Shared Library Not Found" in tracker.reason
    assert set(tracker.metrics(100).values()) == {None}  # never a zero


def test_peak_and_mean_per_device_and_across_devices(fake_gpus: list[FakeGpu]) -> None:
    fake_gpus += [FakeGpu(used_gib=[1, 3, 2, 1]), FakeGpu(uuid="GPU-1", used_gib=[2, 2, 5, 4])]
    with NvmlTracker(interval_s=FOREVER) as tracker:
        tracker.sample()
        tracker.sample()
    metrics = tracker.metrics()
    assert [len(trace.used_bytes) for trace in tracker.traces] == [4, 4]
    assert metrics["mem_gpu0_gib"] == 3 and metrics["mem_gpu1_gib"] == 5
    assert metrics["mem_max_gib"] == 5  # max over devices of the peak
    assert metrics["mem_mean_gib"] == 4  # mean over devices of the peak


def test_per_process_memory_counts_only_tracked_pids(fake_gpus: list[FakeGpu]) -> None:
    mine, other = 100, 200
    fake_gpus += [
        FakeGpu(processes=[[(mine, 1 * GIB), (other, 40 * GIB)], [(mine, 3 * GIB), (other, 40 * GIB)]]),
        FakeGpu(uuid="GPU-1", processes=[[(mine, 2 * GIB)], [(mine, 1 * GIB), (other, 9 * GIB)]]),
    ]
    with NvmlTracker(interval_s=FOREVER, pids={mine}) as tracker:
        pass
    # Samples: (1 + 2) then (3 + 1) GiB of this process across devices: the peak of the sum is 4.
    assert tracker.metrics()["mem_process_gib"] == 4


def test_per_process_unsupported_is_unavailable_not_zero(fake_gpus: list[FakeGpu]) -> None:
    fake_gpus.append(FakeGpu(processes=None, power_mw=None, energy_mj=None))
    with NvmlTracker(interval_s=FOREVER, pids={1}) as tracker:
        pass
    metrics = tracker.metrics(100)
    assert metrics["mem_max_gib"] == 1.0
    assert metrics["mem_process_gib"] is None
    assert metrics["gpu_power_w"] is None and metrics["gpu_energy_j"] is None and metrics["gpu_j_per_token"] is None


def test_energy_per_token_and_power(fake_gpus: list[FakeGpu]) -> None:
    fake_gpus += [
        FakeGpu(energy_mj=[1_000, 6_000], power_mw=[200_000, 400_000]),
        FakeGpu(uuid="GPU-1", energy_mj=[0, 5_000], power_mw=[100_000]),
    ]
    with NvmlTracker(interval_s=FOREVER) as tracker:
        pass
    metrics = tracker.metrics(generated_tokens=500)
    assert metrics["gpu_energy_j"] == 10.0  # (6000 - 1000) + (5000 - 0) mJ
    assert metrics["gpu_j_per_token"] == 0.02
    assert metrics["gpu_power_w"] == 400.0  # mean 300 W + mean 100 W


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (None, ["GPU-a0", "GPU-b1", "GPU-c2"]),
        ("2,0", ["GPU-c2", "GPU-a0"]),
        ("GPU-b", ["GPU-b1"]),  # a unique UUID prefix, as CUDA accepts
        ("1,7,0", ["GPU-b1"]),  # CUDA stops at the first invalid entry
        ("", []),
    ],
)
def test_cuda_visible_devices(fake_gpus: list[FakeGpu], selection: str | None, expected: list[str]) -> None:
    fake_gpus += [FakeGpu(uuid="GPU-a0"), FakeGpu(uuid="GPU-b1"), FakeGpu(uuid="GPU-c2")]
    import pynvml

    environ = {} if selection is None else {"CUDA_VISIBLE_DEVICES": selection}
    devices = visible_devices(pynvml, environ)
    assert [device.uuid for device in devices] == expected
    assert [device.position for device in devices] == list(range(len(expected)))


def test_no_visible_gpu_is_unavailable(fake_gpus: list[FakeGpu], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus.append(FakeGpu())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with NvmlTracker() as tracker:
        pass
    assert not tracker.available and "no GPU is visible" in tracker.reason
    assert tracker.metrics()["mem_max_gib"] is None


def test_background_thread_samples(fake_gpus: list[FakeGpu]) -> None:
    import time

    fake_gpus.append(FakeGpu(used_gib=[1, 2, 3, 4, 5, 6]))
    with NvmlTracker(interval_s=0.01) as tracker:
        deadline = time.monotonic() + 5
        while len(tracker.traces[0].used_bytes) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(tracker.traces[0].used_bytes) >= 5  # start + >= 3 thread samples + stop
    assert sys.modules["pynvml"].calls[-1] == "nvmlShutdown"


def test_hardware_class_comes_from_nvml(fake_gpus: list[FakeGpu]) -> None:
    fake_gpus += [FakeGpu(), FakeGpu(uuid="GPU-1")]
    hardware = fingerprint.hardware()
    assert hardware["class"] == "gpu:NVIDIA H100 80GB HBM3x2:80GiB"
    assert hardware["driver"] == "550.54.15" and hardware["cuda"] == "12.4" and hardware["gpu_count"] == 2
    assert hardware["cpu_count"] >= 1  # the CPU stays described
    assert fingerprint.hardware()["class"] == hardware["class"]  # the cached NVML reading is not consumed


GPU_TESTS = """
import pytest

@pytest.mark.gpu
def test_one():
    pass

@pytest.mark.gpu(count=2)
def test_two():
    pass

@pytest.mark.gpu(min_vram_gib=100)
def test_big():
    pass
"""


def test_gpu_marker_without_gpu_skips_or_fails(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pynvml")
    pytester.makepyfile(test_gpus=GPU_TESTS)
    skipped = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    skipped.assert_outcomes(skipped=3)
    skipped.stdout.fnmatch_lines(["*needs 1 GPU(s): NVML is unavailable: NVML Shared Library Not Found*"])
    pytester.runpytest("-p", "no:cacheprovider", "--llmperf-require-gpu").assert_outcomes(errors=3)  # fails at setup
    strict = pytester.runpytest("-p", "no:cacheprovider", "--llmperf-strict")
    strict.assert_outcomes(errors=3)
    strict.stdout.fnmatch_lines(["*?strict? test_gpus.py::test_one needs 1 GPU(s)*"])


def test_gpu_marker_with_scripted_gpu(fake_gpus: list[FakeGpu], pytester: pytest.Pytester) -> None:
    fake_gpus.append(FakeGpu(total_gib=80))
    pytester.makepyfile(test_gpus=GPU_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*needs 2 GPU(s), 1 visible (CUDA_VISIBLE_DEVICES honoured)*",
            "*needs 1 GPU(s) with >= 100 GiB each, 0 visible*",
        ]
    )


def test_bad_gpu_marker_is_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.gpu(count=0)\ndef test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*gpu marker takes count=<int >= 1>*"])


def test_nvml_tracker_fixture(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pynvml")
    pytester.makepyfile(
        """
        def test_tracked(nvml_tracker):
            with nvml_tracker(interval_s=0.01) as gpu:
                pass
            assert not gpu.available and "NVML" in gpu.reason
            assert gpu.metrics()["mem_max_gib"] is None
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_worker_devices_blocks() -> None:
    from pytest_llmperf.core.hardware import GpuDevice, worker_devices

    devices = [GpuDevice(i, None, f"GPU-{i}", "H100", 80 * GIB) for i in range(4)]
    uuids = [[d.uuid for d in worker_devices(devices, worker, 2)] for worker in range(3)]
    assert uuids == [["GPU-0", "GPU-1"], ["GPU-2", "GPU-3"], []]  # auto: 4 GPUs // 2 workers
    assert [d.uuid for d in worker_devices(devices, 3, 8)] == ["GPU-3"]  # more workers than GPUs: one each...
    assert worker_devices(devices, 5, 8) == []  # ...and none past the last
    assert [d.uuid for d in worker_devices(devices, 1, 4, per_worker=3)] == []  # GPUs 3-5 do not all exist


PINNED = """
import os
import pytest

@pytest.mark.gpu
@pytest.mark.parametrize("i", range(4))
def test_pinned(i):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == {"gw0": "GPU-a", "gw1": "GPU-b"}[worker]

@pytest.mark.gpu(count=2)
def test_needs_two():
    pass
"""


def test_xdist_workers_get_their_own_gpu(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from tests import fake_nvml

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pytester.makepyfile(fake_nvml=Path(fake_nvml.__file__).read_text(), test_pinned=PINNED)
    pytester.makeconftest(
        "import sys, fake_nvml\n"
        "gpus = [fake_nvml.FakeGpu(uuid='GPU-a'), fake_nvml.FakeGpu(uuid='GPU-b')]\n"
        "sys.modules['pynvml'] = fake_nvml.make_pynvml(gpus)\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "-rs")
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(["*needs 2 GPU(s), 1 visible*"])


TRACKED = """
import pytest
from pytest_llmperf import Workload

@pytest.mark.perf
def test_memory(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", n_threads=2, n_ctx=256)
    workload = Workload(n_prompt=16, n_predict=8, requests=2, warmup=1, repetitions=1, max_repetitions=1)
    result = llmperf.measure(engine, workload, gate=["completion_tok_s", "mem_max_gib"], track_gpu=True)
    print("MEASURED", result.mem_max_gib, result.mem_gpu0_gib, result.gpu_j_per_token)
"""


def test_measure_tracks_and_gates_gpu_memory(fake_gpus: list[FakeGpu], pytester: pytest.Pytester) -> None:
    fake_gpus.append(FakeGpu(used_gib=[2.0, 6.0, 4.0], energy_mj=[0, 24_000]))
    pytester.makepyfile(test_tracked=TRACKED)
    args = ("-m", "perf", "-p", "no:cacheprovider", "-s", "--llmperf-model", "q4_k_m")
    recorded = pytester.runpytest(*args, "--update-baselines")
    recorded.assert_outcomes(passed=1)
    # Peak 6 GiB; 24 J over 3 requests x 8 tokens (the warmup request included).
    recorded.stdout.fnmatch_lines(["*MEASURED 6.0 6.0 1.0*"])
    import json

    stored = json.loads((pytester.path / "baselines/test_tracked/test_memory.json").read_text())
    assert stored["metrics"]["mem_max_gib"]["value"] == 6.0
    assert stored["fingerprint"]["hardware"]["class"] == "gpu:NVIDIA H100 80GB HBM3x1:80GiB"


def test_process_memory_nvml_cannot_report_is_none(fake_gpus: list[FakeGpu]) -> None:
    # pynvml turns NVML_VALUE_NOT_AVAILABLE into usedGpuMemory None (WDDM, some virtualised GPUs).
    fake_gpus.append(FakeGpu(processes=[[(100, None), (200, 3 * GIB)]]))
    with NvmlTracker(interval_s=3600, pids={100}) as tracker:
        pass
    assert tracker.metrics()["mem_process_gib"] is None
    assert "not available" in tracker.process_reason


def test_tracked_process_never_listed_is_none(fake_gpus: list[FakeGpu]) -> None:
    # In a container NVML lists the host's PIDs: this process is never found, though it may hold GiBs.
    fake_gpus.append(FakeGpu(processes=[[(4242, 6 * GIB)]]))
    with NvmlTracker(interval_s=3600, pids={100}) as tracker:
        pass
    assert tracker.metrics()["mem_process_gib"] is None
    assert "container" in tracker.process_reason
    fake_gpus[0].processes, fake_gpus[0].reads = [[(100, 2 * GIB)]], {}
    with NvmlTracker(interval_s=3600, pids={100}) as tracker:
        pass
    assert tracker.metrics()["mem_process_gib"] == 2.0 and tracker.process_reason == ""


def test_the_process_set_is_read_again_only_every_refresh_interval(fake_gpus: list[FakeGpu]) -> None:
    # Walking this process's children costs ~1 ms: not at every sample of a 10 ms interval.
    fake_gpus.append(FakeGpu(processes=[[(100, 2 * GIB)]]))
    reads: list[int] = []

    def pids() -> set[int]:
        reads.append(1)
        return {100}

    with NvmlTracker(interval_s=3600, pids=pids) as tracker:
        for _ in range(20):
            tracker.sample()
        assert len(reads) == 1
        assert tracker._pids_read_at is not None
        tracker._pids_read_at -= gpu.PIDS_REFRESH_S  # half a second later
        tracker.sample()
        assert len(reads) == 2
    assert tracker.metrics()["mem_process_gib"] == 2.0
