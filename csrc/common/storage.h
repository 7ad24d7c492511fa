// The element types of one multi-tensor optimizer call, shared by the CPU
// and CUDA drivers (cpu/kernels/elementwise.h, cuda/kernels/multi_tensor_apply.cuh).
//
// value_t: list 0 (the parameters, or their float32 masters) and the state
// lists; grad_t: list 1 (the gradients) and the rounded parameter copies
// written with master weights (NOTE: [master weights] in
// cuda/kernels/multi_tensor_apply.cuh). Each backend derives the arithmetic
// type from value_t with its own opmath mapping and checks that grad_t maps
// to the same one. Torch-free.
#pragma once

#include <type_traits>

namespace fastopt {

template <typename V, typename G = V>
struct Storage {
  using value_t = V;
  using grad_t = G;
  static constexpr bool kCopies = !std::is_same_v<V, G>;
  static_assert(!kCopies || std::is_same_v<V, float>, "masters are float32");
};

// A functor's storage may be a plain element type T, meaning Storage<T>.
template <typename T>
struct AsStorage {
  using type = Storage<T>;
};
template <typename V, typename G>
struct AsStorage<Storage<V, G>> {
  using type = Storage<V, G>;
};
template <typename S>
using as_storage_t = typename AsStorage<S>::type;

}  // namespace fastopt
