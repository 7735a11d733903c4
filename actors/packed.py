"""The forward passes of PPO's roles and DPO's ranks over packed sequences (ppo.pack_sequences,
dpo.pack_sequences; the layout is actors/algo/packing.py), and the check each makes once at start that its model
gives the same outputs packed as padded.

A forward here is `forward(input_ids, attention_mask, position_ids) -> [rows, width, ...]`: called with the
attention mask for the padded layout, with the position ids for the packed one. The check matters because
packing relies on the model reading restarting position ids as sequence boundaries: Transformers' causal-mask
builder does for the families rayalign ships (tests/unit/test_families.py runs all seven), but a user's model with
its own attention code might not, and would then silently attend across sequences. Where it does not, the role
pads as before and says so in its log (and the PPO start-up line says "padded").
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from actors.algo.packing import pack, plan_for, unpack

log = logging.getLogger("rayalign.ppo")
Forward = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
CHECK_LENGTHS = (7, 3, 9, 2, 5)  # packs into fewer rows than sequences, with restarts mid-row and a padded tail
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the outputs' largest magnitude; 16-bit: 2e-2


def lm_forward(model) -> Forward:
    """A causal LM's logits as a Forward."""
    def forward(input_ids, attention_mask, position_ids):
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits
    return forward


def run(forward: Forward, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool) -> torch.Tensor:
    """[B, L, ...] outputs for a right-padded batch. With `packed`: through packed rows where packing saves a row,
    else the batch as it is under the causal mask alone; without: the batch and its padding mask."""
    if not packed:
        return forward(input_ids, attention_mask, None)
    plan = plan_for(attention_mask.cpu())
    if plan.rows == input_ids.shape[0]:
        # Nothing to pack, but the batch is right-padded: under the causal mask alone no real token sees the pads
        # after it, so the padding mask only costs attention its masked path (17% of a 25M model's forward and
        # backward at these lengths, against SDPA's causal kernel).
        return forward(input_ids, None, None)
    ids, positions = pack(input_ids, plan, pad_id=0)  # the tails' token never reaches an output anyone reads
    return unpack(forward(ids, None, positions), plan, input_ids.shape[1])


@torch.no_grad()
def agrees(forward: Forward, vocab_size: int, device, dtype: torch.dtype, role: str) -> bool:
    """Whether the model's outputs on a small seeded batch are the same packed as padded (at the dtype's
    tolerance); logs the fallback to padding when they are not."""
    generator = torch.Generator().manual_seed(0)
    width = max(CHECK_LENGTHS)
    ids = torch.randint(0, vocab_size, (len(CHECK_LENGTHS), width), generator=generator)
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(CHECK_LENGTHS).unsqueeze(1)).long()
    ids, mask = (ids * mask).to(device), mask.to(device)
    padded = forward(ids, mask, None).float()
    inside = mask.bool()
    scale = max(float(padded[inside].abs().max()), 1.0)
    # Both layouts run() may choose: packed rows, and the right-padded rows under the causal mask alone.
    diff = max(float((padded - other.float()).abs()[inside].max()) / scale
               for other in (run(forward, ids, mask, packed=True), forward(ids, None, None)))
    if diff <= TOLERANCE.get(dtype, 2e-2):
        return True
    log.warning("%s: pack_sequences is on, but this model's outputs differ packed and padded (largest relative "
                "difference %.3g): it does not read restarting position ids as sequence boundaries, so its batches "
                "stay padded", role, diff)
    return False


def engine_agrees(engine, forward: Forward, vocab_size: int, dtype: torch.dtype, role: str) -> bool:
    """`agrees` for a trained engine (PPO policy or value, a DPO rank), in eval mode so dropout cannot tell the
    layouts apart, then back to training."""
    engine.eval()
    try:
        return agrees(forward, vocab_size, engine.device, dtype, role)
    finally:
        engine.train()
