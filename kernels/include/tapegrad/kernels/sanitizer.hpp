// Which sanitizer instruments this translation unit: GCC defines
// __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, clang answers __has_feature
// (clang 16 defines neither macro).
//   TG_ADDRESS_SANITIZER: the scratch stack and the array cache take every
//     block from the sanitizer's allocator, so that it checks them.
#pragma once

#if defined(__has_feature)
#define TG_HAS_FEATURE(x) __has_feature(x)
#else
#define TG_HAS_FEATURE(x) 0
#endif

#if defined(__SANITIZE_ADDRESS__) || TG_HAS_FEATURE(address_sanitizer)
#define TG_ADDRESS_SANITIZER 1
#else
#define TG_ADDRESS_SANITIZER 0
#endif
