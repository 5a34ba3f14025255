// The main job for now: gradients of a small model, printed.
//
// A two-layer perceptron on a fixed random batch, differentiated with
// tg::gradient; then the tape is kept, dumped, and replayed on a new batch.
#include <cstdio>

#include <tapegrad/tapegrad.hpp>

using A = tg::Array<double>;
using T = tg::Tracked<double>;

// loss(w1, w2) = cross_entropy(relu(x w1) w2, labels): a plain function of the parameters.
struct Model {
  A x;
  std::vector<std::int64_t> labels;
  T operator()(const T& w1, const T& w2) const {
    const T hidden = tg::relu(tg::matmul(x, w1));  // (8, 4) @ (4, 16) -> (8, 16)
    const T logits = tg::matmul(hidden, w2);       // (8, 16) @ (16, 3) -> (8, 3)
    return tg::cross_entropy(logits, labels);
  }
};

int main() {
  const A w1 = A::random_normal({4, 16}, 0.0, 0.5, 1);
  const A w2 = A::random_normal({16, 3}, 0.0, 0.5, 2);
  Model model{A::random_uniform({8, 4}, -1.0, 1.0, 3), {0, 1, 2, 0, 1, 2, 0, 1}};

  auto [loss, g1, g2] = tg::value_and_gradient(model, w1, w2);
  fmt::print("loss = {:.6f}\n", loss);
  fmt::print("d loss / d w2 (first rows) = {}\n", tg::slice(g2, 0, 0, 2));

  auto check = tg::gradcheck(model, w1, w2);
  fmt::print("gradcheck against central differences:\n{}", check.summary());

  auto tape = tg::record(model, w1, w2);
  fmt::print("\nthe recorded tape:\n{}", tg::dump(tape));

  // Gradient descent by replaying the tape: no re-recording per step.
  A v1 = w1, v2 = w2;
  for (int step = 0; step < 50; ++step) {
    auto [d1, d2] = tape.gradient(v1, v2);
    v1 = v1 - 0.5 * d1;
    v2 = v2 - 0.5 * d2;
  }
  fmt::print("\nafter 50 replayed gradient steps: loss = {:.6f} (was {:.6f})\n", tape.forward(v1, v2).item(), loss);
  return check.passed() ? 0 : 1;
}
