"""Metric definitions on request records with known timings (vLLM benchmark definitions)."""

from __future__ import annotations

import pytest

from pytest_llmperf.core.metrics import compute_metrics, request_tpot
from pytest_llmperf.core.workload import RequestRecord, Workload
from pytest_llmperf.errors import LlmperfError


def test_metrics_of_known_records() -> None:
    # Two sequential requests: 10 prompt tokens, 4 output tokens each.
    first = RequestRecord(t_send=0.0, t_done=1.0, prompt_tokens=10, output_tokens=4, chunk_times=[0.4, 0.6, 0.8, 1.0])
    second = RequestRecord(t_send=1.0, t_done=3.0, prompt_tokens=10, output_tokens=4, chunk_times=[1.5, 2.0, 2.5, 3.0])
    metrics = compute_metrics([first, second])
    assert metrics["wall_time_s"] == pytest.approx(3.0)
    assert metrics["completion_tok_s"] == pytest.approx(8 / 3)
    assert metrics["prompt_tok_s"] == pytest.approx(20 / 3)
    assert metrics["total_tok_s"] == pytest.approx(28 / 3)
    assert metrics["req_s"] == pytest.approx(2 / 3)
    assert metrics["ttft_mean"] == pytest.approx((0.4 + 0.5) / 2)
    assert metrics["e2e_p50"] == pytest.approx(1.5)
    # tpot = (e2e - ttft) / (output - 1): (1.0 - 0.4) / 3 = 0.2 and (2.0 - 0.5) / 3 = 0.5
    assert metrics["tpot_mean"] == pytest.approx(0.35)
    # itl pools every gap: 0.2 x3 and 0.5 x3
    assert metrics["itl_mean"] == pytest.approx(0.35)
    assert metrics["itl_p99"] == pytest.approx(0.5)


def test_single_token_requests_have_no_tpot() -> None:
    record = RequestRecord(t_send=0.0, t_done=0.5, prompt_tokens=4, output_tokens=1, chunk_times=[0.5])
    metrics = compute_metrics([record])
    assert metrics["tpot_p50"] is None  # unavailable, never 0
    assert metrics["itl_mean"] is None
    assert metrics["ttft_p50"] == pytest.approx(0.5)


def test_one_requests_tpot() -> None:
    record = RequestRecord(t_send=0.0, t_done=1.0, prompt_tokens=4, output_tokens=4, chunk_times=[0.4, 0.6, 0.8, 1.0])
    assert request_tpot(record) == pytest.approx(0.2)  # (1.0 - 0.4) / 3
    assert request_tpot(RequestRecord(0.0, 0.5, 4, 1, [0.5])) is None  # one token: no time per output token
    assert request_tpot(RequestRecord(0.0, 0.5, 4, 3, [])) is None  # no first-token time


def test_no_records_is_an_error() -> None:
    with pytest.raises(LlmperfError, match="no request completed"):
        compute_metrics([])


@pytest.mark.parametrize("field", ["n_prompt", "n_predict", "requests", "repetitions"])
def test_workload_rejects_non_positive(field: str) -> None:
    with pytest.raises(LlmperfError, match=f"Workload.{field}"):
        Workload(**{field: 0})


def test_prompts_file_errors_name_file_and_line(tmp_path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello"}\n{"text": "no prompt key"}\n')
    with pytest.raises(LlmperfError, match=r"prompts.jsonl:2"):
        Workload(prompts_file=str(path)).load_prompts()
    path.write_text('{"prompt": "hello"}\nnot json\n')
    with pytest.raises(LlmperfError, match=r"prompts.jsonl:2: not valid JSON"):
        Workload(prompts_file=str(path)).load_prompts()
