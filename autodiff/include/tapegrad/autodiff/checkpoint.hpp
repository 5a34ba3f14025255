// Checkpoints in safetensors, the format PyTorch, Hugging Face and others read:
// an 8-byte little-endian header length, a JSON header of
// name -> {dtype, shape, data_offsets} (and "__metadata__"), then the raw data.
//
//   tg::save_safetensors("ckpt.safetensors", net);         // names from the tree: "blocks.2.w1"
//   tg::save_safetensors("ckpt.safetensors", net, opt);    // with the optimizer's state ("optim.exp_avg.blocks.2.w1")
//   tg::load_safetensors("ckpt.safetensors", net, opt);    // names, shapes and dtypes must match
//
// Saving writes a temporary file beside the target, flushes it to disk and
// renames it over the old one, so a crash mid-save leaves the previous
// checkpoint whole. Loading checks every entry before it changes anything and
// reports every mismatch in one tg::Error; a truncated or hostile file is an
// error, never a crash or an allocation beyond the file's own size. The JSON
// is read and written by nlohmann-json (Debian's nlohmann-json3-dev).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/autodiff/tree.hpp"

namespace tg {

namespace checkpoint_impl {

// One array to write: its bytes are `data`, elements of `element_bytes` (4: F32, 8: F64).
struct Source {
  std::string name;
  int element_bytes;
  Shape shape;
  const void* data;
};
// One array to read into: `dest` holds shape.size() elements of element_bytes.
struct Destination {
  std::string name;
  int element_bytes;
  Shape shape;
  void* dest;
};

// The whole file. Throws tg::Error for duplicate or empty names.
std::string serialize(std::span<const Source> arrays, const std::map<std::string, std::string>& metadata);
// Writes bytes to path through a temporary file renamed over it.
void write_atomically(const std::string& path, std::string_view bytes);
// Checks the file and every destination against it, and that each of
// integer_keys is in the metadata as a non-negative integer (all mismatches in
// one error naming `path`), then copies the data; returns the metadata.
std::map<std::string, std::string> read_into(std::string_view bytes, std::span<const Destination> arrays,
                                             std::span<const std::string> integer_keys, const std::string& path);
// The entries of a file (name, dtype, shape) as text, for errors and tools.
std::string describe(std::string_view bytes);

// Appends the tree's leaves as Sources (const tree) or Destinations, named by their paths.
template <class T, class Entry, class Tree>
void add_tree(std::vector<Entry>& out, Tree& t, const std::string& prefix) {
  tree::Path path(prefix);
  tree::for_each_leaf_with_path(t, path, [&](auto& a, const std::string& name) {
    out.push_back({name.empty() ? std::string("array") : name, int(sizeof(T)), a.shape(), a.data()});
  });
}
inline std::string optimizer_prefix(std::size_t k) { return k == 0 ? "optim" : "optim" + std::to_string(k); }

}  // namespace checkpoint_impl

// Saves the tree's leaves, and each optimizer's state (tg::optim) after them.
template <class Tree, class... Optimizers>
void save_safetensors(const std::string& path, const Tree& params, Optimizers&... optimizers) {
  using T = tree::element_type<Tree>;
  std::vector<checkpoint_impl::Source> arrays;
  checkpoint_impl::add_tree<T>(arrays, params, "");
  std::map<std::string, std::string> metadata{{"format", "tapegrad"}};
  std::size_t k = 0;
  [[maybe_unused]] auto add_optimizer = [&](auto& opt) {
    const std::string prefix = checkpoint_impl::optimizer_prefix(k++);
    opt.for_each_state([&](const std::string& name, Array<T>& a) {
      arrays.push_back({prefix + "." + name, int(sizeof(T)), a.shape(), a.data()});
    });
    metadata[prefix + ".step"] = std::to_string(opt.step_count());
  };
  (add_optimizer(optimizers), ...);
  checkpoint_impl::write_atomically(path, checkpoint_impl::serialize(arrays, metadata));
}

std::string read_file_bytes(const std::string& path);  // tape_file.cpp

// Loads into the tree (and optimizers) in place; nothing changes unless every
// name, shape and dtype matches.
template <class Tree, class... Optimizers>
void load_safetensors(const std::string& path, Tree& params, Optimizers&... optimizers) {
  using T = tree::element_type<Tree>;
  std::vector<checkpoint_impl::Destination> arrays;
  checkpoint_impl::add_tree<T>(arrays, params, "");
  std::size_t k = 0;
  [[maybe_unused]] auto add_optimizer = [&](auto& opt) {
    const std::string prefix = checkpoint_impl::optimizer_prefix(k++);
    opt.for_each_state([&](const std::string& name, Array<T>& a) {
      arrays.push_back({prefix + "." + name, int(sizeof(T)), a.shape(), a.data()});
    });
  };
  (add_optimizer(optimizers), ...);
  std::vector<std::string> steps;
  for (std::size_t j = 0; j < sizeof...(Optimizers); ++j) steps.push_back(checkpoint_impl::optimizer_prefix(j) + ".step");
  const std::string bytes = read_file_bytes(path);
  const auto metadata = checkpoint_impl::read_into(bytes, arrays, steps, path);
  k = 0;
  [[maybe_unused]] auto set_step = [&](auto& opt) {
    const std::string key = checkpoint_impl::optimizer_prefix(k++) + ".step";
    opt.step_count() = std::stoll(metadata.at(key));  // checked by read_into
  };
  (set_step(optimizers), ...);
}

}  // namespace tg
