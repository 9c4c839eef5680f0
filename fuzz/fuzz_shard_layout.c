/* fuzz_shard_layout.c - structure-aware libFuzzer target for shard
 * validation (lib/shard_read.c: mbe_shard_open, mbe_shard_verify,
 * mbe_shard_read_forces).
 *
 * fuzz_shard mutates the bytes of real shards, and most of its inputs end
 * in libhdf5's own parser (fuzz/README: libhdf5 1.10 crashes on some of
 * them).  This target instead reads its input as a recipe and writes a
 * well-formed HDF5 file with the HDF5 API: every root attribute and every
 * dataset of the shard layout present or missing, of the right or a wrong
 * type class, rank, shape, size, layout (contiguous, chunked, compact) or
 * dataspace (simple, scalar, null), holding values from the input, with
 * the crcs computed right or taken from the input.  So every check of our
 * reader is reached with files HDF5 itself reads safely. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "mbe.h"

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_shard_layout: check failed: %s (line "  \
                    "%d)\n", #c, __LINE__);                               \
            abort();                                                      \
        }                                                                 \
    } while (0)

/* ------------------------------------------------------- input reader */

typedef struct in {
    const uint8_t *p;
    size_t n;
} in;

static unsigned u8(in *s)
{
    if (!s->n)
        return 0;
    s->n--;
    return *s->p++;
}

static uint64_t u64(in *s)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u8(s);
    return v;
}

static double f64(in *s)
{
    uint64_t v = u64(s);
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}

/* ---------------------------------------------------- writing helpers */

enum { K_OK, K_MISSING, K_WRONG_CLASS, K_SCALAR_OR_RANK, K_SHAPE, K_CHUNKED,
       K_COMPACT, K_NULL_SPACE, K_GROUP, K_N };

/* Mostly right: a variant only when the byte says so (1 in 4). */
static int kind(in *s)
{
    unsigned b = u8(s);
    return b < 192 ? K_OK : (int)(b % K_N);
}

static hid_t vlen_str(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static void attr_i64(hid_t f, const char *name, int64_t v, in *s)
{
    int k = kind(s);
    if (k == K_MISSING)
        return;
    hsize_t two[1] = {2};
    hid_t sp = k == K_SHAPE ? H5Screate_simple(1, two, NULL)
               : k == K_NULL_SPACE ? H5Screate(H5S_NULL)
                                   : H5Screate(H5S_SCALAR);
    int64_t buf[2] = {v, v};
    hid_t ft = H5T_STD_I64LE, mt = H5T_NATIVE_INT64;
    double d[2] = {(double)v, (double)v};
    const void *data = buf;
    if (k == K_WRONG_CLASS) {
        ft = H5T_IEEE_F64LE;
        mt = H5T_NATIVE_DOUBLE;
        data = d;
    } else if (k == K_CHUNKED) {
        ft = H5T_STD_U8LE; /* a small integer type: converted, may clip */
    }
    hid_t a = H5Acreate2(f, name, ft, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        if (k != K_NULL_SPACE)
            H5Awrite(a, mt, data);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

static void attr_str(hid_t f, const char *name, const char *v, in *s)
{
    int k = kind(s);
    unsigned b = u8(s);
    if (k == K_MISSING)
        return;
    if (k == K_WRONG_CLASS) {
        attr_i64(f, name, 7, s);
        return;
    }
    hsize_t two[1] = {2};
    hid_t sp = k == K_SHAPE ? H5Screate_simple(1, two, NULL)
               : k == K_NULL_SPACE ? H5Screate(H5S_NULL)
                                   : H5Screate(H5S_SCALAR);
    hid_t t;
    if (k == K_CHUNKED || k == K_COMPACT) {
        /* fixed-length, NUL-padded or space-padded, as other writers do */
        t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(v) + (k == K_COMPACT ? 5 : 1));
        H5Tset_strpad(t, k == K_COMPACT ? H5T_STR_SPACEPAD
                                        : H5T_STR_NULLPAD);
    } else if (k == K_OK && b & 1) {
        /* as format 2 writes them: exactly long enough, NUL-terminated */
        t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(v) + 1);
        H5Tset_cset(t, H5T_CSET_UTF8);
        H5Tset_strpad(t, H5T_STR_NULLTERM);
    } else {
        t = vlen_str(); /* format 1, and h5py */
    }
    hid_t a = H5Acreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        if (k != K_NULL_SPACE) {
            const char *vv[2] = {v, v};
            char fixed[2][600];
            if (H5Tis_variable_str(t) > 0) {
                H5Awrite(a, t, vv);
            } else {
                size_t sz = H5Tget_size(t);
                memset(fixed, 0, sizeof fixed);
                for (int i = 0; i < 2; i++)
                    memcpy(fixed[i], v, strlen(v));
                char *flat = calloc(2, sz);
                if (flat) {
                    memcpy(flat, fixed[0], sz < 600 ? sz : 600);
                    memcpy(flat + sz, fixed[1], sz < 600 ? sz : 600);
                    H5Awrite(a, t, flat);
                    free(flat);
                }
            }
        }
        H5Aclose(a);
    }
    H5Tclose(t);
    H5Sclose(sp);
}

/* A dataset of rank (0..3) and dims; buf holds the right number of
 * elements of mtype for the intended shape (or more). */
static void dataset(hid_t f, const char *name, hid_t ftype, hid_t mtype,
                    int rank, const hsize_t *dims, const void *buf, in *s)
{
    int k = kind(s);
    if (k == K_MISSING)
        return;
    if (k == K_GROUP) {
        hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g >= 0)
            H5Gclose(g);
        return;
    }
    hsize_t d[4] = {0, 0, 0, 0};
    int r = rank;
    if (rank)
        memcpy(d, dims, (size_t)rank * sizeof *d);
    if (k == K_SCALAR_OR_RANK)
        r = rank == 0 ? 1 : (u8(s) & 1 ? rank - 1 : rank + 1);
    if (r > 0 && d[0] == 0 && k == K_SCALAR_OR_RANK)
        d[0] = 1;
    for (int i = rank; i < r; i++)
        d[i] = 1;
    if (k == K_SHAPE && r > 0) {
        unsigned b = u8(s);
        int i = (int)(b % (unsigned)r);
        d[i] = b & 0x80 ? d[i] + 1 : (d[i] ? d[i] - 1 : 2);
    }
    /* Never more elements than buf holds. */
    hsize_t want = 1, have = 1;
    for (int i = 0; i < rank; i++)
        have *= dims[i];
    for (int i = 0; i < r; i++)
        want *= d[i];
    hid_t sp = k == K_NULL_SPACE ? H5Screate(H5S_NULL)
               : r == 0 ? H5Screate(H5S_SCALAR)
                        : H5Screate_simple(r, d, NULL);
    hid_t ft = ftype;
    if (k == K_WRONG_CLASS) {
        H5T_class_t c = H5Tget_class(ftype);
        ft = c == H5T_FLOAT ? H5T_STD_I64LE : H5T_IEEE_F64LE;
        mtype = -1;
    }
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (k == K_CHUNKED && r > 0 && want > 0) {
        hsize_t c[4] = {1, 1, 1, 1};
        for (int i = 1; i < r; i++)
            c[i] = d[i];
        H5Pset_chunk(dcpl, r, c);
    } else if (k == K_COMPACT) {
        H5Pset_layout(dcpl, H5D_COMPACT);
    } else {
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    }
    hid_t ds = H5Dcreate2(f, name, ft, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (ds >= 0) {
        if (mtype >= 0 && k != K_NULL_SPACE && want <= have && want > 0)
            H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        H5Dclose(ds);
    }
    H5Pclose(dcpl);
    H5Sclose(sp);
}

/* ------------------------------------------------------------ the file */

#define MAX_N 6
#define MAX_NA 3

static uint32_t crc_bytes(uint32_t c, const void *p, size_t n)
{
    return (uint32_t)crc32_z(c, p, n);
}

static const char *const meta_names[] = {
    "master_file", "key", "level", "selection", "calculator",
    "calc_settings", "tool_version", "host", "slurm_job_id",
    "slurm_array_job_id", "slurm_array_task_id", "shard_id", "start_time"};

static void build_file(const char *path, in *s)
{
    unsigned b = u8(s);
    size_t n = b % (MAX_N + 1);
    static const int64_t natoms[] = {1, 2, 3, 0, -1, (int64_t)1 << 31,
                                     ((int64_t)1 << 31) + 1, 2};
    int64_t na_attr = natoms[(b >> 3) & 7];
    int64_t na = na_attr >= 1 && na_attr <= MAX_NA ? na_attr : 1;
    int64_t n_frames = (int64_t)(u8(s) % 16);
    if (u8(s) >= 240)
        n_frames = (int64_t)u64(s);

    int64_t frames[MAX_N], status[MAX_N];
    double energy[MAX_N], forces[MAX_N * MAX_NA * 3];
    uint32_t crc[MAX_N], geom[MAX_N];
    unsigned how = u8(s); /* which values are "right" */
    int64_t at = 0;
    for (size_t k = 0; k < n; k++) {
        at += 1 + (int64_t)(u8(s) % 3);
        frames[k] = how & 1 ? (int64_t)u64(s) : at - 1;
        unsigned st = u8(s);
        status[k] = how & 2 ? (int64_t)(int8_t)st : (int64_t)(st % 4);
        energy[k] = how & 4 ? f64(s) : -0.5 * (double)k;
        for (int64_t i = 0; i < na * 3; i++)
            forces[k * (size_t)na * 3 + (size_t)i] =
                how & 8 ? f64(s) : 0.01 * (double)i;
        if (status[k] != MBE_COMPLETED && !(how & 16)) {
            energy[k] = NAN;
            for (int64_t i = 0; i < na * 3; i++)
                forces[k * (size_t)na * 3 + (size_t)i] = NAN;
        }
        crc[k] = how & 32 ? (uint32_t)u64(s)
                          : mbe_result_crc(status[k], energy[k],
                                           forces + k * (size_t)na * 3, na);
        geom[k] = (uint32_t)u64(s);
    }
    uint32_t ic = crc_bytes(0, NULL, 0);
    if (n) {
        ic = crc_bytes(ic, frames, n * 8);
        ic = crc_bytes(ic, geom, n * 4);
    }
    int64_t index_crc = how & 64 ? (int64_t)u64(s) : (int64_t)ic;

    /* Format 2's superblock 2, the newest (3), or h5py's default (0),
     * which lib/shard_read.c opens in a child process first. */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    unsigned lv = u8(s);
    if (lv % 3 == 0)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18);
    else if (lv % 3 == 1)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0)
        return;
    attr_str(f, "mbe_shard_format", u8(s) < 250 ? "mbe-shard" : "mbe-shar",
             s);
    unsigned ver = u8(s);
    attr_i64(f, "mbe_shard_format_version",
             ver < 250 ? 1 + (ver & 1) : 3, s);
    attr_i64(f, "n_frames", n_frames, s);
    attr_i64(f, "n_atoms", na_attr, s);
    attr_i64(f, "index_crc32", index_crc, s);
    for (size_t i = 0; i < sizeof meta_names / sizeof *meta_names; i++) {
        char v[64];
        size_t len = u8(s) % 8;
        for (size_t j = 0; j < len; j++)
            v[j] = (char)(u8(s) % 95 + 32);
        v[len] = '\0';
        attr_str(f, meta_names[i], v, s);
    }
    hsize_t d1[1] = {n}, d3[3] = {n, (hsize_t)na, 3};
    dataset(f, "frames", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, d1, frames, s);
    dataset(f, "status", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, d1, status, s);
    dataset(f, "energy", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, d1, energy,
            s);
    dataset(f, "forces", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 3, d3, forces,
            s);
    dataset(f, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, d1, crc, s);
    dataset(f, "geometry_crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 1, d1,
            geom, s);
    char end[64] = "2026-12-01T18:00:00Z";
    hid_t et = H5Tcopy(H5T_C_S1);
    H5Tset_size(et, u8(s) < 240 ? 32 : 1 + u8(s) % 60);
    H5Tset_strpad(et, H5T_STR_NULLPAD);
    dataset(f, "end_time", et, et, 0, NULL, end, s);
    H5Tclose(et);
    signed char fin = (signed char)u8(s);
    dataset(f, "finished", H5T_STD_I8LE, H5T_NATIVE_SCHAR, 0, NULL, &fin, s);
    H5Fclose(f);
}

/* ------------------------------------------------------------ the run */

static char path[256];

static void cleanup(void)
{
    if (*path)
        unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!*path) {
        const char *dir = getenv("FUZZ_TMPDIR");
        if (!dir || !*dir)
            dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/fuzz_shard_layout.%ld.h5", dir,
                 (long)getpid());
        atexit(cleanup);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    }
    in s = {data, size};
    build_file(path, &s);
    CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0);

    mbe_shard_reader *r = NULL;
    mbe_err e = {{0}};
    if (mbe_shard_open(path, &r, &e) < 0) {
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_shard_layout: %s\n", e.msg);
        CHECK(*e.msg && r == NULL);
    } else {
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "fuzz_shard_layout: opened\n");
        const mbe_shard_meta *m = mbe_shard_reader_meta(r);
        const mbe_frames *f = mbe_shard_reader_frames(r);
        CHECK(m->n_atoms >= 1 && m->n_frames >= 0);
        for (size_t i = 0; i < sizeof meta_names / sizeof *meta_names; i++)
            CHECK(m->key && m->level && m->shard_id);
        for (size_t k = 0; k < f->n; k++) {
            CHECK(f->idx[k] >= 0 && f->idx[k] < m->n_frames);
            CHECK(k == 0 || f->idx[k] > f->idx[k - 1]);
            int64_t st = mbe_shard_reader_status(r)[k];
            CHECK(st >= 0 && st < MBE_N_STATUS);
        }
        CHECK(strlen(mbe_shard_reader_end_time(r)) <= 32);
        e.msg[0] = '\0';
        if (mbe_shard_verify(r, 64, &e) < 0)
            CHECK(*e.msg);
        if (f->n && m->n_atoms <= 4096) {
            double *buf = malloc((size_t)m->n_atoms * 3 * f->n * sizeof *buf);
            CHECK(buf);
            if (mbe_shard_read_forces(r, 0, f->n, buf, &e) < 0)
                CHECK(*e.msg);
            free(buf);
        }
        CHECK(mbe_shard_read_forces(r, f->n, 1, NULL, &e) < 0);
        mbe_shard_reader_close(r);
    }
    ssize_t open_objs = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open_objs != 0) {
        fprintf(stderr, "fuzz_shard_layout: %zd HDF5 objects left open "
                "after input (%s)\n", open_objs, e.msg);
        abort();
    }
    return 0;
}
