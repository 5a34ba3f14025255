// One convolution layer in oneDNN (Debian's libdnnl-dev; benchmarks only,
// never the library): forward (training), backward data and backward weights
// primitives on the layouts oneDNN picks for itself (format_tag::any: its
// blocked layouts). The inputs are reordered into those layouts once, outside
// the timed calls, as a framework that keeps activations blocked would see it.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <string>
#include <unordered_map>

namespace tgbench {

struct OnednnLayer {
  std::int64_t N, C, H, W, K, k, stride, pad;
};

class OnednnConv {
 public:
  enum class Pass { forward, backward_data, backward_weights };

  // x (N, C, H, W), w (K, C, k, k), gy (N, K, Ho, Wo): plain row-major floats.
  OnednnConv(const OnednnLayer& L, const float* x, const float* w, const float* gy)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    using dnnl::memory;
    const std::int64_t Ho = (L.H + 2 * L.pad - L.k) / L.stride + 1, Wo = (L.W + 2 * L.pad - L.k) / L.stride + 1;
    const memory::dims src{L.N, L.C, L.H, L.W}, wei{L.K, L.C, L.k, L.k}, dst{L.N, L.K, Ho, Wo};
    const memory::dims strides{L.stride, L.stride}, padding{L.pad, L.pad};
    auto any = [](const memory::dims& d) { return memory::desc(d, memory::data_type::f32, memory::format_tag::any); };
    auto plain = [](const memory::dims& d, memory::format_tag tag) { return memory::desc(d, memory::data_type::f32, tag); };
    const auto algo = dnnl::algorithm::convolution_direct;
    fwd_pd_ = dnnl::convolution_forward::primitive_desc(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, algo, any(src), any(wei), any(dst), strides, padding, padding),
        engine_);
    bwd_data_pd_ = dnnl::convolution_backward_data::primitive_desc(
        dnnl::convolution_backward_data::desc(algo, any(src), any(wei), any(dst), strides, padding, padding), engine_, fwd_pd_);
    bwd_weights_pd_ = dnnl::convolution_backward_weights::primitive_desc(
        dnnl::convolution_backward_weights::desc(algo, any(src), any(wei), any(dst), strides, padding, padding), engine_, fwd_pd_);
    plain_src_ = plain(src, memory::format_tag::nchw);
    plain_wei_ = plain(wei, memory::format_tag::oihw);
    plain_dst_ = plain(dst, memory::format_tag::nchw);
    // Each primitive's arguments in its own layouts, filled once from the plain arrays.
    fwd_args_ = {{DNNL_ARG_SRC, blocked(fwd_pd_.src_desc(), plain_src_, x)},
                 {DNNL_ARG_WEIGHTS, blocked(fwd_pd_.weights_desc(), plain_wei_, w)},
                 {DNNL_ARG_DST, memory(fwd_pd_.dst_desc(), engine_)}};
    bwd_data_args_ = {{DNNL_ARG_DIFF_DST, blocked(bwd_data_pd_.diff_dst_desc(), plain_dst_, gy)},
                      {DNNL_ARG_WEIGHTS, blocked(bwd_data_pd_.weights_desc(), plain_wei_, w)},
                      {DNNL_ARG_DIFF_SRC, memory(bwd_data_pd_.diff_src_desc(), engine_)}};
    bwd_weights_args_ = {{DNNL_ARG_SRC, blocked(bwd_weights_pd_.src_desc(), plain_src_, x)},
                         {DNNL_ARG_DIFF_DST, blocked(bwd_weights_pd_.diff_dst_desc(), plain_dst_, gy)},
                         {DNNL_ARG_DIFF_WEIGHTS, memory(bwd_weights_pd_.diff_weights_desc(), engine_)}};
    fwd_ = dnnl::convolution_forward(fwd_pd_);
    bwd_data_ = dnnl::convolution_backward_data(bwd_data_pd_);
    bwd_weights_ = dnnl::convolution_backward_weights(bwd_weights_pd_);
  }

  // One execution of a pass's primitive, waited for.
  void run(Pass pass) {
    if (pass == Pass::forward) fwd_.execute(stream_, fwd_args_);
    if (pass == Pass::backward_data) bwd_data_.execute(stream_, bwd_data_args_);
    if (pass == Pass::backward_weights) bwd_weights_.execute(stream_, bwd_weights_args_);
    stream_.wait();
  }

  // The last result of a pass in plain layout (y, gx or gw), written to out.
  void result(Pass pass, float* out) {
    const dnnl::memory& m = pass == Pass::forward         ? fwd_args_.at(DNNL_ARG_DST)
                            : pass == Pass::backward_data ? bwd_data_args_.at(DNNL_ARG_DIFF_SRC)
                                                          : bwd_weights_args_.at(DNNL_ARG_DIFF_WEIGHTS);
    const dnnl::memory::desc& plain = pass == Pass::forward ? plain_dst_ : pass == Pass::backward_data ? plain_src_ : plain_wei_;
    dnnl::memory target(plain, engine_, out);
    dnnl::reorder(m, target).execute(stream_, const_cast<dnnl::memory&>(m), target);
    stream_.wait();
  }

  // The layouts oneDNN chose and its implementation of each pass ("brgconv:avx512_core", ...).
  std::string implementation(Pass pass) const {
    return pass == Pass::forward ? fwd_pd_.impl_info_str() : pass == Pass::backward_data ? bwd_data_pd_.impl_info_str()
                                                                                        : bwd_weights_pd_.impl_info_str();
  }

 private:
  // A memory in `layout`, holding `values` given in the plain layout.
  dnnl::memory blocked(const dnnl::memory::desc& layout, const dnnl::memory::desc& plain, const float* values) {
    dnnl::memory source(plain, engine_, const_cast<float*>(values));
    dnnl::memory target(layout, engine_);
    dnnl::reorder(source, target).execute(stream_, source, target);
    stream_.wait();
    return target;
  }

  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::convolution_forward::primitive_desc fwd_pd_;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd_;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd_;
  dnnl::memory::desc plain_src_, plain_wei_, plain_dst_;
  std::unordered_map<int, dnnl::memory> fwd_args_, bwd_data_args_, bwd_weights_args_;
  dnnl::convolution_forward fwd_;
  dnnl::convolution_backward_data bwd_data_;
  dnnl::convolution_backward_weights bwd_weights_;
};

// oneDNN's instruction set in use, as it names it.
inline std::string onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

}  // namespace tgbench
