"""Layers with faster kernels than torch.nn's on the CPUs users have, numerically the same thing."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout whose mask is drawn as uniform >= p (keep with probability 1 - p, scaled by 1 / (1 - p)):
    the same distribution as torch's bernoulli_ mask, but bernoulli_ is slow on CPUs: on a 2-core AVX2-only
    AMD EPYC (Zen 2), cnn1's dropout on 128 x 32 x 13 x 13 takes 3.7 ms forward and backward against 12.2 ms
    for F.dropout (best of 60), and cnn1's whole training step 31 ms against 40. The draws come from torch's
    generator, so a seed and a resumed run's saved RNG state reproduce them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        draw_dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype  # fine-grained draws
        mask = torch.rand_like(x, dtype=draw_dtype).ge_(self.p).mul_(1 / (1 - self.p))
        return x * mask.to(x.dtype)


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
