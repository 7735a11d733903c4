"""`python -m jobs.ppo_ablation` end to end on the tiny model: one seeded PPO run per reward-term set on the
session's Ray cluster, each with its run report, then the comparison table (Markdown + CSV) and plot."""

from __future__ import annotations

import csv

import pytest

from common.metrics import read_jsonl
from jobs.ppo_ablation import main
from tests.conftest import TINY_CPU

pytestmark = [pytest.mark.integration, pytest.mark.ray]

TINY_RUN = ["ppo.steps=2", "ppo.rollout_batch_size=16", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
            "ppo.max_prompts=16", "ppo.export=false", "ppo.rollout.max_new_tokens=16",
            "ppo.reward.rm_source=keyword", "ppo.report_prompts=[Say hello.]", "run.seed=7"]


# Slow: the ablation's arithmetic, table and plot are unit-tested (tests/unit/test_ppo_ablation.py); this runs it
# for real, three seeded PPO runs.
@pytest.mark.slow
def test_ablation_runs_each_term_set_and_compares_them(ray_session, tmp_path):
    result = main(["--config", str(TINY_CPU), "--runs", "rm,rm+kl", f"run.output_root={tmp_path}", *TINY_RUN])
    folder = tmp_path / "tiny-cpu" / "ablation"
    assert result.folder == folder and [s["run"] for s in result.summaries] == ["rm", "rm+kl"]
    rm_rows, rm_kl_rows = (read_jsonl(folder / label / "ppo" / "metrics.jsonl") for label in ("rm", "rm+kl"))
    assert len(rm_rows) == len(rm_kl_rows) == 2
    assert "reward/kl" not in rm_rows[0] and "reward/kl" in rm_kl_rows[0]
    # One seed for every run: the first rollouts (before any update) are the same.
    assert rm_rows[0]["reward/rm_mean"] == rm_kl_rows[0]["reward/rm_mean"]
    assert all((folder / label / "ppo" / "report.md").is_file() for label in ("rm", "rm+kl"))
    with (folder / "ablation.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == ["rm", "rm+kl"] and table[1]["kl term"] != ""
    assert "| rm+kl | 2 |" in (folder / "ablation.md").read_text()
    assert (folder / "ablation.png").stat().st_size > 0
