"""The stacked figures' fixed layout (jobs/plots.stacked_panels): margins and gaps in inches as set, and every
label of a run's figures inside the canvas, without tight_layout's extra draw."""

from __future__ import annotations

import pytest

from jobs.plots import BOTTOM_IN, GAP_IN, LEFT_IN, RIGHT_IN, TOP_IN, TWIN_RIGHT_IN, stacked_panels


@pytest.mark.parametrize("n,twin", [(1, False), (4, True), (10, False)])
def test_margins_and_gaps_are_the_inches_asked(n, twin):
    import matplotlib.pyplot as plt

    width, panel_height = 7.5, 2.8
    fig, axes = stacked_panels(n, width, panel_height, twin_axes=twin)
    height = n * panel_height
    boxes = [ax.get_position() for ax in axes[:, 0]]  # figure fractions, top panel first
    assert boxes[0].x0 * width == pytest.approx(LEFT_IN)
    assert (1 - boxes[0].x1) * width == pytest.approx(TWIN_RIGHT_IN if twin else RIGHT_IN)
    assert (1 - boxes[0].y1) * height == pytest.approx(TOP_IN)
    assert boxes[-1].y0 * height == pytest.approx(BOTTOM_IN)
    for upper, lower in zip(boxes, boxes[1:]):
        assert (upper.y0 - lower.y1) * height == pytest.approx(GAP_IN)
        assert upper.height == pytest.approx(lower.height)
    plt.close(fig)


def test_a_run_figures_labels_stay_on_the_canvas(tmp_path):
    """Wide tick labels on both sides, a long axis label, panel titles, a legend and the figure's title, as a PPO
    run's figures have them: everything drawn lies inside the figure."""
    import matplotlib.pyplot as plt

    fig, axes = stacked_panels(3, 7.5, 2.8, twin_axes=True)
    steps = list(range(1, 21))
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(steps, [-0.00025 * s for s in steps], label="reward/kl")
        ax.twinx().plot(steps, [12345.6 + s for s in steps])
        ax.set_ylabel("advantage/zero_spread_groups")
        ax.set_title(f"panel {i}", fontsize=10)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("PPO run: rewards")
    fig.savefig(tmp_path / "f.png", dpi=100)
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    assert drawn.x0 >= 0 and drawn.y0 >= 0
    assert drawn.x1 <= fig.get_figwidth() and drawn.y1 <= fig.get_figheight()
    plt.close(fig)
