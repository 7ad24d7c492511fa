"""fastopt.nn.InstanceNorm1d/2d/3d against torch's modules, running stats included."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn

# Every test under each compiled CPU kernel variant (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_cpu_isa")

CASES = [
    (fastopt.nn.InstanceNorm1d, torch.nn.InstanceNorm1d, (3, 5, 11)),
    (fastopt.nn.InstanceNorm2d, torch.nn.InstanceNorm2d, (3, 5, 4, 7)),
    (fastopt.nn.InstanceNorm3d, torch.nn.InstanceNorm3d, (2, 5, 3, 4, 5)),
]


@pytest.mark.parametrize("ours_cls,ref_cls,shape", CASES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [False, True])
def test_matches_torch(device, ours_cls, ref_cls, shape, affine, track):
    kw = dict(affine=affine, track_running_stats=track, dtype=torch.float64)
    ref = ref_cls(5, **kw).to(device)
    ours = ours_cls(5, **kw).to(device)
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    for step in range(2):
        x = torch.randn(shape, dtype=torch.float64, device=device) * 2 + 1
        outs = []
        for m in (ours, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.backward(torch.ones_like(y) + xi.detach())
            outs.append([y, xi.grad, *[p.grad for p in m.parameters()]])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_unbatched_input(device):
    ours, ref = fastopt.nn.InstanceNorm1d(4).to(device), torch.nn.InstanceNorm1d(4).to(device)
    x = torch.randn(4, 9, device=device)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(device, channels_last):
    m = fastopt.nn.InstanceNorm2d(3, affine=True, dtype=torch.float64).to(device)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(m, [x.requires_grad_()])
