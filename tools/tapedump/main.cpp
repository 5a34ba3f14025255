// tapedump: see a saved tape, profile it, and find what broke (tapedump.hpp; `tapedump --help`).
#include <iostream>

#include "tapedump.hpp"

int main(int argc, char** argv) { return tg::tools::run_tapedump({argv + 1, argv + argc}, std::cout, std::cerr); }
