// Fashion-MNIST as Debian's dataset-fashion-mnist package installs it: four IDX
// files (gzipped or not) in /usr/share/datasets/fashion-mnist, or in a
// directory given with --data.
//
// Every problem is a tg::Error naming the file: missing (and the package that
// provides it), not IDX, dimensions that do not match, or truncated (detected
// before anything is read past the end).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tapegrad/tapegrad.hpp>

namespace cnn {

inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

// The images stay bytes, as stored (a quarter of the memory of floats); a batch
// is converted when it is gathered: value = (byte / 255 - mean) / stddev.
struct Dataset {
  std::vector<std::uint8_t> pixels;   // n images of 28 x 28, row-major
  std::vector<std::int64_t> labels;   // n class indices in [0, 10)
  float mean = 0, stddev = 1;         // the standardisation applied to byte / 255
  std::int64_t size() const { return static_cast<std::int64_t>(labels.size()); }
};

inline constexpr std::int64_t kPixels = 28 * 28;

// split: "train" or "t10k". Reads <dir>/<split>-images-idx3-ubyte[.gz] and -labels-idx1-ubyte[.gz].
Dataset load_fashion_mnist(const std::string& dir, const std::string& split);

// The raw bytes of a file, gunzipped when it is gzip-compressed (by its magic bytes).
std::vector<unsigned char> read_maybe_gzipped(const std::string& path);

}  // namespace cnn
