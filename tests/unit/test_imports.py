"""Heavy imports with the cyclic collector paused and their objects frozen (common/imports.py)."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from common.imports import heavy_imports, import_frozen


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_collector_is_off_inside_and_back_on_after():
    assert gc.isenabled()
    with heavy_imports():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_what_exists_at_the_end_is_frozen_and_what_comes_later_is_collected():
    with heavy_imports():
        before = weakref.ref(Node())
    after = weakref.ref(Node())
    gc.collect()
    assert before() is not None  # frozen: the price of a pause, so only imports belong inside one
    assert after() is None


def test_a_nested_pause_leaves_the_collector_as_the_outer_one_found_it():
    with heavy_imports():
        with heavy_imports():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_failing_block_still_turns_the_collector_back_on():
    with pytest.raises(ZeroDivisionError):
        with heavy_imports():
            1 / 0
    assert gc.isenabled()


def test_import_frozen_imports_and_a_missing_module_raises():
    import_frozen("colorsys")
    assert "colorsys" in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import_frozen("no_such_module_here")
    assert gc.isenabled()


def test_transformers_loads_without_scikit_learn_and_scipy_which_import_as_usual_afterwards():
    """A causal LM's Transformers import would bring scikit-learn and SciPy (0.7-0.9 s) for features rayalign never
    uses; inside heavy_imports it does not, and afterwards both import as usual. In a fresh interpreter: this one may
    have imported either already."""
    import subprocess

    probe = "\n".join([
        "import importlib.util, sys",
        "from common.imports import heavy_imports",
        "with heavy_imports():",
        "    hidden = importlib.util.find_spec('sklearn') is None and importlib.util.find_spec('scipy') is None",
        "    from transformers import AutoModelForCausalLM",
        "    import transformers.generation.candidate_generator",
        "print(hidden, 'sklearn' in sys.modules, 'scipy' in sys.modules)",
        "import sklearn.metrics, scipy.optimize",
        "print(importlib.util.find_spec('sklearn') is not None)",
    ])
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False", "True"]


def test_a_transformers_that_saw_scipy_outside_a_window_keeps_it_inside_one():
    """Transformers loaded outside a window has decided SciPy is there; a later window must not hide it, or the lazy
    import of its object-detection loss fails. Loaded inside one, it decided SciPy is absent, and later windows
    keep hiding it. Fresh interpreters: this one has imported Transformers already."""
    import subprocess

    outside = "\n".join([
        "import sys, transformers",
        "from common.imports import heavy_imports",
        "with heavy_imports():",
        "    import transformers.loss.loss_for_object_detection",
        "print('scipy' in sys.modules)",
    ])
    inside = "\n".join([
        "import importlib.util",
        "from common.imports import heavy_imports",
        "with heavy_imports():",
        "    import transformers.utils.import_utils",
        "with heavy_imports():",
        "    print(importlib.util.find_spec('scipy') is None)",
    ])
    for probe, expected in ((outside, "True"), (inside, "True")):
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-1500:]
        assert done.stdout.split() == [expected]
