#include "fashion_mnist.hpp"

#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace cnn {
namespace {

[[noreturn]] void data_error(const std::string& path, const std::string& what) {
  tg::fail("fashion_mnist", fmt::format("{}: {}", path, what));
}

// <dir>/<name>, or <dir>/<name>.gz when only that exists.
std::string find_file(const std::string& dir, const std::string& name) {
  namespace fs = std::filesystem;
  for (const std::string& candidate : {dir + "/" + name, dir + "/" + name + ".gz"})
    if (fs::exists(candidate)) return candidate;
  data_error(dir + "/" + name + "[.gz]",
             "not found expected the Fashion-MNIST IDX files there; hint: apt-get install dataset-fashion-mnist, or "
             "pass --data DIR");
}

std::uint32_t big_endian(const std::vector<unsigned char>& b, std::size_t at) {
  return (std::uint32_t(b[at]) << 24) | (std::uint32_t(b[at + 1]) << 16) | (std::uint32_t(b[at + 2]) << 8) | b[at + 3];
}

// Checks the IDX header (magic 0x0000 08 <rank>, then rank sizes) and the length; returns the sizes.
std::vector<std::uint32_t> idx_header(const std::vector<unsigned char>& bytes, unsigned rank, const std::string& path) {
  const std::size_t header = 4 + 4 * rank;
  if (bytes.size() < header)
    data_error(path, fmt::format("only {} bytes expected an IDX header of {} bytes (truncated?)", bytes.size(), header));
  if (bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] != rank)
    data_error(path, fmt::format("magic bytes {:02x} {:02x} {:02x} {:02x} expected 00 00 08 {:02x} (unsigned-byte IDX of rank {}); "
                                 "hint: the file is corrupt or not an IDX file",
                                 bytes[0], bytes[1], bytes[2], bytes[3], rank, rank));
  std::vector<std::uint32_t> dims;
  std::size_t count = 1;
  for (unsigned d = 0; d < rank; ++d) {
    dims.push_back(big_endian(bytes, 4 + 4 * d));
    count *= dims.back();
  }
  if (bytes.size() != header + count)
    data_error(path, fmt::format("{} bytes expected {} for dimensions [{}]{}", bytes.size(), header + count,
                                 fmt::join(dims, ","), bytes.size() < header + count ? " (truncated)" : ""));
  return dims;
}

}  // namespace

std::vector<unsigned char> read_maybe_gzipped(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) data_error(path, "cannot be opened expected a readable file; hint: check the permissions");
  std::vector<unsigned char> raw(static_cast<std::size_t>(std::filesystem::file_size(path)));
  if (!in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size())))
    data_error(path, fmt::format("could not read its {} bytes expected a readable file", raw.size()));
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;  // not gzip
  // The gzip trailer holds the uncompressed size (mod 2^32): reserving it keeps the
  // peak at compressed + uncompressed bytes instead of a doubling vector's 3x.
  const std::size_t n = raw.size();
  const std::size_t expected_size = n < 18 ? 0
                                           : std::size_t{raw[n - 4]} | std::size_t{raw[n - 3]} << 8 |
                                                 std::size_t{raw[n - 2]} << 16 | std::size_t{raw[n - 1]} << 24;
  std::vector<unsigned char> out;
  out.reserve(std::min<std::size_t>(expected_size, std::size_t{1} << 30));
  z_stream z{};
  if (inflateInit2(&z, 15 + 16) != Z_OK) data_error(path, "zlib could not start expected a gzip stream");
  z.next_in = raw.data();
  z.avail_in = static_cast<uInt>(raw.size());
  unsigned char chunk[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = chunk;
    z.avail_out = sizeof(chunk);
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      data_error(path, fmt::format("gzip data is corrupt or truncated (zlib error {}) expected a complete gzip file; "
                                   "hint: reinstall dataset-fashion-mnist",
                                   rc));
    }
    out.insert(out.end(), chunk, chunk + (sizeof(chunk) - z.avail_out));
    if (rc != Z_STREAM_END && z.avail_in == 0 && z.avail_out != 0) {
      inflateEnd(&z);
      data_error(path, "gzip stream ends early (truncated) expected a complete gzip file; hint: reinstall dataset-fashion-mnist");
    }
  }
  inflateEnd(&z);
  return out;
}

Dataset load_fashion_mnist(const std::string& dir, const std::string& split) {
  const std::string image_path = find_file(dir, split + "-images-idx3-ubyte");
  const std::string label_path = find_file(dir, split + "-labels-idx1-ubyte");
  auto image_bytes = read_maybe_gzipped(image_path);
  const auto label_bytes = read_maybe_gzipped(label_path);
  const auto idims = idx_header(image_bytes, 3, image_path);
  const auto ldims = idx_header(label_bytes, 1, label_path);
  if (idims[1] != 28 || idims[2] != 28)
    data_error(image_path, fmt::format("images are {}x{} expected 28x28", idims[1], idims[2]));
  if (idims[0] != ldims[0])
    data_error(label_path, fmt::format("{} labels for {} images in {} expected one label per image", ldims[0], idims[0], image_path));
  const std::int64_t n = idims[0];
  Dataset d;
  // Reuse the decompressed buffer in place (no second copy of 47 MB of pixels).
  image_bytes.erase(image_bytes.begin(), image_bytes.begin() + 16);
  image_bytes.resize(static_cast<std::size_t>(n * kPixels));
  d.pixels = std::move(image_bytes);
  d.labels.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const unsigned v = label_bytes[8 + static_cast<std::size_t>(i)];
    if (v > 9) data_error(label_path, fmt::format("label {} at index {} expected a class in [0, 10)", v, i));
    d.labels[static_cast<std::size_t>(i)] = v;
  }
  return d;
}

}  // namespace cnn
