#!/usr/bin/env bash
# One call on a lent GPU machine (the `device` tool): the GPU checks that CI,
# which has no GPU, cannot do. The machine starts bare and goes back soon after
# each call, so one command does several steps and leaves its logs in $OUT.
#
#   benchmarks/gpu_session.sh STEP...
#
# Steps, in the order given:
#   info      nvidia-smi, torch and nvcc versions
#   build     build fastopt._C with CUDA for sm_90 (or unpack .gpubuild/_C.tgz,
#             a build an earlier call returned, when that file is carried);
#             leaves a stripped copy in $OUT/_C.tgz for later calls
#   test      the test suite's CUDA cases (pytest -k cuda), in parallel
#   test-all  the whole test suite
#   memcheck  compute-sanitizer memcheck over the kernels' CUDA tests (one
#             process: under the sanitizer, pytest-xdist's workers never came
#             up in 7 minutes; the whole set takes longer than one 300 s step,
#             the dropout and norm files alone about 80 s)
#   memcheck-optim, memcheck-bn
#             the same over tests/optim alone, and over the BatchNorm and
#             InstanceNorm files alone: halves that fit a step each
#   racecheck compute-sanitizer racecheck over the shared-memory (norm) kernels
#   bench     the benchmark report on cuda, into $OUT/results
#   overhead  benchmarks/host_overhead.py on cuda: the modules' per-call host cost
#   gdb       the native backtrace of a crash: cuda-gdb runs the pytest node
#             ids in $GDB_TESTS (it also debugs host code; the machine has no gdb)
#
# Each step has a time limit (STEP_LIMIT seconds, default 300) so that a slow
# step still leaves the next ones time and the call returns its logs.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/fastopt-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FASTOPT_CUDA_ARCHS=${FASTOPT_CUDA_ARCHS:-90}
STEP_LIMIT=${STEP_LIMIT:-300}

# The kernels' tests: every optimizer, norm and dropout family on cuda.
KERNEL_TESTS="tests/optim tests/nn/test_batch_norm.py tests/nn/test_group_norm.py \
tests/nn/test_layer_norm.py tests/nn/test_instance_norm.py tests/nn/test_dropout.py \
tests/nn/test_dropout_bits.py tests/nn/test_dropout_stream.py"
NORM_TESTS="tests/nn/test_batch_norm.py tests/nn/test_group_norm.py tests/nn/test_layer_norm.py \
tests/nn/test_instance_norm.py"

xdist() {  # pytest-xdist when installed: the compile tests spend most of their time on the CPU
    "$PY" -c "import xdist" 2>/dev/null && echo "-n ${1:-8}"
}

step() {
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$STEP_LIMIT" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$OUT/$name.log"
    return $rc
}

for s in "$@"; do
    case $s in
    info)
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
        "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
        nvcc --version | tail -n 2
        ;;
    build)
        if [ -f .gpubuild/_C.tgz ]; then
            tar xzf .gpubuild/_C.tgz && echo "=== build: unpacked the carried build"
        else
            step build "$PY" setup.py build_ext --inplace || { grep -n -B2 -A8 "error" "$OUT/build.log" | head -80; exit 1; }
            tmp=$(mktemp -d)
            for so in fastopt/_C*.so; do strip --strip-debug -o "$tmp/$(basename "$so")" "$so"; done
            cp fastopt/_build_config.py "$tmp/"
            (cd "$tmp" && mkdir fastopt && mv _C*.so _build_config.py fastopt/ && tar czf "$OUT/_C.tgz" fastopt)
        fi
        "$PY" -c "import fastopt; print(fastopt.build_info())"
        ;;
    test)
        step test "$PY" -m pytest tests -q -k cuda -p no:cacheprovider -W ignore::UserWarning $(xdist) -r fE
        ;;
    test-all)
        step test-all "$PY" -m pytest tests -q -p no:cacheprovider -W ignore::UserWarning $(xdist) -r fE
        ;;
    memcheck)
        step memcheck compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
            "$PY" -m pytest $KERNEL_TESTS -q -k "cuda and not compile" -p no:cacheprovider -W ignore
        ;;
    memcheck-optim | memcheck-bn)
        if [ "$s" = memcheck-optim ]; then files="tests/optim"; else
            files="tests/nn/test_batch_norm.py tests/nn/test_instance_norm.py"; fi
        # shellcheck disable=SC2086  # a list of test files
        step "$s" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
            "$PY" -m pytest $files -q -k "cuda and not compile" -p no:cacheprovider -W ignore
        ;;
    racecheck)
        step racecheck compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 9 \
            "$PY" -m pytest $NORM_TESTS -q -k "cuda and not compile" -p no:cacheprovider -W ignore
        ;;
    bench)
        step bench "$PY" -m fastopt.bench --device cuda --no-progress --detail --out "$OUT/results"
        ;;
    overhead)
        step overhead "$PY" benchmarks/host_overhead.py --device cuda --calls 2000
        ;;
    gdb)
        # shellcheck disable=SC2086  # GDB_TESTS is a list of node ids
        TAIL=60 step gdb cuda-gdb -batch -ex run -ex bt --args \
            "$PY" -m pytest ${GDB_TESTS:?set GDB_TESTS to the pytest node ids} -q -p no:cacheprovider
        ;;
    *)
        echo "unknown step $s" >&2; exit 2 ;;
    esac
done
