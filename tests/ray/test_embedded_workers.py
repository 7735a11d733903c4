"""What every worker process of the embedded cluster gets from runtime.start."""

import logging

import ray


@ray.remote(num_cpus=0)
def messages_that_reach_handlers(logger_name: str, messages: list[str]) -> list[str]:
    logger = logging.getLogger(logger_name)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        for message in messages:
            logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return seen


def test_workers_drop_the_cleaners_state_api_warning_and_nothing_else(ray_session):
    """With no dashboard there is no State API, so Ray Train's placement-group cleaner would warn every few
    seconds all run long; the setup hook drops that line in every worker, and only that line."""
    from cluster.quiet_logs import PLACEMENT_GROUP_CLEANER

    other = "Failed to clean up placement group: boom"
    seen = ray.get(messages_that_reach_handlers.remote(PLACEMENT_GROUP_CLEANER.logger,
                                                       [PLACEMENT_GROUP_CLEANER.message, other]))
    assert seen == [other]
