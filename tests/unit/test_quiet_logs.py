"""The log filters drop exactly the lines they were written for, and those lines still exist in the
installed Ray and vLLM (an upgrade that rewords one fails here instead of letting the noise back)."""

import importlib
import inspect
import logging

import pytest

from cluster.quiet_logs import (
    PLACEMENT_GROUP_CLEANER,
    VLLM_WEIGHT_PUSH,
    DropMatching,
    install,
)


def record(logger: str, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)


def test_the_rotary_reload_warning_is_dropped_but_a_real_layer_failing_is_kept():
    rotary = VLLM_WEIGHT_PUSH[0]
    drop = DropMatching([rotary])
    assert not drop.filter(record(rotary.logger, "%s: Failed to load weights", "RotaryEmbedding"))
    assert drop.filter(record(rotary.logger, "%s: Failed to load weights", "LlamaAttention"))
    assert drop.filter(record(rotary.logger, "%s: Delayed processing", "RotaryEmbedding"))


def test_a_rule_without_args_drops_its_message_whatever_the_figures():
    timing = VLLM_WEIGHT_PUSH[1]
    drop = DropMatching([timing])
    assert not drop.filter(record(timing.logger, timing.message, 0.03))
    assert not drop.filter(record(timing.logger, timing.message, 12.5))
    assert drop.filter(record(timing.logger, "Reloading weights failed"))


def test_install_keeps_one_filter_per_logger_and_the_logger_really_filters(caplog):
    install(VLLM_WEIGHT_PUSH)
    install(VLLM_WEIGHT_PUSH)
    logger = logging.getLogger(VLLM_WEIGHT_PUSH[0].logger)
    assert sum(isinstance(f, DropMatching) for f in logger.filters) == 1
    logger.propagate, saved = True, logger.propagate
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            logger.warning("%s: Failed to load weights", "RotaryEmbedding")
            logger.warning("%s: Failed to load weights", "MergedColumnParallelLinear")
    finally:
        logger.propagate = saved
    assert [r.getMessage() for r in caplog.records] == ["MergedColumnParallelLinear: Failed to load weights"]


@pytest.mark.parametrize("rule", [PLACEMENT_GROUP_CLEANER, *VLLM_WEIGHT_PUSH], ids=lambda r: r.logger.rsplit(".", 1)[-1])
def test_each_filtered_message_is_still_what_the_library_logs(rule):
    source = inspect.getsource(importlib.import_module(rule.logger))
    # Ray splits its message over adjacent string literals; compare without the quotes and line breaks.
    joined = "".join(part for part in source.split('"')[1::2])
    assert rule.message in source or rule.message in joined, f"{rule.logger} no longer logs {rule.message!r}"
    assert rule.why

