"""The Ray Train stop flag's module stays light: Ray imports it in the flag actor's own process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from actors.stop_flag import StopFlag, stop_flag_name


def test_the_flag_module_imports_neither_torch_nor_ray():
    code = "import sys, actors.stop_flag; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_flag_is_down_until_requested_and_named_by_the_resolved_folder(tmp_path):
    flag = StopFlag()
    assert not flag.requested()
    flag.request()
    assert flag.requested()
    assert stop_flag_name(tmp_path / "run" / ".." / "run") == f"rayalign-stop:{(tmp_path / 'run').resolve()}"
