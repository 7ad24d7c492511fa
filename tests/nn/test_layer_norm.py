"""fastopt.nn.LayerNorm against torch.nn.LayerNorm."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn


@pytest.mark.parametrize("normalized_shape", [(24,), (3, 10), (2, 3, 5)])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_matches_torch(device, normalized_shape, affine, bias):
    ref = torch.nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    ref = ref.to(device)
    if affine:
        with torch.no_grad():
            for p in ref.parameters():
                p.normal_()
    ours = fastopt.nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=torch.float64)
    ours = ours.to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, *normalized_shape, dtype=torch.float64, device=device) + 5
    grad = torch.randn_like(x)
    outs = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(grad)
        outs.append([y, xi.grad] + [p.grad for p in m.parameters()])
        m.zero_grad()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_gradcheck(device):
    m = fastopt.nn.LayerNorm((3, 4), dtype=torch.float64).to(device)
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda x, w, b: fastopt.nn.functional.layer_norm(x, (3, 4), w, b)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [x, m.weight, m.bias])


def test_bad_shape_raises_like_torch():
    with pytest.raises(RuntimeError, match="normalized_shape"):
        fastopt.nn.LayerNorm(8)(torch.randn(2, 7))
