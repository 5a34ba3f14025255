#include "tapegrad/autodiff/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace tg::checkpoint_impl {

namespace {

using Json = nlohmann::json;

// safetensors caps the header at 100 MB: a length beyond it is damage, not a model.
constexpr std::uint64_t kMaxHeader = 100'000'000;

const char* dtype_name(int element_bytes) { return element_bytes == 4 ? "F32" : "F64"; }

// The parsed file: each entry's dtype, shape and byte range in the data section.
struct Entry {
  std::string dtype;
  Shape shape;
  std::uint64_t begin = 0, end = 0;
};
struct File {
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> metadata;
  std::string_view data;
};

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  fail("load_safetensors", fmt::format("{} in {} expected a safetensors file; hint: was it written by "
                                       "tg::save_safetensors or safetensors.save_file, and written completely?",
                                       what, path));
}

std::uint64_t dtype_bytes(const std::string& dtype) {
  static const std::map<std::string, std::uint64_t> sizes{{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                                          {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

File parse(std::string_view bytes, const std::string& path) {
  if (bytes.size() < 8) bad_file(path, fmt::format("{} bytes, fewer than the 8-byte header length,", bytes.size()));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  if (n > kMaxHeader || n > bytes.size() - 8)
    bad_file(path, fmt::format("a header of {} bytes in a file of {} bytes", n, bytes.size()));
  Json header;
  try {
    header = Json::parse(bytes.substr(8, n));
  } catch (const Json::exception& e) {
    bad_file(path, fmt::format("a header that is not JSON ({})", e.what()));
  }
  if (!header.is_object()) bad_file(path, "a header that is not a JSON object");
  File f;
  f.data = bytes.substr(8 + n);
  for (const auto& item : header.items()) {
    const std::string& name = item.key();  // not a structured binding: clang's OpenMP mode cannot capture one
    const Json& value = item.value();
    if (name == "__metadata__") {
      if (!value.is_object()) bad_file(path, "__metadata__ that is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) bad_file(path, fmt::format("metadata {} that is not a string", k));
        f.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const auto fail_entry = [&](const std::string& what) { bad_file(path, fmt::format("entry {}: {}", name, what)); };
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      fail_entry("not an object with dtype, shape and data_offsets");
    const Json &dtype = value["dtype"], &shape = value["shape"], &offsets = value["data_offsets"];
    if (!dtype.is_string() || dtype_bytes(dtype.get<std::string>()) == 0) fail_entry("an unknown dtype");
    if (!shape.is_array() || shape.size() > 16) fail_entry("a shape that is not a list of at most 16 sizes");
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      fail_entry("data_offsets that are not two non-negative integers");
    Entry e;
    e.dtype = dtype.get<std::string>();
    std::uint64_t elements = 1;
    std::vector<std::int64_t> dims;
    for (const Json& d : shape) {
      if (!d.is_number_unsigned()) fail_entry("a shape with a size that is not a non-negative integer");
      const std::uint64_t v = d.get<std::uint64_t>();
      if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max()) || (v != 0 && elements > f.data.size() / v + 1))
        fail_entry(fmt::format("a shape larger than the file's {} data bytes", f.data.size()));
      elements *= v;
      dims.push_back(static_cast<std::int64_t>(v));
    }
    e.shape = Shape(dims);
    e.begin = offsets[0].get<std::uint64_t>();
    e.end = offsets[1].get<std::uint64_t>();
    if (e.begin > e.end || e.end > f.data.size())
      fail_entry(fmt::format("data_offsets [{}, {}] outside the {} data bytes", e.begin, e.end, f.data.size()));
    if (e.end - e.begin != elements * dtype_bytes(e.dtype))
      fail_entry(fmt::format("data_offsets [{}, {}] hold {} bytes but {} {} elements take {}", e.begin, e.end,
                             e.end - e.begin, elements, e.dtype, elements * dtype_bytes(e.dtype)));
    f.entries.emplace(name, std::move(e));
  }
  return f;
}

}  // namespace

std::string serialize(std::span<const Source> arrays, const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  std::uint64_t offset = 0;
  for (const Source& a : arrays) {
    if (a.name.empty() || a.name == "__metadata__" || header.contains(a.name))
      fail("save_safetensors", fmt::format("name \"{}\" is empty, reserved or taken twice expected one unique name per "
                                           "array; hint: the tree's field paths name the leaves",
                                           a.name));
    const std::uint64_t bytes = std::uint64_t(a.shape.size()) * std::uint64_t(a.element_bytes);
    std::vector<std::int64_t> dims(a.shape.dims().begin(), a.shape.dims().end());
    header[a.name] = {{"dtype", dtype_name(a.element_bytes)}, {"shape", dims}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as safetensors writes it
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  out += text;
  out.reserve(out.size() + offset);
  for (const Source& a : arrays)
    out.append(static_cast<const char*>(a.data), static_cast<std::size_t>(a.shape.size()) * std::size_t(a.element_bytes));
  return out;
}

void write_atomically(const std::string& path, std::string_view bytes) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("save_safetensors", fmt::format("cannot create {} ({}) expected a writable directory; the previous checkpoint is untouched",
                                            temporary, std::strerror(errno)));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      std::remove(temporary.c_str());
      fail("save_safetensors", fmt::format("writing {} failed after {} of {} bytes ({}); the previous checkpoint is untouched",
                                           temporary, done, bytes.size(), why));
    }
    done += static_cast<std::size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(temporary.c_str());
    fail("save_safetensors", fmt::format("cannot move {} over {} ({}); the previous checkpoint is untouched", temporary, path, why));
  }
}

std::map<std::string, std::string> read_into(std::string_view bytes, std::span<const Destination> arrays,
                                             std::span<const std::string> integer_keys, const std::string& path) {
  const File f = parse(bytes, path);
  std::vector<std::string> problems;
  std::set<std::string> wanted;
  for (const Destination& d : arrays) {
    wanted.insert(d.name);
    const auto it = f.entries.find(d.name);
    if (it == f.entries.end()) {
      problems.push_back(fmt::format("{} is missing", d.name));
      continue;
    }
    const Entry& e = it->second;
    if (e.dtype != dtype_name(d.element_bytes))
      problems.push_back(fmt::format("{} is {} but the model holds {}", d.name, e.dtype, dtype_name(d.element_bytes)));
    else if (!(e.shape == d.shape))
      problems.push_back(fmt::format("{} has shape {} but the model's is {}", d.name, to_string(e.shape), to_string(d.shape)));
  }
  for (const auto& [name, e] : f.entries)
    if (!wanted.count(name)) problems.push_back(fmt::format("{} ({} {}) is not in the model", name, e.dtype, to_string(e.shape)));
  for (const std::string& key : integer_keys) {
    const auto it = f.metadata.find(key);
    const bool ok = it != f.metadata.end() && !it->second.empty() && it->second.size() <= 18 &&
                    it->second.find_first_not_of("0123456789") == std::string::npos;
    if (!ok) problems.push_back(fmt::format("metadata {} is missing or not a step count (an optimizer saved with the model?)", key));
  }
  if (!problems.empty())
    fail("load_safetensors", fmt::format("{} does not match the model: {} expected the names, shapes and dtypes the "
                                         "model has; hint: load into the model (and optimizers) it was saved from",
                                         path, fmt::join(problems, "; ")));
  for (const Destination& d : arrays) {
    const Entry& e = f.entries.at(d.name);
    std::memcpy(d.dest, f.data.data() + e.begin, static_cast<std::size_t>(e.end - e.begin));
  }
  return f.metadata;
}

std::string describe(std::string_view bytes) {
  const File f = parse(bytes, "the file");
  std::string out;
  for (const auto& [name, e] : f.entries) out += fmt::format("{} {} {}\n", name, e.dtype, to_string(e.shape));
  return out;
}

}  // namespace tg::checkpoint_impl
