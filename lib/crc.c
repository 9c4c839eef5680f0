/* crc.c - the crc32 of every checksum of mbe-shard (mbe-shard(5)).
 *
 * zlib's crc32 (reflected CRC-32/IEEE 802.3, the gzip and PNG one), as
 * Python's zlib.crc32 computes it, so shards and fingerprints agree with
 * h5py readers.  Computed by ISA-L's crc32_gzip_refl, which folds with
 * PCLMULQDQ (VPCLMULQDQ on AVX-512) where the processor has it and falls
 * back to tables where not: about 5x zlib 1.2.13's speed on the bench
 * machine, where zlib's crc32 was 40% of mbe-merge's time.
 *
 * Both take and return the crc of the bytes so far (0 for none) and invert
 * before and after internally, so the one replaces the other call for call
 * (tests/unit/test_crc.c compares them on random buffers of many lengths,
 * alignments and seeds). */
#include <isa-l/crc.h>

#include "mbe_internal.h"

uint32_t mbe_crc32(uint32_t crc, const void *buf, size_t len)
{
    /* Unlike zlib's crc32(crc, NULL, 0), never a restart. */
    if (!len)
        return crc;
    return crc32_gzip_refl(crc, buf, len);
}

#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
void mbe_to_le(void *dst, const void *src, size_t n, size_t sz)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < sz; j++)
            d[sz * i + j] = s[sz * i + sz - 1 - j];
}
#endif

uint32_t mbe_crc32_le(uint32_t crc, const void *p, size_t n, size_t sz)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return mbe_crc32(crc, p, n * sz);
#else
    const unsigned char *b = p;
    unsigned char buf[512];
    while (n) {
        size_t m = n < sizeof buf / sz ? n : sizeof buf / sz;
        mbe_to_le(buf, b, m, sz);
        crc = mbe_crc32(crc, buf, m * sz);
        b += m * sz;
        n -= m;
    }
    return crc;
#endif
}
