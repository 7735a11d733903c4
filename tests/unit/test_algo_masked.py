"""Masked reductions: hand-computed numbers and the empty-selection convention (0, never NaN)."""

import math

import pytest
import torch

from actors.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten

F64 = torch.float64


@pytest.fixture
def x():
    return torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=F64)


@pytest.fixture
def mask():
    # Selected values: 1, 2, 5, 6 (sum 14, mean 3.5, squared deviations sum to 17).
    return torch.tensor([[1, 1, 0], [0, 1, 1]])


def test_masked_sum_and_mean_over_everything(x, mask):
    assert masked_sum(x, mask).item() == 14.0
    assert masked_mean(x, mask).item() == 3.5


def test_masked_sum_and_mean_per_row(x, mask):
    torch.testing.assert_close(masked_sum(x, mask, dim=1), torch.tensor([3.0, 11.0], dtype=F64))
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 5.5], dtype=F64))


def test_masked_mean_with_normalizer_divides_by_it_instead_of_the_count(x, mask):
    assert masked_mean(x, mask, normalizer=7).item() == 2.0


def test_a_batch_that_selects_nothing_has_a_zero_mean_with_its_zero_normalizer(x):
    """The whole batch's token count is 0 where a rollout correction dropped every token: 0, not 0 / 0."""
    assert masked_mean(x, torch.zeros_like(x), normalizer=0.0).item() == 0.0


def test_bool_and_float_masks_agree(x, mask):
    assert masked_mean(x, mask.bool()).item() == masked_mean(x, mask.to(F64)).item() == 3.5


def test_padding_holding_inf_or_nan_does_not_leak(mask):
    x = torch.tensor([[1.0, 2.0, math.inf], [math.nan, 5.0, 6.0]], dtype=F64)
    assert masked_sum(x, mask).item() == 14.0
    assert masked_mean(x, mask).item() == 3.5


def test_masked_var_unbiased_and_biased(x, mask):
    assert masked_var(x, mask).item() == pytest.approx(17 / 3, rel=1e-12)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(17 / 4, rel=1e-12)


def test_masked_var_of_one_element_is_zero_not_nan():
    x = torch.tensor([[3.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 0]])
    assert masked_var(x, mask).item() == 0.0
    assert masked_var(x, mask, unbiased=False).item() == 0.0


def test_all_masked_gives_zeros_everywhere():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    mask = torch.zeros(2, 2)
    assert masked_sum(x, mask).item() == 0.0
    assert masked_mean(x, mask).item() == 0.0
    assert masked_var(x, mask).item() == 0.0
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.zeros(2, dtype=F64))
    torch.testing.assert_close(masked_whiten(x, mask), torch.zeros(2, 2, dtype=F64))


def test_masked_mean_of_an_empty_row_is_zero_while_other_rows_are_exact():
    x = torch.tensor([[1.0, 3.0], [7.0, 7.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([2.0, 0.0], dtype=F64))


def test_masked_whiten_hand_values(x, mask):
    std = math.sqrt(17 / 3 + 1e-8)
    expected = torch.tensor(
        [[(1 - 3.5) / std, (2 - 3.5) / std, 0.0], [0.0, (5 - 3.5) / std, (6 - 3.5) / std]], dtype=F64
    )
    torch.testing.assert_close(masked_whiten(x, mask), expected, rtol=1e-12, atol=0)


def test_masked_whiten_without_mean_shift_keeps_the_mean(x, mask):
    std = math.sqrt(17 / 3 + 1e-8)
    whitened = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(whitened[0, 0], torch.tensor((1 - 3.5) / std + 3.5, dtype=F64))
    assert masked_mean(whitened, mask).item() == pytest.approx(3.5, rel=1e-12)
    assert whitened[0, 2].item() == 0.0


def test_masked_whiten_result_has_zero_mean_unit_variance():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 9, dtype=F64, generator=generator) * 3 + 2
    selected = torch.rand(4, 9, generator=generator) > 0.3
    whitened = masked_whiten(values, selected)
    assert abs(masked_mean(whitened, selected).item()) < 1e-12
    assert masked_var(whitened, selected).item() == pytest.approx(1.0, rel=1e-6)
