"""Layers with faster kernels than torch.nn's on the CPUs users have, numerically the same thing."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout whose mask is drawn from fast random bits: the same distribution as torch's bernoulli_ mask
    (keep with probability 1 - p, scaled by 1 / (1 - p)), but bernoulli_ is slow on CPUs: on a 2-core
    AVX2-only AMD EPYC (Zen 2), cnn1's dropout on 128 x 32 x 13 x 13 took 12.2 ms forward and backward with
    F.dropout, 3.7 ms with a uniform >= p mask (cnn1's whole training step 40 ms against 31).

    On the CPU the mask now comes from 16-bit slices of full-range 64-bit draws (one generator call per four
    elements), with p rounded to a multiple of 1/65536 and the scale taken from that rounded p, so the mask
    stays unbiased: 692,224 draws, AVX2 emulated on the 2-core AMX Xeon, 1.0 ms against 3.1 ms for
    rand_like >= p (the largest operator in cnn1's step, 16% of it). CUDA keeps rand_like (its generator is
    fast). The draws come from torch's generator, so a seed and a resumed run's saved RNG state reproduce them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        if x.device.type == "cpu" and dense_layout(x):
            return x * _bit_mask(x, self.p)
        draw_dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype  # fine-grained draws
        mask = torch.rand_like(x, dtype=draw_dtype).ge_(self.p).mul_(1 / (1 - self.p))
        return x * mask.to(x.dtype)


def dense_layout(x: torch.Tensor) -> bool:
    """Whether x fills its memory as one block, in the standard or the channels_last order (kernels that walk a
    tensor as a flat buffer need it: this mask, torch's fused CPU Adam)."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _bit_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A keep-mask scaled by 1 / (1 - p') in x's shape and memory layout, p' = p rounded to 1/65536."""
    n = x.numel()
    dropped = round(p * 65536)  # int16 draws are uniform over [-32768, 32767]: keep the top 65536 - dropped
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)  # from the lowest int64, no bound: all 64 bits
    keep = bits.view(torch.int16)[:n].as_strided(x.shape, x.stride()) >= dropped - 32768
    return keep.to(x.dtype).mul_(65536 / (65536 - dropped))


class _FlattenChannelsLastGrad(torch.autograd.Function):
    """torch.flatten whose gradient goes back in the input's channels_last layout. Plain flatten's gradient
    comes back contiguous (NCHW), so dropout's and max-pooling's backward below it mix layouts: in cnn1 max
    pooling's backward then copies its 128 x 32 x 26 x 26 input to NCHW, 5.3 of the step's 37 ms (2-core AMX
    Xeon, AVX2 emulated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, start_dim: int, end_dim: int) -> torch.Tensor:
        ctx.shape = x.shape
        return torch.flatten(x, start_dim, end_dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last), None, None


class Flatten(nn.Flatten):
    """nn.Flatten (the same values forward and backward) that can hand its gradient back channels_last.

    Whether that is faster depends on the model and the machine: a training step with it on, 2-core AMX
    Xeon with the AVX2 emulation, fp32, batch 128 (best of 3): cnn1 -19%, cnn2 -21%, cnn3 -18%, cnn4 -14%,
    tuned-cnn +7%; natively (AVX-512) cnn1 -18%, cnn2 -16%, cnn3 +6%, tuned-cnn +10%. So it is off unless
    the engine measured it faster (`channels_last_grad`, set by cnnlab.engine.layout_probe)."""

    channels_last_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_grad and x.dim() == 4 and x.requires_grad and torch.is_grad_enabled() \
                and x.is_contiguous(memory_format=torch.channels_last):
            return _FlattenChannelsLastGrad.apply(x, self.start_dim, self.end_dim)
        return torch.flatten(x, self.start_dim, self.end_dim)
