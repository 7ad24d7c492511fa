"""The extension's build facts, its torch-version guard and op-level input checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastopt
from fastopt._loader import check_torch_version

# The checkout fastopt is imported from (child processes import it from there too).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__)))


def _child_env() -> dict[str, str]:
    """This environment, with ROOT first on PYTHONPATH: a child imports this fastopt."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def test_build_info():
    info = fastopt.build_info()
    assert set(info) == {"cuda", "cpu_capability", "cpu_capability_best", "torch_version"}
    assert info["cpu_capability"] in ("default", "avx2", "avx512")
    assert info["torch_version"].split(".")[:2] == torch.__version__.split(".")[:2]
    from fastopt import _build_config

    assert info["cuda"] == _build_config.CUDA


def test_ops_registered_for_built_backends():
    for overload in (torch.ops.fastopt.adam_.default, torch.ops.fastopt.adam_.tensor_lr):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(), "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(), "CUDA") == fastopt.build_info()["cuda"]


def test_incompatible_torch_is_refused_with_a_clear_message():
    check_torch_version("2.13.0", "2.13.1+cu130")  # same minor release: fine
    with pytest.raises(ImportError, match=r"compiled against torch 2\.11\.0, but torch 2\.13\.0 is installed"):
        check_torch_version("2.11.0", "2.13.0")


def test_error_messages_format_integers_in_a_fresh_process():
    """An extension linked with its own copy of libstdc++ (a compiler with only
    libstdc++.a; setup.py refuses one) segfaults the first time a C++ error
    message formats an integer. In a child process, that shows as a signal
    here instead of taking the test run down."""
    code = (
        "import torch, fastopt\n"
        "try:\n"
        "    torch.ops.fastopt.grad_norm([torch.zeros(1), torch.zeros(3, dtype=torch.int64)], 2.0)\n"
        "except TypeError as e:\n"
        "    print(e)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(), timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "grads[1]" in child.stdout, child.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fake compiler drivers are shell scripts")
def test_build_leaves_a_compiler_without_shared_libstdcxx(tmp_path):
    """setup.py, run in a scratch copy (its build config lands there): a CXX
    whose -print-file-name finds no libstdc++.so is replaced by a g++ on PATH
    that finds one, CC by the gcc beside it."""
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path)
    (tmp_path / "fastopt").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    drivers = {"static-g++": "libstdc++.so", "g++": "/opt/shared/libstdc++.so", "gcc": "/opt/shared/libstdc++.so"}
    for name, answer in drivers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\necho {answer}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, CXX=str(bin_dir / "static-g++"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["FASTOPT_CUDA"] = "0"
    child = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert f"{bin_dir / 'static-g++'} has no shared libstdc++; building with {bin_dir / 'g++'}" in child.stderr


def test_unknown_cpu_capability_is_rejected():
    with pytest.raises(ValueError, match="unknown CPU capability"):
        fastopt._C._set_cpu_capability("sse9")


def _adam_lists(n=2, device="cpu", dtype=torch.float32):
    make = lambda: [torch.zeros(3, device=device, dtype=dtype) for _ in range(n)]  # noqa: E731
    return [make(), make(), make(), make(), [], [torch.tensor(0.0) for _ in range(n)]]


ADAM_KW = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False, decoupled_weight_decay=False)


def test_op_rejects_mismatched_list_lengths():
    lists = _adam_lists()
    lists[1] = lists[1][:1]
    with pytest.raises(RuntimeError, match="grads has 1 tensors but params has 2"):
        torch.ops.fastopt.adam_(*lists, **ADAM_KW)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second real device")
def test_op_rejects_mixed_devices():
    # (A CPU + meta mix cannot stand in: the dispatcher sends it to the fake kernel.)
    lists = _adam_lists()
    lists[2][1] = torch.zeros(3, device="cuda")
    with pytest.raises(RuntimeError, match=r"all tensors must be on one device, but exp_avgs\[1\] is on cuda"):
        torch.ops.fastopt.adam_(*lists, **ADAM_KW)


def test_op_rejects_mixed_dtypes_and_integer_params():
    lists = _adam_lists()
    lists[3][0] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[0\] is Double"):
        torch.ops.fastopt.adam_(*lists, **ADAM_KW)
    with pytest.raises(TypeError, match="must be floating point"):
        torch.ops.fastopt.adam_(*_adam_lists(dtype=torch.int32), **ADAM_KW)


def test_op_rejects_shape_mismatch_and_missing_amsgrad_state():
    lists = _adam_lists()
    lists[1][0] = torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"grads\[0\] has shape \[4\]"):
        torch.ops.fastopt.adam_(*lists, **ADAM_KW)
    with pytest.raises(RuntimeError, match="max_exp_avg_sqs must have one tensor per param"):
        torch.ops.fastopt.adam_(*_adam_lists(), **{**ADAM_KW, "amsgrad": True})


def test_op_rejects_sparse_tensors():
    # The dispatcher refuses a sparse tensor before the kernel runs (the
    # optimizers refuse sparse grads earlier still, with torch's message).
    lists = _adam_lists()
    lists[1][0] = torch.zeros(3).to_sparse()
    with pytest.raises(NotImplementedError, match="SparseCPU"):
        torch.ops.fastopt.adam_(*lists, **ADAM_KW)


def test_import_pulls_in_no_heavy_torch_subsystems():
    """import fastopt stays light (30 ms after torch): torch.compiler.disable
    would import dynamo (1 s) and torch.distributed.tensor costs 0.6 s, which
    every DataLoader or DDP worker process would pay. Both load on first use."""
    code = "import sys, torch, fastopt; print([m for m in ('torch._dynamo', 'torch.distributed.tensor') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_child_env())
    assert out.stdout.strip() == "[]"
