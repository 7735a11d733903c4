"""The forward passes of PPO's roles and DPO's ranks over packed sequences (ppo.pack_sequences,
dpo.pack_sequences; the layout is actors/algo/packing.py), and the check each makes once at start that its model
gives the same outputs packed as padded.

A forward here is `forward(input_ids, attention_mask, position_ids) -> [rows, width, ...]`: called with the
attention mask for the padded layout, with the position ids for the packed one. The check matters because
packing relies on the model reading restarting position ids as sequence boundaries: Transformers' causal-mask
builder does for the families rayalign ships (tests/unit/test_families.py runs all seven), but a user's model with
its own attention code might not, and would then silently attend across sequences. Where it does not, the role
pads as before and says so in its log (and the PPO start-up line says "padded").

With shared prompts (ppo.share_prompts) the answers to one prompt share one copy of it in their row, under a 4-D
attention mask that lets each answer see the prompt and itself (actors/algo/packing.py). That needs a model that
takes such a mask as it is given (Transformers does for its sdpa and eager attention); each role checks that
once too (`shares_agree`), and where the outputs differ it packs without sharing and says so.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from actors.algo.packing import pack, plan_for, plan_shared, prompt_lengths, shared_attention, unpack

log = logging.getLogger("rayalign.ppo")
Forward = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
CHECK_LENGTHS = (7, 3, 9, 2, 5)  # packs into fewer rows than sequences, with restarts mid-row and a padded tail
MAX_SHARED_MASK = 2 ** 26  # entries of a shared-prompt attention mask (64 MiB as bool)
CHECK_PROMPTS = (4, 2, 4, 1, 4)  # sequences 0, 2 and 4 share their first 4 tokens: one unit of a prompt and 3 answers
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}  # relative to the outputs' largest magnitude; 16-bit: 2e-2


def lm_forward(model) -> Forward:
    """A causal LM's logits as a Forward."""
    def forward(input_ids, attention_mask, position_ids):
        return model(input_ids=input_ids, attention_mask=for_attention(model, attention_mask),
                     position_ids=position_ids, use_cache=False).logits
    return forward


def for_attention(model, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A shared-prompt mask (4-D bool, True: may attend) as the model's attention takes it: Transformers hands a
    4-D mask to the attention function unchanged, and its eager attention adds it to the scores."""
    if attention_mask is None or attention_mask.dim() != 4:
        return attention_mask
    inner = getattr(model, "module", model)  # a training engine's model
    if getattr(getattr(inner, "config", None), "_attn_implementation", "sdpa") != "eager":
        return attention_mask
    dtype = getattr(inner, "dtype", torch.float32)
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, torch.finfo(dtype).min)


def layout_name(pack: bool, share: bool) -> str:
    """How a role lays out its batches, for the start-up line."""
    return ("packed, shared prompts" if share else "packed") if pack else "padded"


def prompts_of(batch, share: bool) -> torch.Tensor | None:
    """Each sequence's prompt length, for run() to share prompts by (ppo.share_prompts); None when not sharing."""
    return prompt_lengths(batch.action_mask, batch.attention_mask) if share else None


def run(forward: Forward, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool,
        prompts: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L, ...] outputs for a right-padded batch. With `packed`: through packed rows where packing saves a row,
    else the batch as it is under the causal mask alone; without: the batch and its padding mask. With `prompts`
    (each sequence's prompt length) as well: sequences with the same prompt share one copy of it, where any do."""
    if not packed:
        return forward(input_ids, attention_mask, None)
    if prompts is not None:
        plan = plan_shared(input_ids.cpu(), attention_mask.cpu(), prompts.cpu())
        # The mask holds rows x width^2 entries: past a bound (long sequences) the batch packs without sharing.
        if plan.shares and plan.rows * plan.width ** 2 <= MAX_SHARED_MASK:
            ids, positions = pack(input_ids, plan, pad_id=0)
            mask = shared_attention(plan).to(input_ids.device)
            return unpack(forward(ids, mask, positions), plan, input_ids.shape[1])
    plan = plan_for(attention_mask.cpu())
    if plan.rows == input_ids.shape[0]:
        # Nothing to pack, but the batch is right-padded: under the causal mask alone no real token sees the pads
        # after it, so the padding mask only costs attention its masked path (17% of a 25M model's forward and
        # backward at these lengths, against SDPA's causal kernel).
        return forward(input_ids, None, None)
    ids, positions = pack(input_ids, plan, pad_id=0)  # the tails' token never reaches an output anyone reads
    return unpack(forward(ids, None, positions), plan, input_ids.shape[1])


def check_batch(vocab_size: int, device, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the start-up checks: seeded sequences of CHECK_LENGTHS, right-padded; with
    `shared`, sequences 0, 2 and 4 start with the same 4 tokens (CHECK_PROMPTS)."""
    generator = torch.Generator().manual_seed(1 if shared else 0)
    width = max(CHECK_LENGTHS)
    ids = torch.randint(0, vocab_size, (len(CHECK_LENGTHS), width), generator=generator)
    if shared:
        ids[2, :4] = ids[4, :4] = ids[0, :4]
    mask = (torch.arange(width).unsqueeze(0) < torch.tensor(CHECK_LENGTHS).unsqueeze(1)).long()
    return (ids * mask).to(device), mask.to(device)


def largest_difference(padded: torch.Tensor, others: list[torch.Tensor], mask: torch.Tensor) -> float:
    """The largest difference of any of `others` from the padded outputs over the real tokens, relative to the
    padded outputs' largest magnitude."""
    inside, padded = mask.bool(), padded.float()
    scale = max(float(padded[inside].abs().max()), 1.0)
    return max(float((padded - other.float()).abs()[inside].max()) / scale for other in others)


@torch.no_grad()
def agrees(forward: Forward, vocab_size: int, device, dtype: torch.dtype, role: str) -> bool:
    """Whether the model's outputs on a small seeded batch are the same packed as padded (at the dtype's
    tolerance); logs the fallback to padding when they are not."""
    ids, mask = check_batch(vocab_size, device, shared=False)
    # Both layouts run() may choose: packed rows, and the right-padded rows under the causal mask alone.
    diff = largest_difference(forward(ids, mask, None), [run(forward, ids, mask, packed=True),
                                                           forward(ids, None, None)], mask)
    return within_tolerance(diff, dtype, role, "pack_sequences is on, but this model's outputs differ packed and "
                             "padded (largest relative difference %.3g): it does not read restarting position ids as "
                             "sequence boundaries, so its batches stay padded")


def within_tolerance(diff: float, dtype: torch.dtype, role: str, fallback: str) -> bool:
    """Whether a check's largest relative difference is within the dtype's tolerance; logs `fallback` (formatted
    with the difference) for the role when it is not."""
    if diff <= TOLERANCE.get(dtype, 2e-2):
        return True
    log.warning("%s: " + fallback, role, diff)
    return False


def may_share(config, role: str) -> bool:
    """Whether a model of this config may share prompts at all: not where it attends through a sliding window.
    Transformers applies the window in its mask builder, which a ready 4-D mask bypasses, so the start-up check on
    short sequences would pass while longer ones attended past the window."""
    window = None if getattr(config, "use_sliding_window", True) is False else getattr(config, "sliding_window", None)
    if window is None:
        return True
    log.warning("%s: share_prompts is on, but this model attends through a sliding window (%d tokens) that a "
                "shared-prompt mask would bypass, so its sequences are packed without sharing their prompts",
                role, window)
    return False


@torch.no_grad()
def shares_agree(forward: Forward, vocab_size: int, device, dtype: torch.dtype, role: str) -> bool:
    """Whether the model's outputs are the same with prompts shared as padded (a seeded batch where three sequences
    share a prompt); logs the fallback to packing without sharing when they are not."""
    ids, mask = check_batch(vocab_size, device, shared=True)
    diff = largest_difference(forward(ids, mask, None),
                               [run(forward, ids, mask, packed=True, prompts=torch.tensor(CHECK_PROMPTS))], mask)
    return within_tolerance(diff, dtype, role, "share_prompts is on, but this model's outputs differ with a shared "
                             "prompt and padded (largest relative difference %.3g): it does not take a 4-D attention "
                             "mask as given, so its sequences are packed without sharing their prompts")


def choose_layout(forward: Forward, config, device, dtype: torch.dtype, role: str, pack: bool,
                  share: bool) -> tuple[bool, bool]:
    """(pack, share): whether the model (of this Transformers config) packs its batches (pack_sequences asked, and
    `agrees`) and shares prompts in them (share_prompts asked as well, no sliding window, and `shares_agree`)."""
    check = (forward, config.vocab_size, device, dtype, role)
    packs = pack and agrees(*check)
    return packs, packs and share and may_share(config, role) and shares_agree(*check)


def engine_layout(engine, forward: Forward, config, dtype: torch.dtype, role: str, pack: bool,
                  share: bool) -> tuple[bool, bool]:
    """`choose_layout` for a trained engine (PPO policy or value, an SFT or DPO rank), in eval mode so dropout cannot
    tell the layouts apart, then back to training."""
    engine.eval()
    try:
        return choose_layout(forward, config, engine.device, dtype, role, pack, share)
    finally:
        engine.train()
