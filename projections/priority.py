"""The CPU priority of the work that may wait: decoding and applying events, embedding
them for the vectors, filling the audit table. (An index build, and the engine's copy of
the shard it starts from, run at ``low`` whatever the setting: it is what keeps searches
fast, see ``consumers.index_aside``.)

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

A database's own worker threads do ingest's work too: DuckDB starts its task scheduler's
workers as the history's database opens, and they run the statements that apply each
batch beside the apply thread (measured: a fifth of a core at 1,000 events/s). So the
history's writer opens its database in a thread at nice 10 (:func:`opened_below_reads`),
and its workers start there. Nice 10 even where ingest is ``idle``: the history's reads
hand tasks to the same workers, and a read must not wait for a thread that runs only on
a core nobody else wants.

Where neither can be set (not Linux), the threads keep the process's priority.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Final, Literal, TypeVar

__all__ = [
    "PRIORITY_VAR",
    "IngestPriority",
    "lower_priority",
    "opened_below_reads",
    "priority_of",
]

T = TypeVar("T")

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
    _nice_low()


def _nice_low() -> None:
    """This thread at nice ``LOW_NICE`` more than the process's (its main thread's),
    unless it is there already (a thread started by one at ingest's priority)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        low = min(os.getpriority(os.PRIO_PROCESS, os.getpid()) + LOW_NICE, 19)
        if os.getpriority(os.PRIO_PROCESS, tid) < low:
            os.setpriority(os.PRIO_PROCESS, tid, low)


def opened_below_reads(open_: Callable[[], T]) -> T:
    """``open_()`` called in a thread of its own at nice ``LOW_NICE`` more than the
    process's, so that the threads it starts (a database's workers) run there for good;
    its result, or its exception raised here."""
    out: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        _nice_low()
        try:
            out.append(open_())
        except BaseException as err:  # raised again in the caller's thread
            failed.append(err)

    thread = threading.Thread(target=run, name="memstream-open")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return out[0]


def priority_of(tid: int) -> str:
    """How thread ``tid`` is scheduled: ``idle``, or ``nice N`` (for status and tests)."""
    if os.sched_getscheduler(tid) == os.SCHED_IDLE:
        return "idle"
    return f"nice {os.getpriority(os.PRIO_PROCESS, tid)}"
