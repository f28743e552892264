"""Measurement quality: was the machine quiet while a repetition ran?

On a shared machine a slow repetition may be a slower engine or a busy machine, and wall-clock numbers alone
cannot tell which. ``QualitySampler`` reads what the kernel knows over one repetition (Linux ``/proc``):

- ``runqueue_wait``: the time the engine's threads were ready to run but had no core (``/proc/<pid>/task/*/
  schedstat``, second field), as a fraction of the repetition's wall time and summed over the threads; the
  direct sign that a neighbour took the engine's cores. llama.cpp's threads spin at their barriers, so one
  preempted thread stalls all the others: this is the figure that explains a 10x slower decode.
- ``involuntary_switches_s``: the engine threads' involuntary context switches per second (preemptions).
- ``cpu_share``: the engine's CPU time over wall time x its threads (1.0: every thread ran all the time).
- ``others_cores``: the CPU the *other* processes of the machine used meanwhile, in cores (``/proc/stat`` busy
  time minus the engine's and this process's own).
- ``steal_pct``: the share of CPU time the hypervisor gave to other guests (``/proc/stat`` steal).
- ``machine_speed``: the speed of a fixed reference loop (``reference_speed``: pure Python, ~25 ms) right before
  and right after the repetition, averaged, in million loop steps per second: the host's own drift, which no
  /proc figure shows (a busy sibling hyperthread of another guest). Pure Python on purpose: a reference built on
  the measured library (a llama.cpp decode) would slow down with it after an upgrade and hide the regression.

``core/disturbance.py`` turns the figures into "disturbed" or not, with the reason, and for an engine on this CPU
the verdict compares only repetitions taken at the baseline's machine speed (``core/verdict.same_machine``).
None of these figures is a gated metric: they go into the report and the baseline's ``quality`` block. Where
``/proc`` is missing (not Linux) every ``/proc`` figure is unavailable (None), never 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.core.disturbance import QUALITY_FIGURES, disturbance
from pytest_llmperf.core.hardware import TICK, machine_ticks

_PROC = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@dataclass(frozen=True)
class _ProcessTicks:
    cpu_s: float
    wait_s: float
    involuntary: int


def _process_ticks(pid: int) -> _ProcessTicks | None:
    """CPU time (the whole process, children that ended included), run-queue wait and involuntary switches
    summed over its threads."""
    stat = _read(_PROC / str(pid) / "stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # utime stime cutime cstime are fields 14-17 of proc(5); fields[0] here is field 3 (state).
    cpu_s = sum(int(value) for value in fields[11:15]) / TICK
    wait_s, involuntary = 0.0, 0
    try:
        tids = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        tids = []
    for tid in tids:
        schedstat = _read(_PROC / str(pid) / "task" / tid / "schedstat")
        if schedstat:
            wait_s += int(schedstat.split()[1]) / 1e9
        status = _read(_PROC / str(pid) / "task" / tid / "status") or ""
        for line in status.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return _ProcessTicks(cpu_s, wait_s, involuntary)


def _children(pid: int) -> list[int]:
    text = _read(_PROC / str(pid) / "task" / str(pid) / "children")
    return [int(child) for child in text.split()] if text else []


def _tree(pids: Iterable[int]) -> list[int]:
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(_children(pid))
    return seen


class QualitySampler:
    """Context manager around one repetition: ``figures`` holds its quality figures when it exits.

    ``pids`` are the engine's processes (None: this process, an in-process engine); ``threads`` the engine's
    compute threads (for ``cpu_share``; None: not reported). This process is never counted among the others,
    since it drives the engine.
    """

    def __init__(self, pids: Sequence[int] | None = None, threads: int | None = None, reference: bool = True
                 ) -> None:
        # An in-process engine is this process alone (its children are not the engine: a benchmark's
        # neighbour, a server of another test); a server is its process tree.
        self.pids = list(pids) if pids is not None else [os.getpid()]
        self.tree = pids is not None
        self.threads = threads
        # LLMPERF_MACHINE_SPEED=off: no reference loop (a GPU runner, where the CPU's speed says little; a test
        # suite that must not depend on the host's drift).
        self.reference = reference and os.environ.get("LLMPERF_MACHINE_SPEED", "on").strip().lower() != "off"
        self.figures: dict[str, float | None] = dict.fromkeys(QUALITY_FIGURES)

    def _engine(self) -> dict[int, _ProcessTicks]:
        found = {}
        for pid in _tree(self.pids) if self.tree else self.pids:
            ticks = _process_ticks(pid)
            if ticks is not None:
                found[pid] = ticks
        return found

    def __enter__(self) -> QualitySampler:
        self._speed_before = _reference_speed(fresh=False) if self.reference else None
        self._start = time.perf_counter()
        self._machine = machine_ticks()
        self._own = _process_ticks(os.getpid())
        self._engine_start = self._engine()
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall = time.perf_counter() - self._start
        machine, own, engine = machine_ticks(), _process_ticks(os.getpid()), self._engine()
        if wall <= 0 or not engine or not self._engine_start:
            return
        # Processes that started or ended meanwhile (a server's helper) count from what was seen of them.
        before = self._engine_start
        cpu = sum(t.cpu_s - before[pid].cpu_s for pid, t in engine.items() if pid in before)
        wait = sum(t.wait_s - before[pid].wait_s for pid, t in engine.items() if pid in before)
        switches = sum(t.involuntary - before[pid].involuntary for pid, t in engine.items() if pid in before)
        figures = self.figures
        figures["runqueue_wait"] = max(wait, 0.0) / wall
        figures["involuntary_switches_s"] = max(switches, 0) / wall
        if self.threads:
            figures["cpu_share"] = max(cpu, 0.0) / (wall * self.threads)
        if machine is not None and self._machine is not None:
            busy, steal, total = (end - start for end, start in zip(machine, self._machine, strict=False))
            ours = cpu
            if own is not None and self._own is not None and os.getpid() not in engine:
                ours += own.cpu_s - self._own.cpu_s
            # /proc/stat and the process counters tick separately: small negatives are rounding.
            figures["others_cores"] = max(busy / TICK - ours, 0.0) / wall
            figures["steal_pct"] = steal / total * 100 if total > 0 else 0.0
        after = _reference_speed(fresh=True) if self.reference else None
        if after is not None and self._speed_before is not None:
            figures["machine_speed"] = (self._speed_before + after) / 2


#: The latest reference speed and when it was taken: the "after" of one repetition is the "before" of the next.
_last_speed: list[tuple[float, float]] = []
_REFERENCE_STEPS = 300_000


def reference_speed() -> float:
    """Million steps per second of a fixed pure-Python loop (~25 ms here): the machine's speed now. On this
    project's 2-core VM the host's speed swung 2.5x within a minute with nothing of ours running; over 120
    repetitions this loop's speed correlated 0.72 with an F16 decode's (docs/noise.md)."""
    started = time.perf_counter()
    total = 0
    for step in range(_REFERENCE_STEPS):
        total += step * step
    return _REFERENCE_STEPS / (time.perf_counter() - started) / 1e6


def _reference_speed(fresh: bool) -> float:
    if not fresh and _last_speed and time.perf_counter() - _last_speed[0][0] < 1.0:
        return _last_speed[0][1]
    speed = reference_speed()
    _last_speed[:] = [(time.perf_counter(), speed)]
    return speed


def wait_until_quiet(reference: Mapping[str, float | None] | None, limit_s: float, window_s: float = 1.0) -> float:
    """Wait (at most ``limit_s``) until the other processes of the machine use no more CPU than when the baseline
    was recorded (``reference``); the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        with QualitySampler() as sampler:
            time.sleep(min(window_s, max(limit_s - (time.perf_counter() - started), 0.05)))
        figures = {**sampler.figures, "runqueue_wait": None}  # this process sleeps: only the others count
        if disturbance(figures, reference) is None:
            break
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------------------
# The machine's usual speed: what a recording is held against ("recorded at a slow moment").

#: Readings kept per hardware class; the usual speed is their median once there are ``FEWEST_USUAL`` of them.
SPEED_HISTORY = 200
FEWEST_USUAL = 5


def speed_history_path() -> Path:
    """``machine-speed.json`` in the cache directory (``$LLMPERF_SPEED_HISTORY`` overrides): the median
    reference-loop speed of each judged test that was not disturbed."""
    from pytest_llmperf.assets.model import cache_dir

    configured = os.environ.get("LLMPERF_SPEED_HISTORY")
    return Path(configured) if configured else cache_dir() / "machine-speed.json"


def _history() -> dict[str, list[float]]:
    import json

    try:
        data = json.loads(speed_history_path().read_text())
    except (OSError, ValueError):
        return {}  # no history yet (or a damaged one, rebuilt from here): no "usual" to compare with
    if not isinstance(data, dict):
        return {}
    return {key: [float(v) for v in values if isinstance(v, (int, float))] for key, values in data.items()
            if isinstance(values, list)}


class SpeedHistory:
    """``core/record.SpeedHistory`` on ``speed_history_path()``."""

    def usual(self, hardware: str | None) -> tuple[float, int] | None:
        return usual_speed(hardware)

    def remember(self, hardware: str | None, speed: float | None) -> None:
        remember_speed(hardware, speed)


def remember_speed(hardware: str | None, speed: float | None) -> None:
    """Add one test's median machine speed to this machine's history (kept to the last ``SPEED_HISTORY``)."""
    if hardware is None or speed is None:
        return
    import json

    from pytest_llmperf.core.baseline import write_atomically
    from pytest_llmperf.core.locks import machine_lock

    path = speed_history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with machine_lock(f"speed-history:{path}"):
        history = _history()
        history[hardware] = [*history.get(hardware, []), speed][-SPEED_HISTORY:]
        write_atomically(path, json.dumps(history, indent=1, sort_keys=True) + "\n")


def usual_speed(hardware: str | None) -> tuple[float, int] | None:
    """The median of this machine's remembered speeds and how many there are; None with fewer than
    ``FEWEST_USUAL``."""
    readings = _history().get(hardware or "", []) if hardware else []
    if len(readings) < FEWEST_USUAL:
        return None
    import statistics

    return statistics.median(readings), len(readings)
