"""A reward-model folder for serving tests, built in seconds instead of trained."""

from __future__ import annotations

from pathlib import Path

import torch

from actors import reward
from actors.zero_trainer import save_hf_model
from tests.conftest import POLICY_PATH


def make_reward_dir(target: Path) -> str:
    """The tiny policy with a seeded scalar head (untrained, but a fixed function whose scores are of order 1,
    so differences between replies are visible), saved as a Hugging Face folder with its tokenizer."""
    torch.manual_seed(0)
    tokenizer = reward.load_reward_tokenizer(POLICY_PATH, "chat")
    model = reward.load_sequence_classifier(POLICY_PATH, tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    return save_hf_model(model, tokenizer, target)
