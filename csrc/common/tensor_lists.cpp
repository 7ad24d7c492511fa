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
      TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op,
                       ": all tensors must have one dtype, but ", list.name, "[", i, "] is ",
                       t.scalar_type(), " and ", lists[0].name, "[0] is ", ref.scalar_type());
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

namespace {

bool same_dense_layout(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() && t.is_non_overlapping_and_dense();
}

}  // namespace

FlatTensorLists::FlatTensorLists(const std::vector<NamedList>& lists) : lists_(lists) {
  const size_t n = lists.empty() ? 0 : lists[0].tensors.size();
  views_.resize(lists.size());
  for (size_t l = 0; l < lists.size(); ++l) views_[l].reserve(lists[l].tensors.size());

  for (size_t i = 0; i < n; ++i) {
    // Prefer the parameter's own layout (channels_last, transposed, ...), so
    // that the common case needs no temporary at all.
    const at::Tensor& p = lists[0].tensors[i];
    const bool p_dense = p.is_non_overlapping_and_dense();
    for (size_t l = 0; l < lists.size(); ++l) {
      if (lists[l].tensors.empty()) continue;
      const at::Tensor& t = lists[l].tensors[i];
      if (p_dense ? same_dense_layout(t, p) : t.is_contiguous()) {
        views_[l].push_back(t);
      } else {
        // A layout the kernels cannot walk as one flat array alongside the
        // others: compute on a copy in the reference layout instead.
        at::Tensor tmp = p_dense ? at::empty_like(p) : at::empty_like(t, at::MemoryFormat::Contiguous);
        tmp.copy_(t);
        views_[l].push_back(std::move(tmp));
        temporaries_.emplace_back(l, i);
      }
    }
  }
}

void FlatTensorLists::write_back() {
  for (const auto& [l, i] : temporaries_) {
    if (lists_[l].written) {
      lists_[l].tensors[i].copy_(views_[l][i]);
    }
  }
  temporaries_.clear();
}

}  // namespace fastopt
