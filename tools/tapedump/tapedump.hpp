// tapedump: look at a saved tape (tape_file.hpp). A thin command-line wrapper
// over the library's inspection APIs (dump, summary, dump_dot, dump_json,
// profiles, find_nonfinite, check_instructions, diff_tapes).
//
// run_tapedump is the whole tool as a function, so that a program with custom
// ops can be its own tapedump: register the ops, then call it from main().
//
//   int main(int argc, char** argv) {
//     register_my_ops();
//     return tg::tools::run_tapedump({argv + 1, argv + argc}, std::cout, std::cerr);
//   }
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace tg::tools {

// Returns the exit status: 0 done (and nothing found), 1 a problem was found
// (a failed gradient check, a non-finite value, tapes that differ) or the file
// could not be loaded, 2 bad usage.
int run_tapedump(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

extern const char* const kTapedumpUsage;

}  // namespace tg::tools
