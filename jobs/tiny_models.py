"""Tiny random-weight models of the families people bring, built in code (as TRL and LLaMA-Factory test on), each
with a real tokenizer that carries the family's special tokens and chat template, saved as a Hugging Face folder.

    python -m jobs.tiny_models FAMILY --out DIR      (FAMILY: llama3, qwen2, qwen3, mistral, gemma2, phi3, gpt2)

The tokenizer is a byte-level BPE trained here on the shared SFT data (about 1,000 tokens, offline) plus the
family's special tokens; the chat templates follow each family's published one (Llama-3's header tokens, Qwen's
ChatML, Mistral's [INST], Gemma's turns, Phi-3's role tags), without their tool-calling branches. GPT-2 has no
chat template, as its real tokenizer has none: rayalign gives it the default one with a warning. The models have
2 layers, hidden size 64 and head size 32 (the vLLM CPU build refuses smaller heads): a few hundred thousand
parameters, so every stage can run on them in seconds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.paths import resolve_path

CORPUS = "../shared/data/sft/llms-from-scratch/instruction-data.json"
VOCAB = 1000
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
           "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
         "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass(frozen=True)
class Family:
    config_class: str  # transformers class name
    specials: list[str]
    bos: str | None
    eos: str
    pad: str
    template: str | None
    end_of_turn: str  # what the template puts after an assistant reply (its end marker)
    config: dict = field(default_factory=dict)


DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True)
FAMILIES = {
    "llama3": Family("LlamaConfig", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                     "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>",
                     "<|end_of_text|>", LLAMA3, "<|eot_id|>", DECODER),
    "qwen2": Family("Qwen2Config", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>",
                    "<|endoftext|>", CHATML, "<|im_end|>\n", DECODER),
    "qwen3": Family("Qwen3Config", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>",
                    "<|endoftext|>", CHATML, "<|im_end|>\n", {**DECODER, "head_dim": 32}),
    "mistral": Family("MistralConfig", ["<s>", "</s>", "<unk>", "[INST]", "[/INST]"], "<s>", "</s>", "<unk>",
                      MISTRAL, "</s>", {**DECODER, "tie_word_embeddings": False}),
    "gemma2": Family("Gemma2Config", ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
                     "<end_of_turn>", "<pad>", GEMMA, "<end_of_turn>\n", {**DECODER, "head_dim": 32,
                                                                          "query_pre_attn_scalar": 32}),
    "phi3": Family("Phi3Config", ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None,
                   "<|end|>", "<|endoftext|>", PHI3, "<|end|>\n", {**DECODER, "tie_word_embeddings": False}),
    "gpt2": Family("GPT2Config", ["<|endoftext|>"], "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None, "",
                   dict(n_embd=64, n_layer=2, n_head=2, n_positions=512)),
}


def corpus_lines() -> list[str]:
    from common.records import read_many

    return [m["content"] for record in read_many([CORPUS], None) for m in record.get("messages", [])]


def build_tokenizer(family: Family):
    """A byte-level BPE of VOCAB tokens trained on the shared SFT data, with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=family.specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=family.bos, eos_token=family.eos,
                                      pad_token=family.pad, clean_up_tokenization_spaces=False)
    if family.template is not None:
        wrapped.chat_template = family.template
    return wrapped


def build(name: str, out: Path, seed: int = 0) -> Path:
    """The tiny `name` model and its tokenizer, saved to `out`."""
    import torch
    import transformers

    family = FAMILIES[name]
    tokenizer = build_tokenizer(family)
    specials = {key: tokenizer.convert_tokens_to_ids(token) for key, token in
                (("bos_token_id", family.bos), ("eos_token_id", family.eos), ("pad_token_id", family.pad))
                if token is not None}
    config = getattr(transformers, family.config_class)(vocab_size=len(tokenizer), **family.config, **specials)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m jobs.tiny_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES), help="which family")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    path = build(args.family, resolve_path(str(args.out)), args.seed)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(main() and 0)
