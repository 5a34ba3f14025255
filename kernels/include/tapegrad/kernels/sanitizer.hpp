// TG_ADDRESS_SANITIZER is 1 when AddressSanitizer instruments this translation
// unit: GCC defines __SANITIZE_ADDRESS__, clang answers __has_feature (clang 16
// defines no macro). The scratch stack and the array cache then take every
// block from the sanitizer's allocator, so that it checks them.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define TG_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_ADDRESS_SANITIZER 1
#endif
#endif
#ifndef TG_ADDRESS_SANITIZER
#define TG_ADDRESS_SANITIZER 0
#endif
