"""The work ``measure/instructions.py`` counts, run as a script under callgrind: ``python instructions_child.py
<job.json>``.

It makes the engine's model and context from their parameters (``LlamaCppEngine.native_params``), one thread, then
runs llama-bench's work (``engines/llama_cpp_bench.BenchContext``): a warm-up (the whole prompt, one generated
token), then per repetition the prompt test and the generation test (after ``n_depth`` context tokens). callgrind
counts only inside ``ggml_backend_sched_graph_compute_async`` and writes one file per call; after each phase this
script records how many files exist, so the parent knows which calls belong to which phase. The phases go to
``<job dir>/phases.json``.

Only llama-cpp-python's bindings are imported, not its package (whose chat templates and numpy cost 7 s under
valgrind): the count does not depend on that, and a layout that does not allow it falls back to the package.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any


def _bindings() -> Any:
    """``llama_cpp.llama_cpp`` (the ctypes bindings), with the package's namespace holding its names."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llama-cpp-python is not installed in this interpreter")
    package = types.ModuleType("llama_cpp")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["llama_cpp"] = package
    try:
        import llama_cpp.llama_cpp as bindings
    except ImportError:
        del sys.modules["llama_cpp"]
        import llama_cpp

        return llama_cpp
    package.__dict__.update({name: value for name, value in vars(bindings).items() if not name.startswith("__")})
    return bindings


def _struct(make: Any, fields: dict[str, Any]) -> Any:
    params = make()
    for name, value in fields.items():
        setattr(params, name, value)
    return params


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out_dir"])
    lib = _bindings()
    from pytest_llmperf.engines.llama_cpp_bench import BenchContext

    def dumps() -> int:
        return len(list(out.glob("callgrind.out.*")))

    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(job["model"].encode(), _struct(lib.llama_model_default_params,
                                                                         job["model_params"]))
    if not model:
        raise SystemExit(f"llama.cpp could not load {job['model']}")
    # One thread: worker threads spin at their barriers, and what they count depends on the scheduler.
    context = _struct(lib.llama_context_default_params, {**job["context_params"], "n_threads": 1,
                                                         "n_threads_batch": 1})
    llm = types.SimpleNamespace(model=model, context_params=context)
    n_prompt, n_gen, n_depth = job["n_prompt"], job["n_gen"], job["n_depth"]
    phases: list[tuple[str, int]] = []
    with BenchContext(llm, max(n_prompt, 1), seed=job["seed"]) as prompt, \
            BenchContext(llm, max(n_depth + n_gen, 1), seed=job["seed"]) as generation:
        # Warm-up: one token through each context, for what llama.cpp and its runtime do on a first call. A whole
        # prompt (llama-bench's warm-up) would double the prompt's cost under valgrind for a few instructions.
        if n_prompt:
            prompt.prompt(1)
        if n_gen:
            generation.generate(1)
        phases.append(("warm-up", dumps()))
        for _ in range(job["repetitions"]):
            # The same token ids every repetition: a few kernels branch on the data.
            prompt.reseed(job["seed"])
            generation.reseed(job["seed"] + 1)
            if n_prompt:
                prompt.prompt(n_prompt)
                phases.append(("pp", dumps()))
            if n_gen:
                generation.prefill(n_depth)
                phases.append(("depth", dumps()))
                generation.decode_tokens(n_gen, first=n_depth == 0)
                phases.append(("tg", dumps()))
    features = lib.llama_print_system_info().decode()
    (out / "phases.json").write_text(json.dumps({"phases": phases, "features": features}))


if __name__ == "__main__":
    main(sys.argv[1])
