"""Shared fixtures: one real local Ray cluster per test session (house rule 8), tiny configs in tmp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_CPU = REPO / "configs" / "tiny-cpu.yaml"
SHARED = (REPO / ".." / "shared").resolve()
POLICY_PATH = SHARED / "models" / "stories260K-hd32"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A real embedded Ray cluster on loopback, started through the product's own runtime.start.

    Logical CPUs exceed the 2 physical cores on purpose: PPO places several single-CPU actors at once."""
    from cluster import runtime
    from common.config import RayConfig

    info = runtime.start(RayConfig(num_cpus=8), ray_train=True)  # the session runs every kind of job
    yield info
    runtime.stop()


@pytest.fixture
def tiny_config(tmp_path):
    """Factory: the tiny CPU recipe with outputs under tmp_path plus any overrides."""
    from common.config import load_config

    def make(*overrides: str):
        return load_config(TINY_CPU, [f"run.output_root={tmp_path}", *overrides])

    return make
