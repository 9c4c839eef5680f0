/* geometry.c - frames of an mbe_geometry and their fingerprints. */
#include <stdlib.h>
#include <string.h>

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

/* The fingerprint covers, in this order: positions (n_atoms*3 IEEE
 * doubles), atomic numbers (n_atoms int64), then the cell (9 doubles, rows
 * are lattice vectors) only when the frame is periodic; every value in
 * little-endian byte order.  Shards store it, so it must never change. */
uint32_t mbe_frame_fingerprint(const mbe_frame_view *v)
{
    size_t na = v->n_atoms > 0 ? (size_t)v->n_atoms : 0;
    uint32_t crc = mbe_crc32_le(0, v->positions, na * 3, 8);
    crc = mbe_crc32_le(crc, v->atomic_numbers, na, 8);
    if (v->cell)
        crc = mbe_crc32_le(crc, v->cell, 9, 8);
    return crc;
}
