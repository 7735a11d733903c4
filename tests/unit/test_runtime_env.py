"""The environment a driver hands its embedded cluster's workers (cluster/runtime.py)."""

from __future__ import annotations

import os
import shutil
import sys

from cluster.runtime import tools_beside_interpreter_first


def test_this_pythons_scripts_come_first_once(monkeypatch):
    scripts = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", scripts, "/bin"]))
    tools_beside_interpreter_first()
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]
    tools_beside_interpreter_first()  # idempotent
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]


def test_deepspeeds_ninja_is_the_one_installed_with_it(monkeypatch):
    """DeepSpeed's JIT build takes the first ninja on PATH; the environment's own must win over a system one."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    tools_beside_interpreter_first()
    assert shutil.which("ninja") == os.path.join(os.path.dirname(sys.executable), "ninja")
