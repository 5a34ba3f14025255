// Lanes<T>: one 256-bit vector of T as a GCC/Clang vector extension (VectorOf
// for other widths), with unaligned loads and stores. The passes compiled once
// per instruction set (conv_winograd_passes.hpp, conv_direct_passes.hpp) write
// their vector loops with it: under an AVX2 target a 256-bit one is one ymm
// register, under the portable target two xmm halves.
//
// Note [Lanes never cross a call]: every function here, and every function that
// takes or returns a Lanes<T>, is always_inline, so no out-of-line copy is ever
// emitted for one instruction set and kept by the linker for another, and no
// vector crosses a call boundary (so kernels/CMakeLists.txt silences -Wpsabi
// for the files that use it).
#pragma once

#include <type_traits>

namespace tg::kernels::conv_impl {

// VectorOf<T, Bytes>::type: Bytes / sizeof(T) values of T as one vector. One
// specialisation per type and width: GCC drops vector_size from a dependent
// type or size without an error (sizeof(T __attribute__((vector_size(B))))
// came out as sizeof(T)).
template <class T, int Bytes>
struct VectorOf;
template <>
struct VectorOf<float, 32> {
  using type = float __attribute__((vector_size(32)));
};
template <>
struct VectorOf<double, 32> {
  using type = double __attribute__((vector_size(32)));
};
template <>
struct VectorOf<float, 16> {
  using type = float __attribute__((vector_size(16)));
};
template <>
struct VectorOf<double, 16> {
  using type = double __attribute__((vector_size(16)));
};
template <class T>
using Lanes = typename VectorOf<T, 32>::type;
template <class T>
constexpr int kLanes = 32 / int(sizeof(T));

// A vector at any address, allowed to alias T: loads and stores go through it.
template <class V>
struct __attribute__((packed, may_alias)) Unaligned {
  V v;
};

// Note [Vector stores]: a store through Unaligned is one vector store. A
// memcpy of the vector was merged with its neighbours into one block copy,
// which GCC expanded as 16-byte moves from a stack copy, each reload a failed
// store forward (2x the time of a 3x3 filter). Rejected: a typedef with
// aligned(alignof(T)), which Clang keeps 32-byte aligned (UBSan: misaligned).
// V is a vector of T (Lanes<T>, VectorOf) or T itself (one value).
template <class V, class T>
[[gnu::always_inline]] inline V load(const T* p) {
  if constexpr (std::is_same_v<V, T>) return *p;
  else return reinterpret_cast<const Unaligned<V>*>(p)->v;
}
template <class V, class T>
[[gnu::always_inline]] inline void store(T* p, const V& v) {
  if constexpr (std::is_same_v<V, T>) *p = v;
  else reinterpret_cast<Unaligned<V>*>(p)->v = v;
}

}  // namespace tg::kernels::conv_impl
