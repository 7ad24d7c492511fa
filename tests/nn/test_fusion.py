"""Eager-mode fusion (torch.ao.quantization.fuse_modules) of a model on
fastopt's BatchNorms: every pattern torch fuses for its own BatchNorm fuses,
into what torch builds, and the fused model computes as the unfused one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.ao.quantization import fuse_modules, fuse_modules_qat

import fastopt.nn

# (conv class, input shape) per BatchNorm dimensionality
KINDS = [
    (torch.nn.Conv1d, (4, 3, 9)),
    (torch.nn.Conv2d, (4, 3, 9, 7)),
    (torch.nn.Conv3d, (4, 3, 5, 6, 7)),
]
KIND_IDS = ["1d", "2d", "3d"]
BATCH_NORMS = {torch.nn.Conv1d: torch.nn.BatchNorm1d, torch.nn.Conv2d: torch.nn.BatchNorm2d,
               torch.nn.Conv3d: torch.nn.BatchNorm3d}


def _models(conv_cls: type, shape: tuple[int, ...], relu: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A torch model and its fastopt conversion, after a training step (running
    statistics that are not the defaults), in eval mode. The torch model then
    takes fastopt's statistics, which round differently: fusing the same
    numbers must give the same module, bit for bit."""
    torch.manual_seed(0)
    layers = [conv_cls(3, 8, 3), BATCH_NORMS[conv_cls](8)] + ([torch.nn.ReLU()] if relu else [])
    theirs = torch.nn.Sequential(*layers)
    ours = fastopt.nn.convert(copy.deepcopy(theirs))
    assert type(ours[1]).__module__.startswith("fastopt.")
    x = torch.randn(shape)
    for model in (theirs, ours):
        model(x)
    theirs.load_state_dict(ours.state_dict())
    return theirs.eval(), ours.eval()


def _types(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.children()]


@pytest.mark.parametrize("relu", [False, True], ids=["conv_bn", "conv_bn_relu"])
@pytest.mark.parametrize("conv_cls,shape", KINDS, ids=KIND_IDS)
def test_conv_batch_norm_fuses_as_torch(conv_cls, shape, relu):
    """Conv + BatchNorm (+ ReLU) in eval mode: the statistics folded into the
    convolution, as for torch's BatchNorm, and the same outputs."""
    theirs, ours = _models(conv_cls, shape, relu)
    names = ["0", "1", "2"] if relu else ["0", "1"]
    fused_theirs, fused_ours = fuse_modules(theirs, [names]), fuse_modules(ours, [names])
    assert _types(fused_ours) == _types(fused_theirs)
    x = torch.randn(shape)
    expected = ours(x)
    torch.testing.assert_close(fused_ours(x), expected)
    torch.testing.assert_close(fused_ours(x), fused_theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("conv_cls,shape", KINDS[1:], ids=KIND_IDS[1:])
def test_batch_norm_relu_fuses_as_torch(conv_cls, shape):
    """BatchNorm + ReLU (2d and 3d, the patterns torch has): torch's BNReLU
    module, holding a torch BatchNorm that shares fastopt's tensors."""
    _, ours = _models(conv_cls, shape, relu=True)
    original = ours[1]
    fused = fuse_modules(ours, [["1", "2"]], inplace=True)
    bn = fused[1][0]
    assert type(bn) is BATCH_NORMS[conv_cls]
    assert bn.weight is original.weight and bn.running_mean is original.running_mean
    x = torch.randn(shape)
    torch.testing.assert_close(fused(x), torch.relu(torch.nn.functional.batch_norm(
        fused[0](x), bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)))


def test_fusion_for_quantization_aware_training():
    """fuse_modules_qat (train mode) builds torch's ConvBn2d, which checks the
    exact BatchNorm type, from fastopt's module."""
    theirs, ours = _models(torch.nn.Conv2d, (4, 3, 9, 7), relu=True)
    fused_theirs = fuse_modules_qat(theirs.train(), [["0", "1", "2"]])
    fused_ours = fuse_modules_qat(ours.train(), [["0", "1", "2"]])
    assert _types(fused_ours) == _types(fused_theirs)
    assert [type(m) for m in fused_ours[0]] == [type(m) for m in fused_theirs[0]]
    torch.testing.assert_close(fused_ours[0][1].running_var, ours[1].running_var, rtol=0, atol=0)


def test_linear_batch_norm_fuses_as_torch():
    """Linear + BatchNorm1d in eval mode folds into one Linear, as torch's does."""
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8))
    ours = fastopt.nn.convert(copy.deepcopy(theirs))
    ours(torch.randn(6, 5))
    theirs.load_state_dict(ours.state_dict())
    theirs.eval(), ours.eval()
    fused_theirs, fused_ours = fuse_modules(theirs, [["0", "1"]]), fuse_modules(ours, [["0", "1"]])
    assert _types(fused_ours) == _types(fused_theirs) == [torch.nn.Linear, torch.nn.Identity]
    x = torch.randn(3, 5)
    torch.testing.assert_close(fused_ours(x), ours(x))
    torch.testing.assert_close(fused_ours(x), fused_theirs(x), rtol=0, atol=0)
