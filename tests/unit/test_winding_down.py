"""A job ends the Ray cluster it started on a thread while its last figures draw, and leaves one it found up
(jobs/cli.py, cluster_winding_down)."""

from __future__ import annotations

import threading
import time

import pytest

from cluster import runtime
from cluster.runtime import RuntimeInfo
from jobs import cli


@pytest.fixture
def stops(monkeypatch):
    """runtime.stop recorded instead of run (no cluster here): the thread it ran on, and when it ended."""
    calls = []

    def stop():
        time.sleep(0.2)
        calls.append((threading.current_thread().name, time.perf_counter()))

    monkeypatch.setattr(runtime, "stop", stop)
    return calls


def test_a_cluster_the_job_started_ends_beside_the_block_and_before_the_block_returns(stops):
    with cli.cluster_winding_down(RuntimeInfo("embedded", "local", 2, 0, started_here=True)):
        inside = threading.current_thread().name
        started = time.perf_counter()
    ended = time.perf_counter()
    assert [name for name, _ in stops] == ["ray-stop"] and inside != "ray-stop"
    assert started < stops[0][1] <= ended  # the block did not wait for the stop to begin; the exit waited for its end


def test_a_cluster_that_was_up_before_the_job_stays_up(stops):
    with cli.cluster_winding_down(RuntimeInfo("embedded", "local", 8, 0, started_here=False)):
        pass
    assert stops == []
