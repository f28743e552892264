"""``LmEvalScorer``: the object the ``lm_eval_scorer`` fixture hands a test, without pytest.

Its call scores lm-eval tasks on an engine (``measure/calls.accuracy``) and adds the part to the test's record
through the test's ``PerfCheck`` (``measure/perf_check.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmperf.core.paired import SIGNIFICANCE
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure import calls

if TYPE_CHECKING:
    from pytest_llmperf.engines import Engine
    from pytest_llmperf.measure.accuracy import AccuracyResult
    from pytest_llmperf.measure.perf_check import PerfCheck


class LmEvalScorer:
    """The ``lm_eval_scorer`` fixture: lm-eval tasks on an engine, added to the test's record."""

    def __init__(self, check: PerfCheck) -> None:
        self._check = check

    def __call__(
        self, engine: Engine, tasks: Sequence[str], *, limit: int | float | None = None,
        num_fewshot: int | None = None, batch_size: int | str | None = None, seed: int = 1234,
        tolerances: Mapping[str, object] | None = None, check: bool = True, name: str | None = None,
        model_args: Mapping[str, Any] | None = None, significance: float = SIGNIFICANCE, **evaluate_kwargs: Any,
    ) -> AccuracyResult:
        """Score ``tasks`` (shipped task names, lm-eval task names or YAML paths) on ``engine``; every
        ``<task>.<metric>`` is gated (``check=False``: scored only), document by document against the baseline's
        documents at ``significance`` (``core/paired.py``). ``model_args``: for server engines, lm-eval's
        ``--model_args`` (``num_concurrent``, ``tokenizer``, ...)."""
        if not 0.0 < significance < 1.0:
            raise LlmperfError(f"lm_eval_scorer: significance={significance!r} must lie between 0 and 1")
        scores, part = calls.accuracy(
            engine, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, seed=seed,
            tolerances=tolerances, check=check, name=name, model_args=model_args, significance=significance,
            **evaluate_kwargs,
        )
        self._check._add(part)
        return scores
