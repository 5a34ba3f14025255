// The convolution layers the benchmarks time: issue 3's anchor layers (L1, L2,
// R1-R6), the ResNet example's (N1-N8, examples/cnn/resnet_model.hpp, width
// 32, batch 128) and three depthwise 3x3 layers (D1-D3: groups = channels). Plain data, so that bench_passes compiles against the kernels
// of any commit (scripts/compare-kernels.sh).
#pragma once

#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

namespace tgbench {

struct ConvLayer {
  const char* name;
  std::int64_t N, C, H, W, K, k, stride, pad;
  std::int64_t groups = 1;
  std::int64_t channels_per_group() const { return C / groups; }
};

inline const ConvLayer kAnchorLayers[] = {
    {"L1", 64, 1, 28, 28, 32, 5, 1, 2},    {"L2", 64, 32, 14, 14, 64, 5, 1, 2},  {"R1", 8, 64, 56, 56, 64, 3, 1, 1},
    {"R2", 8, 128, 28, 28, 128, 3, 1, 1},  {"R3", 8, 256, 14, 14, 256, 3, 1, 1}, {"R4", 8, 256, 56, 56, 64, 1, 1, 0},
    {"R5", 8, 64, 56, 56, 256, 1, 1, 0},   {"R6", 8, 3, 224, 224, 64, 7, 2, 3},
};
inline const ConvLayer kResnetLayers[] = {
    {"N1", 128, 1, 28, 28, 32, 3, 1, 1},   {"N2", 128, 32, 28, 28, 32, 3, 1, 1},  {"N3", 128, 32, 28, 28, 64, 3, 2, 1},
    {"N4", 128, 64, 14, 14, 64, 3, 1, 1},  {"N5", 128, 32, 28, 28, 64, 1, 2, 0},  {"N6", 128, 64, 14, 14, 128, 3, 2, 1},
    {"N7", 128, 128, 7, 7, 128, 3, 1, 1},  {"N8", 128, 64, 14, 14, 128, 1, 2, 0},
};

inline const ConvLayer kDepthwiseLayers[] = {
    {"D1", 8, 32, 56, 56, 32, 3, 1, 1, 32}, {"D2", 8, 64, 28, 28, 64, 3, 1, 1, 64}, {"D3", 8, 128, 14, 14, 128, 3, 1, 1, 128},
};

// The layers `only` selects: every anchor layer when empty, "resnet" or
// "depthwise" that set, else the one named.
inline std::vector<ConvLayer> selected_layers(const std::string& only) {
  if (only.empty()) return {std::begin(kAnchorLayers), std::end(kAnchorLayers)};
  if (only == "resnet") return {std::begin(kResnetLayers), std::end(kResnetLayers)};
  if (only == "depthwise") return {std::begin(kDepthwiseLayers), std::end(kDepthwiseLayers)};
  std::vector<ConvLayer> out;
  auto named = [&](const auto& set) {
    for (const ConvLayer& L : set)
      if (only == L.name) out.push_back(L);
  };
  named(kAnchorLayers);
  named(kResnetLayers);
  named(kDepthwiseLayers);
  return out;
}

}  // namespace tgbench
