// Misuse: tg::jit of a function taking tg::Array where it is called with tg::Tracked.
#include <tapegrad/tapegrad.hpp>
int main() {
  const tg::Array<float> x = tg::Array<float>::ones({3});
  auto step = tg::jit([](const tg::Array<float>& v) { return tg::sum(v); });
  auto g = step.gradient(x);
  (void)g;
}
