"""The reward-term ablation's pure parts (jobs/ppo_ablation.py) and its command line without a cluster."""

from __future__ import annotations

import pytest

from common.config import load_config
from common.errors import ConfigError
from jobs.ppo_ablation import (
    check_runs,
    cumulative_runs,
    main,
    parse_order,
    parse_runs,
    run_config,
    summarize,
    table_markdown,
)


def test_cumulative_runs_add_one_term_at_a_time():
    assert cumulative_runs(["rm", "kl", "length"]) == [("rm",), ("rm", "kl"), ("rm", "kl", "length")]


def test_parse_order_and_runs():
    assert parse_order(" rm, kl ,,length") == ["rm", "kl", "length"]
    assert parse_runs("rm,rm+kl, rm + length") == [("rm",), ("rm", "kl"), ("rm", "length")]


@pytest.mark.parametrize("runs, message", [
    ([], "at least one run"),
    ([("rm",), ()], "has no reward terms"),
    ([("rm", "lenght")], "unknown reward term 'lenght'"),
    ([("rm", "kl", "rm")], r"rm\+kl\+rm names a term twice"),
    ([("rm",), ("rm",)], "repeat rm"),
])
def test_bad_runs_are_named(runs, message):
    with pytest.raises(ConfigError, match=message):
        check_runs(runs)


def test_run_config_changes_only_the_terms_and_the_output_folder(tmp_path):
    cfg = load_config(None, ["run.seed=5", "ppo.steps=3"])
    run = run_config(cfg, ("rm", "kl"), tmp_path)
    assert run.ppo.reward.enabled_terms == ["rm", "kl"]
    assert run.run.output_dir("ppo") == tmp_path / "rm+kl" / "ppo"
    assert run.run.seed == 5 and run.ppo.steps == 3 and run.ppo.kl == cfg.ppo.kl


def test_summary_row_and_table():
    rows = [{"step": s, "reward/rm_mean": float(s), "kl_k3": 2.0 * s, "health/distinct_2": 0.5} for s in (1, 2, 3)]
    row = summarize(("rm", "kl"), rows, alarms=1, window=2)
    assert row["run"] == "rm+kl" and row["steps"] == 3 and row["alarms"] == 1
    assert row["rm score"] == pytest.approx(2.5, rel=1e-12) and row["KL (k3)"] == pytest.approx(5.0, rel=1e-12)
    assert row["length term"] is None
    table = table_markdown([row], window=2)
    assert "| run | steps | alarms | rm score | KL (k3) | distinct-2 |" in table
    assert "| rm+kl | 3 | 1 | 2.5 | 5 | 0.5 |" in table


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--order", "--runs", "--normalizations", "--window", "--config", "ppo.reward.enabled_terms"):
        assert option in text


def test_unknown_term_fails_before_any_run(tmp_path):
    from jobs import cli

    assert cli.run_main("jobs.ppo_ablation", main, ["--runs", "rm,rm+lenght", f"run.output_root={tmp_path}"]) == 2
    assert not (tmp_path / "rayalign" / "ablation" / "rm").exists()


def test_sum_against_normalise_then_sum_runs_each_set_of_terms_both_ways(tmp_path):
    from jobs.ppo_ablation import parse_normalizations

    cfg = load_config(None, ["ppo.reward.term_normalization=none"])
    assert parse_normalizations(None, cfg) == [None]
    assert parse_normalizations("none, batch", cfg) == ["none", "batch"]
    run = run_config(cfg, ("rm", "length"), tmp_path, "batch")
    assert run.ppo.reward.term_normalization == "batch" and run.ppo.reward.enabled_terms == ["rm", "length"]
    assert run.run.output_dir("ppo") == tmp_path / "rm+length@batch" / "ppo"
    assert run_config(cfg, ("rm",), tmp_path).ppo.reward.term_normalization == "none"
    assert summarize(("rm",), [{"step": 1}], alarms=0, window=1, normalization="batch")["run"] == "rm@batch"
    with pytest.raises(ConfigError, match="unknown term normalization 'btach'; known: none, batch, group"):
        parse_normalizations("none,btach", cfg)
    with pytest.raises(ConfigError, match="group normalises over the answers to each prompt"):
        parse_normalizations("group", cfg)
