// Heap allocations of a compiled tape's replay (issue 5: "after the first call,
// ct.gradient(...) does no heap allocation"). Its own executable: it interposes
// malloc and friends for the whole process (every library's allocations count,
// OpenBLAS's and OpenMP's too), which the sanitizers' runtimes cannot share.
//
// Debugging a failure: `gdb --args tapegrad_allocation_tests`, then
// `break tgtest_counted_allocation` and `run`: each hit is one allocation made
// during a counted replay, with its backtrace.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "support/checks.hpp"
#include "support/tape_models.hpp"

#include "../examples/cnn/lenet_model.hpp"

extern "C" {
void* __libc_malloc(std::size_t);
void __libc_free(void*);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
}

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
}  // namespace

// A named function so that a debugger can stop on every counted allocation.
extern "C" __attribute__((noinline)) void tgtest_counted_allocation() { asm volatile(""); }

namespace {
inline void count() {
  if (counting.load(std::memory_order_relaxed)) {
    allocations.fetch_add(1, std::memory_order_relaxed);
    tgtest_counted_allocation();
  }
}
}  // namespace

extern "C" {
void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void free(void* p) { __libc_free(p); }
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  count();
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  count();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  count();
  void* p = __libc_memalign(alignment, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
}

namespace {

using tgtest::A;
using tgtest::max_abs_diff;
using T = tg::Tracked<double>;

// Allocations made while f runs.
template <class F>
long allocations_in(F&& f) {
  allocations = 0;
  counting = true;
  f();
  counting = false;
  return allocations.load();
}

// A small LeNet: conv + bias + relu + maxpool twice, linear + bias + relu, linear, cross-entropy.
T small_lenet(const T& x, const T& labels, const T& w1, const T& b1, const T& w2, const T& b2, const T& w3, const T& b3,
              const T& w4) {
  const std::int64_t n = x.shape()[0];
  auto h = tg::maxpool(tg::relu(tg::conv(x, w1, b1, {.padding = {2}})), {.window = {2}});  // (n, 4, 6, 6)
  h = tg::maxpool(tg::relu(tg::conv(h, w2, b2, {.padding = {1}})), {.window = {2}});       // (n, 6, 3, 3)
  auto f = tg::relu(tg::matmul(tg::reshape(h, {n, 54}), w3) + b3);                         // (n, 54) @ (54, 16)
  return tg::cross_entropy(tg::matmul(f, w4), labels);                                     // (n, 16) @ (16, 5)
}

// Elementwise chains, broadcasts, reductions and the other pooling and filter ops.
T elementwise_mix(const T& x, const T& w, const T& k) {
  auto a = tg::tanh(x * w + 1.0) - tg::sigmoid(x) * 0.5;
  auto b = tg::exp(-a * a) + tg::abs(x);
  auto c = tg::correlate(b, k, {.border = tg::Border::replicate()});
  auto d = tg::meanpool(tg::reshape(c, {1, 1, 12, 12}), {.window = {2}});
  return tg::sum(d * d) + tg::mean(tg::log(a * a + 1.0)) + tg::max(b) + tg::sum(tg::min(b, {0}));
}

// The normalisation layers on x (2, 2, 5, 2), their statistics copied on purpose.
T norms(const T& x) {
  const T g = tg::constant(A({2}, {1.5, 0.5})), b = tg::constant(A({2}, {0.1, -0.2}));
  const tg::BatchNormState<T> bn{{tg::constant(A::zeros({2}))}, {tg::constant(A::ones({2}))}};
  return tg::sum(tg::relu(tg::batch_norm(x, g, b, bn)) * x) + tg::sum(tg::layer_norm(x, {.dims = 2}) * x) +
         tg::sum(tg::group_norm(x, g, b, {.groups = 1}) * x) +
         tg::sum(tg::relu(tg::batch_norm(tg::conv(x, tg::constant(A::ones({2, 2, 1, 1}))), g, b, bn, {.training = false})) * x) +
         tg::sum(tg::dropout2d(x, 0.5, tg::State<T>{tg::constant(tg::dropout_key<double>(4).value)}) * x) +
         tg::sum(tg::upsample(x, {.scale = {2, 1.5}, .mode = tg::UpsampleMode::linear})) +
         tg::sum(tg::upsample(x, {.scale = {2}})) + tg::sum(tg::adaptive_maxpool(x, {.output = {3, 1}})) +
         tg::sum(tg::adaptive_meanpool(x, {.output = {2, 2}}));
}

// The ops no other case here runs: the shape ops, the softmax family, the other
// pools, losses and unary ops, conv_transpose and convolve. x (2, 3, 5, 5), w (3, 2, 3, 3), k (3, 3).
T other_ops(const T& x, const T& w, const T& k) {
  const T up = tg::conv_transpose(x, w, {.stride = {2}});                            // (2, 2, 11, 11)
  const T p = tg::lppool(tg::abs(up) + 0.1, 2.0, {.window = {2}});                  // (2, 2, 5, 5)
  const T rows = tg::reshape(p, {4, 25});
  const T sl = tg::slice(p, 3, 1, 5, 2);                                            // (2, 2, 5, 2)
  const T cat = tg::concat(std::vector<T>{sl, tg::leaky_relu(sl, 0.1)}, 3);         // (2, 2, 5, 4)
  const T spread = tg::broadcast_to(tg::sum(cat, {0}, true), cat.shape());
  const T img = tg::convolve(tg::reshape(tg::global_meanpool(up) + tg::global_maxpool(up), {2, 2}), k,
                             {.border = tg::Border::reflect()});
  return tg::sum(tg::softmax(rows) * rows) + tg::sum(tg::log_softmax(tg::transpose(rows), 0)) +
         tg::sum(tg::logsumexp(tg::permute(p, {0, 2, 1, 3}), -1)) + tg::sum(spread * cat) +
         tg::mse(tg::softplus(sl), tg::sqrt(tg::abs(sl) + 1.0)) + tg::sum(tg::pow(tg::abs(sl) + 1.0, 1.5)) +
         tg::sum(tg::pow(tg::abs(sl) + 1.0, sl)) + tg::sum(img * img) +
         tg::sum(tg::gelu(sl) + tg::gelu_tanh(sl) + tg::silu(sl) + tg::hardswish(sl) + tg::elu(sl, 0.5) + tg::clamp(sl, -0.1, 0.1)) +
         tg::bce_with_logits(sl, tg::sigmoid(sl)) + tg::l1_loss(sl, sl * 0.5) + tg::smooth_l1_loss(sl, sl * 0.5, 0.5) +
         tg::sum(tg::pad(sl, {.widths = {1, 2}, .border = tg::Border::symmetric()})) +
         tg::sum(tg::where(tg::constant(A({2}, {1.0, 0.0})), sl, 0.5)) + norms(sl);
}

// f compiled from a recording on (x, w, k), with and without memory planning:
// a gradient step after the first allocates nothing.
template <class F>
void check_steps_allocate_nothing(F f, const A& x, const A& w, const A& k) {
  auto tape = tg::record(f, x, w, k);
  for (const auto& options : {tg::CompileOptions{}, tg::CompileOptions{.plan_memory = false},
                              tg::CompileOptions{.tune_algorithms = true}}) {
    auto ct = tg::compile(tape, options);
    A gx, gw, gk;
    auto step = [&] { ct.gradient_into({&gx, &gw, &gk}, x, w, k); };
    step();
    const long counted = allocations_in(step);
    CHECK(counted == 0);
    if (counted == 0) tgtest::covered(tgtest::Check::allocation_model, tape.tape());
  }
}

}  // namespace

TEST_CASE("allocations: the counter sees malloc and operator new") {
  static int* volatile sink = nullptr;  // keeps the compiler from eliding the new/delete pair
  CHECK(allocations_in([] {
          sink = new int(3);
          delete sink;
        }) == 1);
  CHECK(allocations_in([] { std::free(std::malloc(100)); }) == 1);
  CHECK(allocations_in([] { A a({1000}); }) == 1);
}

TEST_CASE("allocations: a compiled LeNet step allocates nothing after the first call") {
  const std::int64_t n = 8;
  A x = A::random_normal({n, 1, 12, 12}, 0, 1, 1), labels({n});
  for (std::int64_t i = 0; i < n; ++i) labels.data()[i] = static_cast<double>(i % 5);
  std::vector<A> p = {A::random_normal({4, 1, 5, 5}, 0, 1, 2), A::random_normal({4}, 0, 1, 3),  A::random_normal({6, 4, 3, 3}, 0, 1, 4), A::random_normal({6}, 0, 1, 5),
                      A::random_normal({54, 16}, 0, 1, 6),     A::random_normal({16}, 0, 1, 7), A::random_normal({16, 5}, 0, 1, 8)};
  auto tape = tg::record(small_lenet, x, labels, p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
  tape.set_needs_grad(0, false);
  tape.set_needs_grad(1, false);
  const std::vector<A> recorded = p;
  for (const auto& options : {tg::CompileOptions{}, tg::CompileOptions{.tune_algorithms = true}}) {
    CAPTURE(options.tune_algorithms);
    p = recorded;
    auto ct = tg::compile(tape, options);
    std::vector<A> grads(p.size());
    std::array<A*, 9> into{};
    for (std::size_t k = 0; k < p.size(); ++k) into[k + 2] = &grads[k];
    auto step = [&] { ct.gradient_into(into, x, labels, p[0], p[1], p[2], p[3], p[4], p[5], p[6]); };
    step();  // the first call may size what it keeps
    const double first_loss = ct.value();
    CHECK(allocations_in(step) == 0);
    CHECK(ct.value() == first_loss);
    // New values of the same shapes: still none, and the interpreter agrees (tuned
    // algorithms sum in another order: to rounding).
    for (auto& a : p) a = A::random_normal(a.shape(), 0, 1, 11);
    CHECK(allocations_in(step) == 0);
    const auto expected = tape.gradient(x, labels, p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    CHECK(std::abs(ct.value() - tape.value()) <= 1e-12 * std::abs(tape.value()));
    CHECK(max_abs_diff(grads[2], std::get<4>(expected)) <= (options.tune_algorithms ? 1e-10 : 1e-12));
    tgtest::covered(tgtest::Check::allocation_model, tape.tape());
  }
}

TEST_CASE("allocations: compiled elementwise, filter and pooling steps allocate nothing after the first call") {
  A x = A::random_normal({12, 12}, 0, 1, 1), w = A::random_normal({12, 12}, 0, 1, 2), k = A::random_normal({3, 3}, 0, 1, 3);
  check_steps_allocate_nothing(elementwise_mix, x, w, k);
}

TEST_CASE("allocations: every other op, compiled, allocates nothing after the first call") {
  A x = A::random_normal({2, 3, 5, 5}, 0, 1, 1), w = A::random_normal({3, 2, 3, 3}, 0, 1, 2), k = A::random_normal({3, 3}, 0, 1, 3);
  check_steps_allocate_nothing(other_ops, x, w, k);
}

TEST_CASE("allocations: a compiled second-order step (a gradient penalty through a conv) allocates nothing after the first call") {
  A x = A::random_normal({2, 3, 5, 5}, 0, 1, 1), w = A::random_normal({3, 2, 3, 3}, 0, 1, 2), k = A::random_normal({3, 3}, 0, 1, 3);
  check_steps_allocate_nothing(tgtest::models::conv_penalty<double>, x, w, k);
}

TEST_CASE("allocations: a fused elementwise chain over many blocks (threads) allocates nothing after the first call") {
  auto chain = [](const T& x, const T& w, const T& s) { return tg::sum(tg::exp(-tg::tanh(x * w + s)) / (w * w + 1.0)); };
  A x = A::random_normal({20000}, 0, 1, 1), w = A::random_normal({20000}, 0, 1, 2), s = A::scalar(0.5);  // 5 blocks
  auto tape = tg::record(chain, x, w, s);
  auto ct = tg::compile(tape);
  A gx, gw, gs;
  auto step = [&] { ct.gradient_into({&gx, &gw, &gs}, x, w, s); };
  step();
  step();  // every worker thread has sized its scratch
  CHECK(allocations_in(step) == 0);
  tgtest::covered(tgtest::Check::allocation_model, tape.tape());
}

TEST_CASE("allocations: im2col convolutions (forward, both gradients) allocate nothing after the first call") {
  auto layer = [](const T& x, const T& w, const T& b) {
    return tg::sum(tg::conv(x, w, b, {.padding = {1}, .algorithm = tg::ConvAlgorithm::im2col}));
  };
  for (std::int64_t n : {1, 4}) {  // one chunk of blocks (OpenBLAS threads the GEMMs) and several (our threads)
    CAPTURE(n);
    A x = A::random_normal({n, 8, 20, 20}, 0, 1, 1), w = A::random_normal({16, 8, 3, 3}, 0, 1, 2), b({16});
    auto ct = tg::compile(tg::record(layer, x, w, b));
    A gx, gw, gb;
    auto step = [&] { ct.gradient_into({&gx, &gw, &gb}, x, w, b); };
    step();
    step();
    CHECK(allocations_in(step) == 0);
  }
}

TEST_CASE("allocations: a weight gradient with few rows and columns and a long inner dimension (GEMM split over k)") {
  auto layer = [](const T& x, const T& w) { return tg::sum(tg::tanh(tg::matmul(x, w))); };
  // dW (16, 10) = x^T (16, 8192) . dY (8192, 10): OpenBLAS would thread it over k, and malloc.
  A x = A::random_normal({8192, 16}, 0, 1, 1), w = A::random_normal({16, 10}, 0, 1, 2);
  auto tape = tg::record(layer, x, w);
  tape.set_needs_grad(0, false);
  auto ct = tg::compile(tape);
  A gx, gw;
  auto step = [&] { ct.gradient_into({&gx, &gw}, x, w); };
  step();
  step();
  CHECK(allocations_in(step) == 0);
}

TEST_CASE("allocations: small GEMMs whose last columns do not fill a block of 16 allocate nothing, float and double") {
  // Note [OpenBLAS small-matrix kernels]: OpenBLAS's AVX-512 small-matrix kernel mallocs for those columns.
  auto step_allocations = [](auto value) {
    using V = decltype(value);
    using TV = tg::Tracked<V>;
    long worst = 0;
    for (std::int64_t n : {3, 10, 21}) {
      const auto x = tg::Array<V>::random_normal({64, 32}, 0, 1, 1), w = tg::Array<V>::random_normal({32, n}, 0, 1, 2);
      auto ct = tg::compile(tg::record([](const TV& a, const TV& b) { return tg::sum(tg::tanh(tg::matmul(a, b))); }, x, w));
      tg::Array<V> gx, gw;
      auto step = [&] { ct.gradient_into({&gx, &gw}, x, w); };
      step();
      step();
      worst = std::max(worst, allocations_in(step));
    }
    return worst;
  };
  CHECK(step_allocations(0.0) == 0);
  CHECK(step_allocations(0.0f) == 0);
}

TEST_CASE("allocations: FFT convolutions (forward, both gradients) allocate nothing after the first call") {
  auto layer = [](const T& x, const T& w) {
    return tg::sum(tg::conv(x, w, {.padding = {2}, .algorithm = tg::ConvAlgorithm::fft}));
  };
  A x = A::random_normal({2, 3, 24, 24}, 0, 1, 1), w = A::random_normal({4, 3, 5, 5}, 0, 1, 2);
  auto ct = tg::compile(tg::record(layer, x, w));
  A gx, gw;
  auto step = [&] { ct.gradient_into({&gx, &gw}, x, w); };
  step();
  step();
  CHECK(allocations_in(step) == 0);
}

TEST_CASE("allocations: Winograd convolutions (forward, both gradients) allocate nothing after the first call") {
  auto layer = [](const T& x, const T& w, const T& v) {
    const tg::ConvParams wino{.padding = {1}, .algorithm = tg::ConvAlgorithm::winograd};
    return tg::sum(tg::conv(tg::conv(x, w, wino), v, {.padding = {2}, .groups = 2, .algorithm = tg::ConvAlgorithm::winograd}));
  };
  A x = A::random_normal({3, 5, 13, 11}, 0, 1, 1), w = A::random_normal({6, 5, 3, 3}, 0, 1, 2);
  A v = A::random_normal({4, 3, 5, 5}, 0, 1, 3);
  auto ct = tg::compile(tg::record(layer, x, w, v));
  A gx, gw, gv;
  auto step = [&] { ct.gradient_into({&gx, &gw, &gv}, x, w, v); };
  step();
  step();
  CHECK(allocations_in(step) == 0);
}

TEST_CASE("allocations: strided convolutions' input gradients by phases allocate nothing after the first call") {
  // Note [Strided input adjoint by phases]: 3x3 stride 2 on 20 channels (the
  // implicit GEMM's phases), then a conv_transpose whose forward is such an
  // input gradient, on 1 and 2 threads.
  auto layer = [](const T& x, const T& w, const T& v) {
    const tg::ConvParams s2{.stride = {2}, .padding = {1}, .algorithm = tg::ConvAlgorithm::implicit_gemm};
    const T down = tg::conv(x, w, s2);  // (2, 18, 6, 5)
    return tg::sum(down * down) + tg::sum(tg::conv_transpose(down, v, s2));
  };
  A x = A::random_normal({2, 20, 11, 9}, 0, 1, 1), w = A::random_normal({18, 20, 3, 3}, 0, 1, 2);
  A v = A::random_normal({18, 17, 3, 3}, 0, 1, 3);
  auto ct = tg::compile(tg::record(layer, x, w, v));
  const int before = tg::max_threads();
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    tg::set_num_threads(threads);
    A gx, gw, gv;
    auto step = [&] { ct.gradient_into({&gx, &gw, &gv}, x, w, v); };
    step();
    step();
    CHECK(allocations_in(step) == 0);
  }
  tg::set_num_threads(before);
}

TEST_CASE("allocations: the example's LeNet training step (float, batch 64) allocates nothing after the first call") {
  cnn::LenetParams net = cnn::lenet_init(7);
  const std::int64_t n = 64;
  cnn::A x = cnn::A::random_normal({n, 1, 28, 28}, 0, 1, 1), y({n});
  for (std::int64_t i = 0; i < n; ++i) y.data()[i] = static_cast<float>(i % 10);
  auto step = tg::jit(cnn::lenet_loss);
  cnn::LenetParams grads;
  const float first = step.value_and_gradient_into(grads, net, tg::data(x), tg::data(y));
  float again = 0;
  CHECK(allocations_in([&] { again = step.value_and_gradient_into(grads, net, tg::data(x), tg::data(y)); }) == 0);
  CHECK(again == first);
  // The optimizers' steps: one pass over every leaf, no allocation after the first.
  tg::optim::Sgd sgd(net, {.lr = 0.01, .momentum = 0.9, .weight_decay = 1e-4});
  tg::optim::Adam adam(net, {.lr = 1e-3});
  tg::optim::AdamW adamw(net, {.lr = 1e-3, .weight_decay = 0.01});
  sgd.step(net, grads);
  adam.step(net, grads);
  adamw.step(net, grads);
  CHECK(allocations_in([&] { sgd.step(net, grads); }) == 0);
  CHECK(allocations_in([&] { adam.step(net, grads); }) == 0);
  CHECK(allocations_in([&] { adamw.step(net, grads); }) == 0);
  CHECK(allocations_in([&] { tg::optim::clip_grad_norm(grads, 1.0); }) == 0);
}

// doctest, then (on a full run) every built-in op must be in a case above.
int main(int argc, char** argv) {
  // The tests that set a thread count (uneven blocks, determinism, no allocation
  // per step) need it kept on a loaded machine too; the dynamic count has its own.
  tg::set_dynamic_threads(false);
  doctest::Context context(argc, argv);
  const int failed = context.run();
  if (context.shouldExit() || argc > 1) return failed;
  constexpr std::array checks{tgtest::Check::allocation_model};
  return tgtest::report_uncovered(checks) != 0 ? 1 : failed;
}
