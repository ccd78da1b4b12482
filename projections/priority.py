"""The CPU priority of the work that may wait: decoding and applying events, embedding
them for the vectors, filling the audit table. (An index build runs at ``low`` whatever
the setting: it is what keeps searches fast, see ``consumers.index_aside``.)

A search is on an agent's critical path; ingest can lag and catch up (read-your-writes
waits for ``min_seq``). So the threads that do ingest's work run below the searches'.
Linux sets the priority of each thread, and a thread's priority passes to the threads
it starts (an embedder's, an index build's). ``MEMSTREAM_INGEST_PRIORITY`` chooses:

- ``low`` (the default): a nice of 10 more than the process's. Where a search and ingest
  both want a core, the search gets about nine tenths of it, and ingest still a share
  whatever else runs on the machine;
- ``idle``: the scheduler's idle class (``SCHED_IDLE``). These threads run only on a
  core no other thread wants, and a search that wakes takes the core at once. For a
  machine that runs memstream alone: beside other busy programs (an agent's model on
  the CPU, a build), ingest would get almost no CPU while they run, and fall behind.

Where neither can be set (not Linux), the threads keep the process's priority.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Final, Literal

__all__ = ["PRIORITY_VAR", "IngestPriority", "lower_priority", "priority_of"]

IngestPriority = Literal["low", "idle"]
PRIORITY_VAR: Final = "MEMSTREAM_INGEST_PRIORITY"
LOW_NICE: Final = 10


def lower_priority(priority: str | None = None) -> None:
    """This thread (and the threads it starts from now on) at ingest's priority:
    ``priority``, or ``MEMSTREAM_INGEST_PRIORITY``'s (validated with the settings).
    Where the idle class cannot be set, nice 10."""
    chosen = (priority or os.environ.get(PRIORITY_VAR) or "low").lower()
    if chosen == "idle":
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
            return
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + LOW_NICE)


def priority_of(tid: int) -> str:
    """How thread ``tid`` is scheduled: ``idle``, or ``nice N`` (for status and tests)."""
    if os.sched_getscheduler(tid) == os.SCHED_IDLE:
        return "idle"
    return f"nice {os.getpriority(os.PRIO_PROCESS, tid)}"
