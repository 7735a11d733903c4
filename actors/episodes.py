"""Multi-turn episodes (ppo.environment): the rollout engines and an environment take turns until it says done or
ppo.environment.max_turns model turns have passed, every episode of a batch one turn at a time.

One episode becomes one training row: the first prompt's token ids, then everything after them, the model's own
tokens (action mask 1, with the engine's log-probs) and the environment's (mask 0: the end of the model's turn as
the chat template closes it, the observation turns, the next assistant header), so the loss, the KL and the value
targets cover only what the model wrote. The environment's tokens are the chat template's rendering of the
conversation after the model's text, so the sequence is the conversation a model would be shown, not a
re-tokenisation of the model's own turns (which could differ from what it sampled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from actors.chat import encode_prompt, render, turn_end
from actors.environments import Turn
from actors.rollout.sample import Sample

# generate(prompt ids, turn) → one Sample per prompt (response ids, and the engine's log-probs when sampled)
Generate = Callable[[list[list[int]], int], list[Sample]]
# step(episode indices, the model's texts) → one Turn per episode
Step = Callable[[list[int], list[str]], list[Turn]]


@dataclass
class Episode:
    messages: list[dict]  # the conversation so far
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # one per model token
    texts: list[str] = field(default_factory=list)  # the model's turns
    rewards: list[float] = field(default_factory=list)  # one per model turn
    finish: str = "stop"
    done: bool = False
    error: str | None = None
    appended: int = 0  # model turns written into `messages` (the last is not, unless the episode went on after it)

    def sample(self) -> Sample:
        return Sample(self.prompt_ids, self.response_ids, self.logprobs, self.finish, self.mask)

    @property
    def reward(self) -> float:
        return 0.0 if self.error else sum(self.rewards)

    def for_scoring(self) -> tuple[list[dict], str]:
        """(the conversation before the model's last turn, that turn): what a reward model and reward functions
        judge, the turns the episode really had (observations and follow-up questions included), not the opening
        prompt with every model turn run together as one reply."""
        if not self.texts:
            return list(self.messages), ""
        if self.appended < len(self.texts):
            return list(self.messages), self.texts[-1]
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return list(self.messages[:last]), self.texts[-1]


def closing_and_observation(tokenizer, history: list[dict], text: str, observation: list[dict],
                            sampled_eos: bool) -> str:
    """The text the chat template puts after the model's turn `text`: the rest of that turn (its end marker,
    unless the model sampled it), the observation turns and the next assistant header.

    The turn's end is found after a sentinel content, not by searching for `text` (an empty text, or one the
    template's own markup contains, such as "end", put it in the wrong place). A template that rewrites earlier
    turns once another follows (Qwen3 drops an answer's <think> block) has no such text: the tokens the model
    already sampled would not be the conversation's, so that is an error naming the template, not a silent mix."""
    closing = turn_end(tokenizer, history)
    eos = tokenizer.eos_token or ""
    if sampled_eos and eos and closing.startswith(eos):
        closing = closing[len(eos):]
    mine = render(tokenizer, history + [{"role": "assistant", "content": text}])
    full = render(tokenizer, history + [{"role": "assistant", "content": text}] + observation,
                  add_generation_prompt=True)
    if not full.startswith(mine):
        raise ValueError("this model's chat template renders the model's turn differently once another turn "
                         "follows it (it rewrites earlier turns), so a multi-turn episode cannot append the "
                         "environment's turns to the tokens the model sampled: give ppo.environment a model whose "
                         "template only appends, or set model.chat_template to one that does")
    return closing + full[len(mine):]


def run_episodes(tokenizer, openings: list[Turn], prompts: list[list[dict]], generate: Generate, step: Step,
                 max_turns: int, max_prompt_tokens: int, max_new_tokens: int, max_total_tokens: int,
                 max_observation_chars: int) -> list[Episode]:
    """Every episode from its opening messages to done, max_turns or the token budget; its finish reason is its last
    model turn's ("length": cut at max_new_tokens).
    `prompts` are the records' own chats: an episode whose reset failed keeps its prompt, with no turn, as a row
    that trains nothing."""
    episodes = []
    for opening, prompt in zip(openings, prompts):
        messages = opening.messages if opening.error is None else prompt
        ids = encode_prompt(tokenizer, messages, max_prompt_tokens)
        episodes.append(Episode(list(messages), ids, done=opening.error is not None, error=opening.error))
    for turn in range(max_turns):
        active = [i for i, e in enumerate(episodes) if not e.done]
        if not active:
            break
        samples = generate([episodes[i].prompt_ids + episodes[i].response_ids for i in active], turn)
        texts = []
        for i, got in zip(active, samples):
            e = episodes[i]
            e.response_ids += got.response_ids
            e.mask += [1] * len(got.response_ids)
            e.logprobs += got.response_logprobs
            e.finish = got.finish_reason
            texts.append(tokenizer.decode(got.response_ids, skip_special_tokens=True).strip())
            e.texts.append(texts[-1])
        for i, text, result in zip(active, texts, step(active, texts)):
            e = episodes[i]
            e.rewards.append(result.reward)
            if result.error is not None:
                e.done, e.error = True, result.error
                continue
            if result.done or turn == max_turns - 1 or not result.messages:
                e.done = True
                continue
            observation = [{**m, "content": m["content"][:max_observation_chars]} for m in result.messages]
            eos = tokenizer.eos_token_id
            sampled_eos = bool(e.response_ids) and e.response_ids[-1] == eos
            between = closing_and_observation(tokenizer, e.messages, text, observation, sampled_eos)
            added = tokenizer(between, add_special_tokens=False)["input_ids"]
            e.messages += [{"role": "assistant", "content": text}, *observation]
            e.appended += 1
            if len(e.prompt_ids) + len(e.response_ids) + len(added) + max_new_tokens > max_total_tokens:
                # No room for another turn: the episode ends, but its last model turn (the one a reward model
                # scores) ended itself, so its finish reason stands (missing_eos_penalty charges cut answers only).
                e.done = True
                continue
            e.response_ids += added
            e.mask += [0] * len(added)
    return episodes


def episode_metrics(episodes: list[Episode], max_turns: int) -> dict:
    """env/reward (the episodes' mean summed reward), env/reward_turn_<k> (mean reward the k-th model turn earned,
    0 where an episode ended before it), env/turns_mean and env/errors (episodes an environment failure ended)."""
    n = len(episodes)
    metrics = {"env/reward": sum(e.reward for e in episodes) / n,
               "env/turns_mean": sum(len(e.texts) for e in episodes) / n,
               "env/errors": sum(e.error is not None for e in episodes)}
    for turn in range(max_turns):
        metrics[f"env/reward_turn_{turn + 1}"] = sum(e.rewards[turn] for e in episodes if len(e.rewards) > turn) / n
    return metrics
