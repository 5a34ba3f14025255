# Misuse at compile time is one readable static_assert line: compiles each
# file of tests/misuse, expects it to fail with its message, and counts the
# compiler's error lines (the static_assert's, not pages of overload candidates).
#   cmake -DCXX=... -DINCLUDES="a;b" -DSOURCE_DIR=tests/misuse -P misuse.cmake
set(cases
    "array_parameter.cpp|the function cannot be called with the Tracked forms of the arguments"
    "returns_array.cpp|the function must return a tg::Tracked<T>"
    "bare_stride.cpp|a per-dimension attribute is a list"
    "not_a_tree.cpp|each argument must be a tree of Arrays"
    "jit_array_parameter.cpp|the function cannot be called with the Tracked forms of the arguments")
set(include_flags)
foreach(dir ${INCLUDES})
  list(APPEND include_flags -I${dir})
endforeach()
foreach(case ${cases})
  string(REPLACE "|" ";" parts "${case}")
  list(GET parts 0 file)
  list(GET parts 1 expected)
  execute_process(COMMAND ${CXX} -std=c++20 -fsyntax-only ${include_flags} ${SOURCE_DIR}/${file}
                  RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(status EQUAL 0)
    message(FATAL_ERROR "${file} compiled, but it misuses the API")
  endif()
  string(FIND "${out}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${file}: the compiler's output lacks \"${expected}\":\n${out}")
  endif()
  string(REGEX MATCHALL "error:" errors "${out}")
  list(LENGTH errors n_errors)
  if(n_errors GREATER 3)
    message(FATAL_ERROR "${file}: ${n_errors} errors, expected the static_assert alone:\n${out}")
  endif()
  message(STATUS "${file}: ${n_errors} error(s), with \"${expected}\"")
endforeach()
