"""Every Python example in README.md and docs/ runs: a whole perf test is run through pytest (recorded, then
checked against what it recorded); any other example at least compiles. An example that needs hardware this
machine lacks is skipped by its own gpu marker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, re.S):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return found


EXAMPLES = _examples()


def test_examples_are_found() -> None:
    assert len(EXAMPLES) >= 6


@pytest.fixture(scope="module")
def lm_eval_imported() -> None:
    """lm-eval's evaluator and server model types, imported before any pytester snapshot is taken.

    pytester restores ``sys.modules`` to what it held when the ``pytester`` fixture was set up, dropping what an
    example imported; lm-eval's model registry, imported earlier in this process, keeps the dropped modules'
    registrations, and importing them again fails with "'model' alias 'local-completions' already registered".
    Imported here (a module fixture, set up before any function fixture), they stay imported.
    """
    import lm_eval.evaluator
    import lm_eval.models.openai_completions  # noqa: F401


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_example_runs(lm_eval_imported: None, pytester: pytest.Pytester, where: str, code: str) -> None:
    compile(code, where, "exec")
    if "def test_" not in code:
        return  # a fragment (a conftest hook, engine configurations): compiling is what can be checked here
    pytester.makepyfile(test_example=code)
    args = ("-p", "no:cacheprovider", "-m", "perf", "-W", "ignore::pytest.PytestAssertRewriteWarning")
    recorded = pytester.runpytest(*args, "--update-baselines")
    outcomes = recorded.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), recorded.stdout.str()[-3000:]
    if outcomes.get("passed"):
        checked = pytester.runpytest(*args, "--llmperf-tolerance", "*=90%", "--llmperf-tolerance", "*.*=1")
        # An example's own tight marker (10% on completion_tok_s) outranks the option, and this host's speed drifts
        # 10-20% between two runs (docs/noise.md): a performance regression is the gate working, not a broken
        # example. Anything else (an assert of the example, an error) fails here.
        failures = [line for line in checked.stdout.lines if line.startswith("FAILED ")]
        assert all("performance regression in" in line for line in failures), checked.stdout.str()[-3000:]
        assert not checked.parseoutcomes().get("errors"), checked.stdout.str()[-3000:]
