"""Benchmark fastopt's EMA update against torch's foreach and for-loop lerp.

Usage: python benchmarks/bench_ema.py [--quick] [--device cpu|cuda] [--out DIR]

One EMA update, shadow = lerp(shadow, param, 1 - decay), over the parameter
layouts of bench_optim.py, for three contenders on identical inputs:
``fastopt.optim.EMA.update`` (one fused op per device and dtype),
``torch._foreach_lerp_`` (what torch.optim.swa_utils.get_ema_multi_avg_fn
runs) and a for-loop of ``Tensor.lerp_``. Minimal traffic per parameter:
read shadow and param, write shadow, so 3 x element size (12 B in float32).
Timing, interleaving and the triad reference are bench_optim.py's.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

import fastopt
from bench_optim import TRIAD, layouts, parse_args
from common import Triad, environment, format_table, gb_per_s, measure_bandwidth, run_interleaved, write_json

DECAY = 0.999
FOREACH = "torch _foreach_lerp_"
FOR_LOOP = "torch for-loop lerp_"
# Tensors per parameter the update touches: shadow and param read, shadow written.
TENSORS_MOVED = 3


def setup(shapes, dtype: torch.dtype, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Seeded params and a shadow that differs from them, as after training steps."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    shadow = [torch.randn(s, generator=gen, device=device, dtype=dtype) for s in shapes]
    return params, shadow


def contenders(shapes, dtype: torch.dtype, device: torch.device) -> dict[str, Callable[[], object]]:
    """One update per contender, each on its own copy of the inputs."""
    params, _ = setup(shapes, dtype, device)
    ema = fastopt.optim.EMA(params, decay=DECAY)
    ema.shadow = setup(shapes, dtype, device)[1]  # same starting average as the others

    foreach_params, foreach_shadow = setup(shapes, dtype, device)
    loop_params, loop_shadow = setup(shapes, dtype, device)

    def foreach() -> None:
        torch._foreach_lerp_(foreach_shadow, foreach_params, 1 - DECAY)

    def for_loop() -> None:
        for s, p in zip(loop_shadow, loop_params):
            s.lerp_(p, 1 - DECAY)

    return {FOR_LOOP: for_loop, FOREACH: foreach, "fastopt": ema.update}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    reps, warmup = (7, 2) if args.quick else (40, 5)
    env = environment(device)
    triad = Triad(device)
    bandwidth = measure_bandwidth(triad, device, reps)
    shapes = layouts(device)
    print(f"device: {device.type} ({env.get('gpu_name', env['cpu_model'])}), threads: {env['threads']}")
    print(f"torch {env['torch_version']}; triad {bandwidth.triad_gbps:.1f} GB/s at start")

    headers = ["case", "dtype", "contender", "median ms", "p20-p80", "GB/s", "% of triad", "vs foreach", "vs for-loop"]
    records: list[dict] = []
    for dtype in (torch.float32, torch.bfloat16):
        rows = []
        for layout, layout_shapes in shapes.items():
            numel = sum(math.prod(s) for s in layout_shapes)
            nbytes = numel * TENSORS_MOVED * torch.empty((), dtype=dtype).element_size()
            steps = contenders(layout_shapes, dtype, device)
            steps[TRIAD] = triad
            stats = run_interleaved(steps, device, reps, warmup)
            triad_gbps = gb_per_s(triad.nbytes, stats[TRIAD].median)
            for name, st in stats.items():
                n_bytes = triad.nbytes if name == TRIAD else nbytes
                is_step = name != TRIAD
                record = {
                    "layout": layout,
                    "dtype": str(dtype).removeprefix("torch."),
                    "numel": triad.numel if name == TRIAD else numel,
                    "bytes_per_step": n_bytes,
                    "contender": name,
                    "median_ms": st.median,
                    "p20_ms": st.p20,
                    "p80_ms": st.p80,
                    "samples_ms": st.samples,
                    "gbps": gb_per_s(n_bytes, st.median),
                    "fraction_of_triad": gb_per_s(n_bytes, st.median) / triad_gbps,
                    "speedup_vs_foreach": stats[FOREACH].median / st.median if is_step else None,
                    "speedup_vs_for_loop": stats[FOR_LOOP].median / st.median if is_step else None,
                }
                records.append(record)
                rows.append(
                    [
                        f"EMA {layout}", record["dtype"], name, f"{st.median:.2f}", f"{st.p20:.2f}-{st.p80:.2f}",
                        f"{record['gbps']:.1f}", f"{100 * record['fraction_of_triad']:.0f}%",
                        *("" if record[k] is None else f"{record[k]:.2f}x"
                          for k in ("speedup_vs_foreach", "speedup_vs_for_loop")),
                    ]
                )  # fmt: skip
        print(f"\n{str(dtype).removeprefix('torch.')} (shadow and params)")
        print(format_table(headers, rows))
    payload = {
        "benchmark": "ema",
        "environment": env,
        "fastopt_build_info": fastopt.build_info(),
        "bandwidth": bandwidth,
        "settings": {"quick": args.quick, "reps": reps, "warmup_steps": warmup, "decay": DECAY,
                     "bytes_per_param": f"{TENSORS_MOVED} x element size (read shadow, param; write shadow)"},
        "layouts": {name: {"tensors": len(s), "params": sum(math.prod(x) for x in s)} for name, s in shapes.items()},
        "results": records,
    }  # fmt: skip
    print(f"\nwrote {write_json(args.out, 'ema', device, payload)}")


if __name__ == "__main__":
    main()
