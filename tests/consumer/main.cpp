#include <tapegrad/tapegrad.hpp>

int main() {
  tg::Array<double> x({3}, {1, 2, 3});
  auto g = tg::gradient([](const tg::Tracked<double>& v) { return tg::sum(v * v); }, x);
  const bool ok = g(0) == 2 && g(1) == 4 && g(2) == 6;
  fmt::print("consumer: gradient = {} ({})\n", g, ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
