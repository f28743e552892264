"""Measuring: the workload runner, host memory, NVML, accuracy (lm-eval), logit fidelity and scaling.

Pytest-free; each measuring call returns its result and the part it adds to a test's record.
"""
