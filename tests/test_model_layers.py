"""models.layers.Dropout: the distribution of nn.Dropout, from torch's generator."""

from __future__ import annotations

import pytest
import torch

from cnnlab.models.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keeps_each_value_with_probability_one_minus_p_and_scales_it(p):
    torch.manual_seed(0)
    x = torch.ones(200_000, dtype=torch.float64)
    y = Dropout(p).train()(x)
    kept = y != 0
    rounded = round(p * 65536) / 65536  # the CPU mask's p: 16-bit draws
    assert abs(rounded - p) <= 2**-17
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - rounded)), rtol=4 * torch.finfo(torch.float64).eps, atol=0)
    n = x.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept.double().mean().item() - (1 - p)) < 6 * sd  # six standard deviations of a binomial share
    assert abs(y.mean().item() - 1) < 6 * sd / (1 - p)  # unbiased, as nn.Dropout


def test_eval_and_p0_are_the_identity_and_the_seed_reproduces_the_mask():
    x = torch.randn(4, 3, 5, 5)
    assert Dropout(0.5).eval()(x) is x and Dropout(0.0).train()(x) is x
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, Dropout(0.5).train()(x))
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_low_precision_inputs_keep_their_dtype_and_layout():
    x = torch.randn(8, 4, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = Dropout(0.5).train()(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    out = Dropout(0.5).train()(grad)
    out.sum().backward()
    assert torch.equal(grad.grad, (out != 0).double() * 2)  # the gradient passes where the value was kept


def test_every_16_bit_slice_of_the_draws_is_uniform():
    """The CPU mask cuts 64-bit draws into four 16-bit slices: each must keep 1 - p (a draw without the sign
    bit, as random_() gives by default, would keep every fourth element with probability 1)."""
    torch.manual_seed(1)
    x = torch.ones(4 * 50_000)
    kept = (Dropout(0.5).train()(x) != 0).view(-1, 4).double().mean(0)
    sd = (0.25 / 50_000) ** 0.5
    assert (kept - 0.5).abs().max().item() < 6 * sd


def test_a_strided_input_gets_the_same_distribution():
    """The 64-bit-draw mask is laid over a flat buffer; an input with gaps takes the uniform path instead."""
    torch.manual_seed(2)
    x = torch.ones(400, 1000)[:, ::2]  # every other column: not one block of memory, so no flat mask for it
    y = Dropout(0.25).train()(x)
    assert y.shape == x.shape and abs((y != 0).double().mean().item() - 0.75) < 6 * (0.75 * 0.25 / x.numel()) ** 0.5
