"""``llmperf.ab`` guards: one engine passed as both sides is refused, and neither the A/B fingerprint nor the
Markdown report holds a machine's absolute paths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmperf.core.fingerprint import file_sha256
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import Engine, create_engine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure import calls

TINY = Workload(n_prompt=4, n_predict=4, requests=1, warmup=0, repetitions=2, max_repetitions=2)


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Engine, Engine]]:
    a = create_engine("llama_cpp", {"model": "q4_k_m", "n_threads": 1, "n_ctx": 128})
    b = create_engine("llama_cpp", {"model": "q4_k_m", "n_threads": 1, "n_ctx": 128, "n_batch": 64})
    yield a, b
    a.close()
    b.close()


def test_the_same_engine_as_a_and_b_is_refused_naming_both_labels(engines: tuple[Engine, Engine]) -> None:
    engine = engines[0]
    with pytest.raises(LlmperfError, match=r"ab: OFF and ON are the same engine \(one object passed twice\)"):
        calls.ab(engine, engine, TINY, gate=["completion_tok_s"], labels=("OFF", "ON"))


SAME_ENGINE = """
import pytest
from pytest_llmperf import Workload


@pytest.mark.perf
def test_ab(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", model="q4_k_m", n_ctx=128)
    twin = engine_factory("llama_cpp", model="q4_k_m", n_ctx=128)  # the same config: the same cached engine
    llmperf.ab(engine, twin, Workload(n_prompt=4, n_predict=4, requests=1, repetitions=2, max_repetitions=2),
               labels=("OFF", "ON"))
"""


def test_llmperf_ab_with_one_engine_twice_fails_and_records_no_baseline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_ab=SAME_ENGINE)
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--update-baselines")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ab: OFF and ON are the same engine*"])
    assert not (pytester.path / "baselines" / "test_ab" / "test_ab.json").exists()


def test_the_ab_fingerprint_names_each_model_file_not_its_path(engines: tuple[Engine, Engine]) -> None:
    a, b = engines
    _, part = calls.ab(a, b, TINY, gate=["completion_tok_s"], labels=("OFF", "ON"))
    sides = part.fingerprint["ab"]
    model_path = Path(a.describe()["model_path"])
    for label in ("OFF", "ON"):
        assert "model_path" not in sides[label]
        assert sides[label]["model"] == {"file": model_path.name, "sha256": file_sha256(model_path)}
    assert sides["ON"]["engine_config"]["n_batch"] == 64
    assert str(model_path.parent) not in json.dumps(part.fingerprint)


def test_the_markdown_report_holds_baseline_paths_relative_to_the_rootdir(tmp_path: Path) -> None:
    from pytest_llmperf.core.outcome import CheckOutcome, Status
    from pytest_llmperf.core.session import LlmperfSession
    from pytest_llmperf.core.tolerance import ToleranceTable
    from pytest_llmperf.reports.files import write_reports

    baseline = tmp_path / "baselines" / "test_x" / "test_decode.json"
    outcome = CheckOutcome("test_x.py::test_decode", baseline, Status.NOT_WRITTEN,
                           message=f"{baseline}: not written: the test failed", notes=[f"stale: {baseline}"])
    session = LlmperfSession(tmp_path / "baselines", False, False, ToleranceTable([]), (), "llama_cpp", None,
                             root=tmp_path, report=tmp_path / "out" / "report.json", outcomes=[outcome])
    write_reports(session)
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "baselines/test_x/test_decode.json: not written" in markdown
    assert str(tmp_path) not in markdown
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["tests"][0]["baseline_path"] == "baselines/test_x/test_decode.json"
