// Shared pieces of fastopt's C++ autograd kernels: typed dispatcher handles
// of the ops, and the names every autograd Function uses.
//
// An autograd kernel calls its forward op below the autograd key (the device
// kernel, or under torch.compile the fake one) and, in backward, the
// backward ops.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>
#include <torch/autograd.h>

#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

namespace fastopt::autograd {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<Tensor>;

// The handle of fastopt::<name> with C++ signature Sig. Lookups are by string
// in a global table, so each caller keeps its handle in a function-local static.
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// A saved (possibly undefined) tensor back as an op's optional argument.
inline OptTensor optional_of(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

// NOTE: [double backward]
// The fused backward ops (group_norm_bwd, batch_norm_bwd) have no derivative
// of their own: differentiated again, the autograd fallback would treat them
// as constants and a second derivative (a gradient penalty, a Hessian-vector
// product) would come out silently wrong. So when backward runs with
// create_graph=True, that is with grad mode on inside it, the normalization
// backward instead recomputes its output with torch's own differentiable ops
// from the saved inputs and differentiates that: the same function, with
// torch's exact higher derivatives. It costs a forward and a backward of
// torch's kernels, paid only where a graph of the backward is asked for;
// plain backward (grad mode off) keeps the fused ops.
inline bool building_backward_graph() { return at::GradMode::is_enabled(); }

// NOTE: [backward below autograd]
// A backward that builds no graph (the usual one, grad mode off) calls its
// ops below the autograd key: through it they would only meet the autograd
// fallback (the backward ops) or an autograd Function that records nothing
// (dropout), each several microseconds of host time per call. Skipping it
// took a tiny GroupNorm forward+backward from 78.5 to 73.2 us on the 2-core
// dev VM. With create_graph the ops keep their autograd kernels, so that a
// dropout backward can be differentiated again.
//
// NOTE: [unpack before going below autograd]
// A backward unpacks its saved tensors before it enters BackwardDispatch.
// Under non-reentrant activation checkpointing (torch.utils.checkpoint with
// use_reentrant=False) the first unpack reruns the checkpointed forward, and
// that rerun must go through the autograd kernels to save its tensors again:
// below the autograd key it saved none, and checkpoint raised CheckpointError
// for every fastopt module.
class BackwardDispatch {
 public:
  BackwardDispatch() {
    if (!building_backward_graph()) below_.emplace();
  }

 private:
  c10::optional<at::AutoDispatchBelowADInplaceOrView> below_;
};

// NOTE: [forward without history]
// A call that records no history (grad mode off, or no tensor argument that
// requires grad) would still make its autograd Function build a node, a
// context and its saved_data, only to record nothing: 1.4 of the 6.3 us of
// a group_norm_fwd call at (8, 64) under no_grad on the 2-core dev VM. So the
// autograd kernels call their op below the autograd key directly then, as
// torch's generated ones do. A forward-mode tangent keeps the Function path,
// whose refusal of it (C++ Functions have no jvp) is the answer to give.
inline bool records_history(const Tensor& t) {
  return t.defined() && ((at::GradMode::is_enabled() && t.requires_grad()) || t._fw_grad(/*level=*/0).defined());
}
inline bool records_history(const OptTensor& t) { return t.has_value() && records_history(*t); }
template <typename... Ts>
bool any_records_history(const Ts&... tensors) {
  return (records_history(tensors) || ...);
}

// op(args...) below the autograd key, for a call that records no history.
template <typename Sig, typename... Args>
auto below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(std::forward<Args>(args)...);
}

// [1, C, 1, ...]: a per-channel [C] tensor's view that broadcasts against x
// (N, C, *), for the double backwards' recomputations in torch's ops.
inline std::vector<int64_t> channel_shape(const Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// NOTE: [one differentiable output]
// torch::autograd::Function pays for every output it returns: metadata, a
// non-differentiable set, a gradient slot per output in backward, which it
// fills with zeros for outputs that got none. The statistics and masks the
// forward ops also return (mean, rstd, var; dropout's 1-bit mask) need none
// of it. So the Functions return y alone and hand those to their caller
// through an out-argument (a plain pointer, which Function passes through
// untouched), and the op's autograd kernel returns them beside y as tensors
// without history. (Optional weight and bias stay optionals: Function
// records the device of every tensor argument, so an undefined tensor in
// their place fails; hence InputEdges.) Measured with a stand-in op on the
// 2-core dev VM (forward+backward, 1 thread): a Function with three outputs,
// two of them non-differentiable, 40.1 us; with one, 35.3 us.
using Stats = std::vector<Tensor>;

// A Function's backward result for its `args` arguments: the gradients of its
// leading tensor arguments, then none for the rest (flags, scalars, the
// out-argument), so that the count is stated once per Function.
inline variable_list input_grads(size_t args, variable_list leading) {
  leading.resize(args);
  return leading;
}

// The gradients of y with grad_y for each (input, wanted) pair, undefined
// where not wanted, with create_graph so that they can be differentiated
// again. Wanted inputs are saved inputs that required grad in forward.
inline variable_list differentiable_grads(const Tensor& y, const Tensor& grad_y,
                                          std::initializer_list<std::pair<Tensor, bool>> inputs) {
  variable_list wanted;
  for (const auto& [t, want] : inputs) {
    if (want) wanted.push_back(t);
  }
  variable_list grads;
  if (!wanted.empty()) {
    grads = torch::autograd::grad({y}, wanted, {grad_y}, /*retain_graph=*/true,
                                  /*create_graph=*/true, /*allow_unused=*/true);
  }
  variable_list out;
  size_t k = 0;
  for (const auto& [t, want] : inputs) out.push_back(want ? grads[k++] : Tensor());
  return out;
}

}  // namespace fastopt::autograd
