// An outside project using the installed tapegrad: the README's two first examples.
#include <cstdio>

#include <tapegrad/tapegrad.hpp>

template <class A>
struct Mlp {
  A w1, b1, w2, b2;
};

int main() {
  tg::Array<double> x({3}, {1, 2, 3});
  auto g = tg::gradient([](const tg::Tracked<double>& v) { return tg::sum(v * v); }, x);
  bool ok = g(0) == 2 && g(1) == 4 && g(2) == 6;
  fmt::print("consumer: gradient = {} ({})\n", g, ok ? "ok" : "WRONG");

  // A model as a struct: jit, an optimizer and a checkpoint.
  Mlp<tg::Array<float>> net{tg::init::linear_weight<float>(784, 128, 1), tg::init::bias<float>(128, 784, 2),
                            tg::init::linear_weight<float>(128, 10, 3), tg::init::bias<float>(10, 128, 4)};
  auto loss = [](const auto& m, const auto& x, const auto& labels) {
    return tg::cross_entropy(tg::matmul(tg::relu(tg::matmul(x, m.w1) + m.b1), m.w2) + m.b2, labels);
  };
  const auto images = tg::Array<float>::random_uniform({16, 784}, 0.f, 1.f, 5);
  tg::Array<float> labels({16});
  for (std::int64_t i = 0; i < 16; ++i) labels.data()[i] = float(i % 10);
  auto step = tg::jit(loss);
  tg::optim::Adam opt(net, {.lr = 1e-3});
  float first = 0, last = 0;
  for (int i = 0; i < 20; ++i) {
    auto [value, gm] = step.value_and_gradient(net, tg::data(images), tg::data(labels));
    opt.step(net, gm);
    (i == 0 ? first : last) = value;
  }
  tg::save_safetensors("consumer.safetensors", net, opt);
  tg::load_safetensors("consumer.safetensors", net, opt);
  std::remove("consumer.safetensors");
  ok = ok && last < first && opt.steps() == 20;
  fmt::print("consumer: loss {:.4f} -> {:.4f} over 20 Adam steps ({})\n", first, last, last < first ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
