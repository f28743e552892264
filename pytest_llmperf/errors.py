"""Errors the plugin raises for bad input: each names the file, option or value at fault."""

from __future__ import annotations


class LlmperfError(Exception):
    """A usage or input error, reported to the user without a deep traceback."""


class BaselineError(LlmperfError):
    """A baseline file that cannot be read or does not follow the schema."""


class EngineError(LlmperfError):
    """An engine that cannot be built or failed while measuring."""


class EngineUnavailable(EngineError):
    """What this machine lacks to build an engine (its package, a model): the test that needed it is skipped
    with the reason, and failed in strict mode (a CI gate that lost its engine cannot pass)."""
