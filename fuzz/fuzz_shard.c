/* fuzz_shard.c - libFuzzer target for shard validation
 * (lib/shard_read.c: mbe_shard_open_member, mbe_shard_verify,
 * mbe_shard_read_forces) on mutated HDF5 files, bundles (shard format 4)
 * included.
 *
 * The input is written to a temporary file opened by path, as mbe-merge
 * opens a shard.  libhdf5 is not instrumented: coverage guides only our
 * code; it checksums all the metadata of a format 2 shard before decoding
 * it, so any crash is a finding (fuzz/README).  After every input no HDF5 object may be left open: a
 * leaked handle would also make the next open of the same file see a stale
 * one. */
#define _GNU_SOURCE
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "mbe.h"

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_shard: check failed: %s (line %d)\n",   \
                    #c, __LINE__);                                        \
            abort();                                                      \
        }                                                                 \
    } while (0)

static char path[256];

static void cleanup(void)
{
    if (*path)
        unlink(path);
}

/* A real file (tmpfs when /dev/shm is there): HDF5 1.10 does not open a
 * memfd through /proc/self/fd.  Rewritten in place for every input. */
static void put_input(const uint8_t *data, size_t size)
{
    if (!*path) {
        const char *dir = getenv("FUZZ_TMPDIR");
        if (!dir || !*dir)
            dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/fuzz_shard.%ld.h5", dir,
                 (long)getpid());
        atexit(cleanup);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            perror("write");
            abort();
        }
        done += (size_t)w;
    }
    close(fd);
}

static void check_msg(const mbe_err *e)
{
    size_t n = strnlen(e->msg, sizeof e->msg);
    CHECK(n > 0 && n < sizeof e->msg);
}

/* Files libhdf5 cannot check (superblock below version 2: shard format
 * 1, files of h5py) are opened by lib/shard_read.c in a child process
 * (lib/isolate.c), where libFuzzer's own crash handling would still run;
 * they are left to tests/reliability/test_damaged_shards.py, which hands
 * them to the programs. */
static int untrusted(const uint8_t *data, size_t size)
{
    static const uint8_t sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a,
                                   '\n'};
    for (size_t at = 0; at + 9 <= size; at = at ? 2 * at : 512)
        if (!memcmp(data + at, sig, 8))
            return data[at + 8] < 2;
    return 0;
}

/* One member (the shard itself unless a bundle); its count into
 * *members when it opens. */
static void check_member(size_t member, size_t *members, mbe_err *e)
{
    mbe_shard_reader *r = NULL;
    if (mbe_shard_open_member(path, member, &r, e) < 0) {
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_shard: %s\n", e->msg);
        check_msg(e);
        CHECK(r == NULL);
    } else {
        *members = mbe_shard_reader_members(r);
        CHECK(*members >= 1 && member < *members);
        const mbe_shard_meta *m = mbe_shard_reader_meta(r);
        const mbe_frames *f = mbe_shard_reader_frames(r);
        CHECK(m->n_atoms >= 1 && m->n_frames >= 0);
        CHECK(mbe_shard_reader_end_time(r) != NULL);
        CHECK(m->key && m->level && m->shard_id && m->calc_settings);
        for (size_t k = 0; k < f->n; k++) {
            CHECK(f->idx[k] >= 0 && f->idx[k] < m->n_frames);
            CHECK(k == 0 || f->idx[k] > f->idx[k - 1]);
            int64_t st = mbe_shard_reader_status(r)[k];
            CHECK(st >= 0 && st < MBE_N_STATUS);
        }
        /* A small buffer, so that several blocks are read. */
        e->msg[0] = '\0';
        if (mbe_shard_verify(r, 256, e) < 0)
            check_msg(e);
        /* The first and the last frame's forces, if they are small. */
        if (f->n && m->n_atoms <= 4096) {
            double *buf = malloc((size_t)m->n_atoms * 3 * sizeof *buf);
            CHECK(buf);
            if (mbe_shard_read_forces(r, 0, 1, buf, e) < 0)
                check_msg(e);
            if (mbe_shard_read_forces(r, f->n - 1, 1, buf, e) < 0)
                check_msg(e);
            free(buf);
        }
        /* Out of range is refused, not read. */
        CHECK(mbe_shard_read_forces(r, f->n, 1, NULL, e) < 0);
        mbe_shard_reader_close(r);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (untrusted(data, size))
        return -1; /* not added to the corpus */
    put_input(data, size);
    mbe_err e = {{0}};
    size_t members = 1;
    /* A bundle's first and last member: the others are read alike. */
    check_member(0, &members, &e);
    if (members > 1)
        check_member(members - 1, &members, &e);
    ssize_t open_objs = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_objs != 0) {
        fprintf(stderr, "fuzz_shard: %zd HDF5 objects left open after "
                "input (%s)\n", open_objs, e.msg);
        abort();
    }
    return 0;
}
