"""DPO on the driver and on one rank, without Ray: how a preference record becomes two masked sequences, the
held-out split, rank shares, the reference cache lining up with its pairs, and the direction of the gradient
on the real tiny model."""

from __future__ import annotations

import math
from typing import get_args, get_type_hints

import pytest
import torch

from actors.algo.preference import DPO_LOSSES, dpo_loss
from actors.chat import IGNORE_INDEX
from actors.dpo_trainer import DPOSplit, DPOTrainer, build_dpo_split, encode_pairs, encode_reply, pair_logprobs
from actors.modeling import load_tokenizer
from actors.zero_trainer import TrainingSetup, balanced_share
from common.config import Config, DPOConfig, load_config
from common.configlib import describe
from common.errors import ConfigError, RecordError
from common.records import read_many
from jobs import cli
from jobs.dpo import SECTIONS
from tests.conftest import POLICY_PATH, TINY_CPU

PROMPT = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
          {"role": "user", "content": "Another one?"}]
RECORD = {"messages": PROMPT, "chosen": "Blue is a nice one.", "rejected": "Ugh, blue, obviously.", "source": "t:1"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(POLICY_PATH)


@pytest.fixture(scope="module")
def real_pairs(tokenizer):
    records = read_many(load_config(TINY_CPU).dpo.train_files, limit=8)
    return encode_pairs(records, tokenizer, 192)[0]


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([label for label in encoded.labels if label != IGNORE_INDEX])


# ---- encoding -------------------------------------------------------------------------------------------
def test_only_the_compared_reply_is_in_the_mask(tokenizer):
    pair = encode_pairs([RECORD], tokenizer, 192)[0][0]
    # The earlier assistant turn ("Red.") is context: masked, unlike in SFT where every reply is trained.
    assert trained_text(tokenizer, pair.chosen) == "Blue is a nice one.</s>\n"
    assert trained_text(tokenizer, pair.rejected) == "Ugh, blue, obviously.</s>\n"
    assert tokenizer.decode(pair.chosen.input_ids) == ("<s>User: Name a colour.\nAssistant: Red.</s>\n"
                                                       "User: Another one?\nAssistant: Blue is a nice one.</s>\n")
    masked = [i for i, label in enumerate(pair.chosen.labels) if label == IGNORE_INDEX]
    assert masked == list(range(masked[-1] + 1))  # the mask is one contiguous tail: the reply
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(pair.chosen.input_ids, pair.chosen.labels))


def test_chosen_and_rejected_share_the_prompt_tokens(tokenizer):
    pair = encode_pairs([RECORD], tokenizer, 192)[0][0]
    prompt_len = pair.chosen.labels.index(next(label for label in pair.chosen.labels if label != IGNORE_INDEX))
    assert pair.chosen.input_ids[:prompt_len] == pair.rejected.input_ids[:prompt_len]


def test_truncation_cuts_the_end_and_keeps_mask_aligned(tokenizer):
    full = encode_reply(tokenizer, PROMPT, RECORD["chosen"], 192)
    short = encode_reply(tokenizer, PROMPT, RECORD["chosen"], len(full.input_ids) - 3)
    assert short.input_ids == full.input_ids[:-3] and short.labels == full.labels[:-3]


def test_unusable_pairs_are_dropped_and_counted(tokenizer):
    same = dict(RECORD, rejected=RECORD["chosen"])
    long_prompt = dict(RECORD, messages=[{"role": "user", "content": "word " * 300}])
    pairs, truncated, identical = encode_pairs([RECORD, same, long_prompt], tokenizer, 64)
    assert (len(pairs), truncated, identical) == (1, 1, 1)


def test_a_record_without_a_preference_names_its_source(tokenizer):
    with pytest.raises(RecordError, match="data.json:item 3: not a preference pair"):
        encode_pairs([{"messages": PROMPT, "source": "data.json:item 3"}], tokenizer, 64)


def test_heldout_split_is_seeded_and_disjoint(tokenizer):
    records = [dict(RECORD, chosen=f"Colour number {i}.") for i in range(20)]
    split = build_dpo_split(records, tokenizer, 192, 0.25, seed=3)
    assert (len(split.train), len(split.eval)) == (15, 5)
    assert split == build_dpo_split(records, tokenizer, 192, 0.25, seed=3)
    held_out = {tuple(p.chosen.input_ids) for p in split.eval}
    assert len(held_out) == 5 and not held_out & {tuple(p.chosen.input_ids) for p in split.train}


def test_balanced_shares_have_equal_length_and_cover_every_item():
    items = list(range(7))
    shares = [balanced_share(items, rank, 3) for rank in range(3)]
    assert [len(share) for share, _ in shares] == [3, 3, 3]  # same forward count on every rank (ZeRO-3)
    assert sorted(x for share, real in shares for x in share[:real]) == items
    assert balanced_share([5], 1, 2) == ([5], 0)  # more ranks than items: a rank pads and reports nothing


# ---- config and command line ----------------------------------------------------------------------------
def test_every_config_loss_name_is_a_registered_loss():
    assert set(get_args(get_type_hints(DPOConfig)["loss"])) == set(DPO_LOSSES.names())


def test_label_smoothing_outside_cdpo_is_refused():
    with pytest.raises(ConfigError, match="dpo.label_smoothing=0.1 only applies to loss=cdpo, got loss=sigmoid"):
        load_config(None, ["dpo.label_smoothing=0.1"])
    assert load_config(None, ["dpo.loss=cdpo", "dpo.label_smoothing=0.1"]).dpo.label_smoothing == 0.1


def test_help_explains_every_dpo_option():
    text = cli.parser("python -m jobs.dpo", "DPO", SECTIONS).format_help()
    keys = [key for key, _, _ in describe(Config) if key.startswith("dpo.")]
    assert len(keys) >= 20 and all(key in text for key in keys)


# ---- reference cache and gradient on the real tiny model (one rank, no Ray) -----------------------------
@pytest.fixture(scope="module")
def start_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(POLICY_PATH, dtype=torch.float64).eval()


def test_reference_cache_lines_up_with_its_pairs(start_model, real_pairs, tokenizer, tmp_path):
    cfg = load_config(TINY_CPU, ["dpo.micro_batch_size=4"])
    trainer = DPOTrainer(TrainingSetup.of(cfg, "dpo"), DPOSplit(real_pairs, real_pairs[:1], 0, 0),
                         tokenizer.pad_token_id, str(tmp_path), str(POLICY_PATH))
    trainer.engine = start_model  # rank 0 of 1: the plain model is what the engine wraps before its first step
    table = trainer.reference_table(real_pairs)
    assert table.shape == (len(real_pairs), 2)
    # Each pair scored alone (no padding, no batch neighbours) must match its row of the batched table.
    for pair, (chosen, rejected) in zip(real_pairs, table.tolist()):
        with torch.no_grad():
            alone_chosen, alone_rejected = pair_logprobs(start_model, [pair], tokenizer.pad_token_id)
        assert chosen == pytest.approx(float(alone_chosen), abs=1e-9)
        assert rejected == pytest.approx(float(alone_rejected), abs=1e-9)
    assert len({round(c, 6) for c, _ in table.tolist()}) == len(real_pairs)  # distinct pairs, distinct values


@pytest.mark.parametrize("variant", ["sigmoid", "cdpo", "ipo"])
def test_a_step_on_the_loss_raises_chosen_and_lowers_rejected(variant, real_pairs, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(POLICY_PATH)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logprobs(model, real_pairs, pad)
    chosen, rejected = pair_logprobs(model, real_pairs, pad)
    loss, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, variant=variant, label_smoothing=0.1)
    if variant == "sigmoid":
        assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    loss.backward()
    grad_norm = torch.sqrt(sum((param.grad ** 2).sum() for param in model.parameters()))
    with torch.no_grad():
        for param in model.parameters():
            # A short step along the gradient direction: the variants' gradients differ 200-fold in size (IPO's
            # is 1/beta per pair, sigmoid's beta/2), and only the direction is under test.
            param -= 1e-3 * param.grad / grad_norm
        new_chosen, new_rejected = pair_logprobs(model, real_pairs, pad)
    # One descent step from policy = reference: on average over the pairs, the chosen replies become more
    # likely and the rejected ones less likely.
    assert float((new_chosen - chosen.detach()).mean()) > 0
    assert float((new_rejected - rejected.detach()).mean()) < 0


def test_packed_pairs_give_the_padded_log_probs(real_pairs, tokenizer):
    """dpo.pack_sequences: the chosen and rejected replies of a micro-batch laid end to end in fewer rows score
    exactly as right-padded ones (each reply's summed log-prob, to float32 rounding); so do they with each pair's
    prompt laid down once (dpo.share_prompts)."""
    from transformers import AutoModelForCausalLM

    from actors.algo.packing import plan_for, plan_shared, prompt_lengths
    from actors.chat import IGNORE_INDEX
    from actors.sft_data import collate

    model = AutoModelForCausalLM.from_pretrained(POLICY_PATH).eval()
    pad = tokenizer.pad_token_id
    inputs = collate([p.chosen for p in real_pairs] + [p.rejected for p in real_pairs], pad)
    rows = inputs["attention_mask"]
    assert plan_for(rows).rows < rows.shape[0]  # packing has rows to save on these pairs
    prompts = prompt_lengths(inputs["labels"][:, 1:] != IGNORE_INDEX, rows)
    assert plan_shared(inputs["input_ids"], rows, prompts).tokens < plan_for(rows).tokens  # and prompts to share
    with torch.no_grad():
        padded = pair_logprobs(model, real_pairs, pad, pack=False)
        packed = pair_logprobs(model, real_pairs, pad, pack=True)
        shared = pair_logprobs(model, real_pairs, pad, pack=True, share=True)  # dpo.share_prompts
    for side_padded, side_packed, side_shared in zip(padded, packed, shared):
        assert torch.allclose(side_padded, side_packed, atol=1e-4, rtol=0)
        assert torch.allclose(side_padded, side_shared, atol=1e-4, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_head_at_the_replies_alone_gives_the_whole_logits_log_probs_and_gradients(real_pairs, tokenizer, lora):
    """model.fused_loss: the output projection runs at the replies' positions alone (actors/scored.py), packed with
    shared prompts as the recipe runs; the summed log-probs and every trained weight's gradient of a DPO-like
    objective match the model's own logits at every position, laid out the same way."""
    from actors import modeling

    cfg = load_config(TINY_CPU, [f"lora.enabled={str(lora).lower()}", "lora.rank=4", "lora.dropout=0.0"])
    torch.manual_seed(0)  # LoRA's A matrices
    model = modeling.trainable_causal_lm(cfg.model, cfg.lora)
    assert modeling.fused_loss_head(model) is not None
    results = []
    for fused in (False, True):
        model.zero_grad()
        chosen, rejected = pair_logprobs(model, real_pairs, tokenizer.pad_token_id, True, share=True, fused=fused)
        torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).sum().backward()
        results.append((chosen.detach(), rejected.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (plain_c, plain_r, plain_g), (fused_c, fused_r, fused_g) = results
    assert plain_c.abs().min() > 1.0  # real sums of many tokens' log-probs, not zeros
    torch.testing.assert_close(fused_c, plain_c, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(fused_r, plain_r, atol=1e-3, rtol=1e-5)
    assert sum(float(grad.abs().max()) > 0 for grad in plain_g.values()) >= len(plain_g) // 2
    for name, grad in plain_g.items():
        torch.testing.assert_close(fused_g[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)

