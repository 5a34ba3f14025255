// softmax, log_softmax, logsumexp along one axis (negative axes count from the end).
// All computed stably (the maximum is subtracted first).
#pragma once

#include <source_location>

#include "tapegrad/autodiff/tracked.hpp"

namespace tg {

template <class T>
Tracked<T> softmax(const Tracked<T>& x, std::int64_t axis = -1, std::source_location where = std::source_location::current());
template <class T>
Array<T> softmax(const Array<T>& x, std::int64_t axis = -1, std::source_location where = std::source_location::current());
template <class T>
Tracked<T> log_softmax(const Tracked<T>& x, std::int64_t axis = -1, std::source_location where = std::source_location::current());
template <class T>
Array<T> log_softmax(const Array<T>& x, std::int64_t axis = -1, std::source_location where = std::source_location::current());
template <class T>
Tracked<T> logsumexp(const Tracked<T>& x, std::int64_t axis = -1, bool keepdims = false,
                     std::source_location where = std::source_location::current());
template <class T>
Array<T> logsumexp(const Array<T>& x, std::int64_t axis = -1, bool keepdims = false,
                   std::source_location where = std::source_location::current());

}  // namespace tg
