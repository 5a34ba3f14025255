// The built-in ops' registry rows, all at once. Rows are otherwise added the
// first time an op is used; a loaded tape file finds its ops by name
// (tape_file.hpp), so every row must exist first. tapegrad.hpp calls this at
// start-up; call it yourself only when including the op headers one by one.
#pragma once

namespace tg {

void register_builtin_ops();  // float and double; safe to call again, and from several threads

}  // namespace tg
