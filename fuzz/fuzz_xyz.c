/* fuzz_xyz.c - libFuzzer target for the XYZ / extended-XYZ reader
 * (lib/xyz.c, mbe_xyz_read).
 *
 * mbe_xyz_read takes a path, so the input goes into a memfd that is read
 * back through /proc/self/fd/N: no disk I/O, nothing left behind.  On
 * success the geometry must keep what mbe.h promises: at least one frame,
 * the same atoms in every frame, finite positions, atomic numbers 1..118
 * with their masses, index 0..n-1, a finite cell exactly when periodic. */
#define _GNU_SOURCE
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mbe.h"

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_xyz: check failed: %s (line %d)\n",     \
                    #c, __LINE__);                                        \
            abort();                                                      \
        }                                                                 \
    } while (0)

static int fd = -1;
static char path[64];

static void put_input(const uint8_t *data, size_t size)
{
    if (fd < 0) {
        fd = memfd_create("fuzz_xyz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) < 0) {
        perror("ftruncate");
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
        if (w <= 0) {
            perror("pwrite");
            abort();
        }
        done += (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    put_input(data, size);
    mbe_geometry g;
    mbe_err e = {{0}};
    if (mbe_xyz_read(path, &g, &e) < 0) {
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_xyz: %s\n", e.msg);
        size_t n = strnlen(e.msg, sizeof e.msg);
        CHECK(n > 0 && n < sizeof e.msg);
        CHECK(!strchr(e.msg, '\n'));
        /* Freed on failure: the struct is left empty. */
        CHECK(g.n == 0 && !g.positions && !g.cells);
        return 0;
    }
    CHECK(g.n >= 1 && g.n_atoms >= 1);
    CHECK(g.index && g.positions && g.atomic_numbers && g.masses);
    CHECK(!!g.periodic == !!g.cells);
    size_t na = (size_t)g.n_atoms;
    for (size_t k = 0; k < g.n; k++) {
        CHECK(g.index[k] == (int64_t)k);
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        CHECK(v.n_atoms == g.n_atoms && v.index == (int64_t)k);
        for (size_t i = 0; i < na; i++) {
            int64_t z = g.atomic_numbers[k * na + i];
            CHECK(z >= 1 && z <= 118);
            CHECK(isfinite(g.masses[k * na + i]) && g.masses[k * na + i] > 0);
            for (int c = 0; c < 3; c++)
                CHECK(isfinite(g.positions[(k * na + i) * 3 + c]));
        }
        if (g.periodic)
            for (int c = 0; c < 9; c++)
                CHECK(isfinite(g.cells[9 * k + c]));
        (void)mbe_frame_fingerprint(&v);
    }
    mbe_geometry_free(&g);
    return 0;
}
