/* The baseline build of mfdcomp/_xxh3_pages.h: whatever the compiler targets (SSE2 on x86-64). */
#define XXH3_PAGES mfdcomp_xxh3_pages_default
#include "_xxh3_pages.h"
