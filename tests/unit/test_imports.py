"""Heavy imports with the cyclic collector paused and their objects frozen (common/imports.py)."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from common.imports import collector_paused, import_frozen


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_collector_is_off_inside_and_back_on_after():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_what_exists_at_the_end_is_frozen_and_what_comes_later_is_collected():
    with collector_paused():
        before = weakref.ref(Node())
    after = weakref.ref(Node())
    gc.collect()
    assert before() is not None  # frozen: the price of a pause, so only imports belong inside one
    assert after() is None


def test_a_nested_pause_leaves_the_collector_as_the_outer_one_found_it():
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_failing_block_still_turns_the_collector_back_on():
    with pytest.raises(ZeroDivisionError):
        with collector_paused():
            1 / 0
    assert gc.isenabled()


def test_import_frozen_imports_and_a_missing_module_raises():
    import_frozen("colorsys")
    assert "colorsys" in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import_frozen("no_such_module_here")
    assert gc.isenabled()
