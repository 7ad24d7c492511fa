// fastopt::dropout, dropout_ and dropout_add on the CPU: validation, the
// per-call key, then one parallel pass of the per-ISA kernel.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/dropout_op.h"
#include "common/philox.h"
#include "cpu/kernels/dropout_kernel.h"
#include "cpu/multi_tensor_apply.h"
#include "cpu/output_cache.h"
#include "cpu/stream_fence.h"

namespace fastopt::cpu {
namespace {

// The DropoutRunFn of the CPU (see common/dropout_op.h).
void run_dropout(const DropoutInputs& in, const at::Tensor& seed, double p, const at::Tensor& out) {
  const int64_t n = in.x.numel();
  if (n == 0) return;
  const DropoutMaskParams mask = dropout_mask_params(p);
  // With a stored mask (bits_in) there is no draw and no seed.
  const DropoutKey key = in.bits_in.defined()
                             ? DropoutKey{}
                             : dropout_key(seed.contiguous().const_data_ptr<int64_t>());
  const DropoutKernelConfig cfg{in.x.scalar_type(),
                                key,
                                mask.threshold,
                                mask.drop_all,
                                mask.keep_prob,
                                in.group,
                                in.channels,
                                in.bias.defined() ? in.bias.numel() : 0,
                                // In place, the lines written were just read: no streaming.
                                !out.is_same(in.x) && stream_output(out)};
  auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.const_data_ptr() : nullptr; };
  const DropoutChunk whole{ptr(in.x),
                           ptr(in.bias),
                           ptr(in.residual),
                           out.mutable_data_ptr(),
                           in.bits_out.defined() ? in.bits_out.mutable_data_ptr<uint8_t>() : nullptr,
                           in.bits_in.defined() ? in.bits_in.const_data_ptr<uint8_t>() : nullptr,
                           0,
                           n};
  if (in.bits_out.defined()) {
    // The kernel writes the bytes of the n elements; the array's rounding to
    // 64 elements (dropout_mask_bytes) is zeroed, so the output is a function
    // of the inputs.
    in.bits_out.narrow(0, (n + 7) / 8, in.bits_out.numel() - (n + 7) / 8).zero_();
  }
  const DropoutKernelFn kernel = dropout_kernel();
  // The chunks of WorkItems are multiples of a CPU Philox block (128
  // elements), so no block is drawn twice and each chunk owns whole bytes of
  // a mask array.
  static_assert(kChunkElements % kCpuDropoutBlock == 0, "chunks hold whole Philox blocks");
  const WorkItems items({n});
  items.parallel_for(
      [&](size_t, const WorkItem& item) {
        DropoutChunk c = whole;
        c.begin = item.begin;
        c.end = item.end;
        kernel(cfg, c);
      },
      [&] {
        if (cfg.stream) stream_fence();
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, CPU, m) {
  using Ops = DropoutOps<run_dropout, &empty_output_like, c10::DeviceType::CPU, /*NATIVE_CHANNELS_LAST=*/true>;
  m.impl("dropout", &Ops::dropout);
  m.impl("dropout_", &Ops::dropout_);
  m.impl("dropout_add", &Ops::dropout_add);
  m.impl("dropout_bits", &Ops::dropout_bits);
  m.impl("dropout_from_bits", &Ops::dropout_from_bits);
}

}  // namespace fastopt::cpu
