// Training curves as a picture, drawn by gnuplot (Debian's gnuplot-nox) from
// the CSV files the run writes: the batch loss (a moving average) on the left
// axis, the test accuracy per epoch on the right, both over the whole run,
// with ticks, axis labels and a key. Without gnuplot the CSV files remain and
// a line says how to get the picture.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

#include <fmt/format.h>

namespace cnn {

// steps_csv: epoch_progress,batch_loss,smoothed_loss; epochs_csv: epoch,train_loss,test_accuracy.
// Returns whether `svg` was written.
inline bool plot_curves(const std::string& steps_csv, const std::string& epochs_csv, const std::string& svg,
                        const std::string& title) {
  const std::string script = svg.substr(0, svg.size() - 4) + ".gp";
  std::ofstream gp(script);
  gp << "set terminal svg size 800,450 dynamic font 'sans,12' background rgb 'white'\n"
     << fmt::format("set output '{}'\n", svg) << "set datafile separator ','\n"
     << fmt::format("set title '{}'\n", title) << "set key top center horizontal\n"
     << "set xlabel 'epoch'\nset ylabel 'training loss (moving average)' textcolor rgb '#1f77b4'\n"
     << "set y2label 'test accuracy (%)' textcolor rgb '#d62728'\nset ytics nomirror\nset y2tics\n"
     << "set grid xtics ytics lc rgb '#dddddd'\nset xrange [0:*]\nset yrange [0:*]\nset y2range [0:100]\nset offsets 0, 0, graph 0.05, 0\n"
     << fmt::format("plot '{}' using 1:3 skip 1 with lines lw 2 lc rgb '#1f77b4' title 'training loss', \\\n", steps_csv)
     << fmt::format("     '{}' using 1:($3*100) skip 1 axes x1y2 with linespoints lw 2 pt 7 lc rgb '#d62728' title 'test accuracy'\n",
                    epochs_csv);
  gp.close();
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    fmt::print("gnuplot is not installed (Debian: gnuplot-nox): the curves stay in {} and {}; draw them with gnuplot {}\n",
               steps_csv, epochs_csv, script);
    return false;
  }
  return std::system(fmt::format("gnuplot '{}'", script).c_str()) == 0;
}

}  // namespace cnn
