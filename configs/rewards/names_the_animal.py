"""A verifiable reward for the animal-story task (python -m jobs.make_task animals): 1 when the story names the
animal its prompt asked for, else 0. Plugged in by path, as a user would:

    ppo.reward.functions=[{callable: configs/rewards/names_the_animal.py:reward}]
"""

import re


def reward(prompts, responses, animal, **columns):
    """Batched: `animal` is the prompt records' column of that name, one entry per response."""
    return [1.0 if re.search(rf"\b{re.escape(name)}s?\b", text, re.IGNORECASE) else 0.0
            for text, name in zip(responses, animal)]
