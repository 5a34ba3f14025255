// Misuse: a per-dimension attribute given as a bare number.
#include <tapegrad/tapegrad.hpp>
int main() {
  const tg::Array<float> x = tg::Array<float>::ones({1, 1, 8, 8}), w = tg::Array<float>::ones({1, 1, 3, 3});
  auto y = tg::conv(x, w, {.stride = 2});
  (void)y;
}
