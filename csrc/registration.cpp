// Every fastopt op schema, in one place. Backends register implementations
// under their dispatch keys (csrc/cpu/*.cpp, csrc/cuda/*_cuda.cpp); the fake
// (meta) kernels that let torch.compile trace the ops live in fastopt/_ops.py.
//
// Mutating multi-tensor ops follow ATen's convention: a trailing underscore,
// Tensor(x!)[] for every list the op writes, and no return value.
#include <torch/library.h>

TORCH_LIBRARY(fastopt, m) {
  // Adam and AdamW (decoupled_weight_decay=True). Increments each step counter
  // by one, unless found_inf is set, in which case nothing at all is written.
  // With grad_scale the gradients are unscaled in place, as torch's fused path does.
  // update_norms, when given, receives per tensor [sum (p_new - p_old)^2,
  // sum p_old^2] in float64, accumulated from registers during the update.
  m.def(
      "adam_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
      "float lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor(g!)? update_norms=None) -> ()");
  m.def(
      "adam_.tensor_lr(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
      "Tensor lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor(g!)? update_norms=None) -> ()");

  // GroupNorm, and through it LayerNorm and InstanceNorm, on x of shape
  // (N, C, *) in contiguous or channels-last layout; y keeps x's layout.
  // mean and rstd are [N, groups] in x's arithmetic type (float32 for 16-bit
  // x). activation: 0 none, 1 relu, 2 silu, applied after the affine step.
  m.def(
      "group_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps, "
      "int activation=0) -> (Tensor y, Tensor mean, Tensor rstd)");
  // Gradients of group_norm_fwd from x and its saved statistics; bias is read
  // only to recompute the activation's input. grad_weight and grad_bias are
  // [C] in the weight's dtype (x's when there is no weight).
  m.def(
      "group_norm_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, "
      "Tensor? bias, int groups, int activation=0) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
