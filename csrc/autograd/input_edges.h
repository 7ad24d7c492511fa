// Which tensor inputs of a C++ autograd Function have a gradient edge.
//
// torch::autograd::Function gives an input edge only to tensors that are
// present: an absent optional (a LayerNorm without bias) has none, and the
// edges of the inputs after it shift down. needs_input_grad takes an edge
// index, so backward maps argument positions through this table: recorded
// in forward, or rebuilt in backward from which optionals were present, where
// the saved tensors tell (undefined for an absent one). Rebuilding is the
// cheaper: the recorded table is an int list in the context's saved_data,
// and that cost a small GroupNorm forward+backward about 3 us.
#pragma once

#include <torch/autograd.h>

#include <initializer_list>
#include <vector>

namespace fastopt::autograd {

class InputEdges {
 public:
  // From forward's tensor arguments, in order: each present one gets the next edge.
  InputEdges(std::initializer_list<c10::optional<at::Tensor>> inputs) {
    for (const auto& t : inputs) add(t.has_value() && t->defined());
  }

  // From which tensor arguments were present, in order.
  static InputEdges present(std::initializer_list<bool> present) {
    InputEdges edges;
    for (const bool p : present) edges.add(p);
    return edges;
  }

  // The table recorded by save() in forward.
  explicit InputEdges(torch::autograd::AutogradContext* ctx)
      : edge_(ctx->saved_data.at(kKey).toIntVector()) {}

  void save(torch::autograd::AutogradContext* ctx) const { ctx->saved_data[kKey] = edge_; }

  // Whether the tensor argument at `position` is present and needs a gradient.
  bool needs_grad(torch::autograd::AutogradContext* ctx, size_t position) const {
    return edge_.at(position) >= 0 && ctx->needs_input_grad(static_cast<size_t>(edge_[position]));
  }

 private:
  InputEdges() = default;
  void add(bool present) {
    edge_.push_back(present ? next_++ : -1);
  }
  static constexpr const char* kKey = "fastopt_input_edges";
  std::vector<int64_t> edge_;
  int64_t next_ = 0;  // the next present argument's edge
};

}  // namespace fastopt::autograd
