"""The plugin's llama-bench-style numbers beside llama.cpp's own tools, on the same GGUF, in one run.

pp/tg: ``llama-bench -p P -n N -t T -r R -fa 0`` against ``measure.bench.bench`` (flash attention off, as the
``llama_cpp`` backend defaults). Parallel sequences: ``llama-batched-bench -c N*(P+G) -npp P -ntg G -npl N``
against ``measure.bench.parallel`` (one context per N, as the plugin does). The tools are built from the
vendored llama.cpp of the installed llama-cpp-python (``llama_tools.py``). The two sides alternate ``--rounds``
times so drift of the host hits both; medians over rounds are printed with the ratio plugin / llama.cpp (goal
0.97-1.03 for pp/tg, within 5% for parallel).

Instructions (``--instructions``): ``llama-bench -p P -n 0`` and ``-p 0 -n N`` (one thread, ``--poll 0``, one
repetition) under callgrind counting only inside ``ggml_backend_sched_graph_compute_async`` with one dump per
call, against ``measure.instructions.instructions`` on the same model; the last computations (after llama-bench's
warm-up) over the tokens, with the ratio plugin / llama-bench. Counts do not drift: one round.

    python benchmarks/llama_bench.py                   # pp/tg, F16 and Q4_K_M
    python benchmarks/llama_bench.py --parallel 1,2,4,8
    python benchmarks/llama_bench.py --instructions --n-prompt 32 --n-gen 16 --variants q4_k_m,q8_0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from llama_tools import build

from pytest_llmperf.engines import create_engine
from pytest_llmperf.measure.bench import bench, parallel
from pytest_llmperf.measure.instructions import callgrind, instructions, read_counts


def llama_bench(tool: str, model: str, args: argparse.Namespace) -> tuple[float, float]:
    output = subprocess.run(
        [tool, "-m", model, "-p", str(args.n_prompt), "-n", str(args.n_gen), "-t", str(args.threads), "-r",
         str(args.repetitions), "-fa", "0", "-o", "jsonl"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    pp = next(row["avg_ts"] for row in rows if row["n_prompt"] and not row["n_gen"])
    tg = next(row["avg_ts"] for row in rows if row["n_gen"] and not row["n_prompt"])
    return pp, tg


def llama_bench_instructions(tool: str, model: str, n_prompt: int, n_gen: int, ubatch: int) -> float:
    """Instructions per token of llama-bench's one test (``-p n_prompt -n 0`` or ``-p 0 -n n_gen``) under
    callgrind: the computations of the timed run (the last ones; the warm-up's come first) over its tokens."""
    with tempfile.TemporaryDirectory(prefix="llama-bench-callgrind-") as work:
        subprocess.run(
            [*callgrind(Path(work)), tool, "-m", model, "-p", str(n_prompt), "-n", str(n_gen), "-t", "1", "-r", "1",
             "-fa", "0", "--poll", "0"],
            check=True, capture_output=True, text=True,
        )
        counts = read_counts(Path(work))
    computations = -(-n_prompt // ubatch) if n_prompt else n_gen
    return sum(counts[-computations:]) / (n_prompt or n_gen)


def batched_bench(tool: str, model: str, level: int, args: argparse.Namespace) -> dict[str, float]:
    output = subprocess.run(
        [tool, "-m", model, "-c", str(level * (args.n_prompt + args.n_gen)), "-npp", str(args.n_prompt), "-ntg",
         str(args.n_gen), "-npl", str(level), "-t", str(args.threads), "-fa", "off", "--output-format", "jsonl"],
        check=True, capture_output=True, text=True,
    ).stdout
    row = next(json.loads(line) for line in output.splitlines() if line.startswith("{"))
    return {"prompt_tok_s": row["speed_pp"], "completion_tok_s": row["speed_tg"], "total_tok_s": row["speed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="f16,q4_k_m")
    parser.add_argument("--n-prompt", type=int, default=128)
    parser.add_argument("--n-gen", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", default="", help="comma-separated N: compare with llama-batched-bench")
    parser.add_argument("--instructions", action="store_true", help="instructions per token under callgrind")
    args = parser.parse_args()
    tools = build()
    for variant in args.variants.split(","):
        engine = create_engine("llama_cpp", {"model": variant, "n_threads": args.threads})
        model = str(engine.model_path)
        if args.instructions:
            counted = instructions(engine, args.n_prompt, args.n_gen)
            ubatch = int(engine.native_params()["context_params"]["n_ubatch"])
            for test, size, mine in (("pp", args.n_prompt, counted.pp_instructions_per_token),
                                     ("tg", args.n_gen, counted.tg_instructions_per_token)):
                llama = llama_bench_instructions(str(tools["llama-bench"]), model, size if test == "pp" else 0,
                                                 size if test == "tg" else 0, ubatch)
                print(f"{variant:7s} {test}{size:<4d} llama-bench {llama:14,.1f} instr/token  plugin {mine or 0:14,.1f}"
                      f"  ratio {(mine or 0) / llama:.6f}")
        elif not args.parallel:
            ours: dict[str, list[float]] = {"pp": [], "tg": []}
            theirs: dict[str, list[float]] = {"pp": [], "tg": []}
            for _ in range(args.rounds):
                pp, tg = llama_bench(str(tools["llama-bench"]), model, args)
                theirs["pp"].append(pp)
                theirs["tg"].append(tg)
                result = bench(engine, args.n_prompt, args.n_gen, args.repetitions)
                ours["pp"].append(result.pp_tok_s or 0.0)
                ours["tg"].append(result.tg_tok_s or 0.0)
            for test, size in (("pp", args.n_prompt), ("tg", args.n_gen)):
                mine, llama = statistics.median(ours[test]), statistics.median(theirs[test])
                print(f"{variant:7s} {test}{size:<4d} llama-bench {llama:9.2f} t/s  plugin {mine:9.2f} t/s  "
                      f"ratio {mine / llama:.3f}  (rounds: llama-bench {[round(v) for v in theirs[test]]}, "
                      f"plugin {[round(v) for v in ours[test]]})")
        else:
            for level in (int(n) for n in args.parallel.split(",")):
                columns = ("prompt_tok_s", "completion_tok_s", "total_tok_s")
                ours_n: dict[str, list[float]] = {c: [] for c in columns}
                theirs_n: dict[str, list[float]] = {c: [] for c in columns}
                for _ in range(args.rounds):
                    for column, value in batched_bench(str(tools["llama-batched-bench"]), model, level, args).items():
                        theirs_n[column].append(value)
                    row = parallel(engine, "bench", args.n_prompt, args.n_gen, (level,)).rows[0]
                    for column in columns:
                        ours_n[column].append(float(row[column] or 0.0))
                medians = {c: (statistics.median(theirs_n[c]), statistics.median(ours_n[c])) for c in columns}
                cells = "  ".join(
                    f"{column.split('_')[0]} {llama:8.1f} vs {mine:8.1f} ({mine / llama:.3f})"
                    for column, (llama, mine) in medians.items()
                )
                print(f"{variant:7s} N={level:<2d} llama-batched-bench vs plugin t/s: {cells}")
        engine.close()


if __name__ == "__main__":
    main()
