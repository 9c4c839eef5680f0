/* test_shard.c - shard files: round trip, resume, validation, damage
 * detection and survival of SIGKILL at any moment. */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "h5compat.h"
#include "mbe.h"

/* ------------------------------------------------------------ fixtures */

static char dir[256];

static void rm_files(const char *d)
{
    DIR *dp = opendir(d);
    if (!dp)
        return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(dp)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", d, de->d_name);
            unlink(p);
        }
    closedir(dp);
}

static void setup(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/test_shard.XXXXXX", t && *t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    rm_files(dir);
    rmdir(dir);
}

static char *in_dir(const char *name)
{
    static char bufs[16][512];
    static int next;
    char *b = bufs[next++ % 16];
    snprintf(b, 512, "%s/%s", dir, name);
    return b;
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

#define CALC_SETTINGS "accuracy=1\netemp=300\nunit=eV/" "\xe2\x84\xab"

static mbe_shard_meta meta_of(int64_t n_frames, int64_t n_atoms)
{
    mbe_shard_meta m = {0};
    m.master_file = "/data/master.h5";
    m.key = "training/md/urea_300K";
    m.n_frames = n_frames;
    m.n_atoms = n_atoms;
    m.level = "gfn2-xtb";
    m.selection = "0-99";
    m.calculator = "gfn2-xtb";
    m.calc_settings = CALC_SETTINGS;
    m.tool_version = "0.1.0";
    m.host = "node17";
    m.slurm_job_id = "1234";
    m.slurm_array_job_id = "1200";
    m.slurm_array_task_id = "3";
    m.shard_id = "0123456789abcdef0123456789abcdef";
    m.start_time = "2024-05-01T12:00:00Z";
    return m;
}

/* Frames first, first+step, ... */
static mbe_frames frames_of(size_t n, int64_t first, int64_t step)
{
    mbe_frames f = {0};
    mbe_err e;
    for (size_t k = 0; k < n; k++)
        ck_assert_int_eq(mbe_frames_push(&f, first + (int64_t)k * step, &e),
                         0);
    return f;
}

static uint32_t geom_of(int64_t idx)
{
    return (uint32_t)(idx * 2654435761u + 7);
}

static uint32_t *geoms_of(const mbe_frames *f)
{
    uint32_t *g = malloc((f->n ? f->n : 1) * sizeof *g);
    for (size_t k = 0; k < f->n; k++)
        g[k] = geom_of(f->idx[k]);
    return g;
}

static double energy_of(int64_t idx)
{
    return -3.5 - 0.001 * (double)idx;
}

static void forces_of(int64_t idx, int64_t n_atoms, double *f)
{
    for (int64_t i = 0; i < n_atoms * 3; i++)
        f[i] = sin(0.37 * (double)idx + 0.11 * (double)i) * (1 + idx % 5);
}

static int64_t status_of(int64_t idx)
{
    if (idx % 7 == 5)
        return MBE_FAILED;
    if (idx % 11 == 4)
        return MBE_SCF_NOT_CONVERGED;
    return MBE_COMPLETED;
}

/* Put frame k with the values above for its index. */
static int put_std(mbe_shard *s, size_t k, int durable, mbe_err *e)
{
    int64_t idx = mbe_shard_frames(s)->idx[k];
    int64_t na = mbe_shard_meta_of(s)->n_atoms;
    double *f = malloc(na * 3 * sizeof *f);
    forces_of(idx, na, f);
    int rc = mbe_shard_put(s, k, status_of(idx), energy_of(idx), f, durable,
                           e);
    free(f);
    return rc;
}

static mbe_shard *create_std(const char *path, size_t n, int64_t n_atoms)
{
    mbe_shard_meta m = meta_of(1000, n_atoms);
    mbe_frames f = frames_of(n, 1, 3);
    uint32_t *g = geoms_of(&f);
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_create(path, &m, &f, g, &s, &e) == 0, "%s",
                  e.msg);
    free(g);
    mbe_frames_free(&f);
    return s;
}

/* Checks frame k of an open shard: a frame whose status is not UNDEFINED
 * must hold exactly the values put_std stores. */
static void check_frame(mbe_shard_reader *r, size_t k, int must_be_done)
{
    const mbe_frames *f = mbe_shard_reader_frames(r);
    int64_t idx = f->idx[k], na = mbe_shard_reader_meta(r)->n_atoms;
    int64_t st = mbe_shard_reader_status(r)[k];
    double en = mbe_shard_reader_energy(r)[k];
    double *got = malloc(na * 3 * sizeof *got), *want;
    mbe_err e;
    ck_assert_int_eq(mbe_shard_read_forces(r, k, 1, got, &e), 0);
    if (must_be_done)
        ck_assert_int_eq(st, status_of(idx));
    if (st == MBE_UNDEFINED) {
        ck_assert(isnan(en));
        for (int64_t i = 0; i < na * 3; i++)
            ck_assert(isnan(got[i]));
    } else {
        ck_assert_int_eq(st, status_of(idx));
        want = malloc(na * 3 * sizeof *want);
        forces_of(idx, na, want);
        if (st == MBE_COMPLETED) {
            ck_assert(en == energy_of(idx));
            ck_assert(!memcmp(got, want, na * 3 * sizeof *got));
        } else {
            ck_assert(isnan(en));
            for (int64_t i = 0; i < na * 3; i++)
                ck_assert(isnan(got[i]));
        }
        free(want);
    }
    free(got);
}

static mbe_shard_reader *open_ok(const char *path)
{
    mbe_shard_reader *r = NULL;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_open(path, &r, &e) == 0, "%s", e.msg);
    return r;
}

static void verify_ok(mbe_shard_reader *r, size_t buf)
{
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_verify(r, buf, &e) == 0, "%s", e.msg);
}

/* Runs python -c code path; its exit status. */
static int python(const char *code, const char *path)
{
    const char *py = getenv("PYTHON");
    if (!py || !*py)
        py = "/usr/bin/python3";
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execl(py, py, "-c", code, path, (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Independent of the library: every frame's crc32 recomputed with
 * Python's zlib over the documented byte layout. */
static const char *PY_CRC =
    "import sys, zlib, h5py, numpy as np\n"
    "f = h5py.File(sys.argv[1], 'r')\n"
    "F = f['forces'][()]\n"
    "st, en, crc = f['status'][()], f['energy'][()], f['crc32'][()]\n"
    "for k in range(len(st)):\n"
    "    b = (np.asarray(st[k], '<i8').tobytes() +\n"
    "         np.asarray(en[k], '<f8').tobytes() +\n"
    "         np.ascontiguousarray(F[k], '<f8').tobytes())\n"
    "    assert zlib.crc32(b) == crc[k], k\n";

/* Flip bits of one byte of a dataset's raw data, found like a disk error
 * would find it: at its offset in the file. */
static off_t raw_offset(const char *path, const char *ds_name, hsize_t off)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    hid_t ds = H5Dopen2(f, ds_name, H5P_DEFAULT);
    ck_assert_int_ge(ds, 0);
    haddr_t at = H5Dget_offset(ds);
    ck_assert(at != HADDR_UNDEF);
    ck_assert_uint_lt(off, H5Dget_storage_size(ds));
    H5Dclose(ds);
    H5Fclose(f);
    return (off_t)(at + off);
}

static void flip(const char *path, const char *ds_name, hsize_t off,
                 unsigned char mask)
{
    off_t at = raw_offset(path, ds_name, off);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char b;
    ck_assert_int_eq(pread(fd, &b, 1, at), 1);
    b ^= mask;
    ck_assert_int_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

/* Overwrite n bytes of a dataset's raw data (little-endian host). */
static void poke(const char *path, const char *ds_name, hsize_t off,
                 const void *bytes, size_t n)
{
    off_t at = raw_offset(path, ds_name, off);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bytes, n, at), (ssize_t)n);
    close(fd);
}

/* A finished shard of 6 frames, 4 atoms; frames 1, 4, 7, ... */
static const char *finished_std(void)
{
    const char *p = in_dir("s.h5");
    mbe_shard *s = create_std(p, 6, 4);
    mbe_err e = {""};
    for (size_t k = 0; k < 6; k++)
        ck_assert_msg(put_std(s, k, k % 2, &e) == 0, "%s", e.msg);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    return p;
}

/* ------------------------------------------------------- small things */

START_TEST(test_new_id_and_part_path)
{
    char a[33], b[33];
    mbe_err e;
    ck_assert_int_eq(mbe_shard_new_id(a, &e), 0);
    ck_assert_int_eq(mbe_shard_new_id(b, &e), 0);
    ck_assert_uint_eq(strlen(a), 32);
    ck_assert_uint_eq(strspn(a, "0123456789abcdef"), 32);
    ck_assert_str_ne(a, b);
    char *p = mbe_shard_part_path("dir/x.h5");
    ck_assert_str_eq(p, "dir/x.h5.part");
    free(p);
    mbe_shard_meta_free(NULL);
    mbe_shard_meta m = {0};
    m.host = strdup("h");
    mbe_shard_meta_free(&m);
    ck_assert_ptr_null(m.host);
}
END_TEST

START_TEST(test_result_crc_layout)
{
    double f[6] = {1, -2, 3.5, 0, 1e-300, -0.0};
    unsigned char b[8 + 8 + 48];
    int64_t st = 2;
    double en = -1.25;
    memcpy(b, &st, 8); /* little-endian host */
    memcpy(b + 8, &en, 8);
    memcpy(b + 16, f, 48);
    uLong want = crc32(crc32(0, NULL, 0), b, sizeof b);
    ck_assert_uint_eq(mbe_result_crc(st, en, f, 2), (uint32_t)want);
    double nan6[6];
    for (int i = 0; i < 6; i++)
        nan6[i] = NAN;
    ck_assert_uint_eq(mbe_result_crc(1, NAN, NULL, 2),
                      mbe_result_crc(1, NAN, nan6, 2));
    ck_assert_uint_ne(mbe_result_crc(1, NAN, NULL, 2),
                      mbe_result_crc(3, NAN, NULL, 2));
}
END_TEST

/* ---------------------------------------------------------- round trip */

static void check_meta(const mbe_shard_meta *m)
{
    mbe_shard_meta w = meta_of(1000, 4);
    ck_assert_str_eq(m->master_file, w.master_file);
    ck_assert_str_eq(m->key, w.key);
    ck_assert_int_eq(m->n_frames, 1000);
    ck_assert_int_eq(m->n_atoms, 4);
    ck_assert_str_eq(m->level, w.level);
    ck_assert_str_eq(m->selection, w.selection);
    ck_assert_str_eq(m->calculator, w.calculator);
    ck_assert_str_eq(m->calc_settings, w.calc_settings);
    ck_assert_str_eq(m->tool_version, w.tool_version);
    ck_assert_str_eq(m->host, w.host);
    ck_assert_str_eq(m->slurm_job_id, w.slurm_job_id);
    ck_assert_str_eq(m->slurm_array_job_id, w.slurm_array_job_id);
    ck_assert_str_eq(m->slurm_array_task_id, w.slurm_array_task_id);
    ck_assert_str_eq(m->shard_id, w.shard_id);
    ck_assert_str_eq(m->start_time, w.start_time);
}

START_TEST(test_roundtrip)
{
    const char *p = in_dir("s.h5"), *part = in_dir("s.h5.part");
    mbe_shard *s = create_std(p, 6, 4);
    mbe_err e = {""};
    ck_assert(exists(part));
    ck_assert(!exists(p));
    check_meta(mbe_shard_meta_of(s));
    ck_assert_uint_eq(mbe_shard_frames(s)->n, 6);
    for (size_t k = 0; k < 6; k++)
        ck_assert_int_eq(mbe_shard_status(s, k), MBE_UNDEFINED);
    ck_assert_int_eq(mbe_shard_status(s, 6), -1);
    /* frames 1 4 7 10 13 16: 1, 4 (SCF), 7, 10, 13, 16; leave k=5 */
    for (size_t k = 0; k < 5; k++)
        ck_assert_msg(put_std(s, k, k % 2, &e) == 0, "%s", e.msg);
    double f[12];
    forces_of(19, 4, f);
    ck_assert_int_eq(mbe_shard_put(s, 2, MBE_FAILED, 1.0, f, 0, &e), 0);
    ck_assert_int_eq(mbe_shard_status(s, 1), MBE_SCF_NOT_CONVERGED);
    ck_assert_int_eq(mbe_shard_status(s, 2), MBE_FAILED);
    ck_assert_int_eq(mbe_shard_status(s, 5), MBE_UNDEFINED);
    ck_assert_msg(mbe_shard_sync(s, &e) == 0, "%s", e.msg);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    ck_assert(!exists(part));
    ck_assert(exists(p));

    mbe_shard_reader *r = open_ok(p);
    check_meta(mbe_shard_reader_meta(r));
    ck_assert_int_eq(mbe_shard_reader_finished(r), 1);
    const char *end = mbe_shard_reader_end_time(r);
    ck_assert_uint_eq(strlen(end), 20);
    ck_assert(end[4] == '-' && end[10] == 'T' && end[19] == 'Z');
    const mbe_frames *fr = mbe_shard_reader_frames(r);
    ck_assert_uint_eq(fr->n, 6);
    const int64_t want_st[6] = {0, 2, 3, 0, 0, 1};
    for (size_t k = 0; k < 6; k++) {
        ck_assert_int_eq(fr->idx[k], 1 + 3 * (int64_t)k);
        ck_assert_uint_eq(mbe_shard_reader_geom_crc(r)[k], geom_of(fr->idx[k]));
        ck_assert_int_eq(mbe_shard_reader_status(r)[k], want_st[k]);
        if (k != 2)
            check_frame(r, k, k < 5);
    }
    ck_assert(isnan(mbe_shard_reader_energy(r)[2]));
    verify_ok(r, 1);
    verify_ok(r, 1 << 20);
    double big[3 * 12];
    ck_assert_int_eq(mbe_shard_read_forces(r, 4, 2, big, &e), 0);
    ck_assert_int_ne(mbe_shard_read_forces(r, 5, 2, big, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "out of range"));
    mbe_shard_reader_close(r);

    ck_assert_int_eq(python(PY_CRC, p), 0);
    ck_assert_int_eq(python(
        "import sys, h5py, numpy as np\n"
        "f = h5py.File(sys.argv[1], 'r'); a = f.attrs\n"
        "assert f.id.get_create_plist().get_version()[0] == 2\n"
        "assert a['mbe_shard_format'] == b'mbe-shard'\n"
        "assert a['mbe_shard_format_version'] == 2\n"
        "assert a['n_frames'] == 1000 and a['n_atoms'] == 4\n"
        "assert a['calc_settings'].decode() == 'accuracy=1\\netemp=300\\nunit=eV/\\u212b'\n"
        "assert a['key'] == b'training/md/urea_300K'\n"
        "assert list(f['frames'][()]) == [1, 4, 7, 10, 13, 16]\n"
        "assert list(f['status'][()]) == [0, 2, 3, 0, 0, 1]\n"
        "assert f['forces'].shape == (6, 4, 3)\n"
        "assert f['forces'].dtype == np.float64 and f['crc32'].dtype == np.uint32\n"
        "assert np.isnan(f['forces'][5]).all() and np.isnan(f['energy'][5])\n"
        "assert f['finished'][()] == 1\n"
        "assert f['end_time'][()].decode().endswith('Z')\n"
        "assert f['energy'].attrs['units'] == b'eV/atom'\n",
        p), 0);
}
END_TEST

START_TEST(test_empty_shard)
{
    const char *p = in_dir("empty.h5");
    mbe_shard *s = create_std(p, 0, 3);
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_put(s, 0, MBE_FAILED, NAN, NULL, 1, &e), 0);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    mbe_shard_reader *r = open_ok(p);
    ck_assert_uint_eq(mbe_shard_reader_frames(r)->n, 0);
    ck_assert_int_eq(mbe_shard_reader_meta(r)->n_atoms, 3);
    verify_ok(r, 0);
    mbe_shard_reader_close(r);
    ck_assert_int_eq(python(
        "import sys, h5py\n"
        "f = h5py.File(sys.argv[1], 'r')\n"
        "assert f['forces'][()].shape == (0, 3, 3)\n"
        "assert f['frames'][()].shape == (0,)\n", p), 0);
    /* resumable too */
    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_msg(mbe_shard_close(s, &e) == 0, "%s", e.msg);
}
END_TEST

START_TEST(test_fresh_shard_id_when_empty)
{
    const char *p = in_dir("id.h5");
    mbe_shard_meta m = meta_of(10, 2);
    m.shard_id = "";
    m.slurm_job_id = NULL;
    mbe_frames f = frames_of(2, 0, 1);
    uint32_t g[2] = {1, 2};
    mbe_shard *s;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_create(p, &m, &f, g, &s, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(strlen(mbe_shard_meta_of(s)->shard_id), 32);
    ck_assert_str_eq(mbe_shard_meta_of(s)->slurm_job_id, "");
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    mbe_shard_reader *r = open_ok(p);
    ck_assert_uint_eq(strlen(mbe_shard_reader_meta(r)->shard_id), 32);
    ck_assert_str_eq(mbe_shard_reader_meta(r)->slurm_job_id, "");
    ck_assert_int_eq(mbe_shard_reader_finished(r), 1);
    mbe_shard_reader_close(r);
    mbe_frames_free(&f);
}
END_TEST

/* -------------------------------------------------------------- resume */

START_TEST(test_resume_continues)
{
    const char *p = in_dir("r.h5"), *part = in_dir("r.h5.part");
    mbe_shard *s = create_std(p, 6, 4);
    mbe_err e = {""};
    ck_assert_int_eq(put_std(s, 0, 1, &e), 0);
    ck_assert_int_eq(put_std(s, 1, 0, &e), 0);
    ck_assert_msg(mbe_shard_close(s, &e) == 0, "%s", e.msg);
    ck_assert(exists(part) && !exists(p));

    /* unfinished, readable as such */
    mbe_shard_reader *r = open_ok(part);
    ck_assert_int_eq(mbe_shard_reader_finished(r), 0);
    ck_assert_str_eq(mbe_shard_reader_end_time(r), "");
    verify_ok(r, 100);
    mbe_shard_reader_close(r);

    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    check_meta(mbe_shard_meta_of(s));
    ck_assert_uint_eq(mbe_shard_frames(s)->n, 6);
    ck_assert_int_eq(mbe_shard_frames(s)->idx[5], 16);
    ck_assert_int_eq(mbe_shard_status(s, 0), MBE_COMPLETED);
    ck_assert_int_eq(mbe_shard_status(s, 1), MBE_SCF_NOT_CONVERGED);
    for (size_t k = 2; k < 6; k++) {
        ck_assert_int_eq(mbe_shard_status(s, k), MBE_UNDEFINED);
        ck_assert_int_eq(put_std(s, k, 1, &e), 0);
    }
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    ck_assert(!exists(part) && exists(p));
    r = open_ok(p);
    for (size_t k = 0; k < 6; k++)
        check_frame(r, k, 1);
    verify_ok(r, 4096);
    mbe_shard_reader_close(r);

    /* a finished shard resumed and finished again stays where it is */
    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_status(s, 5), MBE_COMPLETED);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    ck_assert(!exists(part) && exists(p));
    r = open_ok(p);
    ck_assert_int_eq(mbe_shard_reader_finished(r), 1);
    verify_ok(r, 4096);
    mbe_shard_reader_close(r);

    ck_assert_int_ne(mbe_shard_resume(in_dir("none.h5"), &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "neither"));
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_resume_resets_torn_frame)
{
    const char *p = in_dir("t.h5"), *part = in_dir("t.h5.part");
    mbe_shard *s = create_std(p, 6, 4);
    mbe_err e = {""};
    ck_assert_int_eq(put_std(s, 0, 1, &e), 0);
    ck_assert_int_eq(put_std(s, 3, 1, &e), 0);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    /* frame 3's forces half written: one byte differs */
    flip(part, "forces", 3 * 4 * 3 * 8 + 17, 0x10);
    mbe_shard_reader *r = open_ok(part);
    ck_assert_int_ne(mbe_shard_verify(r, 1 << 16, &e), 0);
    mbe_shard_reader_close(r);

    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_status(s, 0), MBE_COMPLETED);
    ck_assert_int_eq(mbe_shard_status(s, 3), MBE_UNDEFINED);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    r = open_ok(part);
    verify_ok(r, 1 << 16);
    ck_assert_int_eq(mbe_shard_reader_status(r)[3], MBE_UNDEFINED);
    check_frame(r, 0, 1);
    check_frame(r, 3, 0);
    mbe_shard_reader_close(r);
}
END_TEST

/* -------------------------------------------------- put and create errors */

START_TEST(test_put_validation)
{
    const char *p = in_dir("v.h5");
    mbe_shard *s = create_std(p, 3, 2);
    mbe_err e = {""};
    double f[6] = {0, 1, 2, 3, 4, 5};
    ck_assert_int_ne(mbe_shard_put(s, 3, MBE_COMPLETED, 1, f, 0, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "position 3"));
    ck_assert_int_ne(mbe_shard_put(s, 0, -1, 1, f, 0, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "invalid status -1"));
    ck_assert_int_ne(mbe_shard_put(s, 0, 4, 1, f, 0, &e), 0);
    ck_assert_int_ne(mbe_shard_put(s, 0, MBE_COMPLETED, NAN, f, 0, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "non-finite energy"));
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    ck_assert_int_ne(mbe_shard_put(s, 0, MBE_COMPLETED, INFINITY, f, 0, &e),
                     0);
    ck_assert_int_ne(mbe_shard_put(s, 0, MBE_COMPLETED, 1, NULL, 0, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "without forces"));
    f[4] = INFINITY;
    ck_assert_int_ne(mbe_shard_put(s, 1, MBE_COMPLETED, 1, f, 0, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "atom 1"));
    f[4] = NAN;
    ck_assert_int_ne(mbe_shard_put(s, 1, MBE_COMPLETED, 1, f, 0, &e), 0);
    for (size_t k = 0; k < 3; k++)
        ck_assert_int_eq(mbe_shard_status(s, k), MBE_UNDEFINED);
    /* not COMPLETED: results ignored, NULL forces fine */
    ck_assert_int_eq(mbe_shard_put(s, 2, MBE_FAILED, 7.0, NULL, 1, &e), 0);
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    mbe_shard_reader *r = open_ok(p);
    verify_ok(r, 1);
    const int64_t *st = mbe_shard_reader_status(r);
    ck_assert_int_eq(st[0], MBE_UNDEFINED);
    ck_assert_int_eq(st[1], MBE_UNDEFINED);
    ck_assert_int_eq(st[2], MBE_FAILED);
    ck_assert(isnan(mbe_shard_reader_energy(r)[0]));
    ck_assert(isnan(mbe_shard_reader_energy(r)[2]));
    mbe_shard_reader_close(r);
}
END_TEST

static void write_file(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* What a job killed while building its shard left is removed by the next
 * create of that shard; the file of a live builder (locked) stays. */
START_TEST(test_stale_build_removed)
{
    const char *dead = in_dir("t.h5.part.new-0123456789ab");
    const char *live = in_dir("t.h5.part.new-ba9876543210");
    const char *other = in_dir("u.h5.part.new-0123456789ab");
    write_file(dead, "killed while building");
    write_file(live, "still building");
    write_file(other, "another shard's");
    int fd = open(live, O_RDWR);
    ck_assert_int_ge(fd, 0);
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    ck_assert_int_eq(fcntl(fd, F_OFD_SETLK, &l), 0);
    mbe_shard *s = create_std(in_dir("t.h5"), 3, 2);
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_close(s, &e) == 0, "%s", e.msg);
    close(fd);
    ck_assert_int_ne(access(dead, F_OK), 0);
    ck_assert_int_eq(access(live, F_OK), 0);
    ck_assert_int_eq(access(other, F_OK), 0);
}
END_TEST

/* A shard whose 'frames' dataset claims 2^38 frames (never allocated):
 * refused before room for them is allocated (found by fuzzing). */
START_TEST(test_huge_shape_refused)
{
    const char *root = getenv("MBE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/shard-v1-huge-frames.h5",
             root ? root : ".");
    mbe_shard_reader *r = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(path, &r, &e), 0);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(e.msg, "damaged shard") &&
                  strstr(e.msg, "274877906944"), "%s", e.msg);
}
END_TEST

START_TEST(test_create_refuses)
{
    const char *p = in_dir("c.h5"), *part = in_dir("c.h5.part");
    mbe_shard_meta m = meta_of(10, 2);
    mbe_frames f = frames_of(3, 0, 2);
    uint32_t g[3] = {1, 2, 3};
    mbe_shard *s = NULL;
    mbe_err e = {""};

    write_file(p, "finished");
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, g, &s, &e), 0);
    ck_assert_ptr_null(s);
    ck_assert_ptr_nonnull(strstr(e.msg, "exists (a finished shard); remove "
                                        "it or choose another -o"));
    unlink(p);
    write_file(part, "unfinished");
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, g, &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, ".part exists"));
    struct stat st;
    ck_assert_int_eq(stat(part, &st), 0);
    ck_assert_int_eq(st.st_size, 10); /* untouched */
    unlink(part);

    f.idx[1] = 0;
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, g, &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "ascending"));
    f.idx[1] = 10;
    f.idx[2] = 11;
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, g, &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "outside 0..9"));
    f.idx[1] = 2;
    f.idx[2] = 4;
    m.n_atoms = 0;
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, g, &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "atoms"));
    m.n_atoms = 2;
    ck_assert_int_ne(mbe_shard_create(p, &m, &f, NULL, &s, &e), 0);
    ck_assert(!exists(p) && !exists(part));
    /* Said in our words and of the name given, not libhdf5's of the
     * temporary file ("unable to open file: name = ..., errno = 2, ...,
     * flags = 15, o_flags = c2"). */
    const char *nodir = in_dir("nodir/c.h5");
    ck_assert_int_ne(mbe_shard_create(nodir, &m, &f, g, &s, &e), 0);
    ck_assert_msg(strstr(e.msg, nodir) && strstr(e.msg, "does not exist") &&
                  !strstr(e.msg, "errno") && !strstr(e.msg, ".new-"),
                  "%s", e.msg);
    /* nothing left behind by the refusals */
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(n, 0);
    mbe_frames_free(&f);
}
END_TEST

/* ------------------------------------------------------------- damage */

static void expect_verify_fails(const char *p, const char *frame)
{
    mbe_shard_reader *r = open_ok(p);
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_verify(r, 100, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "1 of 6 frames fail their crc32"));
    ck_assert_msg(strstr(e.msg, frame) != NULL, "%s", e.msg);
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    mbe_shard_reader_close(r);
}

/* Energies only (format 3): no forces dataset, rows checked over status
 * and energy, forces given to put ignored, resumed as such, refused by
 * read_forces; a flipped energy is found. */
START_TEST(test_no_forces_shard)
{
    const char *p = in_dir("nf.h5"), *part = in_dir("nf.h5.part");
    mbe_shard_meta m = meta_of(1000, 4);
    m.no_forces = 1;
    mbe_frames f = frames_of(6, 2, 2);
    uint32_t *g = geoms_of(&f);
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_create(p, &m, &f, g, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_meta_of(s)->no_forces, 1);
    double junk[12] = {0};
    ck_assert_int_eq(mbe_shard_put(s, 0, MBE_COMPLETED, -1.25, NULL, 1, &e),
                     0);
    ck_assert_int_eq(mbe_shard_put(s, 1, MBE_COMPLETED, -1.5, junk, 1, &e),
                     0);
    ck_assert_int_eq(mbe_shard_put(s, 2, MBE_FAILED, 0, NULL, 1, &e), 0);
    ck_assert_msg(mbe_shard_close(s, &e) == 0, "%s", e.msg);

    hid_t h = H5Fopen(part, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(h, 0);
    ck_assert_int_eq(H5Lexists(h, "forces", H5P_DEFAULT), 0);
    H5Fclose(h);

    mbe_shard_reader *r = open_ok(part);
    ck_assert_int_eq(mbe_shard_reader_has_forces(r), 0);
    ck_assert_uint_eq(mbe_shard_reader_crc(r)[0],
                      mbe_result_crc(MBE_COMPLETED, -1.25, NULL, 0));
    ck_assert(mbe_shard_reader_energy(r)[1] == -1.5);
    ck_assert(isnan(mbe_shard_reader_energy(r)[2]));
    double buf[12];
    ck_assert_int_ne(mbe_shard_read_forces(r, 0, 1, buf, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "no forces"));
    verify_ok(r, 64);
    mbe_shard_reader_close(r);

    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_meta_of(s)->no_forces, 1);
    ck_assert_int_eq(mbe_shard_status(s, 1), MBE_COMPLETED);
    for (size_t k = 3; k < 6; k++)
        ck_assert_int_eq(mbe_shard_put(s, k, MBE_COMPLETED, -2.0, NULL, 0,
                                       &e), 0);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    flip(p, "energy", 4 * 8 + 7, 0x01);
    expect_verify_fails(p, "(frame 10)");
    free(g);
    mbe_frames_free(&f);
}
END_TEST

START_TEST(test_verify_flipped_forces)
{
    const char *p = finished_std();
    /* shard position 4 = frame 13, last byte of its last force */
    flip(p, "forces", 5 * 12 * 8 - 1, 0x01);
    expect_verify_fails(p, "(frame 13)");
}
END_TEST

START_TEST(test_verify_flipped_energy)
{
    const char *p = finished_std();
    flip(p, "energy", 2 * 8 + 3, 0x40);
    expect_verify_fails(p, "(frame 7)");
}
END_TEST

START_TEST(test_verify_flipped_status)
{
    const char *p = finished_std();
    /* COMPLETED (0) becomes SCF_NOT_CONVERGED (2): valid, but wrong */
    flip(p, "status", 0, 0x02);
    expect_verify_fails(p, "(frame 1)");
}
END_TEST

START_TEST(test_verify_flipped_crc)
{
    const char *p = finished_std();
    flip(p, "crc32", 5 * 4 + 2, 0x80);
    expect_verify_fails(p, "(frame 16)");

}
END_TEST

/* A COMPLETED row with a NaN energy and a crc to match it: mbe_shard_put
 * refuses such results, so only another writer (or an edit) makes one, and
 * a merge must not store it as a result. */
START_TEST(test_verify_nonfinite_completed)
{
    const char *p = finished_std();
    mbe_shard_reader *r = open_ok(p);
    double forces[12];
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_read_forces(r, 2, 1, forces, &e) == 0, "%s",
                  e.msg);
    mbe_shard_reader_close(r);
    double nan = NAN;
    uint32_t crc = mbe_result_crc(MBE_COMPLETED, nan, forces, 4);
    poke(p, "energy", 2 * 8, &nan, sizeof nan);
    poke(p, "crc32", 2 * 4, &crc, sizeof crc);
    r = open_ok(p);
    ck_assert_int_ne(mbe_shard_verify(r, 100, &e), 0);
    ck_assert_msg(strstr(e.msg, "frame 7 is COMPLETED") &&
                  strstr(e.msg, "NaN") && strstr(e.msg, p), "%s", e.msg);
    mbe_shard_reader_close(r);
}
END_TEST

/* An UNDEFINED frame may hold what a killed put left; verify ignores it,
 * resume restores its NaN row. */
START_TEST(test_undefined_row_leftovers)
{
    const char *p = in_dir("u.h5"), *part = in_dir("u.h5.part");
    mbe_shard *s = create_std(p, 6, 4);
    mbe_err e = {""};
    ck_assert_int_eq(put_std(s, 0, 1, &e), 0);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    flip(part, "forces", 12 * 8 + 7, 0x01);
    flip(part, "energy", 8 * 2 + 7, 0x01);
    mbe_shard_reader *r = open_ok(part);
    verify_ok(r, 1);
    ck_assert(!isnan(mbe_shard_reader_energy(r)[2]));
    mbe_shard_reader_close(r);
    ck_assert_int_eq(mbe_shard_resume(p, &s, &e), 0);
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    r = open_ok(p);
    verify_ok(r, 1);
    ck_assert(isnan(mbe_shard_reader_energy(r)[2]));
    for (size_t k = 0; k < 6; k++)
        check_frame(r, k, k == 0);
    mbe_shard_reader_close(r);
    ck_assert_int_eq(python(PY_CRC, p), 0);
}
END_TEST

START_TEST(test_flipped_frames_refused)
{
    const char *p = finished_std();
    flip(p, "frames", 8 * 5, 0x01); /* 16 -> 17: still ascending */
    mbe_shard_reader *r = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "index_crc32") != NULL, "%s", e.msg);
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(test_truncated)
{
    const char *p = finished_std();
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(truncate(p, st.st_size / 2), 0);
    mbe_shard_reader *r = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "truncated or damaged HDF5 file") != NULL,
                  "%s", e.msg);
    ck_assert_ptr_nonnull(strstr(e.msg, p));
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(test_not_a_shard)
{
    const char *h = in_dir("other.h5"), *t = in_dir("text.h5");
    hid_t f = H5Fcreate(h, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t d = 4;
    hid_t sp = H5Screate_simple(1, &d, NULL);
    hid_t ds = H5Dcreate2(f, "frames", H5T_STD_I64LE, sp, H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    mbe_shard_reader *r = NULL;
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(h, &r, &e), 0);
    ck_assert_ptr_nonnull(
        strstr(e.msg, "not a shard file (no mbe_shard_format attribute)"));
    ck_assert_ptr_nonnull(strstr(e.msg, h));
    ck_assert_int_ne(mbe_shard_resume(h, &s, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "not a shard file"));

    write_file(t, "frames,status\n1,0\n");
    ck_assert_int_ne(mbe_shard_open(t, &r, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "not an HDF5 file"));
    write_file(t, "");
    ck_assert_int_ne(mbe_shard_open(t, &r, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "not an HDF5 file"));
    ck_assert_int_ne(mbe_shard_open(in_dir("missing.h5"), &r, &e), 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "No such file"));
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(test_wrong_version_and_shape)
{
    const char *p = finished_std();
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "mbe_shard_format_version", H5P_DEFAULT);
    int64_t v = 5;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    mbe_shard_reader *r = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "version 5; this mbe-shard reads versions "
                                "1 to 4") != NULL, "%s", e.msg);
    /* Version 4, a bundle, must say how many members it has. */
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    a = H5Aopen(f, "mbe_shard_format_version", H5P_DEFAULT);
    v = 4;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "damaged shard: attribute n_members missing")
                      != NULL, "%s", e.msg);
    /* Version 3 must say whether it holds forces. */
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    a = H5Aopen(f, "mbe_shard_format_version", H5P_DEFAULT);
    v = 3;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "attribute has_forces missing") != NULL, "%s",
                  e.msg);

    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    a = H5Aopen(f, "mbe_shard_format_version", H5P_DEFAULT);
    v = 2;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    a = H5Aopen(f, "n_atoms", H5P_DEFAULT);
    v = 5;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(f);
    ck_assert_int_ne(mbe_shard_open(p, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "'forces' has shape (6, 4, 3), expected "
                                "(6, 5, 3)") != NULL, "%s", e.msg);
}
END_TEST

/* ------------------------------------------- metadata never rewritten */

typedef struct region {
    haddr_t at;
    hsize_t len;
} region;

static unsigned char *slurp(const char *p, size_t *len)
{
    struct stat st;
    ck_assert_int_eq(stat(p, &st), 0);
    unsigned char *b = malloc(st.st_size);
    int fd = open(p, O_RDONLY);
    ck_assert_int_eq(read(fd, b, st.st_size), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return b;
}

/* The raw data of every dataset.  Not even the superblock's flags (and
 * its checksum) change: once built, HDF5 opens the file read-only. */
static int raw_regions(const char *p, region *out)
{
    unsigned char sb[9];
    int fd = open(p, O_RDONLY);
    ck_assert_int_eq(pread(fd, sb, 9, 0), 9);
    close(fd);
    ck_assert_int_eq(sb[8], 2); /* superblock version */
    static const char *const names[] = {"frames", "status", "energy",
                                        "forces", "crc32", "geometry_crc32",
                                        "end_time", "finished"};
    hid_t f = H5Fopen(p, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    for (int i = 0; i < 8; i++) {
        hid_t ds = H5Dopen2(f, names[i], H5P_DEFAULT);
        out[i].at = H5Dget_offset(ds);
        out[i].len = H5Dget_storage_size(ds);
        ck_assert(out[i].at != HADDR_UNDEF);
        H5Dclose(ds);
    }
    H5Fclose(f);
    return 8;
}

/* Every byte outside the datasets' raw data is as it was at create. */
static void same_metadata(const unsigned char *a, size_t la,
                          const char *now, const region *rg, int nrg)
{
    size_t lb;
    unsigned char *b = slurp(now, &lb);
    ck_assert_uint_eq(la, lb);
    size_t differ = 0;
    char where[200] = "";
    for (size_t i = 0; i < la; i++) {
        int raw = 0;
        for (int j = 0; j < nrg && !raw; j++)
            raw = i >= rg[j].at && i < rg[j].at + rg[j].len;
        if (!raw && a[i] != b[i] && differ++ < 8)
            snprintf(where + strlen(where), sizeof where - strlen(where),
                     " %zu", i);
    }
    ck_assert_msg(differ == 0, "%zu metadata bytes changed, at%s", differ,
                  where);
    free(b);
}

START_TEST(test_metadata_never_rewritten)
{
    const char *p = in_dir("m.h5"), *part = in_dir("m.h5.part");
    mbe_shard *s = create_std(p, 40, 7);
    mbe_err e = {""};
    size_t la;
    unsigned char *a = slurp(part, &la);
    for (size_t k = 0; k < 20; k++)
        ck_assert_int_eq(put_std(s, k, k % 3 == 0, &e), 0);
    ck_assert_int_eq(mbe_shard_sync(s, &e), 0);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    region rg[10];
    int nrg = raw_regions(part, rg);
    same_metadata(a, la, part, rg, nrg);
    ck_assert_int_eq(mbe_shard_resume(p, &s, &e), 0);
    for (size_t k = 20; k < 40; k++)
        ck_assert_int_eq(put_std(s, k, 1, &e), 0);
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    same_metadata(a, la, p, rg, nrg);
    ck_assert_int_eq(mbe_shard_resume(p, &s, &e), 0);
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    same_metadata(a, la, p, rg, nrg);
    free(a);
}
END_TEST

/* ------------------------------------------------------------ bundles */

/* Three keys of 2, 5 and 3 atoms, 4, 0 and 6 frames; the middle one
 * without forces. */
#define B_N 3
static const int64_t b_atoms[B_N] = {2, 5, 3};
static const size_t b_frames[B_N] = {4, 0, 6};

static mbe_shard *create_bundle(const char *path)
{
    mbe_shard_meta m[B_N];
    mbe_frames f[B_N];
    uint32_t *g[B_N];
    const char *keys[B_N] = {"a", "md/T300", "fs3/cluster"};
    const char *ids[B_N] = {"00000000000000000000000000000001", "",
                            "00000000000000000000000000000003"};
    for (size_t i = 0; i < B_N; i++) {
        m[i] = meta_of(100 + (int64_t)i, b_atoms[i]);
        m[i].key = (char *)keys[i];
        m[i].shard_id = (char *)ids[i];
        m[i].no_forces = i == 1;
        f[i] = frames_of(b_frames[i], (int64_t)i, 2);
        g[i] = geoms_of(&f[i]);
    }
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_create_bundle(path, B_N, m, f,
                                          (const uint32_t *const *)g, &s,
                                          &e) == 0, "%s", e.msg);
    for (size_t i = 0; i < B_N; i++) {
        mbe_frames_free(&f[i]);
        free(g[i]);
    }
    return s;
}

START_TEST(test_bundle_roundtrip)
{
    const char *p = in_dir("b.h5"), *part = in_dir("b.h5.part");
    mbe_shard *s = create_bundle(p);
    mbe_err e = {""};
    ck_assert_uint_eq(mbe_shard_members(s), B_N);
    /* Half of every member, then stopped. */
    for (size_t i = 0; i < B_N; i++) {
        ck_assert_int_eq(mbe_shard_select(s, i, &e), 0);
        ck_assert_str_eq(mbe_shard_meta_of(s)->key,
                         i == 0 ? "a" : i == 1 ? "md/T300" : "fs3/cluster");
        ck_assert_uint_eq(mbe_shard_frames(s)->n, b_frames[i]);
        for (size_t k = 0; k < b_frames[i] / 2; k++)
            ck_assert_msg(put_std(s, k, 1, &e) == 0, "%s", e.msg);
    }
    ck_assert_int_ne(mbe_shard_select(s, B_N, &e), 0);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    ck_assert(exists(part) && !exists(p));

    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(mbe_shard_members(s), B_N);
    for (size_t i = 0; i < B_N; i++) {
        ck_assert_int_eq(mbe_shard_select(s, i, &e), 0);
        ck_assert_int_eq(mbe_shard_meta_of(s)->n_atoms, b_atoms[i]);
        for (size_t k = 0; k < b_frames[i]; k++) {
            int64_t st = mbe_shard_status(s, k);
            ck_assert(k < b_frames[i] / 2 ? st != MBE_UNDEFINED
                                          : st == MBE_UNDEFINED);
            if (st == MBE_UNDEFINED)
                ck_assert_int_eq(put_std(s, k, 0, &e), 0);
        }
    }
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    ck_assert(exists(p) && !exists(part));

    char want[600];
    for (size_t i = 0; i < B_N; i++) {
        mbe_shard_reader *r = NULL;
        ck_assert_msg(mbe_shard_open_member(p, i, &r, &e) == 0, "%s", e.msg);
        ck_assert_uint_eq(mbe_shard_reader_members(r), B_N);
        ck_assert(mbe_shard_reader_is_bundle(r));
        snprintf(want, sizeof want, "%s:/%zu", p, i);
        ck_assert_str_eq(mbe_shard_reader_name(r), want);
        const mbe_shard_meta *m = mbe_shard_reader_meta(r);
        ck_assert_int_eq(m->n_atoms, b_atoms[i]);
        ck_assert_int_eq(m->no_forces, i == 1);
        ck_assert_int_eq(strlen(m->shard_id), 32);
        ck_assert(mbe_shard_reader_finished(r));
        ck_assert_uint_eq(mbe_shard_reader_frames(r)->n, b_frames[i]);
        for (size_t k = 0; k < b_frames[i] && !m->no_forces; k++)
            check_frame(r, k, 1);
        verify_ok(r, 64);
        mbe_shard_reader_close(r);
    }
    mbe_shard_reader *r = NULL;
    ck_assert_int_ne(mbe_shard_open_member(p, B_N, &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "has 3 members, no member 3"), "%s", e.msg);
    ck_assert_ptr_null(r);
    /* A single shard is member 0 of 1. */
    mbe_shard *one = create_std(in_dir("one.h5"), 3, 2);
    ck_assert_int_eq(mbe_shard_finish(one, &e), 0);
    r = open_ok(in_dir("one.h5"));
    ck_assert_uint_eq(mbe_shard_reader_members(r), 1);
    ck_assert(!mbe_shard_reader_is_bundle(r));
    ck_assert_str_eq(mbe_shard_reader_name(r), in_dir("one.h5"));
    mbe_shard_reader_close(r);
    ck_assert_int_ne(mbe_shard_open_member(in_dir("one.h5"), 1, &r, &e), 0);
}
END_TEST

/* A put killed half-way in one member is redone there, and only there. */
START_TEST(test_bundle_resume_resets_torn_frame)
{
    const char *p = in_dir("b.h5"), *part = in_dir("b.h5.part");
    mbe_shard *s = create_bundle(p);
    mbe_err e = {""};
    ck_assert_int_eq(mbe_shard_select(s, 2, &e), 0);
    for (size_t k = 0; k < 6; k++)
        ck_assert_int_eq(put_std(s, k, 1, &e), 0);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
    /* Energy of member 2's frame 3 changed behind its crc. */
    mbe_shard_reader *r = NULL;
    ck_assert_int_eq(mbe_shard_open_member(part, 2, &r, &e), 0);
    int64_t idx = mbe_shard_reader_frames(r)->idx[3];
    mbe_shard_reader_close(r);
    ck_assert(status_of(idx) == MBE_COMPLETED);
    char code[400];
    snprintf(code, sizeof code,
             "import sys, h5py\n"
             "f = h5py.File(sys.argv[1], 'r')\n"
             "off = f['2/energy'].id.get_offset()\n"
             "f.close()\n"
             "with open(sys.argv[1], 'r+b') as g:\n"
             "    g.seek(off + 3 * 8); g.write(b'\\x01' * 8)\n");
    ck_assert_int_eq(python(code, part), 0);
    ck_assert_msg(mbe_shard_resume(p, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_select(s, 2, &e), 0);
    for (size_t k = 0; k < 6; k++)
        ck_assert_int_eq(mbe_shard_status(s, k) == MBE_UNDEFINED, k == 3);
    ck_assert_int_eq(mbe_shard_select(s, 0, &e), 0);
    for (size_t k = 0; k < 4; k++)
        ck_assert_int_eq(mbe_shard_status(s, k), MBE_UNDEFINED);
    ck_assert_int_eq(mbe_shard_close(s, &e), 0);
}
END_TEST

START_TEST(test_bundle_refuses)
{
    mbe_shard_meta m = meta_of(10, 2);
    mbe_frames f = frames_of(2, 0, 1);
    uint32_t g0[2] = {1, 2};
    const uint32_t *g[1] = {g0};
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_create_bundle(in_dir("z.h5"), 0, &m, &f, g,
                                             &s, &e), 0);
    ck_assert_msg(strstr(e.msg, "holds 1 to 65535 keys, not 0"), "%s", e.msg);
    const uint32_t *none[1] = {NULL};
    ck_assert_int_ne(mbe_shard_create_bundle(in_dir("z.h5"), 1, &m, &f, none,
                                             &s, &e), 0);
    ck_assert_msg(strstr(e.msg, "no geometry fingerprints"), "%s", e.msg);
    ck_assert(!exists(in_dir("z.h5.part")));
    mbe_frames_free(&f);
    /* A damaged member count is refused in one line. */
    s = create_bundle(in_dir("b.h5"));
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    hid_t file = H5Fopen(in_dir("b.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(file, "n_members", H5P_DEFAULT);
    int64_t v = 0;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Fclose(file);
    mbe_shard_reader *r = NULL;
    ck_assert_int_ne(mbe_shard_open(in_dir("b.h5"), &r, &e), 0);
    ck_assert_msg(strstr(e.msg, "attribute n_members missing or not "
                                "1..65535"), "%s", e.msg);
}
END_TEST

/* ------------------------------------------- older and untrusted layouts */

/* The shard rewritten by h5py as mbe-shard 0.1.0 wrote version 1:
 * superblock 0, variable-length strings.  libver 'v108' (argv[2]) gives a
 * superblock 2 with those strings and chunked forces instead. */
static const char *PY_REWRITE =
    "import sys, h5py, numpy as np\n"
    "src, dst, libver = sys.argv[1], sys.argv[1] + '.old', sys.argv[2]\n"
    "with h5py.File(src, 'r') as a, h5py.File(dst, 'w', libver=libver) as b:\n"
    "    for k, v in a.attrs.items():\n"
    "        b.attrs[k] = v.decode() if isinstance(v, bytes) else v\n"
    "    if libver == 'earliest':\n"
    "        b.attrs['mbe_shard_format_version'] = np.int64(1)\n"
    "    for name, d in a.items():\n"
    "        chunks = (1,) + d.shape[1:] if name == 'forces' and libver != 'earliest' else None\n"
    "        b.create_dataset(name, data=d[()], dtype=d.dtype, chunks=chunks)\n"
    "        for k, v in d.attrs.items():\n"
    "            b[name].attrs[k] = v.decode()\n";

static char *rewritten(const char *p, const char *libver)
{
    char code[2048];
    snprintf(code, sizeof code, "import sys\nsys.argv.append('%s')\n%s",
             libver, PY_REWRITE);
    ck_assert_int_eq(python(code, p), 0);
    static char out[512];
    snprintf(out, sizeof out, "%s.old", p);
    return out;
}

static void same_content(const char *a, const char *b)
{
    mbe_shard_reader *ra = open_ok(a), *rb = open_ok(b);
    const mbe_shard_meta *ma = mbe_shard_reader_meta(ra);
    const mbe_shard_meta *mb = mbe_shard_reader_meta(rb);
    ck_assert_str_eq(ma->key, mb->key);
    ck_assert_str_eq(ma->calc_settings, mb->calc_settings);
    ck_assert_str_eq(ma->shard_id, mb->shard_id);
    size_t n = mbe_shard_reader_frames(ra)->n;
    ck_assert_uint_eq(n, mbe_shard_reader_frames(rb)->n);
    ck_assert_mem_eq(mbe_shard_reader_crc(ra), mbe_shard_reader_crc(rb),
                     n * 4);
    ck_assert_int_eq(mbe_shard_reader_finished(ra),
                     mbe_shard_reader_finished(rb));
    verify_ok(rb, 64);
    mbe_shard_reader_close(ra);
    mbe_shard_reader_close(rb);
}

START_TEST(test_version1_read_and_resumed)
{
    const char *p = finished_std();
    char *old = rewritten(p, "earliest");
    unsigned char sb[9];
    int fd = open(old, O_RDONLY);
    ck_assert_int_eq(pread(fd, sb, 9, 0), 9);
    close(fd);
    ck_assert_int_eq(sb[8], 0);
    same_content(p, old);
    /* A version 1 job continues in its own format. */
    mbe_shard *s;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_resume(old, &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(mbe_shard_finish(s, &e), 0);
    same_content(p, old);
    ck_assert_int_eq(python("import sys, h5py\n"
                            "f = h5py.File(sys.argv[1], 'r')\n"
                            "assert f.attrs['mbe_shard_format_version'] == 1\n"
                            "assert f.attrs['key'] == 'training/md/urea_300K'\n",
                            old), 0);
}
END_TEST

/* Superblock 2 but a global heap and a chunk index: read, in a child
 * first. */
START_TEST(test_untrusted_superblock2_read)
{
    const char *p = finished_std();
    same_content(p, rewritten(p, "v108"));
}
END_TEST

/* libhdf5 1.10 reads past a damaged global heap collection of this
 * version 1 shard (found by fuzz_shard) and dies of SIGSEGV: the child
 * process contains the crash.  libhdf5 1.14 detects the damage and fails
 * the read: the file is refused as damaged with its reason, not as a
 * file of another kind. */
static void damaged_v1_refused(const mbe_err *e)
{
#if MBE_H5_CHECKS_GLOBAL_HEAP
    static const char want[] = "damaged HDF5 file: cannot read attribute "
                               "mbe_shard_format: ";
    const char *at = strstr(e->msg, want);
    ck_assert_msg(at && at[sizeof want - 1], "%s", e->msg);
#else
    /* Under AddressSanitizer the child reports the bad read and exits. */
    ck_assert_msg(strstr(e->msg, "damaged HDF5 file: libhdf5 crashed "
                                 "reading it: ") &&
                  (strstr(e->msg, "killed by signal 11") ||
                   strstr(e->msg, "exit status")), "%s", e->msg);
#endif
    ck_assert_ptr_null(strchr(e->msg, '\n'));
}

START_TEST(test_damaged_version1_contained)
{
    const char *root = getenv("MBE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/"
             "shard-v1-damaged-global-heap.h5", root ? root : ".");
    mbe_shard_reader *r = NULL;
    mbe_shard *s = NULL;
    mbe_err e = {""};
    ck_assert_int_ne(mbe_shard_open(path, &r, &e), 0);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(e.msg, path) == e.msg, "%s", e.msg);
    damaged_v1_refused(&e);
    const char *copy = in_dir("damaged.h5");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, copy);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_int_ne(mbe_shard_resume(copy, &s, &e), 0);
    damaged_v1_refused(&e);
}
END_TEST

/* A flipped byte outside the raw data of a version 2 shard either fails
 * a checksum, refused in this process, or lies in unused space (HDF5
 * allocates metadata in 2 KiB blocks) and changes nothing read. */
START_TEST(test_version2_metadata_damage_refused)
{
    const char *p = finished_std();
    region rg[10];
    (void)raw_regions(p, rg); /* [0, 8): the datasets' raw data */
    size_t len;
    unsigned char *orig = slurp(p, &len);
    const char *q = in_dir("flip.h5");
    size_t tried = 0, refused = 0;
    for (size_t at = 0; at < len; at += 5) {
        int raw = 0;
        for (int j = 0; j < 8 && !raw; j++)
            raw = at >= rg[j].at && at < rg[j].at + rg[j].len;
        if (raw)
            continue;
        unsigned char *b = malloc(len);
        memcpy(b, orig, len);
        b[at] ^= 0x5a;
        int fd = open(q, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ck_assert_int_eq(write(fd, b, len), (ssize_t)len);
        close(fd);
        free(b);
        mbe_shard_reader *r = NULL;
        mbe_err e = {""};
        tried++;
        if (mbe_shard_open(q, &r, &e) != 0) {
            refused++;
            ck_assert_msg(!strstr(e.msg, "libhdf5 crashed") &&
                          !strchr(e.msg, '\n'), "byte %zu: %s", at, e.msg);
        } else {
            mbe_shard_reader_close(r);
            same_content(p, q);
        }
        ck_assert_int_eq(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    }
    ck_assert_msg(refused * 2 > tried, "%zu of %zu refused", refused, tried);
    free(orig);
}
END_TEST

/* --------------------------------------------------------- kill test */

#define KN 200
#define KA 50
#define K_CREATED (-1)

/* The child: create, then put every frame, durably or in batches synced
 * together, reporting each frame through fd only once it is durable. */
static void kill_child(const char *path, int fd)
{
    mbe_shard_meta m = meta_of(KN, KA);
    mbe_frames f = {0};
    mbe_err e;
    mbe_shard *s;
    if (mbe_frames_all(KN, &f, &e) < 0)
        _exit(2);
    uint32_t *g = geoms_of(&f);
    if (mbe_shard_create(path, &m, &f, g, &s, &e) < 0)
        _exit(3);
    free(g);
    int32_t msg = K_CREATED, pend[8];
    int np = 0;
    if (write(fd, &msg, 4) != 4)
        _exit(4);
    double forces[KA * 3];
    for (int32_t k = 0; k < KN; k++) {
        int durable = k % 4 != 3;
        forces_of(k, KA, forces);
        /* a retry overwriting a result, killed half-way, must leave the
         * frame UNDEFINED or whole */
        if (k % 10 == 0 &&
            mbe_shard_put(s, k, MBE_FAILED, NAN, NULL, 0, &e) < 0)
            _exit(5);
        if (mbe_shard_put(s, k, status_of(k), energy_of(k), forces, durable,
                          &e) < 0)
            _exit(5);
        if (!durable)
            pend[np++] = k;
        else if (write(fd, &k, 4) != 4)
            _exit(4);
        if (np == 2) {
            if (mbe_shard_sync(s, &e) < 0 ||
                write(fd, pend, 4 * np) != 4 * np)
                _exit(6);
            np = 0;
        }
    }
    if (mbe_shard_finish(s, &e) < 0)
        _exit(7);
    _exit(0);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void record(int32_t k, int *created, char *reported)
{
    if (k == K_CREATED)
        *created = 1;
    else if (k >= 0 && k < KN)
        reported[k] = 1;
}

/* Runs the child; once it has reported `after` frames (< 0: at once),
 * waits delay seconds and kills it (delay < 0: never).  Collects what it
 * reported and when it announced the shard created (t_created, may be
 * NULL); returns whether it did. */
static int run_child(const char *path, int after, double delay,
                     char *reported, int *exit_code, double *t_created)
{
    int pfd[2], created = 0;
    double t0 = now_s();
    ck_assert_int_eq(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pfd[0]);
        kill_child(path, pfd[1]);
    }
    close(pfd[1]);
    memset(reported, 0, KN);
    int32_t k;
    for (int got = 0; got < after && read(pfd[0], &k, 4) == 4;) {
        record(k, &created, reported);
        got += k != K_CREATED;
        if (k == K_CREATED && t_created)
            *t_created = now_s() - t0;
    }
    if (delay >= 0) {
        if (delay > 0) {
            struct timespec ts = {(time_t)delay,
                                  (long)((delay - (time_t)delay) * 1e9)};
            nanosleep(&ts, NULL);
        }
        kill(pid, SIGKILL);
    }
    int st;
    waitpid(pid, &st, 0);
    *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
    while (read(pfd[0], &k, 4) == 4)
        record(k, &created, reported);
    close(pfd[0]);
    return created;
}

/* Completes a killed shard by resuming it and checks the result. */
static void resume_and_finish(const char *path)
{
    mbe_shard *s;
    mbe_err e = {""};
    ck_assert_msg(mbe_shard_resume(path, &s, &e) == 0, "%s", e.msg);
    for (size_t k = 0; k < KN; k++)
        if (mbe_shard_status(s, k) == MBE_UNDEFINED)
            ck_assert_msg(put_std(s, k, 0, &e) == 0, "%s", e.msg);
    ck_assert_msg(mbe_shard_finish(s, &e) == 0, "%s", e.msg);
    mbe_shard_reader *r = open_ok(path);
    verify_ok(r, 1 << 14);
    for (size_t k = 0; k < KN; k++)
        check_frame(r, k, 1);
    mbe_shard_reader_close(r);
}

static void check_after_kill(const char *path, const char *part, int iter,
                             int created, const char *reported)
{
    const char *which = exists(path) ? path : exists(part) ? part : NULL;
    if (created)
        ck_assert_msg(which != NULL, "kill %d: the shard vanished", iter);
    if (!which)
        return;
    mbe_shard_reader *r = open_ok(which);
    verify_ok(r, 1 << 14);
    ck_assert_uint_eq(mbe_shard_reader_frames(r)->n, KN);
    int done = 0, lost = 0;
    for (size_t k = 0; k < KN; k++) {
        done += reported[k];
        lost += reported[k] &&
                mbe_shard_reader_status(r)[k] == MBE_UNDEFINED;
        int64_t st = mbe_shard_reader_status(r)[k];
        /* leftovers of the killed put: unused, unchecked */
        if (!reported[k] && st == MBE_UNDEFINED)
            continue;
        /* the first of two puts; verify checked its crc */
        if (!reported[k] && k % 10 == 0 && st == MBE_FAILED)
            continue;
        check_frame(r, k, reported[k]);
    }
    ck_assert_int_eq(lost, 0);
    if (getenv("TEST_SHARD_VERBOSE")) {
        int stored = 0;
        for (size_t k = 0; k < KN; k++)
            stored += mbe_shard_reader_status(r)[k] != MBE_UNDEFINED;
        fprintf(stderr, "kill %d: %s, %d reported, %d stored, finished %d\n",
                iter, which == part ? ".part" : "final", done, stored,
                mbe_shard_reader_finished(r));
    }
    mbe_shard_reader_close(r);
    if (iter % 5 == 0)
        ck_assert_msg(python("import sys, h5py\n"
                             "f = h5py.File(sys.argv[1], 'r')\n"
                             "f['forces'][()]; f['status'][()]\n"
                             "dict(f.attrs)\n", which) == 0,
                      "kill %d: h5py cannot read %s", iter, which);
    if (iter % 4 == 1)
        resume_and_finish(path);
}

/* Kills land during create (time-based, spread over the create time t_c
 * measured first), after a random number of reported frames plus up to
 * half a millisecond (inside a put or its fsync), and during finish. */
static void kill_plan(int iter, double t_c, int *after, double *delay)
{
    *after = -1;
    *delay = -1;
    if (iter < 6) {
        *delay = t_c * iter / 5.0;
    } else if (iter >= 22) {
        *after = KN;
        *delay = (iter - 22) * 1e-3;
    } else {
        *after = rand() % (KN + 1);
        *delay = (rand() % 500) * 1e-6;
    }
}

static void list_dir(int iter)
{
    DIR *dp = opendir(dir);
    struct dirent *de;
    fprintf(stderr, "kill %d: files:", iter);
    while ((de = readdir(dp)))
        if (de->d_name[0] != '.')
            fprintf(stderr, " %s", de->d_name);
    fprintf(stderr, "\n");
    closedir(dp);
}

START_TEST(test_sigkill_at_any_moment)
{
    char path[512], part[512], reported[KN];
    snprintf(path, sizeof path, "%s", in_dir("k.h5"));
    snprintf(part, sizeof part, "%s", in_dir("k.h5.part"));
    int code;
    double t_c = 0;
    ck_assert_int_eq(run_child(path, 1, -1, reported, &code, &t_c), 1);
    ck_assert_int_eq(code, 0);
    check_after_kill(path, part, 0, 1, reported);
    rm_files(dir);

    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    for (int iter = 0; iter < 25; iter++) {
        int after;
        double delay;
        kill_plan(iter, t_c, &after, &delay);
        int created = run_child(path, after, delay, reported, &code, NULL);
        if (getenv("TEST_SHARD_VERBOSE")) {
            fprintf(stderr, "kill %d after %d frames + %.3f ms: created "
                    "%d, exit %d\n", iter, after, delay * 1e3, created,
                    code);
            list_dir(iter);
        }
        ck_assert_msg(code == 0 || code == -SIGKILL,
                      "kill %d (seed %u): child exited with %d", iter, seed,
                      code);
        /* a create that was not killed must have announced itself */
        if (code == 0)
            ck_assert(created);
        check_after_kill(path, part, iter, created, reported);
        rm_files(dir);
    }
}
END_TEST

/* -------------------------------------------------------------- suite */

static Suite *shard_suite(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("shard");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_new_id_and_part_path);
    tcase_add_test(tc, test_result_crc_layout);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_empty_shard);
    tcase_add_test(tc, test_fresh_shard_id_when_empty);
    tcase_add_test(tc, test_resume_continues);
    tcase_add_test(tc, test_resume_resets_torn_frame);
    tcase_add_test(tc, test_put_validation);
    tcase_add_test(tc, test_create_refuses);
    tcase_add_test(tc, test_no_forces_shard);
    tcase_add_test(tc, test_verify_flipped_forces);
    tcase_add_test(tc, test_verify_flipped_energy);
    tcase_add_test(tc, test_verify_flipped_status);
    tcase_add_test(tc, test_verify_flipped_crc);
    tcase_add_test(tc, test_verify_nonfinite_completed);
    tcase_add_test(tc, test_stale_build_removed);
    tcase_add_test(tc, test_huge_shape_refused);
    tcase_add_test(tc, test_undefined_row_leftovers);
    tcase_add_test(tc, test_flipped_frames_refused);
    tcase_add_test(tc, test_truncated);
    tcase_add_test(tc, test_not_a_shard);
    tcase_add_test(tc, test_wrong_version_and_shape);
    tcase_add_test(tc, test_metadata_never_rewritten);
    tcase_add_test(tc, test_bundle_roundtrip);
    tcase_add_test(tc, test_bundle_resume_resets_torn_frame);
    tcase_add_test(tc, test_bundle_refuses);
    tcase_add_test(tc, test_version1_read_and_resumed);
    tcase_add_test(tc, test_untrusted_superblock2_read);
    tcase_add_test(tc, test_damaged_version1_contained);
    tcase_add_test(tc, test_version2_metadata_damage_refused);
    tcase_add_test(tc, test_sigkill_at_any_moment);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    SRunner *sr = srunner_create(shard_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
