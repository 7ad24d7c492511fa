// Validation and flat views for the multi-tensor optimizer ops.
//
// Shared by the CPU implementations and the thin CUDA layer, so that every op
// rejects bad input with the same exception types and messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <optional>

#include <string>
#include <vector>

namespace fastopt {

// One named tensor list of a multi-tensor op, e.g. {"exp_avgs", exp_avgs, true}.
struct NamedList {
  const char* name;
  at::TensorList tensors;
  bool written;  // the op writes this list, so a temporary must be copied back
  // The list's tensors may have a dtype of their own (one for the whole list)
  // instead of lists[0]'s: the 16-bit grads of float32 masters.
  bool own_dtype = false;
};

// Checks a multi-tensor call: every list has the length of lists[0] (empty
// lists are allowed for optional state such as max_exp_avg_sqs when
// `allow_empty`), and at each index all tensors are dense (strided, not
// sparse), on one device, of one dtype and of one shape. All tensors of the
// call share lists[0][0]'s device and dtype. Raises c10 errors that name the
// op, the list and the index.
void check_tensor_lists(const char* op, const std::vector<NamedList>& lists);

// Checks the per-tensor `step` counters: one element each, floating point.
void check_state_steps(const char* op, at::TensorList steps, size_t expected,
                       const c10::optional<c10::Device>& device);

// The checks every optimizer op shares after check_tensor_lists: params are
// floating point and on `device`, each has a step counter on the params'
// device (CPU counters for CPU params, device counters for CUDA params, so
// that the update never synchronises with the host), and the optional lr
// tensor, grad_scale and found_inf hold one element each. Ops without step
// counters (SGD) pass nullopt for state_steps. `params` must not be empty.
void check_optimizer_args(const char* op, at::TensorList params,
                          const c10::optional<at::TensorList>& state_steps,
                          c10::DeviceType device, const at::Tensor* lr_tensor,
                          const c10::optional<at::Tensor>& grad_scale,
                          const c10::optional<at::Tensor>& found_inf);

// An optional tensor list argument (Tensor[]?) as a list, empty when absent.
inline at::TensorList list_or_empty(const std::optional<at::TensorList>& list) {
  return list.has_value() ? *list : at::TensorList();
}

// Checks the arguments that say how the params are stored. With param_copies
// (master weights), params must be float32, and copies and grads one 16-bit
// dtype, one copy per param with its shape, on its device. rounding_seed,
// when given, holds two int64 words and needs bfloat16 params or copies.
void check_param_storage(const char* op, at::TensorList params, at::TensorList grads,
                         at::TensorList param_copies,
                         const c10::optional<at::Tensor>& rounding_seed);

// Checks a per-tensor hyperparameter table: a float64 tensor of shape
// [num_tensors, columns] on the CPU or on the params' `device` (see NOTE:
// [hyperparameter table]).
void check_hparams(const char* op, const c10::optional<at::Tensor>& hparams, size_t num_tensors,
                   int64_t columns, c10::Device device);

// Gives kernels flat pointers. Each tensor index is viewed through one
// layout: the tensors' own when they are all non-overlapping and dense with
// equal strides (contiguous, channels_last, transposed, ...), otherwise a
// contiguous temporary. Temporaries of written lists go back with write_back().
//
// Only the temporaries are held as tensors. For the caller's own tensors it
// keeps raw data pointers, which the op's arguments keep valid for the call:
// a tensor handle would cost a reference-count increment and decrement per
// tensor, and for a tensor that Python owns each of those goes through the
// Python interpreter (a ResNet-50 step passes about 500 tensors).
class FlatTensorLists {
 public:
  // The lists must have passed check_tensor_lists (one dtype per list).
  explicit FlatTensorLists(const std::vector<NamedList>& lists);

  // Raw pointer to list `l`, tensor `i`; null for an empty (absent) list.
  void* data(size_t l, size_t i) const { return data_[l].empty() ? nullptr : data_[l][i]; }
  // The same, advanced by `offset` elements.
  void* data_at(size_t l, size_t i, int64_t offset) const {
    void* base = data(l, i);
    return base == nullptr ? nullptr : static_cast<char*>(base) + offset * element_size_[l];
  }
  // Whether list `l` was given (optional state lists may be empty).
  bool has_list(size_t l) const { return !data_[l].empty(); }
  int64_t numel(size_t i) const { return numels_[i]; }
  // List `l`'s pointers and every index's numel as arrays, which the CUDA
  // launch structs point into while this object lives; null for an absent
  // list, which is how the kernels tell that optional state is not there.
  void* const* list_data(size_t l) const { return data_[l].empty() ? nullptr : data_[l].data(); }
  const int64_t* numels() const { return numels_.data(); }
  size_t num_lists() const { return data_.size(); }
  size_t size() const { return numels_.size(); }

  // Copies every temporary of a written list back into the caller's tensor.
  void write_back();

 private:
  struct Temporary {
    size_t list;
    size_t index;
    at::Tensor tensor;
  };
  std::vector<NamedList> lists_;
  std::vector<std::vector<void*>> data_;
  std::vector<int64_t> element_size_;  // per list
  std::vector<int64_t> numels_;
  std::vector<Temporary> temporaries_;
  bool written_back_ = false;
};

}  // namespace fastopt
