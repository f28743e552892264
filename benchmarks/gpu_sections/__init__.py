"""The sections of ``benchmarks/gpu_check.py`` (the script holds the run: its command line, order and summary).

- ``common``: what every section uses: ``Section``, ``Context``, ``unavailable``, the child processes
  (``child_env``, ``run_pytest``, ``run_child``, JUnit outcomes) and ``NvmlProbe`` (direct NVML readings).
- one module per section, each with its ``*_section(ctx, section)``: ``tracker`` (1), ``devices`` (2,
  ``CUDA_VISIBLE_DEVICES``), ``marker`` (3, the gpu marker), ``pinning`` (4, ``pytest -n 2``), ``torch_gate`` (5)
  and ``vllm`` (6).
"""
