"""The stop flag of a Ray Train run: a named actor the driver sets when SIGTERM arrives, which the training ranks
poll (actors/train_driver.py starts it, actors/zero_trainer.py reads it).

A module of its own that imports nothing heavy: Ray imports the module of an actor's class in the actor's
process, and the flag's process had imported torch with actors/train_driver.py (0.75 CPU-seconds of a Ray
Train start-up, for a flag)."""

from __future__ import annotations

from pathlib import Path


class StopFlag:
    """A named actor the driver sets when SIGTERM arrives (ray job stop, an eviction); training ranks poll it
    after every step. Ray Train workers are not the driver's children, so the signal cannot reach them."""

    def __init__(self):
        self.stop = False

    def request(self) -> None:
        self.stop = True

    def requested(self) -> bool:
        return self.stop


def stop_flag_name(output_dir) -> str:
    return f"rayalign-stop:{Path(output_dir).resolve()}"


_FLAGS: dict = {}


def stop_flag(output_dir):
    """The run's StopFlag actor, or None when it was launched without one (a test calling a trainer directly)."""
    import ray

    name = stop_flag_name(output_dir)
    if name not in _FLAGS:
        try:
            _FLAGS[name] = ray.get_actor(name)
        except ValueError:  # launched without a flag (a test calling the trainer directly): never stopped
            _FLAGS[name] = None
    return _FLAGS[name]
