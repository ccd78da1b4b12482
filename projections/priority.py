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

The searches can also be put above everything else on the machine that runs at the
usual priority (the broker, other programs): ``MEMSTREAM_SEARCH_PRIORITY=high`` starts
the searcher's and the vector engine's processes at nice 10 below memstream's
(:func:`raise_search_priority`). Only a process allowed to (root, ``CAP_SYS_NICE``, or a
nice limit of at least 30: systemd's ``LimitNICE=``) may; elsewhere the searches keep the
usual priority and the process says why. Ingest's threads in those processes stay at
nice 10 above memstream's, not above the raised one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Final, Literal, TypeVar

__all__ = [
    "PRIORITY_VAR",
    "SEARCH_PRIORITY_VAR",
    "IngestPriority",
    "SearchPriority",
    "ingests_turn",
    "lower_priority",
    "opened_below_reads",
    "priority_of",
    "raise_search_priority",
]

T = TypeVar("T")

IngestPriority = Literal["low", "idle"]
PRIORITY_VAR: Final = "MEMSTREAM_INGEST_PRIORITY"
LOW_NICE: Final = 10
SearchPriority = Literal["usual", "high"]
SEARCH_PRIORITY_VAR: Final = "MEMSTREAM_SEARCH_PRIORITY"
HIGH_NICE: Final = 10
# memstream's own nice in a process that raised its searches' (None: the process's).
_usual: int | None = None


def _memstreams_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, os.getpid()) if _usual is None else _usual


def raise_search_priority() -> str | None:
    """At the start of the searcher's or the engine's process, before it starts a
    thread: with ``MEMSTREAM_SEARCH_PRIORITY=high``, this thread (and so every thread
    started from it) at nice ``HIGH_NICE`` below memstream's. None once raised or when
    not asked; else why it could not be, for the process to say."""
    global _usual
    if (os.environ.get(SEARCH_PRIORITY_VAR) or "usual").lower() != "high":
        return None
    try:
        usual = os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return "thread priorities are Linux's: the searches keep the usual priority"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(usual - HIGH_NICE, -20))  # 0: this thread
    except OSError as err:
        return (
            f"{SEARCH_PRIORITY_VAR}=high: this process may not raise its priority "
            f"({err.strerror}): run memstream as root, give it CAP_SYS_NICE, or a nice "
            f"limit of at least {20 - (usual - HIGH_NICE)} (systemd: LimitNICE=); the "
            "searches keep the usual priority"
        )
    _usual = usual
    return None


@contextlib.contextmanager
def ingests_turn() -> Iterator[None]:
    """In a process that raised its searches' priority, for a thread that does both
    (the engine's: searches, and between them the projection's writes and the shard's
    flushes): this thread at memstream's own priority for the block, then raised again,
    so that ingest's work does not go ahead of the machine's other programs, and a
    search that wakes the thread wakes it at the raised one. Nothing where the priority
    was not raised."""
    if _usual is None:
        yield
        return
    raised = max(_usual - HIGH_NICE, -20)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, _usual)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, raised)


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
    """This thread at nice ``LOW_NICE`` more than memstream's (its process's main
    thread's, unless that raised the searches'), unless it is there already (a thread
    started by one at ingest's priority)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        low = min(_memstreams_nice() + LOW_NICE, 19)
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
