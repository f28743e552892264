"""Next-token distributions as engines report them, for logit fidelity (``measure/fidelity.py``).

Plain data: engines build them, the fidelity measurement compares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


class Distribution(Protocol):
    """One position's next-token distribution as an engine reports it."""

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most likely tokens (keys) with their log-probabilities, most likely first."""

    def logprob(self, key: str) -> float | None:
        """The log-probability of ``key``, or None when the engine did not report it (outside its top-k)."""

    def floor(self) -> float:
        """The smallest log-probability the engine reported (an upper bound for any token it did not list)."""


@dataclass
class FullDistribution:
    """A full distribution over the vocabulary (in-process engines): keys are ``"#<token id>"``."""

    logprobs: Any  # numpy array (n_vocab,), log-softmax of the logits

    def top(self, k: int) -> list[tuple[str, float]]:
        import numpy as np

        k = min(k, len(self.logprobs))
        order = np.argpartition(-self.logprobs, k - 1)[:k]
        order = order[np.argsort(-self.logprobs[order], kind="stable")]
        return [(f"#{int(token)}", float(self.logprobs[token])) for token in order]

    def logprob(self, key: str) -> float | None:
        if not key.startswith("#"):
            return None
        token = int(key[1:])
        return float(self.logprobs[token]) if 0 <= token < len(self.logprobs) else None

    def floor(self) -> float:
        return float(self.logprobs.min())


@dataclass
class TopDistribution:
    """The top-k a server reported for one position: keys are token texts."""

    listed: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.listed.items(), key=lambda item: -item[1])[:k]

    def logprob(self, key: str) -> float | None:
        return self.listed.get(key)

    def floor(self) -> float:
        return min(self.listed.values()) if self.listed else -math.inf
