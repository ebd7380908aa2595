/* The avx512f build of mfdcomp/_xxh3_pages.h (x86-64 with GCC or clang; elsewhere an empty unit). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
#define XXH3_PAGES mfdcomp_xxh3_pages_avx512
#include "_xxh3_pages.h"
#else
typedef int mfdcomp_xxh3_avx512_unused; /* ISO C wants a unit to declare something */
#endif
