// How many threads tapegrad's kernels use: OpenMP loops (convolution blocks,
// pooling planes, filters) and OpenBLAS GEMMs alike.
//
// set_num_threads is process-wide: it applies to every thread of the program,
// those running and those started later (Note [Process-wide thread count]).
// Until it is called the count is OpenMP's default on the calling thread
// (OMP_NUM_THREADS, else one per core).
#pragma once

namespace tg {

void set_num_threads(int threads);  // threads >= 1
int num_threads();

}  // namespace tg
