# Included into an earlier commit's configure by scripts/compare-kernels.sh
# (CMAKE_PROJECT_INCLUDE): once that tree's targets exist, builds this tree's
# tools/bench_passes.cpp (from TG_COMPARE_TOOLS) against its kernels library.
function(tg_compare_bench_passes)
  add_executable(bench_passes_compare ${TG_COMPARE_TOOLS}/bench_passes.cpp)
  target_include_directories(bench_passes_compare PRIVATE ${TG_COMPARE_TOOLS})
  target_link_libraries(bench_passes_compare PRIVATE tapegrad_kernels)
endfunction()
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL tg_compare_bench_passes)
