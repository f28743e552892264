"""What a user reads when something cannot be measured well: why there is no GPU (the package, the driver's library,
the kernel driver, the device, each said as it is), and what busy cores do to llama.cpp's threads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_llmperf.core import hardware
from pytest_llmperf.core.hardware import load_nvml, missing_gpus
from pytest_llmperf.engines.llama_cpp import threads_warning
from tests.fake_nvml import make_pynvml


@pytest.fixture
def no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILES", (tmp_path / "proc-driver-nvidia-version",))


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILES", (tmp_path / "nvidiactl",))


def test_without_the_package_the_reason_says_whether_there_is_a_driver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError(name="pynvml")
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILES", (tmp_path / "version",))
    reason = load_nvml()[1]
    assert reason.startswith("no NVIDIA driver on this machine")
    assert "nvidia-ml-py, which looks for GPUs, is not installed either (pip install 'pytest-llmperf[nvml]')" in reason
    (tmp_path / "version").touch()
    reason = load_nvml()[1]
    assert reason.startswith("nvidia-ml-py, which looks for GPUs, is not installed") and "driver is loaded" in reason


@pytest.mark.usefixtures("no_driver")
def test_no_driver_library_on_this_machine() -> None:
    """The real nvidia-ml-py on this GPU-less machine: nvmlInit raises NVMLError_LibraryNotFound."""
    pytest.importorskip("pynvml")
    assert load_nvml() == (None, "NVML is unavailable: NVML Shared Library Not Found (no NVIDIA driver is installed: "
                                 "libnvidia-ml.so.1 is missing)")
    assert missing_gpus(1, None) == ("needs 1 GPU(s): NVML is unavailable: NVML Shared Library Not Found (no NVIDIA "
                                     "driver is installed: libnvidia-ml.so.1 is missing)")


@pytest.mark.usefixtures("driver")
def test_a_loaded_driver_whose_library_this_process_cannot_load() -> None:
    pytest.importorskip("pynvml")
    assert "the NVIDIA kernel driver is loaded, but this process cannot load its libnvidia-ml.so.1" in load_nvml()[1]


@pytest.mark.parametrize(("code", "meaning"), [
    ("NVML_ERROR_DRIVER_NOT_LOADED", "Driver Not Loaded (the driver's library is installed but the NVIDIA kernel "
                                     "driver is not running"),
    ("NVML_ERROR_NO_PERMISSION", "Insufficient Permissions (this user may not open the NVIDIA devices"),
    ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "(the driver's library and the kernel driver are different versions"),
])
def test_each_nvml_error_says_what_it_means(monkeypatch: pytest.MonkeyPatch, code: str, meaning: str) -> None:
    """nvidia-ml-py's own error classes (``NVMLError(code)`` builds the subclass for the code)."""
    pynvml = pytest.importorskip("pynvml")

    def init() -> None:
        raise pynvml.NVMLError(getattr(pynvml, code))

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    reason = load_nvml()[1]
    assert reason.startswith("NVML is unavailable: ") and meaning in reason


def test_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([]))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert missing_gpus(1, None) == "needs 1 GPU(s): the NVIDIA driver is loaded but NVML finds no GPU"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert missing_gpus(2, None) == "needs 2 GPU(s): none visible (CUDA_VISIBLE_DEVICES='')"


def test_the_busy_cores_warning_says_what_was_measured_and_what_to_do() -> None:
    two = threads_warning(2, 0.4, 2)
    assert two.startswith("llama.cpp runs 2 threads, but other processes kept 1.6 of this machine's 2 cores busy "
                          "when the run started (measured over half a second), leaving 0.4 idle")
    assert "stalls them all" in two and "slow and noisy" in two
    assert two.endswith("pass n_threads=1 to the engine, or run where nothing else keeps the cores busy")
    one = threads_warning(1, 0.0, 2)
    assert "llama.cpp runs 1 thread," in one and "its thread has to share a core" in one
    assert "n_threads=" not in one  # one thread is already the fewest
    assert "0.0 of 2 cores were free" not in one
