"""Seven model families through the stages that run without a cluster, on tiny random-weight models built in code
with each family's tokenizer (jobs/tiny_models.py): the assistant-only loss mask under each chat template, LoRA on
the family's default projections (fused ones included) merged and reloaded, a reward model's scalar head on the
backbone, a DPO step from ln 2, and PPO's packed rows (ppo.pack_sequences) and shared prompts (ppo.share_prompts)
giving the padded logits, gradients and value-model hidden states. The vLLM weight-sync check per family is in
tests/ray/test_families_vllm.py."""

from __future__ import annotations

import math

import pytest
import torch

from actors import modeling
from actors.algo import bradley_terry_loss, dpo_loss
from actors.chat import IGNORE_INDEX, encode_chat
from common.config import LoraConfig
from common.families import LORA_TARGETS, names_module
from jobs.tiny_models import FAMILIES, build

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue is a colour."}, {"role": "user", "content": "And another?"},
        {"role": "assistant", "content": "Red."}]
# The model_type each family's checkpoint declares (what common/families.py keys on).
MODEL_TYPES = {"llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gemma2": "gemma2",
               "phi3": "phi3", "gpt2": "gpt2"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(name, root / name) for name in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_loss_mask_is_exactly_the_assistant_replies(folders, family):
    tokenizer = modeling.load_tokenizer(folders[family])
    end, start = FAMILIES[family].end_of_turn, ""
    if FAMILIES[family].template is None:  # GPT-2 ships none: the default one ("Assistant: " + reply + EOS + "\n")
        end, start = tokenizer.eos_token + "\n", " "
    replies = [f"{start}Blue is a colour.{end}", f"{start}Red.{end}"]
    encoded = encode_chat(tokenizer, CHAT)
    trained = tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    assert trained == "".join(replies), trained
    # Nothing but the two replies (and their end markers) is trained: the system, user and header tokens are not.
    assert encoded.num_trained == sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_takes_the_familys_projections_and_the_merged_export_reloads(folders, family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = modeling.load_causal_lm(modeling_config(), folders[family])
    assert model.config.model_type == MODEL_TYPES[family]
    wrapped = modeling.apply_lora(model, LoraConfig(enabled=True, rank=4, alpha=8))
    adapted = {name.split(".lora_A")[0] for name, _ in wrapped.named_parameters() if ".lora_A." in name}
    targets = LORA_TARGETS[MODEL_TYPES[family]]
    # Every default target adapts something (fused qkv_proj / c_attn included), and only those: the attention's
    # projections, never the MLP's (GPT-2 calls both output projections c_proj).
    assert all(any(names_module(target, module) for module in adapted) for target in targets), adapted
    assert all(any(names_module(target, module) for target in targets) for module in adapted), adapted
    assert not any(".mlp." in module for module in adapted), adapted
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    assert 0 < trainable < 0.2 * total
    ids = torch.tensor([[3, 4, 5, 6]])
    wrapped.eval()  # no adapter dropout in the comparison
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # a trained adapter: the merge must carry it
        before = wrapped(input_ids=ids).logits
    merged = wrapped.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, before, atol=1e-4)


def modeling_config():
    from common.config import ModelConfig

    return ModelConfig(dtype="float32")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_rows_give_the_padded_logits_gradients_and_hidden_states(folders, family):
    from transformers import AutoModel, AutoModelForCausalLM

    from actors.packed import agrees, lm_forward, may_share, run, shares_agree
    from actors.value import ValueModel, backbone_forward

    model = AutoModelForCausalLM.from_pretrained(folders[family]).eval()
    lengths = (7, 12, 5, 9, 3, 12, 4)  # 7 sequences in 5 rows of 12
    ids = torch.randint(3, model.config.vocab_size, (len(lengths), 12), generator=torch.Generator().manual_seed(1))
    ids[2, :4] = ids[5, :4] = ids[0, :4]  # sequences 0, 2 and 5 share a prompt of 4 tokens (ppo.share_prompts)
    prompts = torch.tensor([4, 6, 4, 5, 2, 4, 3])
    mask = (torch.arange(12).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    ids, inside = ids * mask, mask.bool()
    # Sharing gives the padded outputs here for every family, but where one attends through a sliding window
    # (Mistral's and Gemma 2's defaults of 4096) only while sequences are shorter than it: such models don't share.
    assert may_share(model.config, family) == (family not in ("gemma2", "mistral"))
    layouts = [(False, None), (True, None), (True, prompts)]
    grads = []
    for packed, shared in layouts:
        model.zero_grad()
        logits = run(lm_forward(model), ids, mask, packed, shared)
        (torch.log_softmax(logits, -1).amax(-1) * mask).sum().backward()
        grads.append((logits.detach()[inside], torch.cat([p.grad.flatten() for p in model.parameters()
                                                         if p.grad is not None])))
    for logits, grad in grads[1:]:
        assert torch.allclose(grads[0][0], logits, atol=1e-5)
        assert torch.allclose(grads[0][1], grad, atol=1e-5)
    assert agrees(lm_forward(model), model.config.vocab_size, "cpu", torch.float32, family)
    assert shares_agree(lm_forward(model), model.config.vocab_size, "cpu", torch.float32, family)
    backbone = AutoModel.from_pretrained(folders[family]).eval()
    value = ValueModel(backbone, backbone.config.hidden_size)
    with torch.no_grad():
        hidden = [run(backbone_forward(value), ids, mask, packed, shared)[inside] for packed, shared in layouts]
    for other in hidden[1:]:
        assert torch.allclose(hidden[0], other, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_head_at_the_scored_tokens_alone_gives_the_whole_logits_log_probs(folders, family):
    """actors/scored.py (SFT's and DPO's loss with model.fused_loss): the output projection at the scored positions
    alone gives each family's own log-probs there. Gemma 2 soft-caps its logits (here at 1.0, so capping moves every
    log-prob): its head is not a plain projection, so it takes the whole logits."""
    from transformers import AutoModelForCausalLM

    from actors.algo.logprobs import token_logprobs
    from actors.scored import scored_logprobs

    model = AutoModelForCausalLM.from_pretrained(folders[family]).eval()
    if family == "gemma2":
        model.config.final_logit_softcapping = 1.0
    assert (modeling.fused_loss_head(model) is None) == (family == "gemma2")
    ids = torch.randint(3, model.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = (torch.arange(10).unsqueeze(0) < torch.tensor([[10], [7], [9]])).long()
    scored = torch.zeros(3, 9, dtype=torch.bool)
    scored[0, 4:], scored[1, 2:6], scored[2, 5:8] = True, True, True  # the replies, off the padding
    with torch.no_grad():
        expected = token_logprobs(model(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:]) * scored
        plain, head = (scored_logprobs(model, ids, mask, scored, fused=fused) for fused in (False, True))
    assert torch.allclose(plain, expected, atol=1e-5)
    assert torch.allclose(head, expected, atol=1e-5)
    assert (head[scored] < 0).all() and (head[~scored] == 0).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_reward_head_on_the_backbone_scores_and_trains(folders, family):
    from actors import reward

    tokenizer = modeling.load_tokenizer(folders[family])
    model = reward.load_sequence_classifier(folders[family], tokenizer.pad_token_id)
    chosen = tokenizer(["A kind and clear answer."], return_tensors="pt")
    rejected = tokenizer(["Go away."], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = bradley_terry_loss(model(**chosen).logits.squeeze(-1), model(**rejected).logits.squeeze(-1))
        losses.append(float(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_dpo_step_lowers_the_loss_from_ln_2(folders, family):
    import copy

    model = modeling.load_causal_lm(modeling_config(), folders[family])
    reference = copy.deepcopy(model).eval()
    chosen, rejected = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[5, 6, 10, 11, 12]])
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.float32)  # the reply: the last three tokens

    def logp(net, ids):
        out = net(input_ids=ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (out * mask).sum(-1)

    def loss():
        with torch.no_grad():
            ref_c, ref_r = logp(reference, chosen), logp(reference, rejected)
        return dpo_loss(logp(model, chosen), logp(model, rejected), ref_c, ref_r, beta=0.1)[0]

    first = loss()
    assert float(first) == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    first.backward()
    optimizer.step()
    assert float(loss()) < math.log(2)


def test_an_architecture_vllm_does_not_know_falls_back_under_auto_and_is_refused_under_vllm(tmp_path, caplog):
    import json

    from actors.rollout.engines import HFRolloutEngine, RolloutEngine, rollout_engine_class, vllm_importable
    from common.config import RolloutConfig
    from common.errors import ConfigError
    from tests.conftest import POLICY_PATH

    if not vllm_importable():
        pytest.skip("vLLM is not installed here (the fallback is then the Hugging Face engine for every model)")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["TinyThingForCausalLM"]}))
    assert rollout_engine_class(RolloutConfig(engine="auto"), str(POLICY_PATH)) is RolloutEngine
    with caplog.at_level("WARNING", logger="rayalign.rollout"):
        assert rollout_engine_class(RolloutConfig(engine="auto"), str(tmp_path)) is HFRolloutEngine
    assert "vLLM does not know the architecture TinyThingForCausalLM" in caplog.text
    with pytest.raises(ConfigError, match="ppo.rollout.engine=vllm, but vLLM does not know the architecture "
                                          "TinyThingForCausalLM"):
        rollout_engine_class(RolloutConfig(engine="vllm"), str(tmp_path))
