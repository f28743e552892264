"""Capacity in a check run and its cache: the cache key follows what the answer depends on (the prompts file's
content, a custom probe), and a check run verifies the stored answer by measuring it instead of recalling it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.core.workload import Request, RequestRecord, Workload
from pytest_llmperf.measure import calls

SLO = {"ttft_p99": 0.55}
KWARGS: dict[str, Any] = {"start": 1, "limit": 64, "margin": 1.0, "gate": ("max_concurrency",)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(directory))
    return directory


class PromptLengthEngine:
    """One sequence at a time: at concurrency c, TTFT is ``0.01 x prompt characters x c`` seconds (a 10-character
    prompt: 0.1 s per queued request, so the SLO ``ttft_p99 <= 0.55`` holds up to c = 5)."""

    backend = "fake"

    def __init__(self) -> None:
        self.levels: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "engine_config": {"slots": 1}}

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        return [seed] * 10

    def tag_prompt(self, text: str, seed: int) -> str:
        return text

    def run(self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None,
            seed: int = 0) -> list[RequestRecord]:
        self.levels.append(concurrency)
        records = []
        for request in requests:
            ttft = 0.01 * len(request.prompt) * concurrency
            e2e = ttft + 0.4
            tokens = request.max_tokens
            records.append(RequestRecord(0.0, e2e, 4, tokens, [ttft + i * 0.4 / (tokens - 1) for i in range(tokens)]))
        return records

    def close(self) -> None:
        pass


def prompts_file(path: Path, characters: int) -> str:
    path.write_text("".join(f'{{"prompt": "{"x" * characters}"}}\n' for _ in range(4)))
    return str(path)


def test_longer_prompts_in_the_same_file_are_not_answered_from_the_cache(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    workload = Workload(n_prompt=4, n_predict=5, requests=2, warmup=0, prompts_file=prompts_file(prompts, 10))
    first, _ = calls.capacity(PromptLengthEngine(), workload, SLO, update=False, **KWARGS)
    assert first.max_concurrency == 5
    prompts_file(prompts, 100)  # ten times longer: TTFT 1 s even alone
    engine = PromptLengthEngine()
    longer, part = calls.capacity(engine, workload, SLO, update=False, **KWARGS)
    assert longer.max_concurrency == 0 and part.metrics["max_concurrency"] == 0.0
    assert "cached answer" not in part.warnings[0]


def curve_probe(best: int) -> Callable[[int], Mapping[str, float | None]]:
    """A custom probe: TTFT 0.1 s per level up to ``best``, 1 s above it. Every probe made here has the same
    ``__qualname__`` (``curve_probe.<locals>.probe``)."""

    def probe(level: int) -> Mapping[str, float | None]:
        return {"ttft_p99": 0.1 if level <= best else 1.0}

    return probe


def test_a_changed_custom_probe_is_not_answered_from_the_cache() -> None:
    engine = PromptLengthEngine()
    first, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", **KWARGS)
    assert first.max_concurrency == 5
    slower, part = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(2), knob="n_seq", **KWARGS)
    assert slower.max_concurrency == 2
    assert "cached answer" not in part.warnings[0]


def test_a_custom_probe_is_cached_only_under_the_callers_cache_key() -> None:
    engine = PromptLengthEngine()
    calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", cache_key="v1", **KWARGS)
    again, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", cache_key="v1",
                                 **KWARGS)
    assert again.cached and again.max_concurrency == 5
    renamed, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(2), knob="n_seq",
                                   cache_key="v2", **KWARGS)
    assert not renamed.cached and renamed.max_concurrency == 2


SERVER_TEST = """
import json, os
import pytest

class Server:
    '''An OpenAI-compatible server as a capacity probe sees it: one queue, TTFT 0.1 s per request in flight,
    times the slowdown in $SLOWDOWN.'''
    backend = "fake"

    def describe(self):
        return {"backend": "fake", "engine_config": {"slots": 1}}

def probe(level):
    with open("trials.jsonl", "a") as trials:
        trials.write(json.dumps(level) + "\\n")
    return {"ttft_p99": 0.1 * level * float(os.environ["SLOWDOWN"])}

@pytest.mark.perf
def test_capacity(llmperf):
    llmperf.capacity(Server(), slo={"ttft_p99": 0.55}, probe=probe, margin=1.0, limit=16, cache_key="queue-v1",
                     gate=("max_concurrency",))
"""
ARGS = ("-m", "perf", "-p", "no:cacheprovider", "-p", "no:randomly")


def trials(pytester: pytest.Pytester) -> list[int]:
    path = pytester.path / "trials.jsonl"
    levels = [int(line) for line in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return levels


@pytest.fixture
def recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The server's capacity recorded: 5 (TTFT 0.5 s at 5, 0.6 s at 6), in the baseline and in the cache."""
    pytester.makepyfile(test_server=SERVER_TEST)
    monkeypatch.setenv("SLOWDOWN", "1.0")
    pytester.runpytest(*ARGS, "--update-baselines").assert_outcomes(passed=1)
    assert trials(pytester) == [1, 2, 4, 8, 6, 5]
    baseline = json.loads((pytester.path / "baselines/test_server/test_capacity.json").read_text())
    assert baseline["metrics"]["max_concurrency"]["value"] == 5.0
    return pytester


def test_a_check_run_measures_the_stored_answer_and_the_next_level_only(
    recorded: pytest.Pytester, cache_dir: Path
) -> None:
    checked = recorded.runpytest(*ARGS, "-rA")
    checked.assert_outcomes(passed=1)
    assert trials(recorded) == [5, 6]  # the stored answer still meets the SLO, one more does not
    checked.stdout.fnmatch_lines(["*verified the baseline's answer 5: 5 still meets the SLO and 6 does not*"])
    # Without the cache the baseline's answer is verified the same way (the cache only speeds up recording).
    shutil.rmtree(cache_dir)
    recorded.runpytest(*ARGS).assert_outcomes(passed=1)
    assert trials(recorded) == [5, 6]


def test_a_slower_server_fails_the_check_with_the_capacity_it_has_now(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOWDOWN", str(5 / 3))  # TTFT 0.5 s at 3, 0.67 s at 4, 0.83 s at 5
    checked = recorded.runpytest(*ARGS)
    checked.assert_outcomes(failed=1)
    levels = trials(recorded)
    assert levels[0] == 5 and 6 not in levels  # 5 fails: searched below it, never above
    checked.stdout.fnmatch_lines([
        "*max_concurrency: 5 -> 3 (-40.0%, tolerance 20%)",
        "*max_concurrency*5*3*-40.0*regressed",
        "*the baseline's answer 5 no longer meets the SLO (ttft_p99 0.8333 > 0.55): searched down to 3*",
    ])


def test_a_baseline_recorded_without_its_level_is_verified_at_the_level_behind_max_concurrency(
    recorded: pytest.Pytester
) -> None:
    path = recorded.path / "baselines/test_server/test_capacity.json"
    baseline = json.loads(path.read_text())
    assert baseline.pop("reference") == {"capacity": {"knob": "concurrency", "found": 5, "margin": 1.0}}
    path.write_text(json.dumps(baseline))
    recorded.runpytest(*ARGS).assert_outcomes(passed=1)
    assert trials(recorded) == [5, 6]  # max_concurrency 5 at margin 1: level 5


def test_a_faster_server_is_reported_as_an_improvement(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOWDOWN", str(5 / 8))  # TTFT 0.5 s at 8, 0.5625 s at 9
    checked = recorded.runpytest(*ARGS, "-rA")
    checked.assert_outcomes(passed=1)
    assert trials(recorded)[:2] == [5, 6]
    checked.stdout.fnmatch_lines(["*max_concurrency*improved*",
                                  "*6 meets the SLO above the baseline's answer 5: searched up to 8*"])


def test_the_baseline_level_of_a_named_call_beside_other_stored_data(tmp_path: Path) -> None:
    from pytest_llmperf.measure.capacity import baseline_level

    path = tmp_path / "t" / "test_x.json"
    path.parent.mkdir()
    document: dict[str, Any] = {
        "schema": 1, "test": "t.py::test_x", "fingerprint": {"hardware": {"class": "cpu:A:2"}},
        "metrics": {"srv.max_concurrency": {"value": 3.0}, "max_concurrency": {"value": 9.0}},
        "reference": {"by_name": {"srv": {"capacity": {"found": 4}}, "fidelity()": {"prompts": []}}},
    }
    path.write_text(json.dumps(document))
    assert baseline_level(tmp_path, "t.py::test_x", "cpu:A:2", "srv", 0.85, 64) == 4
    # No level stored for the unnamed call: worked back from its max_concurrency (floor(0.85 x 11) = 9).
    assert baseline_level(tmp_path, "t.py::test_x", "cpu:A:2", None, 0.85, 64) == 11
    assert baseline_level(tmp_path, "t.py::test_x", "gpu:B:1", "srv", 0.85, 64) is None  # another machine's
    path.write_text("{not json")
    assert baseline_level(tmp_path, "t.py::test_x", "cpu:A:2", "srv", 0.85, 64) is None  # the verdict says why
