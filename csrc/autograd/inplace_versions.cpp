// Version counters of the tensors fastopt's mutating ops write.
//
// NOTE: [in-place versions]
// Autograd tells that a tensor saved for backward was modified afterwards by
// its version counter: backward compares the saved version with the current
// one and raises ("one of the variables needed for gradient computation has
// been modified by an inplace operation") instead of differentiating with
// the new values. ATen's in-place ops count their writes in their
// ADInplaceOrView kernels; a custom op's ADInplaceOrView key falls through,
// so without this file an optimizer step, an EMA update or an in-place
// dropout changed tensors without counting it, and a backward through a
// graph that had saved a parameter before the step came out silently wrong
// where torch raises.
//
// One boxed kernel serves every mutating op: the schema's write annotations
// (Tensor(a!), Tensor(a!)[], and their optionals) say which arguments to
// count. It counts before it runs the op, so that an inference tensor
// outside InferenceMode, whose version cannot change, is refused with
// torch's error before anything is written. (BatchNorm's running statistics
// are counted by its autograd kernel, which calls the op below this key.)
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

namespace fastopt::autograd {
namespace {

void count_write(const at::Tensor& t) {
  if (t.defined()) torch::autograd::impl::bump_version(t);
}

void count_writes_then_run(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::AliasInfo* alias = args[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& value = (*stack)[first + i];
    if (value.isTensor()) {
      count_write(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList()) count_write(t);
    }
    // None: an absent optional argument, nothing written.
  }
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastopt, ADInplaceOrView, m) {
  for (const char* name :
       {"adam_", "adam_.tensor_lr", "sgd_", "sgd_.tensor_lr", "adagrad_", "adagrad_.tensor_lr", "rmsprop_",
        "rmsprop_.tensor_lr", "ema_", "ema_.tensor_decay", "dropout_", "batch_norm_update_stats_"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&count_writes_then_run>());
  }
}

}  // namespace fastopt::autograd
