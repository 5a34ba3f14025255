// The instruction-set level the kernels run at, chosen at run time.
//
// Note [Instruction-set levels]: one build runs on every x86-64. Each kernel
// with vector code has a portable C++ version and versions compiled for wider
// levels with target attributes (AVX2 + FMA; AVX-512 F + BW + VL + DQ), and
// asks isa() which to run: the widest level this CPU has, capped by the
// environment variable TG_ISA (portable, avx2 or avx512) for tests and for
// comparing levels on one machine; TAPEGRAD_PORTABLE_KERNELS=1 is TG_ISA=portable.
// The level is read once per process. Rejected: Google Highway's dynamic
// dispatch (a new dependency whose portable vectors hide the register tiles
// the micro-kernels are sized by), and -march=native builds (one binary per
// machine kind).
#pragma once

#include <cstdint>
#include <string>

namespace tg::kernels {

enum class Isa : std::uint8_t { portable, avx2, avx512 };

// The widest level this CPU supports.
Isa detected_isa();
// The level in use: detected_isa(), capped by TG_ISA. Throws tg::Error for a TG_ISA value it does not know.
Isa isa();
// The level the kernels run at: isa(), or, when TG_ISA holds a value isa()
// rejects, detected_isa() after one warning on stderr. Never throws: kernels
// ask inside OpenMP regions and static initialisers, where an exception ends the program.
Isa kernel_isa() noexcept;
// The level for a CPU that has `detected`, under the cap TG_ISA = `cap` (null or empty: none).
Isa capped_isa(Isa detected, const char* cap);
const char* to_string(Isa level);

// Note [Paired tiles]: the GEMM micro-kernel's AVX-512 tile holds 6 zmm sums,
// one FMA each a step. An FMA takes 4 cycles, so 6 independent sums keep one
// 512-bit FMA unit busy (AMD Zen 4) but two (Intel server cores) at most 75%.
// Where the CPU starts two 512-bit FMAs a cycle, the implicit GEMM and
// Winograd passes run two column blocks in one 6 x 2 tile (12 sums, the same
// operations in the same order: the results are the same bit for bit). The
// units are counted by timing 6 and 12 independent FMA chains once per process
// (about 0.3 ms): a model table by CPUID would miss the Xeons with one unit.
// Rejected: the 6 x 2 tile everywhere (no faster on Zen 4, whose one unit the
// 6 sums already fill: 0.99-1.00x in the passes, so its code path stays).

// 512-bit FMAs this CPU starts a cycle, measured (1 or 2); 0 where the kernels run below avx512.
int fma512_units() noexcept;
// Whether the micro-kernels pair column blocks: fma512_units() == 2, unless TG_PAIRED_TILES=0 or 1
// overrides it (1 pairs them at avx512 on any CPU, for tests and comparisons).
bool paired_tiles() noexcept;
// Sets the choice for the rest of the process (false always below avx512) and returns the one before: for
// benchmarks and tests that compare both tiles in one run. Not while kernels run.
bool set_paired_tiles(bool paired) noexcept;
// The choice for kernels at `level` on a CPU with `units` 512-bit FMA units under TG_PAIRED_TILES = `force`
// (null or empty: none). Throws tg::Error for a value other than 0 or 1.
bool paired_tiles_for(Isa level, int units, const char* force);
// The line the tools print: the level in use and the tile, e.g.
// "avx512 (TG_ISA caps it), 6x2 tiles (2 512-bit FMA units; TG_PAIRED_TILES overrides)".
std::string kernels_line();

}  // namespace tg::kernels
