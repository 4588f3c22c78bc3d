"""Small building blocks shared by HUM and the baselines."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int | None = None, dropout: float = 0.0) -> nn.Sequential:
    """ReLU MLP; ``d_out`` adds a final linear layer without activation."""
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        d = h
    if d_out is not None:
        layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class GroupedLinear(nn.Module):
    """G independent linear maps applied to a (B, G, d_in) tensor in one einsum."""

    def __init__(self, groups: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(groups, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, G, d_in) -> (B, G, d_out)
        return torch.einsum("bgi,gio->bgo", x, self.weight) + self.bias

    def grouped(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:  # (G, B, d_in) -> (G, B, d_out)
        """The maps on group-major rows: one ``mm`` per group, no permuted copies (the numbers of ``forward``);
        ``relu``: followed by a ReLU. The bias and the ReLU go in place (the product is saved by nothing)."""
        return grouped_linear(x, self.weight, self.bias, relu)


class _GroupedMM(torch.autograd.Function):
    """x (G, B, i) @ w (G, i, o) + b (G, o), optionally ReLU'd, one ``mm`` per group, forward and
    backward. ``bmm`` hands whole groups to threads: 3 experts on 2 cores leave one core idle for a
    third of each product (measured 1.5-3.0 ms per call in the step against 1.1-1.25 ms for three
    ``mm``, each threaded inside). The numbers are ``bmm``'s: each group's product is the same GEMM."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
        out = x.new_empty(x.shape[0], x.shape[1], w.shape[2])  # (G, B, o)
        for g in range(x.shape[0]):
            torch.mm(x[g], w[g], out=out[g])
        out.add_(b[:, None])  # after the product, as bmm's caller added it (addmm rounds otherwise)
        if relu:
            out.relu_()
        ctx.save_for_backward(x, w, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        x, w, out = ctx.saved_tensors
        if out is not None:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)  # ReLU's own backward: the same zeros
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.empty_like(w) if need_w else None
        for g in range(x.shape[0]):
            if need_x:
                torch.mm(grad[g], w[g].t(), out=grad_x[g])
            if need_w:
                torch.mm(x[g].t(), grad[g], out=grad_w[g])
        return grad_x, grad_w, grad.sum(1) if need_b else None, None


def grouped_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """G linear maps on group-major rows: x (G, B, i), w (G, i, o), b (G, o) -> (G, B, o), ReLU'd if ``relu``."""
    return _GroupedMM.apply(x, w, b, relu)


class Experts(nn.Module):
    """M expert MLPs over the same input, computed together: (B, d) -> (B, M, h_last)."""

    def __init__(self, d_in: int, n_experts: int, hidden: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        self.m = n_experts
        self.first = nn.Linear(d_in, n_experts * hidden[0])  # all experts' first layers at once
        self.rest = nn.ModuleList(GroupedLinear(n_experts, a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_first(self.first(x))

    def after_first(self, pre: torch.Tensor) -> torch.Tensor:
        """The experts from their first layers' pre-activations (B, M*h0) on: (B, M, h_last)."""
        h = torch.relu(pre).view(pre.shape[0], self.m, -1)  # (B, M, h0)
        for layer in self.rest:
            h = torch.relu(layer(self.drop(h)))
        return h

    def after_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The experts from their first layers' outputs after the ReLU, expert-major (M, B, h0), on:
        (M, B, h_last), each layer ``grouped_linear`` (the same numbers as ``after_first``)."""
        h = hidden
        for layer in self.rest:
            h = layer.grouped(self.drop(h), relu=True)
        return h


class _GateMix(torch.autograd.Function):
    """Σ_m g[b, r, m] · p[b, m, h]: a mixture of a few experts per response, differentiated by hand."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # (B, R, M), (B, M, H) -> (B, R, H)
        ctx.save_for_backward(g, p)
        out = g[:, :, 0, None] * p[:, None, 0]
        for m in range(1, p.shape[1]):
            out.addcmul_(g[:, :, m, None], p[:, None, m])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, p = ctx.saved_tensors
        r, m = g.shape[1], g.shape[2]
        # R·M row-wise dot products and M sums of R products, each over (B, H): autograd's
        # broadcast products instead reduce a (B, R, H) temporary per expert, twice (measured
        # 3× slower for R = 2, M = 3; B tiny batched matmuls are slower still).
        g_grad = torch.stack([torch.stack([(grad[:, i] * p[:, j]).sum(-1) for j in range(m)], 1) for i in range(r)], 1)
        # p's gradient expert-major (M, B, H), each expert's written in place (no stack), handed
        # back as the (B, M, H) view: an expert-major p (``Experts.after_hidden``) takes it as is.
        p_grad = grad.new_empty(m, grad.shape[0], grad.shape[2])
        for j in range(m):
            acc = torch.mul(g[:, 0, j, None], grad[:, 0], out=p_grad[j])
            for i in range(1, r):
                acc.addcmul_(g[:, i, j, None], grad[:, i])
        return g_grad, p_grad.transpose(0, 1)


def gate_mix(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Each response's mixture of the experts' outputs: gates g (B, R, M), outputs p (B, M, H) -> (B, R, H).
    p may be a strided view, e.g. of expert-major (M, B, H) outputs."""
    return _GateMix.apply(g, p)


def positive(z: torch.Tensor) -> torch.Tensor:
    """softplus(z) + 1e-4: outputs > 0, since δ divides by them."""
    return nn.functional.softplus(z) + 1e-4


class Towers(nn.Module):
    """R response towers over (B, R, d) inputs -> (B, R) positive outputs (softplus)."""

    def __init__(self, n_responses: int, d_in: int, hidden: tuple[int, ...]):
        super().__init__()
        dims = (d_in, *hidden)
        self.hidden = nn.ModuleList(GroupedLinear(n_responses, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = GroupedLinear(n_responses, dims[-1], 1)
        # Targets are scaled to mean 1: start the softplus near 1.
        nn.init.constant_(self.out.bias, math.log(math.e - 1))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, R, d_in) -> (B, R) pre-softplus outputs."""
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h).squeeze(-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return positive(self.logits(h))


class JointTower(nn.Module):
    """One tower over every response's input: (B, R, d_in) -> (B, R) logits.

    Where ``Towers`` keeps the responses apart, this reads them concatenated (B, R·d_in),
    so what one response's head learns (e.g. which users a strategy moves) is there for
    the others' outputs too.
    """

    def __init__(self, n_responses: int, d_in: int, hidden: tuple[int, ...]):
        super().__init__()
        dims = (n_responses * d_in, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], n_responses)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, R, d_in) -> (B, R) pre-softplus outputs."""
        h = h.flatten(1)  # (B, R*d_in)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return positive(self.logits(h))
