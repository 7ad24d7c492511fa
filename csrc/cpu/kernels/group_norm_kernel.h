// Interface between the normalization ops (csrc/cpu/group_norm.cpp) and their
// per-ISA kernels. One kernel family serves GroupNorm, LayerNorm and
// InstanceNorm: each call handles one sample of x, viewed as C channels times
// S positions, with G groups of D = C / G consecutive channels.
//
//   channels_last = false: the sample is [C, S], each channel a contiguous run;
//   channels_last = true:  the sample is [S, C], each position a contiguous row.
//
// LayerNorm over K trailing elements is one group of C = K channels at S = 1
// (so each element has its own weight); InstanceNorm is G = C.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "common/norm_activation.h"
#include "cpu/isa.h"

namespace fastopt::cpu {

// Elementwise activation applied after the affine step, in the same pass.
using ::fastopt::NormActivation;

// What stays fixed for one op call.
struct GroupNormConfig {
  c10::ScalarType dtype;  // of x, y, dy and dx
  int64_t C;
  int64_t S;
  int64_t G;
  bool channels_last;
  NormActivation activation;
  double eps;
  bool stream;  // write the output with non-temporal stores (see stream_output)
};

// Per-sample scratch the caller provides, in opmath vectors of C, 8-byte
// aligned: six, and six more for the channels-last kernels, whose sums down
// the rows keep 2 * C doubles there (see the layout in group_norm_kernel.cpp;
// single-group rows, S = 1 and G = 1, take their own path and need none).
// Only where needed: twelve everywhere made GroupNorm(32) at
// (64, 256, 14, 14) NCHW 5-10% slower.
constexpr int64_t group_norm_scratch_vectors(bool channels_last, int64_t S, int64_t G) {
  return channels_last && !(S == 1 && G == 1) ? 12 : 6;
}

// One sample. Storage pointers have the config's dtype; every other pointer is
// in its arithmetic type (float for float, bfloat16 and float16; double for
// double): gamma and beta are [C] (null means 1 and 0), mean and rstd [G].
struct GroupNormSample {
  const void* x;
  const void* dy;    // backward only
  void* out;         // y in the forward, dx in the backward
  const void* gamma;
  const void* beta;
  void* mean;        // written by the forward, read by the backward
  void* rstd;
  void* dgamma;      // backward only: [C], the sample's share is added
  void* dbeta;
  void* scratch;     // group_norm_scratch_vectors(...) * C
};

using GroupNormKernelFn = void (*)(const GroupNormConfig&, const GroupNormSample&);

// Statistics, normalization, affine and activation of one sample.
FASTOPT_DECLARE_ISA_KERNEL(GroupNormKernelFn, group_norm_fwd_kernel);
// dx of one sample, and its contribution to dgamma and dbeta: one reduction
// pass and one elementwise pass over x and dy.
FASTOPT_DECLARE_ISA_KERNEL(GroupNormKernelFn, group_norm_bwd_kernel);

}  // namespace fastopt::cpu
