"""core/processes: one walk of a process tree (the watchdog, the vLLM engine, host memory and the GPU sampler)."""

from __future__ import annotations

import subprocess
import sys
import time

from pytest_llmperf.core.processes import process_tree, tree_pids

# A child that starts a grandchild, says its pid, and waits.
_PARENT = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def test_the_tree_is_the_root_and_its_descendants_or_its_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        mine = tree_pids()
        assert mine[0] == process_tree()[0].pid and {parent.pid, grandchild} <= set(mine)
        assert tree_pids(parent.pid) == [parent.pid, grandchild]
        assert tree_pids(parent.pid, include_root=False) == [grandchild]
        children = tree_pids(recursive=False, include_root=False)
        assert parent.pid in children and grandchild not in children
    finally:
        for process in reversed(process_tree(parent.pid)):  # the grandchild first: it must not outlive the test
            process.kill()
        parent.wait()


def test_a_gone_process_has_an_empty_tree() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    time.sleep(0.05)
    assert process_tree(gone.pid) == [] and tree_pids(gone.pid, include_root=False) == []
