// Misuse: a parameter struct that is not a template over its array type.
#include <tapegrad/tapegrad.hpp>
struct Params {
  tg::Array<float> w;
};
int main() {
  const Params p{tg::Array<float>::ones({3})};
  auto g = tg::gradient([](const auto& q) { return tg::sum(q.w); }, p);
  (void)g;
}
