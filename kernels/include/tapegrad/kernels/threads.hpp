// How many threads tapegrad's kernels use: OpenMP loops (convolution blocks,
// pooling planes, filters) and OpenBLAS GEMMs alike. Defaults to OpenMP's
// default (OMP_NUM_THREADS, else one per core).
#pragma once

namespace tg {

void set_num_threads(int threads);  // threads >= 1
int num_threads();

}  // namespace tg
