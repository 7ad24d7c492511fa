// Shared pieces of fastopt's C++ autograd kernels: typed dispatcher handles
// of the ops, and the names every autograd Function uses.
//
// An autograd kernel calls its forward op below the autograd key (the device
// kernel, or under torch.compile the fake one) and, in backward, the
// backward ops.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <tuple>

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

}  // namespace fastopt::autograd
