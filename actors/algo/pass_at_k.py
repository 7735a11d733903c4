"""pass@k from n sampled answers of which c succeeded: the unbiased estimator of Chen et al. 2021 (Codex),

    pass@k = 1 − C(n − c, k) / C(n, k)

the chance that k answers drawn without replacement from the n include a success. It is computed as the product
1 − Π_{i = n−c+1}^{n} (1 − k / i), which never forms the large binomials. pass@1 is c / n and pass@n is 1 when any
answer succeeded."""

from __future__ import annotations

import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n or not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 0 < k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k answers includes a success
        return 1.0
    failing = 1.0
    for i in range(n - c + 1, n + 1):
        failing *= 1.0 - k / i
    return 1.0 - failing


def mean_pass_at_k(successes: torch.Tensor, k: int) -> float:
    """Mean pass@k over prompts; successes [prompts, n] bool, each row one prompt's n answers."""
    n = successes.shape[1]
    return sum(pass_at_k(n, int(row.sum()), k) for row in successes) / successes.shape[0]
