// The main job for now: gradients of a small model, printed.
//
// A two-layer perceptron on a fixed random batch, its parameters a struct,
// differentiated with tg::value_and_gradient; then the tape is kept, dumped,
// and replayed by an optimizer.
#include <cstdio>

#include <tapegrad/tapegrad.hpp>

using A = tg::Array<double>;

// The parameters: a plain struct, a template over its array type, so that the
// loss sees it as Mlp<tg::Tracked<double>> and gradients come back as Mlp<A>.
template <class Arr>
struct Mlp {
  Arr w1, w2;
};

// loss = cross_entropy(relu(x w1) w2, labels): images and labels are data.
auto loss = [](const auto& p, const auto& x, const auto& labels) {
  const auto hidden = tg::relu(tg::matmul(x, p.w1));  // (8, 4) @ (4, 16) -> (8, 16)
  const auto logits = tg::matmul(hidden, p.w2);       // (8, 16) @ (16, 3) -> (8, 3)
  return tg::cross_entropy(logits, labels);
};

int main() {
  Mlp<A> p{A::random_normal({4, 16}, 0.0, 0.5, 1), A::random_normal({16, 3}, 0.0, 0.5, 2)};
  const A x = A::random_uniform({8, 4}, -1.0, 1.0, 3), labels({8}, {0, 1, 2, 0, 1, 2, 0, 1});

  auto [value, g] = tg::value_and_gradient(loss, p, tg::data(x), tg::data(labels));  // g: an Mlp<A>
  fmt::print("loss = {:.6f}\n", value);
  fmt::print("d loss / d w2 (first rows) = {}\n", tg::slice(g.w2, 0, 0, 2));

  auto check = tg::gradcheck([&](const auto& w1, const auto& w2) { return loss(Mlp<tg::Tracked<double>>{w1, w2}, x, labels); },
                             p.w1, p.w2);
  fmt::print("gradcheck against central differences:\n{}", check.summary());

  auto tape = tg::record(loss, p, tg::data(x), tg::data(labels));
  fmt::print("\nthe recorded tape:\n{}", tg::dump(tape));

  // Gradient descent by replaying the tape: no re-recording per step.
  tg::optim::Sgd sgd(p, {.lr = 0.5});
  for (int step = 0; step < 50; ++step) sgd.step(p, tape.gradient(p, tg::data(x), tg::data(labels)));
  fmt::print("\nafter 50 replayed gradient steps: loss = {:.6f} (was {:.6f})\n",
             tape.forward(p, tg::data(x), tg::data(labels)).item(), value);
  return check.passed() ? 0 : 1;
}
