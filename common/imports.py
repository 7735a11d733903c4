"""Heavy imports without the cyclic garbage collector, their objects kept out of later collections, and without the
optional packages they would load for features rayalign never uses.

Importing torch, Transformers, DeepSpeed and vLLM creates about 800,000 Python objects. While they load, the
collector runs again and again over the growing heap (each full pass costs 0.3-0.5 s here), and once they are
loaded every explicit `gc.collect()` scans them all again: vLLM's engine start-up alone calls it five times
(1.35 s of its 3.3 s on this machine). The objects an import leaves are modules, classes and functions that
live as long as the process, so there is nothing to find in them.

`heavy_imports` turns the collector off for the imports and then freezes what exists (`gc.freeze`: moved to a
generation no collection visits) before turning it back on. Measured on the 2-core machine: torch + Transformers +
DeepSpeed import in 3.0 s instead of 4.3 s; vLLM's `LLM(...)` starts in 1.1 s instead of 2.7-3.0 s. The cost is
the cyclic garbage the imports themselves left, which stays: 8 MB of resident memory measured. Only imports
belong inside it: anything frozen is never freed, so a model or a batch must not be created in it.

Transformers also imports two optional packages whenever they are installed, for features rayalign never uses:
scikit-learn, from the module every causal LM loads (`transformers/generation/candidate_generator.py`), for the
confidence threshold of assisted decoding; and SciPy, from `transformers/loss/loss_for_object_detection.py`, for
the Hungarian matching of object-detection losses. Both stay installed (sentence-transformers, which the encoder
package depends on, needs them). Measured here: `from transformers import AutoModelForCausalLM` with the collector
paused takes 2.8-3.2 s with them and 2.1-2.2 s without; the vLLM engine's start (import and `LLM(...)`) 4.6-4.7 s
with them and 3.9 s without. So a heavy import runs with them hidden (`sys.modules[name] = None`: Python's own way
to mark a module absent; `importlib.util.find_spec` then answers None and an import raises ImportError), and they
are unhidden afterwards, so later code that wants them imports them as usual. The consequence, named: what a module
imported inside the window decided about them stays decided. In a process that hid them, Transformers' assisted
decoding with `assistant_confidence_threshold` and its object-detection losses would fail (each checks for its
package again when called, but never imported the function it calls), and vLLM's SciPy audio resampling
(`vllm/multimodal/audio.py`, for audio-input models) is its "please install" placeholder. rayalign's models take
token ids in and text out, so none of these runs here.

The other way round, too: Transformers decides once, when `transformers.utils.import_utils` loads, whether the
packages are there, and imports them later, lazily, in the modules that use them. A process that loaded it outside
a window (a plug-in, a notebook) has decided they are there, so a later window does not hide them: hidden, the
lazy import of `transformers.loss` inside that window would fail ("'scipy' is not a package").
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import sys

UNUSED_OPTIONAL = ("sklearn", "scipy")  # imported by Transformers for features rayalign never uses (see above)
DECIDER = "transformers.utils.import_utils"  # where Transformers decides, once, which optional packages exist
_decided_hidden = False  # whether DECIDER loaded inside a window, with UNUSED_OPTIONAL hidden


@contextlib.contextmanager
def heavy_imports():
    """Run the block with the collector off and UNUSED_OPTIONAL hidden (those not already imported, unless
    Transformers saw them outside a window), then freeze every object that exists and unhide them. Nested uses
    leave the collector as the outermost found it."""
    global _decided_hidden
    decided_before = DECIDER in sys.modules
    hide = not decided_before or _decided_hidden
    hidden = [name for name in UNUSED_OPTIONAL if name not in sys.modules] if hide else []
    for name in hidden:
        sys.modules[name] = None
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if not decided_before and DECIDER in sys.modules:
            _decided_hidden = bool(hidden)
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        gc.freeze()
        if enabled:
            gc.enable()


def import_frozen(*modules: str) -> None:
    """Import `modules` under `heavy_imports` (a module already imported costs nothing)."""
    with heavy_imports():
        for module in modules:
            importlib.import_module(module)
