"""Fixtures of the unit tests alone."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def fsynced(monkeypatch) -> list:
    """The inode of everything os.fsync is called on, in call order; the real fsync still runs. A power cut is
    what durability is about and no test can make one: the calls, and their order, are what a test can check."""
    calls = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls
