// How many threads tapegrad's kernels use: OpenMP loops (convolution blocks,
// pooling planes, filters) and OpenBLAS GEMMs alike.
//
// set_num_threads is process-wide: it applies to every thread of the program,
// those running and those started later (Note [Process-wide thread count]).
// Until it is called the count is OpenMP's default as the process started
// (OMP_NUM_THREADS, else one per core).
//
// That count is a ceiling. While other programs keep cores of this process's
// CPUs busy, the kernels use fewer threads (Note [Threads on a busy machine]);
// set_dynamic_threads(false), or TG_DYNAMIC_THREADS=0 in the environment,
// keeps them at the ceiling.
#pragma once

namespace tg {

void set_num_threads(int threads);  // threads >= 1
int max_threads();                  // the ceiling: set_num_threads's count, else OpenMP's default
int num_threads();                  // the count the kernels use now (<= max_threads())

void set_dynamic_threads(bool on);  // default: on, unless TG_DYNAMIC_THREADS=0
bool dynamic_threads();

namespace kernels {
// The rule of Note [Threads on a busy machine]: the team for a ceiling of
// `ceiling` threads on `cores` CPUs when other programs keep `other_load` cores
// busy (in cores, from the last sample).
int threads_for_load(int ceiling, int cores, double other_load);
// The other programs' load measured over the last sample (cores; 0 before the
// first one or where /proc/stat cannot be read). For the bench tools.
double other_load();
}  // namespace kernels

}  // namespace tg
