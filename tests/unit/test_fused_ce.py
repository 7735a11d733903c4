"""linear_cross_entropy_sum against a hand computation and against torch's cross_entropy (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from actors.algo.fused_ce import linear_cross_entropy_sum


def test_hand_computed_two_tokens():
    # logits row 0 = [1, 0] with label 0: log(1 + e^-1); row 1 = [0, 2] with label 0: log(1 + e^2) - 0.
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    weight = torch.eye(2, dtype=torch.float64)
    total = linear_cross_entropy_sum(hidden, weight, torch.tensor([0, 0]), chunk_size=1)
    assert total.item() == pytest.approx(math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)), abs=1e-12)


def reference(hidden, weight, labels):
    return torch.nn.functional.cross_entropy(hidden @ weight.t(), labels, reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("chunk", [1, 5, 17, 64])
def test_value_and_gradients_match_cross_entropy(chunk):
    gen = torch.Generator().manual_seed(chunk)
    hidden = torch.randn(17, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 11, (17,), generator=gen)
    labels[[0, 4, 9]] = -100
    ours = linear_cross_entropy_sum(hidden, weight, labels, chunk_size=chunk)
    (0.37 * ours).backward()  # a non-unit upstream gradient must scale both gradients
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    expected = reference(hidden, weight, labels)
    (0.37 * expected).backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-10, atol=1e-12)


def test_ignored_tokens_get_no_gradient_and_bf16_stays_close():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 16, generator=gen).bfloat16().requires_grad_()
    weight = torch.randn(50, 16, generator=gen).bfloat16().requires_grad_()
    labels = torch.randint(0, 50, (12,), generator=gen)
    labels[3] = -100
    total = linear_cross_entropy_sum(hidden, weight, labels, chunk_size=5)
    total.backward()
    assert total.dtype == torch.float32 and weight.grad.dtype == torch.bfloat16
    assert torch.all(hidden.grad[3] == 0) and torch.any(hidden.grad[2] != 0)
    exact = reference(hidden.double(), weight.double(), labels)
    assert total.item() == pytest.approx(exact.item(), rel=2e-3)


def test_bad_shapes_name_the_shapes():
    with pytest.raises(ValueError, match=r"got \(3, 4\), \(5, 2\), \(3,\)"):
        linear_cross_entropy_sum(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, dtype=torch.long))


def matrix_products(fn) -> int:
    """How many matrix products `fn` runs (aten mm/addmm/bmm calls, seen below autograd)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
                Count.calls += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.calls


def test_no_grad_forward_skips_the_gradient_work():
    """Under no_grad (held-out loss) only the logits' product runs, one per chunk: not the two gradient products
    (d hidden, d weight) a training forward computes in the same pass."""
    hidden = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        total = linear_cross_entropy_sum(hidden, weight, labels, chunk_size=2)
        assert matrix_products(lambda: linear_cross_entropy_sum(hidden, weight, labels, chunk_size=2)) == 2
    assert not total.requires_grad
    assert total.item() == pytest.approx(reference(hidden, weight, labels).item(), rel=1e-12)
    assert matrix_products(lambda: linear_cross_entropy_sum(hidden, weight, labels, chunk_size=2)) == 6
