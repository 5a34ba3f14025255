// Misuse: the function takes tg::Array where it is called with tg::Tracked.
#include <tapegrad/tapegrad.hpp>
int main() {
  const tg::Array<float> x = tg::Array<float>::ones({3});
  auto g = tg::gradient([](const tg::Array<float>& v) { return tg::sum(v); }, x);
  (void)g;
}
