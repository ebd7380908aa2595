/* The avx2 build of mfdcomp/_xxh3_pages.h (x86-64 with GCC or clang; elsewhere an empty unit). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2")
#define XXH3_PAGES mfdcomp_xxh3_pages_avx2
#include "_xxh3_pages.h"
#else
typedef int mfdcomp_xxh3_avx2_unused; /* ISO C wants a unit to declare something */
#endif
