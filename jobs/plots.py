"""PNG figures at the end of a run: one panel per metric against step, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from common.durable import publish


def plot_curves(rows: list[dict], keys: Iterable[str], path: str | Path, title: str) -> Path | None:
    """One panel per metric key against step; keys absent from the log are skipped."""
    keys = [k for k in keys if any(k in row for row in rows)]
    if not keys:
        return None
    fig, axes = stacked_panels(len(keys), 7, 2.6)
    for ax, key in zip(axes[:, 0], keys):
        points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=110, lay_out=False)


# A stacked figure's margins, in inches: the y tick labels and axis label on the left, a twin axis's tick labels
# on the right, the figure title above, the x tick labels below, and between two panels the upper one's x tick
# labels and the lower one's title.
LEFT_IN, RIGHT_IN, TWIN_RIGHT_IN, TOP_IN, BOTTOM_IN, GAP_IN = 1.0, 0.3, 0.8, 0.7, 0.55, 0.6


def stacked_panels(n: int, width: float, panel_height: float, twin_axes: bool = False):
    """(figure, n×1 axes) of n panels one above the other, with margins fixed in inches: no tight_layout, which
    draws the whole figure once more to measure its labels (0.1-0.4 s a figure on the 2-core machine; a third of
    the 1.9 s a PPO run's four figures took after its last step). `twin_axes`: room for tick labels on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = panel_height * n
    panel = (height - TOP_IN - BOTTOM_IN - GAP_IN * (n - 1)) / n
    margins = {"left": LEFT_IN / width, "right": 1 - (TWIN_RIGHT_IN if twin_axes else RIGHT_IN) / width,
               "top": 1 - TOP_IN / height, "bottom": BOTTOM_IN / height, "hspace": GAP_IN / panel}
    return plt.subplots(n, 1, figsize=(width, height), squeeze=False, gridspec_kw=margins)


def save_figure(fig, path: str | Path, dpi: int = 100, lay_out: bool = True) -> Path:
    """Lay out (unless the figure's margins are fixed: stacked_panels), write to a temp file, rename (a reader
    never sees half a PNG), and free the figure."""
    import matplotlib.pyplot as plt

    if lay_out:
        fig.tight_layout()
    tmp = Path(f"{path}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    publish(tmp, path)  # the temp name keeps .png: savefig reads the format from it
    return Path(path)
