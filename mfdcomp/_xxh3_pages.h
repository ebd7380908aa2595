/* XXH3-128 of pages into their digest-table slots, built once per instruction set.
 *
 * xxHash picks its vector code (SSE2, AVX2, AVX-512) when it is compiled, from
 * the target's macros. Each mfdcomp/_xxh3_*.c file sets its target with a
 * pragma, names its build with XXH3_PAGES and includes this file; _speedups.c
 * picks one build at load from the CPU (AVX-512 hashes a cache-hot 4 KiB page
 * about twice as fast as AVX2, and AVX2 twice as fast as SSE2).
 */
#ifndef XXH3_PAGES
#error "define XXH3_PAGES (the build's function name) before including _xxh3_pages.h"
#endif
#include <stddef.h>
#include <string.h>
#include <sys/types.h>

/* xxHash (BSD 2-Clause, mfdcomp/_vendor/xxhash-LICENSE), inlined into this build alone. */
#define XXH_INLINE_ALL
#include "_vendor/xxhash.h"

#define XXH3_PAGES_DIGEST 16

/* Page k is read at base + offsets[k] (packed == 0) or at base + k * page_size (packed != 0: a
 * staging buffer); its digest goes to the slot of the page at offsets[k], canonical (big-endian). */
void
XXH3_PAGES(const unsigned char *base, const ssize_t *offsets, ssize_t count, ssize_t page_size, int packed,
           unsigned char *table)
{
    for (ssize_t k = 0; k < count; k++) {
        const unsigned char *page = base + (packed ? k * page_size : offsets[k]);
        /* The next page on its way while this one is hashed: the hardware's prefetchers stop at a page's end,
         * and a codec's pages are hashed before it reads them, from memory (512 MiB of zstd-1 over 2 channels:
         * the sender's CPU 1.039 -> 0.993 s and 1.032 -> 0.998 s, 8 pairs each; nocomp 0.195 -> 0.185 s). */
        if (k + 1 < count) {
            const unsigned char *next = base + (packed ? (k + 1) * page_size : offsets[k + 1]);
            for (ssize_t line = 0; line < page_size; line += 64)
                __builtin_prefetch(next + line);
        }
        XXH128_canonical_t canonical;
        XXH128_canonicalFromHash(&canonical, XXH3_128bits(page, (size_t)page_size));
        memcpy(table + offsets[k] / page_size * XXH3_PAGES_DIGEST, canonical.digest, XXH3_PAGES_DIGEST);
    }
}
