"""Model sizes read from checkpoint headers alone, and the reward model's size check against the policy (SPEC §3):
pure file reading, so a job checks sizes before Ray starts."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from common.errors import ModelDirError, RewardModelTooLarge
from common.model_dir import check_model_dir

log = logging.getLogger("rayalign.reward")


def parameter_count_on_disk(path: str | Path) -> int:
    """Parameters of a checkpoint from safetensors headers alone (no weights loaded): for the LR-by-size rule
    and reward/policy size matching."""
    folder = check_model_dir(path, need_tokenizer=False)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelDirError(f"{folder}: parameter counting needs .safetensors weights")
    total = 0
    for file in files:
        with file.open("rb") as handle:
            header_len = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_len))
        for name, meta in header.items():
            if name != "__metadata__":
                numel = 1
                for dim in meta["shape"]:
                    numel *= dim
                total += numel
    return total


def check_size_match(rm_params: int, policy_params: int, ratio_warn: float = 1.5, refuse: bool = False) -> str | None:
    """SPEC §3: a reward model far larger than the policy made PPO unstable (70B RM / 7B policy), equal sizes
    were the most stable. Returns None when rm ≤ ratio_warn × policy; otherwise logs and returns a warning,
    or raises RewardModelTooLarge when `refuse`."""
    if rm_params <= 0 or policy_params <= 0:
        raise ValueError(f"parameter counts must be positive, got reward model {rm_params}, policy {policy_params}")
    ratio = rm_params / policy_params
    if ratio <= ratio_warn:
        return None
    message = (f"reward model has {rm_params:,} parameters, {ratio:.1f}x the policy's {policy_params:,} (limit "
               f"{ratio_warn}x): a reward model much larger than the policy destabilises PPO; use a backbone of the "
               f"policy's size or smaller")
    if refuse:
        raise RewardModelTooLarge(f"{message} (refused because reward_model.refuse_oversize=true)")
    log.warning(message)
    return message
