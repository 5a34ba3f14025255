// The Fashion-MNIST loader on small files written here: raw and gzipped IDX
// files load to the right bytes and labels, and every broken file (missing,
// not IDX, wrong image size, too few labels, a label out of range, truncated
// raw or gzip data, corrupt gzip data) is a clear tg::Error naming the file.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../fashion_mnist.hpp"
#include "../training.hpp"

namespace fs = std::filesystem;
using Bytes = std::vector<unsigned char>;

namespace {

void put32(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
}

// An unsigned-byte IDX file: magic, sizes, then the data.
Bytes idx(const std::vector<std::uint32_t>& dims, const Bytes& data) {
  Bytes b{0, 0, 0x08, static_cast<unsigned char>(dims.size())};
  for (auto d : dims) put32(b, d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

Bytes gzip(const Bytes& raw) {
  Bytes out(compressBound(static_cast<uLong>(raw.size())) + 64);
  z_stream z{};
  deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // 16: gzip wrapper
  z.next_in = const_cast<unsigned char*>(raw.data());
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// A fresh directory holding one split ("t10k") of n images, pixel i of image k = (k * 7 + i) % 256.
struct DataDir {
  fs::path dir;
  Bytes images, labels;
  explicit DataDir(const std::string& name, std::uint32_t n = 3) : dir(fs::temp_directory_path() / ("tapegrad_fmnist_" + name)) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    Bytes pixels, classes;
    for (std::uint32_t k = 0; k < n; ++k) {
      for (std::uint32_t i = 0; i < 784; ++i) pixels.push_back(static_cast<unsigned char>((k * 7 + i) % 256));
      classes.push_back(static_cast<unsigned char>(k % 10));
    }
    images = idx({n, 28, 28}, pixels);
    labels = idx({n}, classes);
  }
  ~DataDir() { fs::remove_all(dir); }
  void write(const std::string& file, const Bytes& b) const {
    std::ofstream(dir / file, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  }
  void write_both(bool gzipped) const {
    write(gzipped ? "t10k-images-idx3-ubyte.gz" : "t10k-images-idx3-ubyte", gzipped ? gzip(images) : images);
    write(gzipped ? "t10k-labels-idx1-ubyte.gz" : "t10k-labels-idx1-ubyte", gzipped ? gzip(labels) : labels);
  }
  cnn::Dataset load() const { return cnn::load_fashion_mnist(dir.string(), "t10k"); }
};

}  // namespace

TEST_CASE("fashion_mnist: raw and gzipped IDX files load the same bytes and labels") {
  for (bool gzipped : {false, true}) {
    CAPTURE(gzipped);
    DataDir d(gzipped ? "gz" : "raw");
    d.write_both(gzipped);
    const cnn::Dataset data = d.load();
    REQUIRE(data.size() == 3);
    CHECK(data.labels == std::vector<std::int64_t>{0, 1, 2});
    CHECK(data.pixels.size() == 3 * 784);
    CHECK(data.pixels[784 + 5] == 12);        // image 1, pixel 5: 7 + 5
    CHECK(data.pixels[2 * 784 + 300] == 58);  // (14 + 300) % 256
    // A gathered batch: image 2 then 0, standardised with mean 0.5 and std 0.25.
    cnn::Dataset s = data;
    s.mean = 0.5f, s.stddev = 0.25f;
    cnn::A x = cnn::A::uninitialized({2, 1, 28, 28}), y = cnn::A::uninitialized({2});
    cnn::gather_batch(s, {2, 0}, 0, 2, x, y);
    CHECK(y.data()[0] == 2);
    CHECK(y.data()[1] == 0);
    CHECK(x.data()[300] == doctest::Approx((58 / 255.0 - 0.5) / 0.25));
    CHECK(x.data()[784 + 1] == doctest::Approx((1 / 255.0 - 0.5) / 0.25));
  }
}

TEST_CASE("fashion_mnist: a missing file names the path and the package") {
  DataDir d("missing");
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("t10k-images-idx3-ubyte[.gz]: not found"), tg::Error);
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("apt-get install dataset-fashion-mnist"), tg::Error);
  d.write("t10k-images-idx3-ubyte", d.images);
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("t10k-labels-idx1-ubyte[.gz]: not found"), tg::Error);
}

TEST_CASE("fashion_mnist: corrupt and truncated files are clear errors, never read past their end") {
  DataDir d("broken");
  d.write_both(false);
  auto with_images = [&](const Bytes& b, const char* expected) {
    CAPTURE(expected);
    d.write("t10k-images-idx3-ubyte", b);
    CHECK_THROWS_WITH_AS(d.load(), doctest::Contains(expected), tg::Error);
    CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("t10k-images-idx3-ubyte"), tg::Error);
  };
  with_images(Bytes{0, 0, 8}, "only 3 bytes expected an IDX header of 16 bytes");
  Bytes not_idx = d.images;
  not_idx[2] = 0x0d;  // float IDX, or anything else
  with_images(not_idx, "magic bytes 00 00 0d 03 expected 00 00 08 03");
  with_images(Bytes(d.images.begin(), d.images.end() - 100), "(truncated)");
  Bytes longer = d.images;
  longer.push_back(0);
  with_images(longer, "bytes expected 2368 for dimensions [3,28,28]");
  with_images(idx({3, 32, 32}, Bytes(3 * 1024, 0)), "images are 32x32 expected 28x28");
  d.write("t10k-images-idx3-ubyte", d.images);

  d.write("t10k-labels-idx1-ubyte", idx({2}, Bytes{1, 2}));
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("2 labels for 3 images"), tg::Error);
  d.write("t10k-labels-idx1-ubyte", idx({3}, Bytes{1, 12, 2}));
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("label 12 at index 1 expected a class in [0, 10)"), tg::Error);
  d.write("t10k-labels-idx1-ubyte", d.labels);

  // gzip: cut short, and with its deflate data damaged
  fs::remove(d.dir / "t10k-images-idx3-ubyte");
  const Bytes gz = gzip(d.images);
  d.write("t10k-images-idx3-ubyte.gz", Bytes(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(gz.size() / 2)));
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("t10k-images-idx3-ubyte.gz: gzip"), tg::Error);
  Bytes damaged = gz;
  for (std::size_t i = 12; i < 40 && i < damaged.size(); ++i) damaged[i] ^= 0x5a;
  d.write("t10k-images-idx3-ubyte.gz", damaged);
  CHECK_THROWS_WITH_AS(d.load(), doctest::Contains("t10k-images-idx3-ubyte.gz: gzip"), tg::Error);
}
