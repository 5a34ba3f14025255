// A small SVG line chart for training curves: one or two series over a shared
// x axis, each with its own y range, axes with min/max labels. No dependency.
#pragma once

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace cnn {

struct Series {
  std::string name, colour;
  std::vector<double> x, y;
};

inline void write_svg(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::vector<Series>& series) {
  const double W = 720, H = 420, left = 70, right = 70, top = 40, bottom = 50;
  double x0 = 1e300, x1 = -1e300;
  for (const auto& s : series)
    for (double v : s.x) x0 = std::min(x0, v), x1 = std::max(x1, v);
  if (!(x1 > x0)) x1 = x0 + 1;
  std::string body;
  body += fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#888"/>)", left, top, W - left - right,
                      H - top - bottom);
  body += fmt::format(R"(<text x="{}" y="22" font-size="16" text-anchor="middle">{}</text>)", W / 2, title);
  body += fmt::format(R"(<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>)", W / 2, H - 12, x_label);
  body += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="start">{:g}</text>)", left, H - bottom + 16, x0);
  body += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="end">{:g}</text>)", W - right, H - bottom + 16, x1);
  for (std::size_t k = 0; k < series.size(); ++k) {
    const auto& s = series[k];
    if (s.y.empty()) continue;
    double y0 = *std::min_element(s.y.begin(), s.y.end()), y1 = *std::max_element(s.y.begin(), s.y.end());
    if (!(y1 > y0)) y1 = y0 + 1;
    std::string points;
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      const double px = left + (s.x[i] - x0) / (x1 - x0) * (W - left - right);
      const double py = H - bottom - (s.y[i] - y0) / (y1 - y0) * (H - top - bottom);
      points += fmt::format("{:.1f},{:.1f} ", px, py);
    }
    body += fmt::format(R"(<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>)", s.colour, points);
    // this series' y range, on its own side
    const bool on_left = k == 0;
    const double tx = on_left ? left - 6 : W - right + 6;
    const char* anchor = on_left ? "end" : "start";
    body += fmt::format(R"(<text x="{}" y="{}" font-size="11" fill="{}" text-anchor="{}">{:.3g}</text>)", tx, top + 10, s.colour,
                        anchor, y1);
    body += fmt::format(R"(<text x="{}" y="{}" font-size="11" fill="{}" text-anchor="{}">{:.3g}</text>)", tx, H - bottom, s.colour,
                        anchor, y0);
    body += fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="{}" text-anchor="{}">{}</text>)", tx, (top + H - bottom) / 2,
                        s.colour, anchor, s.name);
  }
  std::ofstream out(path);
  out << fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">)", W, H)
      << R"(<rect width="100%" height="100%" fill="white"/>)" << body << "</svg>\n";
}

}  // namespace cnn
