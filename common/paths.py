"""Where relative paths in configs point: the current folder first, then the repository root."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the current folder, then from the repository root (so the shipped
    recipes' '../shared/...' paths work from anywhere inside the checkout)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    from_repo = REPO_ROOT / candidate
    return from_repo.resolve() if from_repo.exists() else candidate.resolve()
