"""torch.compile traces fastopt optimizers without graph breaks."""

from __future__ import annotations

import pytest
import torch

import fastopt.nn
from fastopt.optim import SGD, Adagrad, AdamW, RMSprop


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)


def test_compiled_training_step_matches_eager(device):
    """A whole training step (forward, backward, fused update) in one fullgraph compile.

    The lr is a tensor, as torch recommends for compiled optimizers, so that a
    scheduler changing it does not force a recompile.
    """
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("tracing loss.backward() in one graph needs torch._dynamo.config.trace_autograd_ops")
    x = torch.randn(32, 8, device=device)
    y = torch.randn(32, 1, device=device)
    results = []
    for compiled in (False, True):
        model = _model(device)
        opt = AdamW(model.parameters(), lr=torch.tensor(0.01), weight_decay=0.1)

        def train_step():
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()

        if compiled:
            torch._dynamo.reset()
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                step = torch.compile(train_step, fullgraph=True)
                losses = []
                for _ in range(4):
                    opt.zero_grad()  # dynamo does not trace Optimizer.zero_grad
                    losses.append(step().item())
        else:
            losses = []
            for _ in range(4):
                opt.zero_grad()
                losses.append(train_step().item())
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def _step_eager_and_compiled(ref_model, ref_opt, model, opt, device: str) -> None:
    """Three steps of ref_opt eager and of opt.step compiled (fullgraph), on the
    same gradients; the parameters must agree."""
    x = torch.randn(4, 8, device=device)
    torch._dynamo.reset()
    compiled_step = torch.compile(opt.step, fullgraph=True)
    for _ in range(3):
        for m in (ref_model, model):
            m.zero_grad()
            m(x).sum().backward()
        ref_opt.step()
        compiled_step()
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "cls,config",
    [
        (AdamW, {}),
        # global clipping and the inf/NaN skip trace too (norm op, device scalars)
        (AdamW, {"max_grad_norm": 0.1, "skip_nonfinite": True}),
        (RMSprop, {}),
        (RMSprop, {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
        (SGD, {"momentum": 0.9, "nesterov": True}),
        (Adagrad, {"lr_decay": 0.1}),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else repr(x),
)
def test_compiled_step_fullgraph(cls, config, device):
    """opt.step() alone, with a tensor lr, compiles with fullgraph=True (inductor) and matches eager.

    For SGD this covers both of the op's variants: the first step creates
    the momentum buffers (is_first_step), later steps decay them.
    """
    ref_model, model = _model(device), _model(device)
    ref_opt = cls(ref_model.parameters(), lr=torch.tensor(0.01), **config)
    opt = cls(model.parameters(), lr=torch.tensor(0.01), **config)
    _step_eager_and_compiled(ref_model, ref_opt, model, opt, device)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        for key, value in ref_opt.state[a].items():
            torch.testing.assert_close(opt.state[b][key], value)


@pytest.mark.parametrize("second_lr", ["tensor", "float"])
def test_compiled_step_per_group_lr(second_lr, device):
    """Param groups whose lrs differ in value only: eager merges them into one op
    call with a table of their rows, which would need a guard on the tensor
    lr's value under torch.compile; compiled, each group keeps its own call."""
    ref_model, model = _model(device), _model(device)

    def groups(m: torch.nn.Module) -> list[dict]:
        first, *rest = list(m.parameters())
        lr = torch.tensor(0.003) if second_lr == "tensor" else 0.003
        return [{"params": [first]}, {"params": rest, "lr": lr}]

    ref_opt = AdamW(groups(ref_model), lr=torch.tensor(0.01))
    opt = AdamW(groups(model), lr=torch.tensor(0.01))
    _step_eager_and_compiled(ref_model, ref_opt, model, opt, device)


def test_dropout_compiles_fullgraph(device):
    """fastopt dropout compiles with fullgraph=True, and its compiled backward.

    The key is drawn with torch.randint, which inductor replaces with its own
    RNG, so compiled masks differ from eager ones; what must hold is that the
    compiled call is a valid dropout whose backward uses the forward's mask,
    and that torch.manual_seed reproduces it.
    """
    import fastopt.nn.functional as F

    def forward(x, residual):
        return F.dropout(x, 0.5) + F.dropout_add(x, residual, 0.25)

    x = torch.randn(64, 33, device=device).abs().add(0.5).requires_grad_()
    residual = torch.zeros(64, 33, device=device)
    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True)
    torch.manual_seed(1)
    y = compiled(x, residual)
    (grad,) = torch.autograd.grad(y.sum(), x)  # the AOTAutograd-compiled backward
    torch.manual_seed(1)
    y2 = compiled(x, residual)
    assert torch.equal(y, y2)
    # Each output element is 0, 2x, (4/3)x or their sum; the gradient follows the same masks.
    x_ = x.detach()
    candidates = torch.stack([torch.zeros_like(x_), 2 * x_, x_ / 0.75, 2 * x_ + x_ / 0.75])
    close = (y.detach().unsqueeze(0) - candidates).abs() < 1e-5 * (1 + x_.abs())
    assert close.any(0).all()
    mask_a, mask_b = torch.isclose(y, 2 * x_) | torch.isclose(y, 2 * x_ + x_ / 0.75), torch.isclose(
        y, x_ / 0.75
    ) | torch.isclose(y, 2 * x_ + x_ / 0.75)
    torch.testing.assert_close(grad, 2 * mask_a.float() + mask_b.float() / 0.75)


def test_compiled_norms_fullgraph(device):
    """GroupNorm (fused SiLU, channels last), LayerNorm and InstanceNorm compile with fullgraph=True."""
    from fastopt.nn import GroupNorm, InstanceNorm2d, LayerNorm

    model = torch.nn.Sequential(
        GroupNorm(2, 4, activation="silu"), InstanceNorm2d(4, affine=True), LayerNorm(6)
    ).to(device)
    x = torch.randn(2, 4, 5, 6, device=device).to(memory_format=torch.channels_last)
    xc = x.clone().requires_grad_()
    x.requires_grad_()
    model(x).square().sum().backward()
    eager = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    compiled(xc).square().sum().backward()
    for a, b in zip(eager, [xc.grad] + [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b)


def test_dropout_bit_mask_mode_compiles_fullgraph(device):
    """mask="bits" compiles too; its compiled backward applies the forward's stored mask."""
    import fastopt.nn.functional as F

    x = torch.randn(64, 33, device=device).abs().add(0.5).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: F.dropout(t, 0.5, mask="bits"), fullgraph=True)
    y = compiled(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    kept = y.detach() != 0
    assert 0 < kept.sum() < kept.numel()
    torch.testing.assert_close(y.detach(), torch.where(kept, 2 * x.detach(), torch.zeros_like(y)))
    torch.testing.assert_close(grad, 2 * kept.float())


def test_compiled_conv_batch_norm_relu_fullgraph(device):
    """A conv + BatchNorm2d + ReLU net trains under torch.compile(fullgraph=True) as in eager.

    Covers the fused training op, its backward, the in-place running-stat
    updates and num_batches_tracked, and then evaluation mode.
    """
    from fastopt.nn import BatchNorm2d

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), torch.nn.ReLU()).to(device)

    x = torch.randn(4, 3, 6, 6, device=device).to(memory_format=torch.channels_last)
    eager, compiled_model = make(), make()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    for _ in range(2):
        for fn, model in ((eager, eager), (compiled, compiled_model)):
            model.zero_grad()
            fn(x).square().sum().backward()
        for a, b in zip(eager.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(a.grad, b.grad)
        for a, b in zip(eager.buffers(), compiled_model.buffers()):
            torch.testing.assert_close(a, b)
    eager.eval()
    compiled_model.eval()
    torch.testing.assert_close(compiled(x), eager(x))


@pytest.mark.parametrize("capture_scalars", [False, True], ids=["default", "capture_scalar_outputs"])
def test_cumulative_batch_norm_compiles(device, capture_scalars):
    """BatchNorm(momentum=None) reads 1 / num_batches_tracked on the host: a
    graph break, as in torch's module, and with dynamo's capture_scalar_outputs
    (which would make it a symbolic float the op cannot take) too."""
    from fastopt.nn import BatchNorm1d

    torch.manual_seed(0)
    eager = BatchNorm1d(4, momentum=None).to(device)
    compiled_model = BatchNorm1d(4, momentum=None).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model)
    with torch._dynamo.config.patch(capture_scalar_outputs=capture_scalars):
        for _ in range(3):
            x = torch.randn(5, 4, 3, device=device)
            torch.testing.assert_close(compiled(x), eager(x))
    for a, b in zip(eager.buffers(), compiled_model.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "module,shapes",
    [
        # the per-channel count of BatchNorm's running-variance correction
        (lambda: fastopt.nn.BatchNorm2d(8), [(n, 8, 5, 5) for n in range(2, 12)]),
        # the channel size of channel-wise dropout
        (lambda: fastopt.nn.Dropout2d(0.3), [(3, 8, h, 5) for h in range(4, 10)]),
    ],
    ids=["batch_norm", "dropout2d"],
)
def test_dynamic_shapes_compile_once(module, shapes, device):
    """Sizes derived from the input's shape reach the ops as SymInts: with
    dynamic=True one graph serves every size, as with torch's modules."""
    from torch._dynamo.utils import counters

    m = module().to(device)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(m, backend="eager", fullgraph=True, dynamic=True)
    for shape in shapes:
        x = torch.randn(shape, device=device)
        torch.manual_seed(0)
        out = compiled(x)
        assert out.shape == x.shape
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("warmup", [False, True], ids=["constant", "warmup"])
@pytest.mark.parametrize("given", ["module", "tensors"])
def test_compiled_ema_update_fullgraph(given, warmup, device):
    """EMA.update() compiles with fullgraph=True and averages as the eager update does.

    The model has a BatchNorm, so an integer buffer (num_batches_tracked,
    copied) rides along with the averaged floats. The update count is a
    Python int on the EMA: one recompile when it first changes, after which
    dynamo treats it as dynamic, so later updates reuse the graph. With
    warmup the decay changes every update: 12 updates, past dynamo's limit of
    8 recompiles, show that it is no constant of the graph.
    """
    from fastopt.optim import EMA
    from torch._dynamo.utils import counters

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).to(device)

    def source(m: torch.nn.Module):
        return m if given == "module" else [*m.parameters(), *m.buffers()]

    eager_model, compiled_model = make(), make()
    eager = EMA(source(eager_model), decay=0.9, warmup=warmup)
    ema = EMA(source(compiled_model), decay=0.9, warmup=warmup)
    torch._dynamo.reset()
    counters.clear()
    update = torch.compile(ema.update, fullgraph=True)
    updates = 12
    for i in range(updates):
        x = torch.randn(4, 8, device=device)
        for m in (eager_model, compiled_model):
            m(x)  # training mode: new running statistics and count
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.1 * (i + 1))
        eager.update()
        update()
    assert ema.num_updates == eager.num_updates == updates
    for a, b in zip(eager.shadow, ema.shadow):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] <= 2


def test_compiled_ema_warmup_averages_complex_tensors(device):
    """A traced warmup update averages complex tensors (torch's lerp, with the
    decay as a tensor) exactly as the eager update does."""
    from fastopt.optim import EMA

    eager_tensors = [torch.randn(5, dtype=torch.complex64, device=device), torch.randn(3, device=device)]
    traced_tensors = [t.clone() for t in eager_tensors]
    eager, ema = EMA(eager_tensors, decay=0.99, warmup=True), EMA(traced_tensors, decay=0.99, warmup=True)
    torch._dynamo.reset()
    update = torch.compile(ema.update, fullgraph=True)
    for _ in range(10):
        steps = [torch.randn_like(t) for t in eager_tensors]
        for tensors in (eager_tensors, traced_tensors):
            for t, d in zip(tensors, steps):
                t.add_(d)
        eager.update()
        update()
    for a, b in zip(eager.shadow, ema.shadow):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
