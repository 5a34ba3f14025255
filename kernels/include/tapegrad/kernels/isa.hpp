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

}  // namespace tg::kernels
