// Misuse: the function returns a plain Array (its value, not a recorded one).
#include <tapegrad/tapegrad.hpp>
int main() {
  const tg::Array<float> x = tg::Array<float>::ones({3});
  auto g = tg::gradient([](const auto& v) { return v.value(); }, x);
  (void)g;
}
