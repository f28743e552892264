"""Process trees: a process and the processes it started, as ``psutil`` sees them.

One walk serves everything that follows an engine's processes: the watchdog that stops a launched server's
tree, the vLLM engine that finds the processes it started, and the host-memory and GPU samplers that add up a
tree's memory. ``psutil`` is imported when a tree is first walked, not with the plugin.
"""

from __future__ import annotations

from typing import Any


def process_tree(pid: int | None = None, *, recursive: bool = True, include_root: bool = True) -> list[Any]:
    """The ``psutil.Process`` of ``pid`` (None: this process) and of its descendants (``recursive=False``: its
    children only), the root first unless ``include_root=False``. A process that cannot be read (gone, or not
    ours to see) has an empty tree."""
    import psutil

    try:
        root = psutil.Process(pid)
        below = root.children(recursive=recursive)
    except psutil.Error:
        return []
    return [root, *below] if include_root else below


def tree_pids(pid: int | None = None, *, recursive: bool = True, include_root: bool = True) -> list[int]:
    """The pids of ``process_tree(pid, ...)``."""
    return [process.pid for process in process_tree(pid, recursive=recursive, include_root=include_root)]
