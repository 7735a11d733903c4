"""Files that a crash leaves whole or not at all: written beside their final name, made durable, renamed into place.

A rename alone is atomic, not durable in order: after a power loss or a node crash the new name can be on disk while
the data it points at is not, and a resume then finds an empty or partial checkpoint under the final name. So the data
is fsynced before the rename and the folder holding the name after it. One fsync per file, never per tensor or row:
the cost is the file reaching the disk, which a checkpoint needs anyway.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def write_atomically(path: str | os.PathLike, data: str | bytes) -> Path:
    """`data` (text as UTF-8) under `path`, whole or not at all, and still there after a crash once this returns."""
    path = Path(path)
    tmp = temp_path(path)
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return publish(tmp, path)


def temp_path(path: str | os.PathLike) -> Path:
    """Where a file is written before it takes `path`'s name: beside it (a rename never crosses filesystems) and
    hidden, so a glob for the real files never matches it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the finished file `tmp` (written by us or a library, e.g. torch.save) to `path`: its data reaches the
    disk before the rename, the rename after it."""
    path = Path(path)
    _fsync_path(Path(tmp))
    os.replace(tmp, path)
    fsync_folder(path.parent)
    return path


def sync_tree(folder: str | os.PathLike) -> None:
    """Every file and folder under `folder`, the folder itself and its name in its parent, on disk: for a folder that
    others wrote (DeepSpeed's shards, save_pretrained), before the file or rename that declares it complete."""
    folder = Path(folder)
    inside = sorted(folder.rglob("*"))
    for path in inside:
        if path.is_file():
            _fsync_path(path)
    for path in [*(p for p in inside if p.is_dir()), folder, folder.parent]:
        fsync_folder(path)


def fsync_folder(folder: str | os.PathLike) -> None:
    """The folder's entries (names created, renamed or removed) on disk. POSIX only: elsewhere a folder cannot be
    opened, and its entries are written through."""
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno != errno.EINVAL:  # EINVAL: a filesystem (some FUSE and network mounts) that cannot sync one
            raise
    finally:
        os.close(handle)


def _fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
