#include "common/tensor_lists.h"

#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace fastopt {

void check_tensor_lists(const char* op, const std::vector<NamedList>& lists) {
  TORCH_CHECK(!lists.empty(), op, ": no tensor lists given");
  const at::TensorList first = lists[0].tensors;
  const size_t n = first.size();
  for (const NamedList& list : lists) {
    TORCH_CHECK(list.tensors.size() == n || list.tensors.empty(), op, ": ", list.name, " has ",
                list.tensors.size(), " tensors but ", lists[0].name, " has ", n);
  }
  if (n == 0) return;

  const at::Tensor& ref = first[0];
  for (const NamedList& list : lists) {
    for (size_t i = 0; i < list.tensors.size(); ++i) {
      const at::Tensor& t = list.tensors[i];
      TORCH_CHECK(t.defined(), op, ": ", list.name, "[", i, "] is undefined");
      TORCH_CHECK(t.layout() == at::kStrided, op, " does not support sparse tensors, but ",
                  list.name, "[", i, "] has layout ", t.layout());
      TORCH_CHECK(t.device() == ref.device(),
                  op, ": all tensors must be on one device, but ", list.name, "[", i, "] is on ",
                  t.device(), " and ", lists[0].name, "[0] is on ", ref.device());
      // A RuntimeError, as torch's multi-tensor ops raise for it: the common
      // way here is state of one dtype and params of another (model.half()
      // after some steps), where torch's Adam fails with a RuntimeError too.
      const at::Tensor& dtype_ref = list.own_dtype ? list.tensors[0] : ref;
      TORCH_CHECK(t.scalar_type() == dtype_ref.scalar_type(), op,
                       ": all tensors must have one dtype, but ", list.name, "[", i, "] is ",
                       t.scalar_type(), " and ", list.own_dtype ? list.name : lists[0].name,
                       "[0] is ", dtype_ref.scalar_type());
      TORCH_CHECK(t.sizes() == first[i].sizes(), op, ": ", list.name, "[", i, "] has shape ",
                  t.sizes(), " but ", lists[0].name, "[", i, "] has shape ", first[i].sizes());
    }
  }
}

void check_state_steps(const char* op, at::TensorList steps, size_t expected,
                       const c10::optional<c10::Device>& device) {
  TORCH_CHECK(steps.size() == expected, op, ": state_steps has ", steps.size(),
              " tensors but params has ", expected);
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& s = steps[i];
    TORCH_CHECK(s.defined() && s.numel() == 1, op, ": state_steps[", i,
                "] must hold exactly one element");
    TORCH_CHECK_TYPE(s.is_floating_point(), op, ": state_steps[", i,
                     "] must be a floating-point tensor, got ", s.scalar_type());
    if (device.has_value()) {
      TORCH_CHECK(s.device() == *device, op, ": state_steps[", i, "] is on ", s.device(),
                  " but must be on ", *device);
    }
  }
}

void check_optimizer_args(const char* op, at::TensorList params,
                          const c10::optional<at::TensorList>& state_steps,
                          c10::DeviceType device, const at::Tensor* lr_tensor,
                          const c10::optional<at::Tensor>& grad_scale,
                          const c10::optional<at::Tensor>& found_inf) {
  const at::Tensor& p0 = params[0];
  TORCH_CHECK(p0.device().type() == device, op, ": expected ", device, " tensors, got ",
              p0.device());
  TORCH_CHECK_TYPE(p0.is_floating_point(), op, ": params must be floating point, got ",
                   p0.scalar_type());
  if (state_steps.has_value()) check_state_steps(op, *state_steps, params.size(), p0.device());
  if (lr_tensor != nullptr) {
    TORCH_CHECK(lr_tensor->numel() == 1, op, ": Tensor lr must be 1-element");
  }
  for (const auto* t : {&grad_scale, &found_inf}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->numel() == 1, op, ": grad_scale and found_inf must be 1-element");
    }
  }
}

void check_param_storage(const char* op, at::TensorList params, at::TensorList grads,
                         at::TensorList param_copies,
                         const c10::optional<at::Tensor>& rounding_seed) {
  if (!param_copies.empty()) {
    check_tensor_lists(op, {{"params", params, true}, {"param_copies", param_copies, true, true}});
    TORCH_CHECK(param_copies.size() == params.size(), op, ": param_copies has ",
                param_copies.size(), " tensors but params has ", params.size());
    TORCH_CHECK_TYPE(params[0].scalar_type() == at::kFloat, op,
                     ": with param_copies (master weights), params must be float32 masters, got ",
                     params[0].scalar_type());
    const c10::ScalarType copy_dtype = param_copies[0].scalar_type();
    TORCH_CHECK_TYPE(copy_dtype == at::kBFloat16 || copy_dtype == at::kHalf, op,
                     ": param_copies must be bfloat16 or float16, got ", copy_dtype);
    TORCH_CHECK_TYPE(grads.empty() || grads[0].scalar_type() == copy_dtype, op,
                     ": with param_copies, grads must have the copies' dtype (", copy_dtype,
                     "), got ", grads.empty() ? copy_dtype : grads[0].scalar_type());
  }
  if (rounding_seed.has_value()) {
    const at::Tensor& seed = *rounding_seed;
    TORCH_CHECK(seed.numel() == 2 && seed.scalar_type() == at::kLong, op,
                ": rounding_seed must hold two int64 words, got ", seed.numel(), " ",
                seed.scalar_type(), " elements");
    const c10::ScalarType stored =
        param_copies.empty() ? params[0].scalar_type() : param_copies[0].scalar_type();
    TORCH_CHECK_TYPE(stored == at::kBFloat16, op,
                     ": stochastic rounding (rounding_seed) needs bfloat16 parameters, got ",
                     stored);
  }
}

void check_hparams(const char* op, const c10::optional<at::Tensor>& hparams, size_t num_tensors,
                   int64_t columns, c10::Device device) {
  if (!hparams.has_value()) return;
  const at::Tensor& t = *hparams;
  TORCH_CHECK(t.device().is_cpu() || t.device() == device, op,
              ": hparams must be on the CPU or on the params' device (", device, "), got one on ",
              t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, op, ": hparams must be float64, got ",
                   t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == static_cast<int64_t>(num_tensors) &&
                  t.size(1) == columns,
              op, ": hparams must have shape [", num_tensors, ", ", columns, "], got ", t.sizes());
}

namespace {

bool same_dense_layout(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() && t.is_non_overlapping_and_dense();
}

}  // namespace

FlatTensorLists::FlatTensorLists(const std::vector<NamedList>& lists) : lists_(lists) {
  const size_t n = lists.empty() ? 0 : lists[0].tensors.size();
  data_.resize(lists.size());
  element_size_.resize(lists.size(), 0);
  numels_.resize(n);
  for (size_t l = 0; l < lists.size(); ++l) {
    if (lists[l].tensors.empty()) continue;
    data_[l].resize(n);
    element_size_[l] = static_cast<int64_t>(lists[l].tensors[0].element_size());
  }

  for (size_t i = 0; i < n; ++i) {
    // Prefer the parameter's own layout (channels_last, transposed, ...), so
    // that the common case needs no temporary at all.
    const at::Tensor& p = lists[0].tensors[i];
    numels_[i] = p.numel();
    const bool p_dense = p.is_non_overlapping_and_dense();
    for (size_t l = 0; l < lists.size(); ++l) {
      if (lists[l].tensors.empty()) continue;
      const at::Tensor& t = lists[l].tensors[i];
      if (p_dense ? same_dense_layout(t, p) : t.is_contiguous()) {
        // (const_data_ptr for a list the op only reads: a lazily cloned
        // tensor is then not materialised.)
        data_[l][i] = lists[l].written ? t.mutable_data_ptr() : const_cast<void*>(t.const_data_ptr());
      } else {
        // A layout the kernels cannot walk as one flat array alongside the
        // others: compute on a copy in the reference layout instead.
        // In t's own dtype: the grads of float32 masters are 16-bit.
        at::Tensor tmp = p_dense ? at::empty_like(p, p.options().dtype(t.scalar_type()))
                                 : at::empty_like(t, at::MemoryFormat::Contiguous);
        tmp.copy_(t);
        data_[l][i] = tmp.mutable_data_ptr();
        temporaries_.push_back({l, i, std::move(tmp)});
      }
    }
  }
}

void FlatTensorLists::write_back() {
  // Once: the temporaries themselves live as long as this object, as the
  // pointers handed out do.
  if (written_back_) return;
  written_back_ = true;
  for (const Temporary& t : temporaries_) {
    if (lists_[t.list].written) {
      lists_[t.list].tensors[t.index].copy_(t.tensor);
    }
  }
}

}  // namespace fastopt
