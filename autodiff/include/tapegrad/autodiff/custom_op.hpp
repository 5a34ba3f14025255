// Custom ops: a user registers an op with its own forward and pullback (as one
// writes a custom autograd function); it records, replays, dumps and
// gradient-checks like a built-in, because it becomes one more registry row.
//
//   auto square = tg::register_op<double>({
//       .name = "square",
//       .forward = [](const tg::InputList<double>& in) { ... return y; },
//       .pullback = [](const tg::InputList<double>& in, const tg::Array<double>& y,
//                      const tg::Array<double>& dy) { return std::vector{dx}; }});
//   tg::Tracked<double> y = square(x);
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autodiff/record.hpp"

namespace tg {

// Read-only list of an op's input values: in[0], in[1], ...
template <class T>
class InputList {
 public:
  explicit InputList(std::span<const Array<T>* const> inputs) : inputs_(inputs) {}
  const Array<T>& operator[](std::size_t i) const { return *inputs_[i]; }
  std::size_t size() const noexcept { return inputs_.size(); }

 private:
  std::span<const Array<T>* const> inputs_;
};

template <class T>
struct CustomOpSpec {
  std::string name;
  int arity = 1;
  // Output shape from the input shapes; throw tg::Error for bad inputs. Default: the first input's shape.
  std::function<Shape(std::span<const Shape* const>)> shape;
  std::function<Array<T>(const InputList<T>&)> forward;
  // One gradient per input, each of that input's shape: the contribution J_i^T dy.
  std::function<std::vector<Array<T>>(const InputList<T>&, const Array<T>& output, const Array<T>& output_adjoint)> pullback;
};

template <class T>
class CustomOp {
 public:
  explicit CustomOp(const OpInfo<T>& info) : info_(&info) {}
  const OpInfo<T>& info() const { return *info_; }

  Tracked<T> operator()(const Operand<T>& a) const { return apply({a}); }
  Tracked<T> operator()(const Operand<T>& a, const Operand<T>& b) const { return apply({a, b}); }
  Tracked<T> operator()(const Operand<T>& a, const Operand<T>& b, const Operand<T>& c) const { return apply({a, b, c}); }
  Tracked<T> apply(std::initializer_list<Operand<T>> args) const {
    return record_op(*info_, nullptr, args, args.size() ? args.begin()->where : std::source_location::current());
  }
  // On plain Arrays: evaluated at once, nothing recorded.
  template <class... A>
  Array<T> evaluate(const A&... args) const {
    return evaluate_op(*info_, nullptr, {&args...}, std::source_location::current());
  }

 private:
  const OpInfo<T>* info_;
};

// The name must be new for T (Note [Unique op names] in registry.hpp): a second
// registration of a taken name is a tg::Error naming both sites. Register once
// (a function-local static, or at start-up), not on every call.
template <class T>
CustomOp<T> register_op(CustomOpSpec<T> spec, std::source_location where = std::source_location::current()) {
  if (spec.name.empty() || !spec.forward || !spec.pullback)
    fail("register_op", fmt::format("op '{}' needs a name, a forward and a pullback", spec.name));
  auto s = std::make_shared<CustomOpSpec<T>>(std::move(spec));
  OpInfo<T> row;
  row.name = s->name;
  row.arity = s->arity;
  row.shape = [s](const OpParams*, std::span<const Shape* const> shapes) {
    return s->shape ? s->shape(shapes) : *shapes[0];
  };
  row.forward = [s](const ForwardCall<T>& call) {
    Array<T> y = s->forward(InputList<T>(call.inputs));
    if (!(y.shape() == call.output.shape()))
      fail(s->name, fmt::format("forward returned shape {} but the shape rule gives {} they must agree; hint: give the "
                                "op a shape function",
                                to_string(y.shape()), to_string(call.output.shape())));
    call.output = std::move(y);
  };
  row.pullback = [s](const PullbackCall<T>& call) {
    std::vector<Array<T>> grads = s->pullback(InputList<T>(call.inputs), call.output, call.output_adjoint);
    if (grads.size() != call.inputs.size())
      fail(s->name, fmt::format("pullback returned {} gradients expected one per input ({})", grads.size(), call.inputs.size()));
    for (std::size_t i = 0; i < grads.size(); ++i) {
      Array<T>* adj = call.input_adjoints[i];
      if (!adj) continue;
      if (!(grads[i].shape() == call.inputs[i]->shape()))
        fail(s->name, fmt::format("pullback gradient {} has shape {} expected the input's shape {}", i,
                                  to_string(grads[i].shape()), to_string(call.inputs[i]->shape())));
      for (std::int64_t j = 0; j < adj->size(); ++j) adj->data()[j] += grads[i].data()[j];
    }
  };
  return CustomOp<T>(Registry<T>::add(std::move(row), where));
}

}  // namespace tg
