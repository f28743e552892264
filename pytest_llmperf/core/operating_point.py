"""Studies: a perf test parametrized over engine knobs, judged as a whole, and the operating point it chooses.

A study is one test function marked ``perf_study(axis=..., maximise=... | minimise=..., constraints=[...])``
and parametrized over the knobs named by ``axis``. Each parametrized test is a *point*: measured, gated and
recorded like any perf test (its own baseline file). At the end of the session the points of a study are
gathered (from every xdist worker) and the rule the test declares chooses the operating point
(``choose``):

1. A point is *feasible* when it meets every constraint: ``"metric <= bound"`` / ``"metric >= bound"`` on its
   measured values, and with ``accuracy_within=k`` every accuracy metric within ``k`` standard errors of the
   best point's on that task (the standard error of the difference, ``hypot(se_point, se_best)``). A point with
   no score for a task that another point was scored on is infeasible ("no score for <task>.<metric>").
2. On an ordered axis (every value a number) a feasible point is *supported* when it is not an endpoint of an
   axis and each neighbour (one step along one axis) is feasible too: a plateau point, not an isolated peak or
   an extreme endpoint. With ``plateau=True`` (the default on ordered axes) the choice is made among supported
   points when there is one; otherwise among all feasible points, and the explanation says so.
3. Among those candidates the best objective wins. Candidates within ``tie`` (relative, default 1%) of the best
   are tied: the one with less memory wins, then the earlier axis value (the cheaper setting).

Pure Python: the plugin hands in plain dicts (``CheckOutcome.study`` and the measured values).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.core.metrics import format_value, is_accuracy, metric_spec
from pytest_llmperf.errors import LlmperfError

#: Memory metrics in order of preference: a tie on the objective goes to the point using less of the first one
#: it has.
MEMORY_METRICS = ("mem_max_gib", "mem_mean_gib", "rss_peak_gib")
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|<|>)\s*(?P<bound>[-+0-9.eE]+)\s*$")
_KEYWORDS = ("axis", "maximise", "minimise", "constraints", "accuracy_within", "plateau", "tie", "fail_on_change")


def shown(name: str, value: float | None) -> str:
    """``value`` of the metric ``name`` with its unit (``72.0 GiB``, ``170.0 tok/s``; scores have none)."""
    unit = metric_spec(name).unit
    return format_value(value) + (f" {unit}" if unit not in ("score", "x", "") and value is not None else "")


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {shown(self.metric, self.bound)}"

    def failure(self, value: float | None) -> str | None:
        """Why ``value`` breaks this constraint (None: it meets it)."""
        if value is None or not math.isfinite(value):
            return f"{self.metric} unavailable"
        ok = {"<=": value <= self.bound, "<": value < self.bound, ">=": value >= self.bound,
              ">": value > self.bound}[self.op]
        needs = f"{self.op} {shown(self.metric, self.bound)}"
        return None if ok else f"{self.metric} {shown(self.metric, value)} (needs {needs})"


@dataclass(frozen=True)
class StudySpec:
    """The rule of one study, from its ``perf_study`` marker."""

    axis: tuple[str, ...]
    objective: str
    maximise: bool
    constraints: tuple[Constraint, ...] = ()
    accuracy_within: float | None = None
    plateau: bool | None = None
    tie: float = 0.01
    fail_on_change: bool = False

    def describe(self) -> str:
        parts = [f"{'maximise' if self.maximise else 'minimise'} {self.objective}"]
        if self.accuracy_within is not None:
            parts.append(f"accuracy within {format_value(self.accuracy_within)} stderr of the best on every task")
        parts += [constraint.text for constraint in self.constraints]
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"axis": list(self.axis), "objective": self.objective, "maximise": self.maximise,
                "constraints": [c.text for c in self.constraints], "accuracy_within": self.accuracy_within,
                "plateau": self.plateau, "tie": self.tie, "fail_on_change": self.fail_on_change}


def parse_study(kwargs: Mapping[str, Any], where: str) -> StudySpec:
    """The spec of a ``perf_study(...)`` marker; a bad keyword or value raises naming ``where`` and the value."""
    unknown = sorted(set(kwargs) - set(_KEYWORDS))
    if unknown:
        raise LlmperfError(f"{where}: perf_study got unknown keywords {unknown}; it takes {', '.join(_KEYWORDS)}")
    axis = kwargs.get("axis")
    axes = (axis,) if isinstance(axis, str) else tuple(axis) if isinstance(axis, (list, tuple)) else ()
    if not axes or not all(isinstance(name, str) and name for name in axes):
        raise LlmperfError(f"{where}: perf_study(axis=...) must name the parametrized knob(s), got {axis!r}")
    if ("maximise" in kwargs) == ("minimise" in kwargs):
        raise LlmperfError(f"{where}: perf_study needs exactly one of maximise='metric' or minimise='metric'")
    maximise = "maximise" in kwargs
    objective = kwargs["maximise" if maximise else "minimise"]
    _known_metric(objective, where, "maximise" if maximise else "minimise")
    constraints = []
    raw = kwargs.get("constraints", ())
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise LlmperfError(f"{where}: perf_study(constraints=...) must be a list of 'metric <= bound', got {raw!r}")
    for text in raw:
        match = _CONSTRAINT.match(str(text))
        try:
            bound = float(match["bound"]) if match else math.nan
        except ValueError:
            bound = math.nan
        if match is None or not math.isfinite(bound):
            raise LlmperfError(f"{where}: perf_study constraint {text!r} is not 'metric <= number' or "
                               "'metric >= number' (e.g. 'e2e_p99 <= 2.0', in the metric's unit)")
        _known_metric(match["metric"], where, "constraint")
        constraints.append(Constraint(match["metric"], match["op"], bound))
    within = kwargs.get("accuracy_within")
    # NaN compares false with everything: unchecked, it would switch the accuracy rule off ("within nan stderr").
    if within is not None and (isinstance(within, bool) or not isinstance(within, (int, float))
                               or not math.isfinite(within) or within < 0):
        raise LlmperfError(f"{where}: perf_study(accuracy_within=...) must be a finite number of stderr >= 0 "
                           f"(e.g. accuracy_within=2), got {within!r}")
    tie = kwargs.get("tie", 0.01)
    if isinstance(tie, bool) or not isinstance(tie, (int, float)) or not 0 <= tie < 1:
        raise LlmperfError(f"{where}: perf_study(tie=...) must be a fraction in [0, 1), got {tie!r}")
    for flag in ("plateau", "fail_on_change"):
        if kwargs.get(flag) is not None and not isinstance(kwargs[flag], bool):
            raise LlmperfError(f"{where}: perf_study({flag}=...) must be True or False, got {kwargs[flag]!r}")
    return StudySpec(axes, objective, maximise, tuple(constraints), None if within is None else float(within),
                     kwargs.get("plateau"), float(tie), bool(kwargs.get("fail_on_change", False)))


def _known_metric(name: object, where: str, role: str) -> None:
    if not isinstance(name, str):
        raise LlmperfError(f"{where}: perf_study {role} must be a metric name, got {name!r}")
    try:
        metric_spec(name)
    except LlmperfError as error:
        raise LlmperfError(f"{where}: perf_study {role}: {error}") from None


@dataclass
class StudyPoint:
    """One parametrized test of a study: its knob values and what it measured."""

    test: str
    params: dict[str, Any]
    #: Position of each knob value in its parametrize list (the axis order of categorical knobs).
    indices: dict[str, int]
    metrics: dict[str, float | None]
    stderr: dict[str, float | None] = field(default_factory=dict)
    status: str = "passed"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: The value of each repetition behind a metric (the figures' error bars); not stored.
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.params.items())

    def value_label(self) -> str:
        """The knob values alone (``192``; ``64, on``), for figure ticks and point labels."""
        return ", ".join(str(value) for value in self.params.values())


def accuracy_metrics(points: Sequence[StudyPoint]) -> list[str]:
    """The accuracy metrics (``<task>.<metric>``, unit "score") measured at every point with a value."""
    names = {name for point in points for name in point.metrics}
    return sorted(name for name in names if is_accuracy(name)
                  and all(point.metrics.get(name) is not None for point in points))


def scored_metrics(points: Sequence[StudyPoint]) -> list[str]:
    """The accuracy metrics scored (a finite value) at one point at least: what ``accuracy_within`` constrains."""
    return sorted({name for point in points for name in point.metrics
                   if is_accuracy(name) and _score(point, name) is not None})


def _score(point: StudyPoint, name: str) -> float | None:
    value = point.metrics.get(name)
    return value if value is not None and math.isfinite(value) else None


def is_ordered(points: Sequence[StudyPoint], axis: Sequence[str]) -> bool:
    """Every knob value a number (not a bool): the axis has neighbours and endpoints."""
    return all(isinstance(point.params.get(name), (int, float)) and not isinstance(point.params.get(name), bool)
               for point in points for name in axis)


def axis_positions(points: Sequence[StudyPoint], axis: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each point's position on every axis: rank of its value among the axis's values (numeric order on ordered
    axes, parametrize order otherwise)."""
    ordered = is_ordered(points, axis)
    positions: dict[str, list[int]] = {point.test: [] for point in points}
    for name in axis:
        if ordered:
            values = sorted({point.params[name] for point in points})
            for point in points:
                positions[point.test].append(values.index(point.params[name]))
        else:
            indices = sorted({point.indices.get(name, 0) for point in points})
            for point in points:
                positions[point.test].append(indices.index(point.indices.get(name, 0)))
    return {test: tuple(position) for test, position in positions.items()}


def in_axis_order(points: Sequence[StudyPoint], axis: Sequence[str]) -> list[StudyPoint]:
    positions = axis_positions(points, axis)
    return sorted(points, key=lambda point: positions[point.test])


@dataclass
class Choice:
    """The operating point a study's rule chose, and why."""

    chosen: StudyPoint
    runner_up: StudyPoint | None
    explanation: str
    feasible: list[str]
    #: Why each infeasible point was excluded (test id -> reasons).
    excluded: dict[str, list[str]]


class NoOperatingPoint(LlmperfError):
    """No point of a study meets its constraints (the message names each point's failures)."""


def failures(spec: StudySpec, points: Sequence[StudyPoint]) -> dict[str, list[str]]:
    """Each point's broken constraints (empty list: feasible)."""
    result: dict[str, list[str]] = {point.test: [] for point in points}
    for point in points:
        if _objective(spec, point) is None:
            result[point.test].append(f"{spec.objective} unavailable")
        for constraint in spec.constraints:
            problem = constraint.failure(point.metrics.get(constraint.metric))
            if problem is not None:
                result[point.test].append(problem)
    if spec.accuracy_within is not None:
        for name in scored_metrics(points):
            # A point without a score for a task cannot be shown within k stderr of the best: infeasible.
            scored = [point for point in points if _score(point, name) is not None]
            for point in points:
                if _score(point, name) is None:
                    result[point.test].append(f"no score for {name}")
            higher = metric_spec(name).direction == "higher"
            best = (max if higher else min)(scored, key=lambda p: float(_score(p, name) or 0.0))
            best_value = float(_score(best, name) or 0.0)
            for point in scored:
                value = float(_score(point, name) or 0.0)
                se = math.hypot(best.stderr.get(name) or 0.0, point.stderr.get(name) or 0.0)
                gap = best_value - value if higher else value - best_value
                if gap > spec.accuracy_within * se + 1e-12:
                    away = f"{gap / se:.1f} stderr" if se > 0 else "no stderr"
                    result[point.test].append(
                        f"{name} {format_value(value)} ({away} from the best, {format_value(best_value)} at "
                        f"{best.value_label()}; allowed {format_value(spec.accuracy_within)})"
                    )
    return result


def _objective(spec: StudySpec, point: StudyPoint) -> float | None:
    value = point.metrics.get(spec.objective)
    return value if value is not None and math.isfinite(value) else None


def _memory(point: StudyPoint) -> tuple[str, float] | None:
    for name in MEMORY_METRICS:
        value = point.metrics.get(name)
        if value is not None:
            return name, value
    return None


def choose(spec: StudySpec, points: Sequence[StudyPoint]) -> Choice:
    """The operating point of ``points`` under ``spec`` (module docstring); NoOperatingPoint when none is
    feasible."""
    if not points:
        raise NoOperatingPoint("the study has no measured point")
    broken = failures(spec, points)
    feasible = [point for point in points if not broken[point.test]]
    if not feasible:
        shown = "; ".join(f"{point.value_label()}: {', '.join(broken[point.test])}"
                          for point in in_axis_order(points, spec.axis))
        raise NoOperatingPoint(f"no point meets the constraints ({spec.describe()}): {shown}")
    ordered = is_ordered(points, spec.axis)
    plateau = ordered if spec.plateau is None else spec.plateau and ordered
    positions = axis_positions(points, spec.axis)
    why = {point.test: _unsupported(point, points, positions, broken) for point in feasible}
    supported = [point for point in feasible if why[point.test] is None] if plateau else []
    pool = supported or feasible
    sign = -1.0 if spec.maximise else 1.0

    def objective(point: StudyPoint) -> float:
        value = _objective(spec, point)
        assert value is not None  # feasible points have one
        return value

    best_value = min((objective(point) for point in pool), key=lambda v: sign * v)
    margin = spec.tie * abs(best_value)
    tied = [point for point in pool if abs(objective(point) - best_value) <= margin]

    def tie_break(point: StudyPoint) -> tuple[float, tuple[int, ...]]:
        memory = _memory(point)
        return (memory[1] if memory else 0.0, positions[point.test])

    chosen = min(tied, key=tie_break)
    others = sorted((point for point in feasible if point is not chosen), key=lambda p: sign * objective(p))
    runner_up = others[0] if others else None
    words = _explain(spec, points, chosen, runner_up, tied, supported, plateau, ordered, broken, why, objective)
    return Choice(chosen, runner_up, words, [point.test for point in feasible],
                  {test: reasons for test, reasons in broken.items() if reasons})


def _unsupported(point: StudyPoint, points: Sequence[StudyPoint], positions: Mapping[str, tuple[int, ...]],
                 broken: Mapping[str, list[str]]) -> str | None:
    """Why ``point`` is no plateau point (None: it is one): at an end of an axis, or a neighbour (one step along
    one axis) that breaks a constraint."""
    here = positions[point.test]
    for dimension in range(len(here)):
        top = max(position[dimension] for position in positions.values())
        if here[dimension] in (0, top):
            return "an extreme endpoint of the axis"
    neighbours = [other for other in points
                  if sum(abs(a - b) for a, b in zip(positions[other.test], here, strict=True)) == 1]
    failing = [other for other in neighbours if broken[other.test]]
    if failing:
        return (f"an isolated peak (its neighbour {failing[0].value_label()} fails: "
                f"{', '.join(broken[failing[0].test])})")
    return None if neighbours else "without neighbours"


def _explain(spec: StudySpec, points: Sequence[StudyPoint], chosen: StudyPoint, runner_up: StudyPoint | None,
             tied: Sequence[StudyPoint], supported: Sequence[StudyPoint], plateau: bool, ordered: bool,
             broken: Mapping[str, list[str]], why: Mapping[str, str | None], objective: Any) -> str:
    """One paragraph: the choice, the rule it met, the binding constraint, memory, plateau and runner-up."""
    verb = "highest" if spec.maximise else "lowest"
    rule = spec.describe().split("; ", 1)
    among = f"among points meeting {rule[1]}" if len(rule) > 1 else "among all points"
    value = objective(chosen)
    sentences = [f"{chosen.label}: {verb} {spec.objective} ({shown(spec.objective, value)}) {among}"]
    sign = -1.0 if spec.maximise else 1.0
    measured = [point for point in points if _objective(spec, point) is not None]
    overall = min(measured, key=lambda p: sign * float(_objective(spec, p) or 0.0)) if measured else None
    if overall is not None and overall is not chosen and broken[overall.test]:
        sentences.append(f"the {spec.objective}-best point {overall.value_label()} is excluded: "
                         f"{', '.join(broken[overall.test])} (the binding constraint)")
    elif overall is not None and overall is not chosen and chosen in supported and why.get(overall.test):
        sentences.append(f"the {spec.objective}-best point {overall.value_label()} "
                         f"({shown(spec.objective, objective(overall))}) meets the constraints but is "
                         f"{why.get(overall.test)}, so the plateau point is preferred")
    if len(tied) > 1:
        others = ", ".join(point.value_label() for point in tied if point is not chosen)
        memory = _memory(chosen)
        less = memory is not None and all((_memory(p) or memory)[1] > memory[1] for p in tied if p is not chosen)
        reason = f"less {memory[0]} ({shown(*memory)})" if memory and less else "the earlier axis value"
        sentences.append(f"tied with {others} on {spec.objective} (within {spec.tie:.0%}); chosen for {reason}")
    memory = _memory(chosen)
    if memory is not None:
        sentences.append(f"{memory[0]} {shown(*memory)}")
    if plateau and chosen in supported:
        run = [point.value_label() for point in supported]
        sentences.append(f"its neighbours meet the constraints too (plateau of supported points: {', '.join(run)})")
    elif plateau and not supported:
        sentences.append("no point has feasible neighbours on every side (no plateau): the best feasible point")
    elif not ordered:
        sentences.append("the axis is categorical: no plateau preference")
    if runner_up is not None:
        change = (objective(runner_up) - value) / abs(value) * 100 if value else 0.0
        sentences.append(f"runner-up {runner_up.value_label()} ({change:+.1f}% {spec.objective})")
    return "; ".join(sentences)
