// Normalisation kernels: batch norm over (N, C, S) per channel, and the row
// form shared by layer norm and group norm (statistics over contiguous rows).
//
// Every kernel sums in blocks of float lanes added in double (Note [Blocked
// sums], norm.cpp), and writes per channel or per row:
//   mean, invstd = 1 / sqrt(var + eps), var the biased variance.
// The pullbacks ADD into dx, dgamma and dbeta (Note [Pullbacks accumulate]),
// except batch norm's dx when assign_dx (Note [Assigned adjoints]); a null
// pointer skips that output.
#pragma once

#include <cstdint>

namespace tg::kernels {

// x as (n, c, s): batch, channels, the spatial dims flattened.
struct ChannelView {
  std::int64_t n, c, s;
  std::int64_t per_channel() const { return n * s; }
};

// An activation applied to the normalised output in the same pass, and its
// derivative applied to the output adjoint as the pullback reads it (Note [Epilogues]).
enum class NormActivation : std::uint8_t { none, relu };

template <class T>
struct BatchNormArgs {
  const T* x;
  ChannelView v;
  const T* gamma;  // (c)
  const T* beta;   // (c)
  double eps;
  NormActivation activation = NormActivation::none;
};

// Training mode: batch statistics into mean and invstd (c each), then y. When
// running_mean is not null the running statistics move towards the batch's by
// `momentum`, with the unbiased variance (n*s / (n*s - 1) times the biased), as PyTorch.
template <class T>
void batch_norm_train_forward(const BatchNormArgs<T>& a, T* mean, T* invstd, T* y, T* running_mean, T* running_var,
                              double momentum);
// Evaluation mode: y from the running statistics; mean and invstd (c) receive
// the statistics used, for the pullback.
template <class T>
void batch_norm_eval_forward(const BatchNormArgs<T>& a, const T* running_mean, const T* running_var, T* mean, T* invstd, T* y);
// Pullback. batch_stats: the statistics were the batch's (training), so they
// depend on x too. y is the forward's output, read only for a fused activation.
// assign_dx: dx's bytes are stale and are written, not added to.
template <class T>
void batch_norm_backward(const BatchNormArgs<T>& a, const T* mean, const T* invstd, bool batch_stats, const T* y, const T* dy,
                         T* dx, bool assign_dx, T* dgamma, T* dbeta);

// x as `rows` contiguous rows of `length`. Within a row, element j uses the
// affine coefficients at (row % groups) * (length / inner) + j / inner:
//   layer norm: groups 1, inner 1 (gamma has the row's shape);
//   group norm: x (N, C, S) with G groups: rows N*G, length C/G*S, inner S, groups G (gamma per channel).
struct RowView {
  std::int64_t rows, length, inner, groups;
  std::int64_t affine_size() const { return groups * (length / inner); }
};

template <class T>
struct RowNormArgs {
  const T* x;
  RowView v;
  const T* gamma;  // (affine_size), or null: 1
  const T* beta;   // (affine_size), or null: 0
  double eps;
};

template <class T>
void row_norm_forward(const RowNormArgs<T>& a, T* mean, T* invstd, T* y);
template <class T>
void row_norm_backward(const RowNormArgs<T>& a, const T* mean, const T* invstd, const T* dy, T* dx, T* dgamma, T* dbeta);

}  // namespace tg::kernels
