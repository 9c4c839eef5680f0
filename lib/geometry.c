/* geometry.c - frames of an mbe_geometry and their fingerprints. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "mbe_internal.h"

void mbe_geometry_frame(const mbe_geometry *g, size_t k, mbe_frame_view *v)
{
    size_t na = (size_t)g->n_atoms;
    v->index = g->index ? g->index[k] : (int64_t)k;
    v->n_atoms = g->n_atoms;
    v->atomic_numbers = g->atomic_numbers + k * na;
    v->positions = g->positions + k * na * 3;
    v->cell = g->periodic && g->cells ? g->cells + k * 9 : NULL;
}

void mbe_geometry_free(mbe_geometry *g)
{
    if (!g)
        return;
    free(g->index);
    free(g->positions);
    free(g->atomic_numbers);
    free(g->masses);
    free(g->cells);
    memset(g, 0, sizeof *g);
}

/* crc32 over n 8-byte values in little-endian order.  On little-endian
 * hosts (x86_64, aarch64) that is the memory as it stands; elsewhere each
 * value is reversed first, so fingerprints agree between machines. */
static uLong crc_le64(uLong crc, const void *p, size_t n)
{
    if (!n)
        return crc; /* crc32_z(crc, NULL, 0) would restart the crc */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return mbe_crc32((uint32_t)crc, p, n * 8);
#else
    const unsigned char *b = p;
    unsigned char buf[512];
    while (n) {
        size_t m = n < sizeof buf / 8 ? n : sizeof buf / 8;
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < 8; j++)
                buf[8 * i + j] = b[8 * i + 7 - j];
        crc = mbe_crc32((uint32_t)crc, buf, m * 8);
        b += m * 8;
        n -= m;
    }
    return crc;
#endif
}

/* The fingerprint covers, in this order: positions (n_atoms*3 IEEE
 * doubles), atomic numbers (n_atoms int64), then the cell (9 doubles, rows
 * are lattice vectors) only when the frame is periodic; every value in
 * little-endian byte order.  Shards store it, so it must never change. */
uint32_t mbe_frame_fingerprint(const mbe_frame_view *v)
{
    size_t na = v->n_atoms > 0 ? (size_t)v->n_atoms : 0;
    uLong crc = crc32_z(0L, Z_NULL, 0);
    crc = crc_le64(crc, v->positions, na * 3);
    crc = crc_le64(crc, v->atomic_numbers, na);
    if (v->cell)
        crc = crc_le64(crc, v->cell, 9);
    return (uint32_t)crc;
}
