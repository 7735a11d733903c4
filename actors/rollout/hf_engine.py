"""The rollout role without vLLM: the same methods and meaning as vllm_engine.RolloutEngine, on a
plain Hugging Face model (`ppo.rollout.engine=hf`, or `auto` where vLLM cannot be imported).

Sampling is a short decode loop of our own rather than `model.generate`, for three reasons: each prompt gets
its own torch.Generator seeded like a vLLM request (so samples do not depend on batch composition and a
resumed run reproduces them), the logits are processed exactly as vLLM's sampler does (actors/algo/sampling.py:
repetition penalty, temperature, top_p) and the reported log-probs are those of the processed distribution
(vLLM's `processed_logprobs`), and the repetition penalty sees only real tokens, never the left padding.
"""

from __future__ import annotations

import torch

from actors.algo.sampling import GREEDY_BELOW, process_next_token_logits
from actors.group import Located
from actors.rollout.sample import Sample, sample_seed
from actors.threads import ThreadPlan, use_threads
from actors.weight_collective import WeightReceiver
from common.config import ModelConfig, RolloutConfig


class HFRolloutEngine(WeightReceiver, Located):
    engine = "hf"

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int, max_model_len: int, dtype: str = "float32",
                 max_sequences: int | None = None, threads: ThreadPlan | None = None):
        """max_sequences: unused (vLLM's engine sizes its KV cache by it; generate here keeps no cache between
        calls). threads: as the vLLM engine's."""
        from transformers import AutoTokenizer

        from actors.modeling import load_causal_lm

        self.cfg, self.seed, self.max_model_len, self.threads = cfg, seed, max_model_len, threads
        self.calls = 0
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(ModelConfig(path=model_path, dtype=dtype)).to(self.device).eval()
        self.model.requires_grad_(False)
        # vLLM stops on the tokenizer's EOS and on every EOS the generation config lists.
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        tokenizer_eos = AutoTokenizer.from_pretrained(model_path).eos_token_id
        if tokenizer_eos is not None:
            self.stop_ids.add(tokenizer_eos)
        # Tied embeddings share one tensor under two names; senders include both (actors/weights.py).
        self.params = dict(self.model.named_parameters(remove_duplicate=False))

    def generate(self, prompts: list[list[int]], temperature: float | None = None,
                 max_tokens: int | None = None, first_index: int = 0, draw: int | None = None,
                 indices: list[int] | None = None) -> list[Sample]:
        """One response per prompt, from the same per-call seed stream (or the same `draw`, and `indices`) as the
        vLLM engine."""
        if draw is None:
            self.calls += 1
        if not prompts:  # more engines than prompts (a small sampled evaluation)
            return []
        generators = []
        for i in range(len(prompts)):
            generators.append(torch.Generator(self.device))
            generators[-1].manual_seed(sample_seed(self.seed, self.calls if draw is None else draw, first_index + i if indices is None else indices[i]))
        return self._decode(prompts, self.cfg.temperature if temperature is None else temperature,
                            self.cfg.max_new_tokens if max_tokens is None else max_tokens, generators)

    def greedy(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy response ids (repetition penalty still applied, as in vLLM); the seed counter is left alone."""
        return [s.response_ids for s in self._decode(prompts, 0.0, max_tokens, [None] * len(prompts))]

    @torch.no_grad()
    def sequence_logprobs(self, prompt: list[int], response: list[int]) -> list[float]:
        """Teacher-forced log-probs of `response` after `prompt` under the raw model distribution."""
        ids = torch.tensor([prompt + response], device=self.device)
        logprobs = self.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        return logprobs.gather(-1, ids[0, len(prompt):, None]).squeeze(-1).tolist()

    @torch.no_grad()
    def load_weights(self, *buckets) -> int:
        """Copy weight buckets (iterables of (hf_name, tensor): the sync's PackedBuckets, or lists of pairs) into
        the model; returns the names loaded. A tied weight comes under both names as the same memory and is
        copied once."""
        use_threads(self.threads, "load_weights")
        count = 0
        loaded_from: dict[int, tuple] = {}  # id(parameter) -> the source it was last copied from in this call
        for bucket in buckets:
            for name, tensor in bucket:
                if name not in self.params:
                    raise KeyError(f"weight {name!r} is not a parameter of the rollout model")
                param, source = self.params[name], (tensor.data_ptr(), tensor.shape, tensor.stride())
                if loaded_from.get(id(param)) != source:
                    param.copy_(tensor)
                    loaded_from[id(param)] = source
                count += 1
        return count

    def ping(self) -> bool:
        return True

    def weight_layout(self) -> str:
        """Plain: a sync copies each weight into its parameter (the names are RolloutEngine.weight_layout's)."""
        return "plain"

    def zero_copy(self) -> tuple[int, int]:
        """(0, 0): this engine copies every sync into its parameters (vLLM's engine may view them in the store)."""
        return 0, 0

    def set_calls(self, calls: int) -> None:
        """Restore the sampling-seed counter on resume (samples after a resume match an unbroken run)."""
        self.calls = calls

    @torch.no_grad()
    def _decode(self, prompts: list[list[int]], temperature: float, max_tokens: int,
                generators: list[torch.Generator | None]) -> list[Sample]:
        """Left-padded batch decode with a KV cache; each row stops at a stop id (kept, as vLLM keeps it) or at
        its length cap (max_tokens, or what is left of max_model_len)."""
        if any(len(p) >= self.max_model_len for p in prompts):
            raise ValueError(f"a prompt is at least max_model_len={self.max_model_len} tokens long")
        use_threads(self.threads, "generate")
        n, width = len(prompts), max(len(p) for p in prompts)
        limits = [min(max_tokens, self.max_model_len - len(p)) for p in prompts]
        ids = torch.zeros(n, width, dtype=torch.long, device=self.device)
        mask = torch.zeros(n, width, dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Tokens seen so far (prompt and response) for the repetition penalty.
        seen = torch.zeros(n, self.model.get_output_embeddings().weight.shape[0], dtype=torch.bool, device=self.device)
        rows, cols = mask.nonzero(as_tuple=True)
        seen[rows, ids[rows, cols]] = True
        responses: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * n
        cache, step_ids = None, ids
        while any(reason is None for reason in reasons):
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                             past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            processed = process_next_token_logits(logits, seen, temperature, self.cfg.top_p,
                                                  self.cfg.repetition_penalty)
            tokens = self._pick(processed, temperature, generators)
            behaviour = processed.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
            for row, (token, logprob) in enumerate(zip(tokens.tolist(), behaviour.tolist())):
                if reasons[row] is not None:
                    continue
                responses[row].append(token)
                logprobs[row].append(logprob)
                if token in self.stop_ids:
                    reasons[row] = "stop"
                elif len(responses[row]) >= limits[row]:
                    reasons[row] = "length"
            seen[torch.arange(n, device=self.device), tokens] = True
            step_ids = tokens[:, None]
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            positions = positions[:, -1:] + 1
        return [Sample(list(p), r, lp, reason) for p, r, lp, reason in zip(prompts, responses, logprobs, reasons)]

    @staticmethod
    def _pick(processed: torch.Tensor, temperature: float, generators: list[torch.Generator | None]) -> torch.Tensor:
        """Next token per row from the processed logits: argmax when greedy, else a draw from their softmax."""
        if temperature < GREEDY_BELOW:
            return processed.argmax(-1)
        probs = processed.softmax(-1)
        return torch.cat([torch.multinomial(row, 1, generator=gen) for row, gen in zip(probs, generators)])
