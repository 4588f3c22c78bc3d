"""models/kernels.py: the numba bag sum against torch's embedding_bag, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.kernels import bag_sum_relu
from models.layers import Experts, GroupedLinear, grouped_linear


def _reference(ids: torch.Tensor, table: torch.Tensor, n_relu: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the kernel replaces: embedding_bag, a split, a ReLU, the group-major layout (torch's autograd)."""
    pre = nn.functional.embedding_bag(ids, table, mode="sum")
    first, rest = pre.split([n_relu, pre.shape[1] - n_relu], dim=1)
    return torch.relu(first).view(ids.shape[0], groups, -1).transpose(0, 1), rest


def _case(n=300, f=6, v=24, w=13, seed=0, dtype=torch.float32, laid=False):
    """ids (n, f) into a (v, w) table: any ids (a row repeats across positions and within a bag), or
    laid out as the HUM's id grid (position j reads only rows [j·v/f, (j+1)·v/f))."""
    g = torch.Generator().manual_seed(seed)
    if laid:
        ids = torch.randint(0, v // f, (n, f), generator=g) + v // f * torch.arange(f)
    else:
        ids = torch.randint(0, v, (n, f), generator=g)
        ids[0] = 4  # one bag of f copies of row 4
    return ids, torch.randn(v, w, generator=g, dtype=dtype), g


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_relu, groups", [(12, 1), (12, 3), (13, 1), (6, 2)])
@pytest.mark.parametrize("laid", [True, False])
def test_bag_sum_relu_equals_torch_forward_and_backward(n_relu, groups, threads, laid):
    """Bit for bit where each table row is read from one bag position (the HUM's id grid): each row then
    takes its gradients in row order, as one index_add_ per position adds them; close for any ids."""
    ids, table, g = _case(laid=laid)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the loops take torch's thread count: row blocks must not race
    try:
        ours_t, ref_t = table.clone().requires_grad_(), table.clone().requires_grad_()
        hidden, rest = bag_sum_relu(ids, ours_t, n_relu, groups)
        ref_hidden, ref_rest = _reference(ids, ref_t, n_relu, groups)
        assert hidden.shape == (groups, ids.shape[0], n_relu // groups) and rest.shape == (ids.shape[0], 13 - n_relu)
        assert torch.equal(hidden, ref_hidden) and torch.equal(rest, ref_rest)
        if not laid:
            assert torch.allclose(hidden[:, 0].flatten(), torch.relu(6 * table[4, :n_relu]))  # f copies of row 4
        wh, wr = torch.randn(hidden.shape, generator=g), torch.randn(rest.shape, generator=g)
        (grad,) = torch.autograd.grad((hidden * wh).sum() + (rest * wr).sum(), ours_t)
        if laid:  # the reference: one index_add_ per bag position of the masked, concatenated gradient
            pre_grad = torch.cat([(wh * (ref_hidden > 0)).transpose(0, 1).reshape(len(ids), -1), wr], 1)
            ref_grad = torch.zeros_like(table)
            for j in range(ids.shape[1]):
                ref_grad.index_add_(0, ids[:, j], pre_grad)
            assert torch.equal(grad, ref_grad)
        else:
            (ref_grad,) = torch.autograd.grad((ref_hidden * wh).sum() + (ref_rest * wr).sum(), ref_t)
            assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)
        assert (grad[:, :n_relu] != 0).any() and ((grad[:, n_relu:] != 0).any() or n_relu == 13)
    finally:
        torch.set_num_threads(before)


def test_bag_sum_relu_gradient_against_finite_differences_and_with_one_output_unused():
    ids, table, _ = _case(n=40, f=4, v=9, w=7, dtype=torch.float64)
    table.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: bag_sum_relu(ids, t, 4, 2), (table,))
    hidden, _ = bag_sum_relu(ids, table, 4, 2)
    (grad,) = torch.autograd.grad(hidden.sum(), table)  # the rest unused: its gradient is zero, not garbage
    assert torch.equal(grad[:, 4:], torch.zeros(9, 3, dtype=torch.float64))
    (ref,) = torch.autograd.grad(_reference(ids, table, 4, 2)[0].sum(), table)
    assert torch.allclose(grad, ref)


def test_bag_sum_relu_refuses_ids_outside_the_table_and_a_split_that_does_not_fit():
    ids, table, _ = _case()
    for bad in (ids.clone().index_fill_(0, torch.tensor([5]), 24), ids - 1, ids.int()):
        with pytest.raises(IndexError, match="ids must be int64 in"):
            bag_sum_relu(bad, table, 12)
    for n_relu, groups in ((0, 1), (14, 1), (12, 5)):
        with pytest.raises(ValueError, match="n_relu"):
            bag_sum_relu(ids, table, n_relu, groups)


def test_group_major_experts_give_the_numbers_of_the_row_major_path():
    g = torch.Generator().manual_seed(2)
    lin = GroupedLinear(3, 8, 5)
    x = torch.randn(11, 3, 8, generator=g)
    # The same GEMMs, but einsum and mm may reach different kernels for a shape: bit-equal on the AMD kinds,
    # last-bit apart (6e-8) on Intel's MKL for 6 -> 4. A wrong layout or bias would be off by O(0.1).
    close = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(lin.grouped(x.transpose(0, 1).contiguous()).transpose(0, 1), lin(x), **close)
    experts = Experts(10, 3, (8, 6, 4))
    pre = torch.randn(11, 24, generator=g)
    hidden = torch.relu(pre).view(11, 3, 8).transpose(0, 1).contiguous()  # (M, B, h0)
    torch.testing.assert_close(experts.after_hidden(hidden).transpose(0, 1), experts.after_first(pre), **close)


@pytest.mark.parametrize("relu", [True, False])
def test_grouped_linear_per_group_products_have_bmms_gradients(relu):
    g = torch.Generator().manual_seed(3)
    lin = GroupedLinear(3, 16, 8)
    x = torch.randn(3, 50, 16, generator=g, requires_grad=True)
    grad_out = torch.randn(3, 50, 8, generator=g)
    out = lin.grouped(x, relu)
    out.backward(grad_out)
    got = [out.detach(), x.grad, lin.weight.grad, lin.bias.grad]
    x.grad, lin.weight.grad, lin.bias.grad = None, None, None
    ref = torch.baddbmm(lin.bias[:, None], x, lin.weight)
    ref = torch.relu(ref) if relu else ref
    ref.backward(grad_out)
    for a, b in zip(got, [ref.detach(), x.grad, lin.weight.grad, lin.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not relu or (out == 0).any()  # the ReLU's zeros were there to mask
    # The maths by finite differences (float64), and a frozen weight asks for no gradient of its own.
    lin64 = GroupedLinear(2, 4, 3).double()
    x64 = torch.randn(2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_, w_, b_: grouped_linear(x_, w_, b_, relu),
                                    (x64, lin64.weight, lin64.bias))
    lin.weight.requires_grad_(False)
    lin.weight.grad, lin.bias.grad = None, None
    lin.grouped(x.detach().requires_grad_(), relu).sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is not None
