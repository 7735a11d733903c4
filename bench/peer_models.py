"""The peer side of bench/peers.py: TRL's GRPOTrainer, SFTTrainer and DPOTrainer doing the work that a rayalign config
describes, plus the ~25M-parameter random Llama that both sides train. Not a test.

    .venv/bin/python bench/peer_models.py {grpo,sft,dpo} SPEC.json RESULT.json     (bench/peers.py runs it)

SPEC holds the rayalign config overrides of one comparison and how many rayalign workers to follow. Every TRL
argument is read from that config (each trl_* function shows the mapping), so every matched setting comes from
one place. The data is rayalign's own: the same prompt pool and per-step prompt choice for GRPO, and rayalign's
tokenized chats and pairs, in the order its ranks take them, for SFT and DPO. RESULT gets the seconds of each
optimizer step (on_step_begin to on_step_end) and the outcome.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RECIPE = REPO / "configs" / "tiny-cpu.yaml"


# Qwen2-0.5B's body: 24 layers of 896, 14 query heads over 2 key/value heads (GQA), MLP 4864, q/k/v biases.
QWEN2_05B_BODY = dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, attention_bias=True)


def random_llama(folder: Path, tokenizer_from: str, hidden: int = 512, layers: int = 8, heads: int = 8,
                 intermediate: int = 1376, kv_heads: int | None = None, attention_bias: bool = False,
                 seed: int = 0) -> int:
    """A Llama with seeded random weights in `folder` that uses the tokenizer (and so the chat template) of
    `tokenizer_from`; returns its parameter count. The defaults give the 25.6M model of the issue 18 measurement,
    head dim 64 (the vLLM CPU build rejects head dims below 32); unlike bench/ppo_step.py's random_llama (heads of
    dim 32, 3x MLP). With QWEN2_05B_BODY: 358M parameters, Qwen2-0.5B's compute at the carried tokenizer's
    512-token vocabulary instead of Qwen's 151,936. It stays a Llama (its biases also on the attention's output
    projection: 896 more parameters) because Transformers gives every qwen2 folder its Qwen2 tokenizer class,
    which reads this SentencePiece vocabulary without its spaces and adds a pad token beyond the embedding."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         attention_bias=attention_bias, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def step_timer():
    """A TrainerCallback keeping the seconds from on_step_begin to on_step_end of every optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self._started = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._started)
            if state.global_step == state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True  # rayalign evaluates at the last step too

    return StepTimer()


def common_args(cfg, out: str, gpu: bool) -> dict:
    """TrainingArguments shared by the three trainers: the CPU unless the section asks for GPUs, the weights in
    model.dtype without autocast or gradient checkpointing (rayalign's model defaults), rayalign's AdamW (betas
    0.9/0.95), its seed, logs every step and nothing saved."""
    return dict(output_dir=out, use_cpu=not gpu, bf16=False, gradient_checkpointing=False, adam_beta1=0.9,
                adam_beta2=0.95, seed=cfg.run.seed, logging_steps=1, save_strategy="no", report_to="none",
                disable_tqdm=True, model_init_kwargs={"dtype": cfg.model.dtype})


def replay_order(settings, n_items: int, length, workers: int, seed: int) -> tuple[int, list[int]]:
    """(optimizer steps, item indices in the order rayalign's `workers` ranks train them) for an SFT or DPO section:
    the steps its trainer runs (actors/zero_trainer.py), and its length-bucketed micro-batches, dealt to the ranks
    step by step (actors/sft_data.py), flattened step by step (rank 0's micro-batches, then rank 1's...). TRL
    with micro-batches of settings.micro_batch_size, workers x grad_accum accumulation and sequential sampling then
    sees the same examples in every optimizer step. Examples never trained follow at the end, so that TRL scores the
    DPO reference on every train pair, as rayalign does."""
    from actors.sft_data import bucketed_batches, shard_batches

    micro, accum = settings.micro_batch_size, settings.grad_accum
    per_epoch = n_items // micro // workers // accum
    if per_epoch == 0:
        raise SystemExit(f"{n_items} examples are too few for one optimizer step of {micro} x {accum} x {workers}")
    steps = min(settings.max_steps or per_epoch * settings.epochs, per_epoch * settings.epochs)
    order, epoch = [], 0
    while len(order) < steps * micro * workers * accum:
        batches = bucketed_batches(list(range(n_items)), micro, seed, epoch, length=length, together=workers * accum)
        shards = [shard_batches(batches, rank, workers, accum) for rank in range(workers)]
        for k in range(per_epoch):
            for shard in shards:
                order.extend(i for batch in shard[k * accum:(k + 1) * accum] for i in batch)
        epoch += 1
    order = order[:steps * micro * workers * accum]
    used = set(order)
    return steps, order + [i for i in range(n_items) if i not in used]


def schedule_args(settings, lr: float, steps: int, workers: int) -> dict:
    """Batching, optimizer schedule and evaluation of an SFT or DPO section as TRL arguments: rayalign's cosine
    schedule after int(steps x warmup_ratio) warm-up steps; held-out figures at step 0, every eval_every steps
    and at the last (step_timer asks for that one)."""
    return dict(per_device_train_batch_size=settings.micro_batch_size, max_steps=steps,
                gradient_accumulation_steps=settings.grad_accum * workers, learning_rate=lr,
                lr_scheduler_type="cosine", warmup_steps=int(steps * settings.warmup_ratio),
                weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm, eval_strategy="steps",
                eval_steps=settings.eval_every, eval_on_start=True, train_sampling_strategy="sequential")


def trl_grpo(cfg, spec: dict) -> dict:
    """GRPOTrainer with Hugging Face generation (its vLLM mode fails on the CPU build) on rayalign's GRPO settings:
    sequences_per_step = mini_batch_size x steps_per_generation, ppo_epochs = num_iterations (4 optimizer steps per
    generation for 32 sequences, mini-batches of 16, 2 epochs); beta = the KL coefficient rayalign applies with
    kl.mode=loss, k3, without TRL's importance weight on the KL (use_bias_correction_kl=False, as rayalign);
    loss_type=bnpo = rayalign's token-mean over each mini-batch (no accumulation); group-std advantages; constant lr;
    the same sampling. Prompts: rayalign's pool, in the order its steps pick them (shuffle_dataset=False)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from actors.algo.rewards import SPEC_KL_WEIGHT
    from actors.chat import encode_prompt
    from actors.modeling import load_tokenizer
    from actors.ppo_prompts import load_prompts, prompts_for_step
    from actors.reward_sources import KeywordReward

    ppo, rollout = cfg.ppo, cfg.ppo.rollout
    path = model_path(cfg)
    tokenizer = load_tokenizer(path, cfg.model.chat_template)
    pool = [prompt.turns for prompt in load_prompts(ppo)]
    picked = [i for step in range(1, ppo.steps + 1)
              for i in prompts_for_step(len(pool), ppo.rollout_batch_size, step, cfg.run.seed)]
    prompts = [pool[i] for i in picked]
    trl_ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
    same_prompts = all(list(ids) == encode_prompt(tokenizer, p, rollout.max_prompt_tokens)
                       for ids, p in zip(trl_ids, prompts))
    keyword = KeywordReward(ppo.reward.rm_keyword, ppo.reward.rm_keyword_cap)
    generations = []

    def keyword_reward(prompts, completions, completion_ids, **_):
        scores = keyword.score(prompts, [c[-1]["content"] for c in completions])
        generations.append({"reward": statistics.fmean(scores), "tokens": sum(len(ids) for ids in completion_ids)})
        return scores

    passes = ppo.sequences_per_step // ppo.mini_batch_size
    updates_per_step = passes * ppo.ppo_epochs
    args = GRPOConfig(
        **common_args(cfg, spec["output_dir"], ppo.gpus_per_actor > 0),
        per_device_train_batch_size=ppo.mini_batch_size, gradient_accumulation_steps=1, steps_per_generation=passes,
        num_iterations=ppo.ppo_epochs, num_generations=ppo.samples_per_prompt,
        max_steps=ppo.steps * updates_per_step, shuffle_dataset=False,
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p, top_k=0,
        repetition_penalty=rollout.repetition_penalty, beta=ppo.kl.coef * ppo.reward.kl_weight / SPEC_KL_WEIGHT,
        use_bias_correction_kl=False, epsilon=ppo.clip_range, loss_type="bnpo", scale_rewards="group",
        learning_rate=ppo.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=ppo.max_grad_norm)
    timer = step_timer()
    trainer = GRPOTrainer(model=path, reward_funcs=keyword_reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), callbacks=[timer])
    trainer.train()
    seconds = [sum(timer.seconds[i:i + updates_per_step]) for i in range(0, len(timer.seconds), updates_per_step)]
    return {"steps": [{"seconds": s, **g} for s, g in zip(seconds, generations)],
            "optimizer_steps": trainer.state.global_step, "prompt_ids_match_rayalign": same_prompts,
            "updates_per_step": updates_per_step, "beta": args.beta}


def model_path(cfg) -> str:
    from common.config import resolve_path

    return str(resolve_path(cfg.model.path))


def trained_tokens(chat) -> int:
    from actors.chat import IGNORE_INDEX

    return sum(1 for label in chat.labels[1:] if label != IGNORE_INDEX)


def trl_sft(cfg, spec: dict) -> dict:
    """SFTTrainer on rayalign's tokenized chats (input_ids, labels on assistant tokens only: TRL's own
    assistant_only_loss needs {% generation %} markers that rayalign's template does not have), in the order
    rayalign's ranks take them (replay_order), with its lr, schedule, clipping and held-out set. The held-out set
    is one batch, so TRL's eval loss is the token mean over it, as rayalign's (TRL averages per-batch means)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from jobs.sft import prepare

    def rows(chats) -> Dataset:
        return Dataset.from_dict({"input_ids": [c.input_ids for c in chats], "labels": [c.labels for c in chats]})

    tokenizer, split, lr = prepare(cfg)
    steps, order = replay_order(cfg.sft, len(split.train), lambda i: len(split.train[i].input_ids), spec["workers"],
                                cfg.run.seed)
    per_step = cfg.sft.micro_batch_size * cfg.sft.grad_accum * spec["workers"]
    tokens = [sum(trained_tokens(split.train[i]) for i in order[k * per_step:(k + 1) * per_step])
              for k in range(steps)]
    args = SFTConfig(**common_args(cfg, spec["output_dir"], cfg.sft.use_gpu),
                     **schedule_args(cfg.sft, lr, steps, spec["workers"]),
                     per_device_eval_batch_size=len(split.eval), max_length=cfg.data.max_length)
    timer = step_timer()
    trainer = SFTTrainer(model=model_path(cfg), args=args, processing_class=tokenizer,
                         train_dataset=rows([split.train[i] for i in order]), eval_dataset=rows(split.eval),
                         callbacks=[timer])
    trainer.train()
    return {"step_seconds": timer.seconds, "step_tokens": tokens, "log": trainer.state.log_history,
            "optimizer_steps": trainer.state.global_step, "sequences_per_step": per_step}


def trl_dpo(cfg, spec: dict) -> dict:
    """DPOTrainer on rayalign's encoded pairs (prompt = the tokens before a reply's first label, so the chosen and
    rejected replies are exactly rayalign's labelled tokens), in the order rayalign's ranks take them
    (replay_order); sigmoid loss, beta and label smoothing, reference log-probs computed once before training for
    every train and held-out pair (precompute_ref_log_probs, as rayalign); its lr, schedule and clipping. The
    held-out set is one batch, so its accuracy is over pairs, as rayalign's (TRL averages per-batch figures)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from actors.chat import IGNORE_INDEX
    from jobs.dpo import prepare

    class Pretokenized(DPOTrainer):
        """Takes prompt_ids / chosen_ids / rejected_ids rows as they are (TRL would tokenize text again)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    def row(pair) -> dict:
        starts = [next(i for i, label in enumerate(c.labels) if label != IGNORE_INDEX)
                  for c in (pair.chosen, pair.rejected)]
        prompt = pair.chosen.input_ids[:starts[0]]
        if prompt != pair.rejected.input_ids[:starts[1]]:
            raise SystemExit("a pair's prompt tokenizes differently before its chosen and its rejected reply")
        return {"prompt_ids": prompt, "chosen_ids": pair.chosen.input_ids[starts[0]:],
                "rejected_ids": pair.rejected.input_ids[starts[1]:]}

    tokenizer, split = prepare(cfg)
    steps, order = replay_order(cfg.dpo, len(split.train), lambda i: split.train[i].length, spec["workers"],
                                cfg.run.seed)
    args = DPOConfig(**common_args(cfg, spec["output_dir"], cfg.dpo.use_gpu),
                     **schedule_args(cfg.dpo, cfg.dpo.lr, steps, spec["workers"]),
                     per_device_eval_batch_size=len(split.eval), max_length=cfg.dpo.max_length,
                     loss_type=["sigmoid"], beta=cfg.dpo.beta, label_smoothing=cfg.dpo.label_smoothing,
                     precompute_ref_log_probs=True)
    timer = step_timer()
    trainer = Pretokenized(model=model_path(cfg), args=args, processing_class=tokenizer, callbacks=[timer],
                           train_dataset=Dataset.from_list([row(split.train[i]) for i in order]),
                           eval_dataset=Dataset.from_list([row(pair) for pair in split.eval]))
    trainer.train()
    return {"step_seconds": timer.seconds, "log": trainer.state.log_history,
            "optimizer_steps": trainer.state.global_step,
            "pairs_per_step": cfg.dpo.micro_batch_size * cfg.dpo.grad_accum * spec["workers"]}


def main() -> None:
    import os

    from common.config import load_config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kind, spec_path, result_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(RECIPE, spec["overrides"])
    result = {"grpo": trl_grpo, "sft": trl_sft, "dpo": trl_dpo}[kind](cfg, spec)
    Path(result_path).write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
