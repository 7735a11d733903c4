"""Stop requests: SIGTERM (ray job stop, a Kubernetes eviction, kill) asks a run to finish its current step,
checkpoint and stop, instead of dying mid-step. Jobs then exit with PREEMPTED_EXIT."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("rayalign.signals")
PREEMPTED_EXIT = 128 + 15  # the status of a process ended by SIGTERM: schedulers read it as "stopped, not done"


@contextlib.contextmanager
def sigterm_event():
    """An event that SIGTERM sets instead of killing the driver mid-step (Ray's own handler exits at once).

    Signal handlers belong to the main thread; elsewhere (a test driving the loop from a thread) the event is
    only set by hand."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def on_sigterm(signum, frame):
        log.warning("SIGTERM: finishing the current step, then a checkpoint and stop")
        event.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)
