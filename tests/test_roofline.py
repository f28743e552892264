"""The memory-bandwidth bound of decode: bytes read per token, the bound's arithmetic, and the measured bandwidth."""

from __future__ import annotations

import pytest

from pytest_llmperf.assets.model import DEFAULT_SPEC, default_model_path
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.roofline import Roofline, memory_bandwidth, weight_bytes_per_token


def test_a_token_reads_every_f16_weight_but_one_embedding_row() -> None:
    spec = DEFAULT_SPEC
    per_layer = 4 * spec.n_embd * spec.n_embd * 2 + 3 * spec.n_embd * spec.n_ff * 2 + 2 * spec.n_embd * 4
    expected = spec.n_layer * per_layer + spec.n_vocab * spec.n_embd * 2 + spec.n_embd * 4 + spec.n_embd * 2
    assert weight_bytes_per_token(default_model_path("f16")) == expected


def test_the_bound_shares_the_weight_read_across_sequences() -> None:
    one = Roofline(100e9, 1_000_000_000, 0.0, 1, 50.0)
    assert one.bound_tok_s == pytest.approx(100.0)
    assert one.percent == pytest.approx(50.0)
    eight = Roofline(100e9, 1_000_000_000, 125_000_000, 8, None)
    assert eight.bound_tok_s == pytest.approx(8 * 100e9 / 2e9)
    assert eight.percent is None  # no tg measured: no percentage invented
    assert one.metrics()["bandwidth_gb_s"] == pytest.approx(100.0)


def test_measured_bandwidth_is_positive_and_cached() -> None:
    first = memory_bandwidth(1, size_mib=16, trials=2)
    assert first > 1e8  # any machine moves more than 100 MB/s
    assert memory_bandwidth(1, size_mib=16, trials=2) == first
    with pytest.raises(LlmperfError, match="must be >= 1"):
        memory_bandwidth(0)


