"""Every error type rayalign raises on purpose, and which of them are the user's to fix.

They live in the ground layer so that any layer can raise them and the command line (jobs/cli.py) can turn the
user's ones into one line and exit status 2 without importing the layers that raise them.
"""

from __future__ import annotations

from pathlib import Path


# ---- mistakes a user can fix: one line naming what and where, exit status 2 ---------------------------------
class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted field and what is allowed."""


class PlanRefused(ConfigError):
    """The recipe cannot fit the profile's hardware; the message says which stage, role and memory term."""


class RecordError(ValueError):
    """A data row or file cannot be read; the message names the file and line."""

    def __init__(self, message: str, where: str = "", reason: str = ""):
        super().__init__(message)
        self.where, self.reason = where, reason or message

    @classmethod
    def at(cls, where: str | Path, reason: str) -> RecordError:
        return cls(f"{where}: {reason}", str(where), reason)


class NotAPair(RecordError):
    """A well-formed preference row whose chosen and rejected replies answer different conversations, so there
    is no preference between them. Public sets hold a few (5 of Anthropic HH-RLHF harmless-base's 1,800 test
    rows): strict reading skips them and warns with their count and file:line rather than stopping a run that
    the rest of the file can feed; lenient reading passes them on like any bad row."""


class SourceError(RecordError):
    """A whole file or folder cannot be read (missing, unsupported type, not valid as a whole): no record of
    it can be read, so even lenient reading yields nothing more from it."""


class ModelDirError(ValueError):
    """A model folder is missing or incomplete."""


class QuantizationUnavailable(RuntimeError):
    """int8 / 4-bit loading was requested where bitsandbytes + CUDA cannot run."""


class EmptyDatasetError(ValueError):
    """Nothing is left to train on after reading and filtering (no records, no prompts, nothing to hold out)."""


class ClusterUnreachable(ConnectionError):
    """The configured Ray cluster address could not be reached in time."""


class RewardModelTooLarge(ValueError):
    """The reward model is much larger than the policy and the config says to refuse (SPEC §3)."""


class PlacementError(RuntimeError):
    """A role's resources cannot be reserved on this cluster."""


class RewardFunctionError(ValueError):
    """A plug-in reward function raised, timed out, or returned something that is not one number per response;
    the message names the function and the first bad record."""


class EndpointError(ConnectionError):
    """An OpenAI-compatible endpoint (jobs.synthesize) cannot be reached, or refuses the configured token."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, RecordError, ModelDirError, QuantizationUnavailable, EmptyDatasetError, ClusterUnreachable,
    RewardModelTooLarge, PlacementError, RewardFunctionError, EndpointError)


# ---- how a run ended early -------------------------------------------------------------------------------
class Preempted(Exception):
    """The job stopped early on a signal after saving a checkpoint; re-running the same command resumes."""


class RunFailed(Exception):
    """A worker kept dying past the job's restart budget; the message names the role, what it was doing and
    the checkpoint a re-run resumes from. Ray's log lines before it carry the workers' own tracebacks."""


# ---- failures inside a run (handled by the run itself, or ending it as RunFailed) -------------------------
class RoleFailure(RuntimeError):
    """A rank of a role died or raised; the message names the role, rank and method."""


class TooManyNaNSteps(RuntimeError):
    """Training produced NaN/Inf losses for ppo.max_nan_steps steps in a row."""


class RewardServiceError(RuntimeError):
    """The reward service could not be reached or rejected the request."""
