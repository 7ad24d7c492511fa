// Every fastopt op schema, in one place. Backends register implementations
// under their dispatch keys (csrc/cpu/*.cpp, csrc/cuda/*_cuda.cpp); the fake
// (meta) kernels that let torch.compile trace the ops live in fastopt/_ops/,
// the autograd kernels in csrc/autograd/.
//
// Mutating multi-tensor ops follow ATen's convention: a trailing underscore,
// Tensor(x!)[] for every list the op writes, and no return value.
//
// Every optimizer op also takes param_copies and rounding_seed. With
// param_copies (master weights), params are float32 masters, the state is
// float32, grads have the copies' 16-bit dtype, and each updated master is
// also written, rounded, to its copy in the same pass. rounding_seed (two
// int64 Philox words) makes bfloat16 stores of the parameter (the copy, or the
// param itself) round stochastically; see NOTE: [rounding stream].
//
// NOTE: [hyperparameter table]
// hparams, when given, is a float64 tensor (on the CPU, or on the params'
// device, which CUDA kernels read it from) with one row of
// hyperparameters per tensor, which then replace the scalar arguments (lr,
// betas, weight_decay, ...; each op lists its columns in common/*_op.h). It
// lets one call update the tensors of many param groups, e.g. a learning rate
// per layer, instead of one call per group. The boolean arguments (amsgrad,
// maximize, nesterov, ...) still hold for the whole call.
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
      "Tensor? found_inf=None, Tensor(g!)? update_norms=None, "
      "Tensor(h!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  m.def(
      "adam_.tensor_lr(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
      "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
      "Tensor lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled_weight_decay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor(g!)? update_norms=None, "
      "Tensor(h!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");

  // RMSprop, plain, centered and/or with momentum, as torch.optim.RMSprop.
  // grad_avgs is empty unless centered, momentum_buffers empty unless
  // momentum > 0. Step counters, grad_scale, found_inf and update_norms work
  // as for adam_.
  m.def(
      "rmsprop_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, "
      "Tensor(d!)[] grad_avgs, Tensor(e!)[] momentum_buffers, Tensor(f!)[] state_steps, *, "
      "float lr, float alpha, float eps, float weight_decay, float momentum, bool centered, "
      "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(g!)? update_norms=None, "
      "Tensor(h!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  m.def(
      "rmsprop_.tensor_lr(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, "
      "Tensor(d!)[] grad_avgs, Tensor(e!)[] momentum_buffers, Tensor(f!)[] state_steps, *, "
      "Tensor lr, float alpha, float eps, float weight_decay, float momentum, bool centered, "
      "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(g!)? update_norms=None, "
      "Tensor(h!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  // Exponential moving average of parameters (Polyak averaging):
  // shadow[i] = lerp(shadow[i], params[i], 1 - decay), rounded as
  // torch._foreach_lerp_(shadow, params, 1 - decay).
  m.def("ema_(Tensor(a!)[] shadow, Tensor[] params, *, float decay) -> ()");
  // The same with the decay in a one-element CPU tensor, read on the host:
  // under torch.compile a float decay is a constant of the graph, so a decay
  // that changes every update (EMA's warmup) would compile every update anew.
  m.def("ema_.tensor_decay(Tensor(a!)[] shadow, Tensor[] params, *, Tensor decay) -> ()");
  // Dropout (see NOTE: [dropout stream] in common/philox.h). `seed` holds two
  // int64 words drawn from torch's generator (Philox key, counter offset): on
  // the CPU for CPU tensors, on x's device for CUDA tensors. An element of mask
  // index i / group is kept with probability 1 - p and divided by 1 - p.
  // Backward is dropout of the gradient with the same seed, so nothing per
  // element is saved. Every input is read in its logical (row-major) order, so
  // the mask never depends on memory layout; outputs are contiguous.
  m.def("dropout(Tensor x, Tensor seed, float p, SymInt group=1) -> Tensor");
  m.def("dropout_(Tensor(a!) x, Tensor seed, float p, SymInt group=1) -> ()");
  // dropout(x + bias) + residual in one pass; bias is 1-D over x's last dimension.
  m.def("dropout_add(Tensor x, Tensor residual, Tensor? bias, Tensor seed, float p) -> Tensor");
  // The 1-bit mask mode, for when backward should not redraw the mask:
  // dropout_bits also returns the mask, one bit per element (uint8, 8 bytes
  // per 64 elements), and dropout_from_bits applies it to a gradient.
  m.def("dropout_bits(Tensor x, Tensor seed, float p) -> (Tensor, Tensor)");
  m.def("dropout_from_bits(Tensor grad, Tensor bits, float p) -> Tensor");
  // GroupNorm, and through it LayerNorm and InstanceNorm, on x of shape
  // (N, C, *) in contiguous or channels-last layout; y keeps x's layout.
  // mean and rstd are [N, groups] in x's arithmetic type (float32 for 16-bit
  // x). activation: 0 none, 1 relu, 2 silu, applied after the affine step.
  // normalized_ndim = k > 0 makes it a LayerNorm over x's last k dims (one
  // group; N is the product of the others, and weight and bias have C = the
  // product of the last k sizes elements).
  m.def(
      "group_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps, "
      "int activation=0, int normalized_ndim=0) -> (Tensor y, Tensor mean, Tensor rstd)");
  // Gradients of group_norm_fwd from x and its saved statistics; bias is read
  // only to recompute the activation's input. grad_weight and grad_bias are
  // [C] in the weight's dtype (x's when there is no weight).
  m.def(
      "group_norm_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, "
      "Tensor? bias, int groups, int activation=0, int normalized_ndim=0) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // BatchNorm on x of shape (N, C, *), contiguous or channels-last; outputs
  // of x's shape keep its layout. Per-channel statistics (mean, invstd, m2,
  // sums) are [C] in x's arithmetic type (float32 for 16-bit x).
  //
  // Training, fused: the batch statistics (from one shifted-sum pass over x),
  // then y = (x - mean) * invstd * weight + bias. var is the biased batch
  // variance. The running estimates given are updated in the same call, as
  // batch_norm_update_stats_ would (and left alone for an empty x): one op
  // per training forward instead of two, each a few microseconds of host time.
  m.def(
      "batch_norm_fwd(Tensor x, Tensor? weight, Tensor? bias, float eps, "
      "Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None, float momentum=0.) -> "
      "(Tensor y, Tensor mean, Tensor invstd, Tensor var)");
  // Gradients of batch_norm_fwd from x and its saved statistics. grad_weight
  // and grad_bias are [C] in the weight's dtype (x's when there is no weight).
  m.def(
      "batch_norm_bwd(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, Tensor? weight) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // The pieces of SyncBatchNorm, with all_reduce between them:
  //   local statistics: mean and m2 (sum of squared deviations) per channel;
  m.def("batch_norm_stats(Tensor x) -> (Tensor mean, Tensor m2)");
  //   y = (x - mean) * invstd * weight + bias, also evaluation mode's pass;
  m.def(
      "batch_norm_apply(Tensor x, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias) -> "
      "Tensor");
  // Evaluation: batch_norm_apply with invstd = 1 / sqrt(running_var + eps),
  // formed in x's arithmetic type. Composite (its autograd and its trace under
  // torch.compile are those of its parts): one op call from Python where the
  // invstd took three, each a few microseconds of host time.
  m.def(
      "batch_norm_eval(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps) -> Tensor");
  //   backward sums: sum dy and sum dy * (x - mean);
  m.def(
      "batch_norm_bwd_reduce(Tensor grad_out, Tensor x, Tensor mean) -> "
      "(Tensor sum_dy, Tensor sum_dy_xmu)");
  //   dx from the (all-reduced) sums over `count` values per channel.
  m.def(
      "batch_norm_bwd_elemt(Tensor grad_out, Tensor x, Tensor mean, Tensor invstd, "
      "Tensor? weight, Tensor sum_dy, Tensor sum_dy_xmu, SymInt count) -> Tensor");
  // Running estimates after a training batch of `count` values per channel:
  // running = (1 - momentum) * running + momentum * statistic, with the biased
  // batch variance `var` made unbiased. Computed in float64, rounded once.
  m.def(
      "batch_norm_update_stats_(Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor mean, "
      "Tensor var, float momentum, SymInt count) -> ()");
  // SGD with optional momentum, dampening, Nesterov and weight decay.
  // momentum_buffers is empty when momentum == 0. With is_first_step, every
  // buffer is set to the (decayed) gradient, as torch does when a buffer is
  // created, instead of being decayed. found_inf, grad_scale and update_norms
  // are as for adam_.
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, *, "
      "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
      "bool maximize, bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(d!)? update_norms=None, "
      "Tensor(e!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  m.def(
      "sgd_.tensor_lr(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, *, "
      "Tensor lr, float momentum, float dampening, float weight_decay, bool nesterov, "
      "bool maximize, bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(d!)? update_norms=None, "
      "Tensor(e!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  // Adagrad. Increments each step counter by one, unless found_inf is set;
  // grad_scale and update_norms are as for adam_.
  m.def(
      "adagrad_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums, "
      "Tensor(d!)[] state_steps, *, float lr, float lr_decay, float weight_decay, float eps, "
      "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(e!)? update_norms=None, "
      "Tensor(f!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  m.def(
      "adagrad_.tensor_lr(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] state_sums, "
      "Tensor(d!)[] state_steps, *, Tensor lr, float lr_decay, float weight_decay, float eps, "
      "bool maximize, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "Tensor(e!)? update_norms=None, "
      "Tensor(f!)[]? param_copies=None, Tensor? rounding_seed=None, "
      "Tensor? hparams=None) -> ()");
  // The p-norm of all gradients together, as torch.nn.utils.clip_grad_norm_
  // computes it (the norm of the per-tensor norms), in float32 (float64 when
  // any gradient is float64), and a float32 flag: 1 when any element of any
  // gradient is inf or NaN, else 0. Both are 0-dim tensors on the grads'
  // device; nothing is read back to the host. An empty list has norm 0.
  m.def("grad_norm(Tensor[] grads, float norm_type=2.0) -> (Tensor total_norm, Tensor nonfinite)");
}
