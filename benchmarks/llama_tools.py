"""Build llama.cpp's own ``llama-bench``, ``llama-batched-bench`` and ``llama-server`` from the llama.cpp vendored
in the installed llama-cpp-python's sdist, with the same portable CMAKE_ARGS as the wheel (docs/development.md), so
both sides of a side-by-side comparison run the same kernels. The ``llama_server`` preset of the openai backend
finds the built ``llama-server`` here when none is on PATH (``pytest_llmperf.engines.server.llama_tool``).

The sdist comes from the package registry (``pip download llama-cpp-python==<installed> --no-binary``); the build
goes to ``<cache dir>/llama-tools/<version>/`` and is reused. Only the three tools are built.

    python benchmarks/llama_tools.py          # build (or find) and print the three paths
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from pytest_llmperf.assets.model import cache_dir

TOOLS = ("llama-bench", "llama-batched-bench", "llama-server")
PORTABLE = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]


def installed_version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def _source(version: str, work: Path) -> Path:
    """The vendored llama.cpp of llama-cpp-python ``version``'s sdist, unpacked under ``work``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps", "--no-binary",
         ":all:", "-q", "-d", str(work)],
        check=True,
    )
    archive = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    return source


def build(version: str | None = None) -> dict[str, Path]:
    """Paths of the built tools (building them first when the cache has none)."""
    version = version or installed_version()
    target = cache_dir() / "llama-tools" / version
    tools = {name: target / name for name in TOOLS}
    if all(path.is_file() for path in tools.values()):
        return tools
    with tempfile.TemporaryDirectory(prefix="llama-tools-") as temporary:
        work = Path(temporary)
        source = _source(version, work)
        build_dir = work / "build"
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DBUILD_SHARED_LIBS=OFF",
             *PORTABLE],
            check=True, stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", *TOOLS, "-j", str(os.cpu_count() or 2)],
            check=True, stdout=subprocess.DEVNULL,
        )
        target.mkdir(parents=True, exist_ok=True)
        for name, path in tools.items():
            built = build_dir / "bin" / name
            shutil.copy2(built, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
    return tools


if __name__ == "__main__":
    for tool, tool_path in build().items():
        print(f"{tool}: {tool_path}")
