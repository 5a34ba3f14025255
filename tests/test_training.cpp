// Training over trees: tg::optim against hand-worked updates, schedules and
// clipping, tg::init's distributions, and safetensors checkpoints (round
// trip, an independent Python reader, mismatches, truncation, bit flips).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "support/checks.hpp"

using namespace tgtest;
namespace fs = std::filesystem;

namespace {

template <class Arr>
struct Layer {
  Arr w, b;
};
template <class Arr>
struct Model {
  Layer<Arr> first;
  std::vector<Layer<Arr>> rest;
};

// One leaf of value p0 stepped twice with gradient g.
template <class Opt>
double two_steps(double p0, double g, auto options) {
  Layer<A> p{A::full({1}, p0), A::full({1}, p0)};
  Opt opt(p, options);
  const Layer<A> grads{A::full({1}, g), A::full({1}, g)};
  opt.step(p, grads);
  opt.step(p, grads);
  CHECK(p.b(0) == p.w(0));
  return p.w(0);
}

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "tapegrad_training_tests";
  fs::create_directories(dir);
  return dir / name;
}

Model<A> make_model(std::size_t rest, std::uint64_t seed) {
  Model<A> m{{tg::init::linear_weight<double>(3, 4, seed), tg::init::bias<double>(4, 3, seed + 1)}, {}};
  for (std::size_t i = 0; i < rest; ++i)
    m.rest.push_back({tg::init::linear_weight<double>(4, 4, seed + 2 + i), tg::init::bias<double>(4, 4, seed + 20 + i)});
  return m;
}

auto model_loss = [](const auto& m, const auto& x) {
  auto h = tg::tanh(tg::matmul(x, m.first.w) + m.first.b);
  for (const auto& l : m.rest) h = tg::tanh(tg::matmul(h, l.w) + l.b);
  return tg::sum(h * h);
};

}  // namespace

TEST_CASE("optim: SGD and Adam against hand-worked updates") {
  using tg::optim::Sgd;
  // d = g + wd p; b = d, then 0.9 b + d; p -= lr b.
  CHECK(two_steps<Sgd<Layer<A>>>(1.0, 0.5, tg::optim::SgdOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1}) ==
        doctest::Approx(0.8266).epsilon(1e-12));
  CHECK(two_steps<Sgd<Layer<A>>>(1.0, 0.5, tg::optim::SgdOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true}) ==
        doctest::Approx(0.7695).epsilon(1e-12));
  CHECK(two_steps<Sgd<Layer<A>>>(1.0, 0.5, tg::optim::SgdOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.5}) ==
        doctest::Approx(0.88).epsilon(1e-12));
  CHECK(two_steps<Sgd<Layer<A>>>(1.0, 0.5, tg::optim::SgdOptions{.lr = 0.1}) == doctest::Approx(0.9).epsilon(1e-12));
  // Adam with a constant gradient moves by lr * m_hat / (sqrt(v_hat) + eps) = lr (1 - 2e-8) per step.
  const double adam_step = 0.1 * 0.5 / (0.5 + 1e-8);
  CHECK(two_steps<tg::optim::Adam<Layer<A>>>(1.0, 0.5, tg::optim::AdamOptions{.lr = 0.1}) ==
        doctest::Approx(1.0 - 2 * adam_step).epsilon(1e-12));
  // Adam's weight decay joins the gradient (the step stays lr); AdamW's scales p first.
  const double g1 = 0.5 + 0.1 * 1.0, m1 = 0.1 * g1, v1 = 0.001 * g1 * g1;
  const double q1 = 1.0 - (0.1 / 0.1) * m1 / (std::sqrt(v1) / std::sqrt(0.001) + 1e-8);
  const double g2 = 0.5 + 0.1 * q1, m2a = 0.9 * m1 + 0.1 * g2, v2 = 0.999 * v1 + 0.001 * g2 * g2;
  const double q2 = q1 - (0.1 / (1 - 0.81)) * m2a / (std::sqrt(v2) / std::sqrt(1 - 0.999 * 0.999) + 1e-8);
  CHECK(two_steps<tg::optim::Adam<Layer<A>>>(1.0, 0.5, tg::optim::AdamOptions{.lr = 0.1, .weight_decay = 0.1}) ==
        doctest::Approx(q2).epsilon(1e-12));
  const double w1 = 1.0 * 0.99 - 0.1 * 0.5 / (0.5 + 1e-8), w2 = w1 * 0.99 - 0.1 * 0.5 / (0.5 + 1e-8);
  CHECK(two_steps<tg::optim::AdamW<Layer<A>>>(1.0, 0.5, tg::optim::AdamOptions{.lr = 0.1, .weight_decay = 0.1}) ==
        doctest::Approx(w2).epsilon(1e-12));
  // AMSGrad keeps the larger second moment: gradients 1 then 0.
  Layer<A> p{A::full({1}, 1.0), A::full({1}, 1.0)};
  tg::optim::Adam opt(p, {.lr = 0.1, .amsgrad = true});
  opt.step(p, Layer<A>{A::full({1}, 1.0), A::full({1}, 1.0)});
  const double p1 = p.w(0);
  opt.step(p, Layer<A>{A::full({1}, 0.0), A::full({1}, 0.0)});
  const double m2 = 0.9 * 0.1, vmax = 0.001, bc1 = 1 - 0.81, bc2 = 1 - 0.999 * 0.999;
  CHECK(p.w(0) == doctest::Approx(p1 - (0.1 / bc1) * m2 / (std::sqrt(vmax) / std::sqrt(bc2) + 1e-8)).epsilon(1e-12));
  CHECK(opt.steps() == 2);
}

TEST_CASE("optim: a training loop over a tree lowers the loss; wrong trees are clear errors") {
  Model<A> m = make_model(2, 1);
  const A x = A::random_uniform({8, 3}, -1, 1, 5);
  tg::optim::Adam opt(m, {.lr = 0.05});
  auto step = tg::jit(model_loss);
  double initial = 0, last = 0;
  Model<A> g;
  for (int i = 0; i < 30; ++i) {
    const double v = step.value_and_gradient_into(g, m, tg::data(x));
    if (i == 0) initial = v;
    last = v;
    opt.step(m, g);
  }
  CHECK(last < 0.5 * initial);
  CHECK(step.stats().misses == 1);
  Model<A> other = make_model(1, 1);
  CHECK_THROWS_WITH_AS(opt.step(other, g), doctest::Contains("optim::Adam::step: the parameters have 4 leaves but the optimizer was made for 6"),
                       tg::Error);
  Model<A> bad = m;
  bad.rest[1].b = A::zeros({5});
  CHECK_THROWS_WITH_AS(opt.step(bad, g), doctest::Contains("parameter 5 (rest.1.b) has shape (5) but the optimizer was made for (4)"),
                       tg::Error);
  CHECK_THROWS_WITH_AS(tg::optim::Sgd(m, {.lr = -1}), doctest::Contains("optim::Sgd: lr -1"), tg::Error);
}

TEST_CASE("optim: schedules and global-norm clipping") {
  CHECK(tg::optim::StepDecay{1.0, 10, 0.5}(25) == 0.25);
  CHECK(tg::optim::Cosine{1.0, 100}(50) == doctest::Approx(0.5));
  CHECK(tg::optim::Cosine{1.0, 100, 0.1}(100) == doctest::Approx(0.1));
  CHECK(tg::optim::WarmupCosine{1.0, 10, 110}(4) == doctest::Approx(0.5));
  CHECK(tg::optim::WarmupCosine{1.0, 10, 110}(10) == doctest::Approx(1.0));
  CHECK(tg::optim::WarmupCosine{1.0, 10, 110}(60) == doctest::Approx(0.5));
  Layer<A> g{A({2}, {3.0, 0.0}), A({1}, {4.0})};
  CHECK(tg::optim::clip_grad_norm(g, 1.0) == doctest::Approx(5.0));
  CHECK(g.w(0) == doctest::Approx(0.6).epsilon(1e-6));
  CHECK(g.b(0) == doctest::Approx(0.8).epsilon(1e-6));
  CHECK(tg::optim::clip_grad_norm(g, 10.0) == doctest::Approx(1.0).epsilon(1e-5));
  CHECK(g.b(0) == doctest::Approx(0.8).epsilon(1e-6));  // below the limit: unchanged
}

TEST_CASE("init: PyTorch's bounds and spreads") {
  const A w = tg::init::conv_weight<double>({64, 16, 3, 3}, 1);  // fan_in 144: U(-1/12, 1/12)
  double lo = 1, hi = -1, squares = 0;
  for (double v : w) lo = std::min(lo, v), hi = std::max(hi, v), squares += v * v;
  CHECK(lo >= -1.0 / 12);
  CHECK(hi <= 1.0 / 12);
  CHECK(hi > 0.99 / 12);
  CHECK(std::sqrt(squares / double(w.size())) == doctest::Approx(1.0 / 12 / std::sqrt(3.0)).epsilon(0.02));
  const A n = tg::init::kaiming_normal<double>({256, 100}, 100, 2);
  double s2 = 0;
  for (double v : n) s2 += v * v;
  CHECK(std::sqrt(s2 / double(n.size())) == doctest::Approx(std::sqrt(2.0 / 100)).epsilon(0.02));
  const A x = tg::init::xavier_uniform<double>({50, 30}, 30, 50, 3);
  for (double v : x) CHECK(std::abs(v) <= std::sqrt(6.0 / 80));
  CHECK(tg::init::fan_in_fan_out({8, 4, 3, 3}).in == 36);
  CHECK(tg::init::fan_in_fan_out({8, 4, 3, 3}).out == 72);
  CHECK_THROWS_WITH_AS(tg::init::bias<double>(4, 0, 1), doctest::Contains("init::bias: fan 0"), tg::Error);
}

// ---- checkpoints ---------------------------------------------------------------------

TEST_CASE("checkpoint: a model and its optimizer round-trip, and training resumes where it stopped") {
  const A x = A::random_uniform({8, 3}, -1, 1, 5);
  Model<A> m = make_model(2, 7);
  tg::optim::Adam opt(m, {.lr = 0.01});
  for (int i = 0; i < 3; ++i) opt.step(m, tg::gradient(model_loss, m, tg::data(x)));
  const fs::path path = scratch("resume.safetensors");
  tg::save_safetensors(path.string(), m, opt);
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));
  Model<A> loaded = make_model(2, 99);
  tg::optim::Adam opt2(loaded, {.lr = 0.01});
  tg::load_safetensors(path.string(), loaded, opt2);
  CHECK(opt2.steps() == 3);
  for (int i = 0; i < 2; ++i) {
    opt.step(m, tg::gradient(model_loss, m, tg::data(x)));
    opt2.step(loaded, tg::gradient(model_loss, loaded, tg::data(x)));
  }
  CHECK(max_abs_diff(m.rest[1].w, loaded.rest[1].w) == 0.0);
  CHECK(max_abs_diff(m.first.b, loaded.first.b) == 0.0);
  const std::string listing = tg::checkpoint_impl::describe(tg::read_file_bytes(path.string()));
  CHECK(listing.find("first.w F64 (3,4)") != std::string::npos);
  CHECK(listing.find("optim.exp_avg_sq.rest.1.b F64 (4)") != std::string::npos);
}

TEST_CASE("checkpoint: an independent reader (Python's json and numpy) sees the same names, shapes and values") {
  if (std::system("/usr/bin/python3 -c 'import numpy' > /dev/null 2>&1") != 0) {
    MESSAGE("Debian's python3 with numpy (/usr/bin/python3) is not installed (scripts/install-deps.sh --tests installs it): skipped");
    return;
  }
  Model<tg::Array<float>> m{{tg::Array<float>::random_uniform({3, 4}, -1, 1, 1), tg::Array<float>({4}, {1, 2, 3, 4})},
                            {{tg::Array<float>::random_uniform({4, 4}, -1, 1, 2), tg::Array<float>::zeros({4})}}};
  const fs::path path = scratch("python.safetensors"), out = scratch("python.txt");
  tg::save_safetensors(path.string(), m);
  const std::string script =
      "import json, struct, sys, numpy as np\n"
      "b = open(sys.argv[1], 'rb').read()\n"
      "n = struct.unpack('<Q', b[:8])[0]\n"
      "h = json.loads(b[8:8 + n])\n"
      "data = b[8 + n:]\n"
      "for k in sorted(h):\n"
      "    if k == '__metadata__': continue\n"
      "    e = h[k]; s, t = e['data_offsets']\n"
      "    a = np.frombuffer(data[s:t], dtype={'F32': '<f4', 'F64': '<f8'}[e['dtype']]).reshape(e['shape'])\n"
      "    print(k, e['dtype'], list(a.shape), repr(float(a.astype(np.float64).sum())))\n";
  const fs::path py = scratch("reader.py");
  std::ofstream(py) << script;
  REQUIRE(std::system(("/usr/bin/python3 " + py.string() + " " + path.string() + " > " + out.string()).c_str()) == 0);
  const std::string text = tg::read_file_bytes(out.string());
  auto sum = [](const tg::Array<float>& a) {
    double s = 0;
    for (float v : a) s += double(v);
    return s;
  };
  CHECK(text.find("first.b F32 [4] 10.0") != std::string::npos);
  CHECK(text.find(fmt::format("first.w F32 [3, 4] {}", sum(m.first.w))) != std::string::npos);
  CHECK(text.find(fmt::format("rest.0.w F32 [4, 4] {}", sum(m.rest[0].w))) != std::string::npos);
  CHECK(text.find("rest.0.b F32 [4] 0.0") != std::string::npos);
}

TEST_CASE("checkpoint: mismatches are one clear error, and nothing changes") {
  const fs::path path = scratch("mismatch.safetensors");
  Model<A> m = make_model(2, 1);
  tg::save_safetensors(path.string(), m);
  Model<A> shallow = make_model(1, 5);
  const A before = shallow.first.w;
  CHECK_THROWS_WITH_AS(tg::load_safetensors(path.string(), shallow),
                       doctest::Contains("rest.1.b (F64 (4)) is not in the model; rest.1.w (F64 (4,4)) is not in the model"),
                       tg::Error);
  CHECK(max_abs_diff(shallow.first.w, before) == 0.0);
  Model<A> wide = make_model(2, 5);
  wide.rest[0].w = A::zeros({4, 5});
  CHECK_THROWS_WITH_AS(tg::load_safetensors(path.string(), wide),
                       doctest::Contains("rest.0.w has shape (4,4) but the model's is (4,5)"), tg::Error);
  Model<tg::Array<float>> single{{tg::Array<float>::zeros({3, 4}), tg::Array<float>::zeros({4})}, {}};
  CHECK_THROWS_WITH_AS(tg::load_safetensors(path.string(), single), doctest::Contains("first.w is F64 but the model holds F32"),
                       tg::Error);
  tg::optim::Sgd opt(m, {.lr = 0.1, .momentum = 0.9});
  CHECK_THROWS_WITH_AS(tg::load_safetensors(path.string(), m, opt),
                       doctest::Contains("optim.momentum_buffer.first.w is missing"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::load_safetensors(path.string(), m, opt), doctest::Contains("metadata optim.step is missing"), tg::Error);
  CHECK_THROWS_WITH_AS(tg::load_safetensors(scratch("absent.safetensors").string(), m), doctest::Contains("absent.safetensors"),
                       tg::Error);
}

TEST_CASE("checkpoint: a failed save leaves the previous checkpoint whole") {
  const fs::path path = scratch("atomic.safetensors");
  Model<A> m = make_model(1, 1);
  tg::save_safetensors(path.string(), m);
  const std::string before = tg::read_file_bytes(path.string());
  fs::create_directories(path.string() + ".tmp");  // the temporary file cannot be made
  Model<A> other = make_model(1, 2);
  CHECK_THROWS_WITH_AS(tg::save_safetensors(path.string(), other), doctest::Contains("the previous checkpoint is untouched"),
                       tg::Error);
  CHECK(tg::read_file_bytes(path.string()) == before);
  fs::remove_all(path.string() + ".tmp");
}

TEST_CASE("checkpoint: every truncation and every flipped byte is a tg::Error or a clean load, never a crash") {
  Model<tg::Array<float>> m{{tg::Array<float>::ones({2, 2}), tg::Array<float>::ones({2})}, {}};
  const fs::path path = scratch("damaged.safetensors");
  tg::save_safetensors(path.string(), m);
  const std::string bytes = tg::read_file_bytes(path.string());
  std::vector<tg::checkpoint_impl::Destination> into;
  tg::checkpoint_impl::add_tree<float>(into, m, "");
  int errors = 0, loads = 0;
  auto attempt = [&](std::string_view b) {
    try {
      tg::checkpoint_impl::read_into(b, into, {}, "damaged");
      ++loads;
    } catch (const tg::Error& e) {
      ++errors;
      CHECK(std::string(e.what()).find("load_safetensors: ") == 0);
    }
  };
  for (std::size_t n = 0; n < bytes.size(); ++n) attempt(std::string_view(bytes).substr(0, n));
  CHECK(errors == int(bytes.size()));
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::string flipped = bytes;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x5a);
    attempt(flipped);
  }
  CHECK(loads > 0);  // a flipped data byte loads as another value
  // A header claiming more than the file holds, and a huge shape, are refused before any allocation.
  std::string huge = bytes;
  huge[7] = '\x7f';
  attempt(huge);
  std::string json = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}";
  std::string file(8, '\0');
  file[0] = static_cast<char>(json.size());
  attempt(file + json);
  MESSAGE("damaged files: ", errors, " errors, ", loads, " clean loads");
}

TEST_CASE("checkpoint: a file written by another writer (numpy, the fuzz corpus's seed) loads") {
  Model<tg::Array<float>> m{{tg::Array<float>::zeros({2, 3}), tg::Array<float>::zeros({3})},
                            {{tg::Array<float>::zeros({3, 3}), tg::Array<float>::zeros({3})}}};
  tg::load_safetensors(std::string(TAPEGRAD_TEST_SOURCE_DIR) + "/fuzz/safetensors_corpus/seed-model.safetensors", m);
  CHECK(m.first.w(1, 2) == 5.0f);
  CHECK(m.first.b(0) == 1.0f);
  CHECK(m.rest[0].w(1, 1) == 1.0f);
  CHECK(m.rest[0].w(0, 1) == 0.0f);
}
