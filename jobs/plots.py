"""PNG figures at the end of a run: one panel per metric against step, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def plot_curves(rows: list[dict], keys: Iterable[str], path: str | Path, title: str) -> Path | None:
    """One panel per metric key against step; keys absent from the log are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in row for row in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write to a temp file, rename (a reader never sees half a PNG), and free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = Path(f"{path}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return Path(path)
