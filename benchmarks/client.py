"""Client capacity: how many streamed requests per second one load-generator process sustains, and at what CPU cost.

Starts ``benchmarks/zero_server.py`` (a zero-work OpenAI-compatible streaming server) on 127.0.0.1, then drives
it with the same workload from each client, one after the other, in one run:

- pytest-llmperf's ``openai`` engine (``OpenAIEngine.run``, the code a perf test uses), in a child process;
- AIPerf, when ``--aiperf`` names its executable (install it in its own virtualenv: it pins pytest 9.2), with a
  local tokenizer directory built by ``benchmarks/make_tokenizer.py`` (no model hub is reachable).

Workload (as in the issue and NOTES.md): ``--concurrency`` 32 in flight, ``--requests`` requests, 64 prompt
tokens (words) and 32 streamed output tokens each. Per client it prints

- req/s and output tok/s as the client itself reports them over its measured phase;
- client CPU seconds for the whole process tree from start to exit (``getrusage(RUSAGE_CHILDREN)``: start-up
  included, so use thousands of requests), and that per request;
- for pytest-llmperf also the CPU of the measured phase alone (``time.process_time`` around ``run``).

    python benchmarks/client.py --requests 5000 --aiperf ~/aiperf-venv/bin/aiperf \\
        --tokenizer-python ~/aiperf-venv/bin/python

The server shares the machine's cores with the client; it costs about 0.1 ms of CPU per request (measured), so
on 2 cores it is not the bottleneck for any client here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def start_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "zero_server.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    if "listening on " not in line:
        server.kill()
        raise SystemExit(f"zero server did not start: {line!r}")
    return server, line.split("listening on ", 1)[1].strip()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``command`` to completion; its CPU seconds (whole tree), wall seconds and stdout."""
    cpu_before, started = children_cpu(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return children_cpu() - cpu_before, wall, done.stdout


def ours_child(url: str, requests: int, concurrency: int, n_prompt: int, n_predict: int) -> None:
    """In the child: drive the server with pytest-llmperf's engine and print what it measured as JSON."""
    from pytest_llmperf.core.workload import Request
    from pytest_llmperf.engines.openai import OpenAIEngine

    engine = OpenAIEngine(base_url=url, tokenize=None)
    batch = [Request(engine.make_prompt(seed, n_prompt), n_predict) for seed in range(requests)]
    cpu_before = time.process_time()
    records = engine.run(batch, concurrency=concurrency)
    phase_cpu = time.process_time() - cpu_before
    duration = max(r.t_done for r in records) - min(r.t_send for r in records)
    output = sum(r.output_tokens for r in records)
    print(json.dumps({"requests": len(records), "req_s": len(records) / duration, "tok_s": output / duration,
                      "phase_cpu_s": phase_cpu, "duration_s": duration, "counted_by": records[0].counted_by}))


def measure_ours(url: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", url, "--requests", str(args.requests),
               "--concurrency", str(args.concurrency), "--n-prompt", str(args.n_prompt),
               "--n-predict", str(args.n_predict)]
    cpu, wall, out = run_child(command)
    result = json.loads(out.strip().splitlines()[-1])
    return {"client": "pytest-llmperf", "cpu_s": cpu, "wall_s": wall, **result}


def measure_aiperf(url: str, args: argparse.Namespace, tokenizer: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aiperf-") as artifacts:
        command = [args.aiperf, "profile", "-m", "zero", "--url", url, "--endpoint-type", "completions",
                   "--streaming", "--tokenizer", str(tokenizer), "--isl", str(args.n_prompt),
                   "--osl", str(args.n_predict), "--concurrency", str(args.concurrency),
                   "--request-count", str(args.requests), "--ui", "none", "--no-server-metrics",
                   "--no-gpu-telemetry", "--artifact-dir", artifacts]
        env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "CI")}
        cpu, wall, _ = run_child(command, env)
        export = json.loads((Path(artifacts) / "profile_export_aiperf.json").read_text())
    return {
        "client": "AIPerf",
        "cpu_s": cpu,
        "wall_s": wall,
        "requests": int(export["request_count"]["avg"]),
        "req_s": export["request_throughput"]["avg"],
        "tok_s": export["output_token_throughput"]["avg"],
        "duration_s": export["benchmark_duration"]["avg"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--n-prompt", type=int, default=64)
    parser.add_argument("--n-predict", type=int, default=32)
    parser.add_argument("--aiperf", help="path of the aiperf executable (its own virtualenv)")
    parser.add_argument("--tokenizer-python", help="a python with `tokenizers` (default: this one)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the clients this many times")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ours_child(args.child, args.requests, args.concurrency, args.n_prompt, args.n_predict)
        return

    server, url = start_server()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="llmperf-tokenizer-") as tokenizer:
            if args.aiperf:
                subprocess.run([args.tokenizer_python or sys.executable, str(HERE / "make_tokenizer.py"), tokenizer],
                               check=True, capture_output=True)
            for _ in range(args.repeat):
                results.append(measure_ours(url, args))
                if args.aiperf:
                    results.append(measure_aiperf(url, args, Path(tokenizer)))
    finally:
        server.terminate()
        server.wait()

    print(f"zero-work server, {args.concurrency} concurrent, {args.n_prompt} in / {args.n_predict} out tokens, "
          f"{args.requests} requests, {os.cpu_count()} cores")
    print(f"{'client':<16}{'req/s':>9}{'out tok/s':>11}{'CPU s':>8}{'CPU ms/req':>12}{'phase CPU ms/req':>18}"
          f"{'wall s':>8}")
    for result in results:
        phase = f"{result['phase_cpu_s'] / result['requests'] * 1e3:.2f}" if "phase_cpu_s" in result else "-"
        print(f"{result['client']:<16}{result['req_s']:>9.1f}{result['tok_s']:>11.0f}{result['cpu_s']:>8.2f}"
              f"{result['cpu_s'] / result['requests'] * 1e3:>12.2f}{phase:>18}{result['wall_s']:>8.1f}")
    ours = [r for r in results if r["client"] == "pytest-llmperf"]
    theirs = [r for r in results if r["client"] == "AIPerf"]
    if ours and theirs:
        def best(rows: list[dict[str, Any]], key: str) -> float:
            return sorted(row[key] for row in rows)[len(rows) // 2]

        ratio = best(ours, "req_s") / best(theirs, "req_s")
        cpu_ratio = (best(ours, "cpu_s") / ours[0]["requests"]) / (best(theirs, "cpu_s") / theirs[0]["requests"])
        verdict = "met" if ratio >= 1.5 and cpu_ratio <= 0.5 else "NOT met"
        print(f"pytest-llmperf vs AIPerf (medians): {ratio:.2f}x the req/s at {cpu_ratio:.2f}x the CPU per request "
              f"(target >= 1.5x at <= 0.5x: {verdict})")


if __name__ == "__main__":
    main()
