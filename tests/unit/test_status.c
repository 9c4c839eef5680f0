/* test_status.c - counting frames by status, energy ranges and the frames
 * with a given status, on masters written by h5py exactly as the Python
 * package writes them (tests/pylib/mbetest.py): levels with '/', legacy
 * levels without status, absent levels, and a master larger than one
 * read block; the same counts of shards. */
#include <check.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "mbe.h"

/* Frames of big.h5: one more than a read block of status.c (2^20) plus a
 * few, so that runs of frames cross the block boundary. */
#define BIG_N ((1 << 20) + 6)

/* ------------------------------------------------------------ fixtures */

static const char make_fixtures[] =
    "import os, sys\n"
    "sys.path.insert(0, os.path.join(os.environ[\"MBE_ROOT\"], \"tests\", \"pylib\"))\n"
    "import h5py\n"
    "import numpy as np\n"
    "import mbetest as mt\n"
    "\n"
    "os.chdir(sys.argv[1])\n"
    "K = \"md/argon\"\n"
    "n = 12\n"
    "mt.write_structure(\"counts.h5\", K, mt.random_cluster(n, 2), [18, 18])\n"
    "st = np.array([0, 0, 1, 2, 3, 0, 1, 3, 0, 2, 0, 1])\n"
    "e = -1.0 - 0.1 * np.arange(n)\n"
    "e[8] = np.nan  # COMPLETED without an energy: ignored by the range\n"
    "L = \"r2scan/def2-tzvpp\"\n"
    "mt.update_ground_truth(\"counts.h5\", K, L, e, np.zeros((n, 2, 3)), st)\n"
    "with h5py.File(\"counts.h5\", \"a\") as f:\n"
    "    # energies of frames that are not COMPLETED must not count\n"
    "    f[K][\"ground_truth\"][mt.e_name(L)][3] = -100.0\n"
    "    f[K][\"ground_truth\"][mt.e_name(L)][4] = 100.0\n"
    "le = 0.5 + 0.01 * np.arange(n)\n"
    "le[3] = np.nan\n"
    "mt.update_ground_truth(\"counts.h5\", K, \"gfn2-xtb\", le,\n"
    "                       np.zeros((n, 2, 3)), np.zeros(n, int),\n"
    "                       with_status=False)\n"
    "mt.update_ground_truth(\"counts.h5\", K, \"all-done\", np.ones(n),\n"
    "                       np.zeros((n, 2, 3)), np.zeros(n, int))\n"
    "mt.write_finite_subsystem(\"counts.h5\", \"clusters/dimer\",\n"
    "                          mt.random_cluster(3, 2), [1, 1])\n"
    "mt.update_ground_truth(\"counts.h5\", \"clusters/dimer/cluster_of_molecules\",\n"
    "                       \"lj\", np.ones(3), np.zeros((3, 2, 3)),\n"
    "                       np.zeros(3, int), with_status=False)\n"
    "\n"
    "mt.write_structure(\"bad.h5\", \"s\", mt.random_cluster(4, 2), [1, 1])\n"
    "mt.update_ground_truth(\"bad.h5\", \"s\", \"x\", np.ones(4),\n"
    "                       np.zeros((4, 2, 3)), np.array([0, 1, 7, 0]))\n"
    "\n"
    "N = (1 << 20) + 6\n"
    "mt.write_structure(\"big.h5\", \"big\", np.zeros((N, 1, 3)), [18])\n"
    "st = np.zeros(N, np.int64)\n"
    "st[[0, N - 7, N - 6, N - 3]] = 3\n"
    "st[[5, N - 5]] = 1\n"
    "st[N - 1] = 2\n"
    "e = np.arange(N) * 1e-3\n"
    "e[N - 4] = np.nan\n"
    "mt.update_ground_truth(\"big.h5\", \"big\", \"lj\", e, np.zeros((N, 1, 3)), st)\n"
    "with h5py.File(\"big.h5\", \"a\") as f:\n"
    "    f[\"big\"][\"ground_truth\"][mt.e_name(\"lj\")][N - 1] = 1e9\n";

static char fixdir[64];

static void write_fixtures(void)
{
    snprintf(fixdir, sizeof fixdir, "/tmp/mbe-test-status-XXXXXX");
    th_make_fixtures(fixdir, make_fixtures);
}

static void remove_fixtures(void)
{
    th_remove_fixtures(fixdir);
}

/* ------------------------------------------------------------- helpers */

static const mbe_lock_opts no_wait = {0, NULL, NULL};

static mbe_master *open_ok(const char *file, const char *key)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fixdir, file);
    mbe_master *m = NULL;
    mbe_err e = {{0}};
    int rc = mbe_master_open(path, key, 0, &no_wait, &m, &e);
    ck_assert_msg(rc == 0, "open %s:%s: %s", file, key ? key : "", e.msg);
    return m;
}

static void close_ok(mbe_master *m)
{
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_close(m, &e) == 0, "close: %s", e.msg);
}

static void summarize_ok(mbe_master *m, const char *level,
                         mbe_level_summary *s)
{
    mbe_err e = {{0}};
    int rc = mbe_master_summarize(m, level, s, &e);
    ck_assert_msg(rc == 0, "summarize '%s': %s", level, e.msg);
    ck_assert_str_eq(s->level, level);
    ck_assert_int_eq(s->n_frames, mbe_master_n_frames(m));
    int64_t sum = 0;
    for (int k = 0; k < MBE_N_STATUS; k++)
        sum += s->count[k];
    ck_assert_int_eq(sum, s->n_frames);
}

static void counts_are(const mbe_level_summary *s, int64_t completed,
                       int64_t undefined, int64_t scf, int64_t failed)
{
    ck_assert_int_eq(s->count[MBE_COMPLETED], completed);
    ck_assert_int_eq(s->count[MBE_UNDEFINED], undefined);
    ck_assert_int_eq(s->count[MBE_SCF_NOT_CONVERGED], scf);
    ck_assert_int_eq(s->count[MBE_FAILED], failed);
}

/* The spec of the frames whose status is one of the listed (-1 ends). */
static void spec_is(mbe_master *m, const char *level, const char *want, ...)
{
    int set[MBE_N_STATUS] = {0};
    va_list ap;
    va_start(ap, want);
    for (int s; (s = va_arg(ap, int)) >= 0;)
        set[s] = 1;
    va_end(ap);
    mbe_frames f = {0};
    mbe_err e = {{0}};
    int rc = mbe_master_frames_with_status(m, level, set, &f, &e);
    ck_assert_msg(rc == 0, "frames of '%s': %s", level, e.msg);
    char *spec = mbe_frames_format(&f);
    ck_assert_ptr_nonnull(spec);
    ck_assert_msg(strcmp(spec, want) == 0, "'%s': spec '%.200s', want '%s'",
                  level, spec, want);
    /* What mbe-compute --frames gets must parse back to the same frames. */
    if (*spec) {
        mbe_frames back = {0};
        ck_assert_int_eq(mbe_frames_parse(spec, mbe_master_n_frames(m),
                                          &back, &e), 0);
        ck_assert_uint_eq(back.n, f.n);
        ck_assert(memcmp(back.idx, f.idx, f.n * sizeof *f.idx) == 0);
        mbe_frames_free(&back);
    }
    free(spec);
    mbe_frames_free(&f);
}

/* --------------------------------------------------------------- tests */

START_TEST(counts_by_status)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    summarize_ok(m, "r2scan/def2-tzvpp", &s);
    counts_are(&s, 5, 3, 2, 2);
    ck_assert_int_eq(s.legacy, 0);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(energy_range_of_completed_only)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    summarize_ok(m, "r2scan/def2-tzvpp", &s);
    /* COMPLETED: 0, 1, 5, 8 (NaN), 10; the ±100 of frames 3, 4 are not. */
    ck_assert_double_eq_tol(s.e_min, -2.0, 1e-12);
    ck_assert_double_eq_tol(s.e_max, -1.0, 1e-12);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(legacy_level_all_completed)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    summarize_ok(m, "gfn2-xtb", &s);
    counts_are(&s, 12, 0, 0, 0);
    ck_assert_int_eq(s.legacy, 1);
    ck_assert_double_eq_tol(s.e_min, 0.5, 1e-12);
    ck_assert_double_eq_tol(s.e_max, 0.61, 1e-12);
    mbe_level_summary_free(&s);
    spec_is(m, "gfn2-xtb", "", MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED,
            MBE_FAILED, -1);
    close_ok(m);
}
END_TEST

START_TEST(completed_level_with_status_is_not_legacy)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    summarize_ok(m, "all-done", &s);
    counts_are(&s, 12, 0, 0, 0);
    ck_assert_int_eq(s.legacy, 0);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(legacy_in_finite_subsystem)
{
    mbe_master *m = open_ok("counts.h5", "clusters/dimer");
    mbe_level_summary s;
    summarize_ok(m, "lj", &s);
    counts_are(&s, 3, 0, 0, 0);
    ck_assert_int_eq(s.legacy, 1);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(absent_level_all_undefined)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    summarize_ok(m, "b3lyp/def2-svp", &s);
    counts_are(&s, 0, 12, 0, 0);
    ck_assert_int_eq(s.legacy, 0);
    ck_assert(isnan(s.e_min) && isnan(s.e_max));
    mbe_level_summary_free(&s);
    spec_is(m, "b3lyp/def2-svp", "0-11", MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED,
            MBE_FAILED, -1);
    spec_is(m, "b3lyp/def2-svp", "", MBE_SCF_NOT_CONVERGED, MBE_FAILED, -1);
    close_ok(m);
}
END_TEST

START_TEST(group_without_ground_truth)
{
    mbe_master *m = open_ok("big.h5", "big");
    mbe_level_summary s;
    summarize_ok(m, "never", &s);
    counts_are(&s, 0, BIG_N, 0, 0);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(frames_with_status_specs)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    const char *L = "r2scan/def2-tzvpp";
    spec_is(m, L, "2-4,6-7,9,11", MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED,
            MBE_FAILED, -1);
    spec_is(m, L, "3-4,7,9", MBE_SCF_NOT_CONVERGED, MBE_FAILED, -1);
    spec_is(m, L, "2,6,11", MBE_UNDEFINED, -1);
    spec_is(m, L, "0-1,5,8,10", MBE_COMPLETED, -1);
    spec_is(m, L, "", -1);
    close_ok(m);
}
END_TEST

START_TEST(invalid_status_value_named)
{
    mbe_master *m = open_ok("bad.h5", "s");
    mbe_level_summary s;
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_summarize(m, "x", &s, &e), 0);
    ck_assert_msg(strstr(e.msg, "frame 2") && strstr(e.msg, "7") &&
                  strstr(e.msg, "status_x"), "message: %s", e.msg);
    ck_assert_ptr_null(s.level);
    mbe_frames f = {0};
    int all[MBE_N_STATUS] = {1, 1, 1, 1};
    ck_assert_int_lt(mbe_master_frames_with_status(m, "x", all, &f, &e), 0);
    ck_assert_msg(strstr(e.msg, "frame 2"), "message: %s", e.msg);
    ck_assert_uint_eq(f.n, 0);
    ck_assert_ptr_null(f.idx);
    close_ok(m);
}
END_TEST

START_TEST(empty_level_refused)
{
    mbe_master *m = open_ok("counts.h5", "md/argon");
    mbe_level_summary s;
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_summarize(m, "", &s, &e), 0);
    mbe_frames f = {0};
    int all[MBE_N_STATUS] = {1, 1, 1, 1};
    ck_assert_int_lt(mbe_master_frames_with_status(m, "", all, &f, &e), 0);
    close_ok(m);
    /* Freeing a zeroed or freed summary is harmless. */
    mbe_level_summary z;
    memset(&z, 0, sizeof z);
    mbe_level_summary_free(&z);
    mbe_level_summary_free(&z);
    mbe_level_summary_free(NULL);
}
END_TEST

START_TEST(blocks_larger_than_one_read)
{
    mbe_master *m = open_ok("big.h5", "big");
    ck_assert_int_eq(mbe_master_n_frames(m), BIG_N);
    mbe_level_summary s;
    summarize_ok(m, "lj", &s);
    counts_are(&s, BIG_N - 7, 2, 1, 4);
    /* Frame 1 is the first COMPLETED one; the largest energy lies past the
     * first block (frame N-2), the NaN at N-4 and the 1e9 of the SCF frame
     * N-1 do not count. */
    ck_assert_double_eq_tol(s.e_min, 1e-3, 1e-15);
    ck_assert_double_eq_tol(s.e_max, (BIG_N - 2) * 1e-3, 1e-9);
    mbe_level_summary_free(&s);
    char want[128];
    /* N-7 = 2^20 - 1 and N-6 = 2^20 lie on both sides of the boundary. */
    snprintf(want, sizeof want, "0,%d-%d,%d", BIG_N - 7, BIG_N - 6,
             BIG_N - 3);
    spec_is(m, "lj", want, MBE_FAILED, -1);
    snprintf(want, sizeof want, "0,5,%d-%d,%d,%d", BIG_N - 7, BIG_N - 5,
             BIG_N - 3, BIG_N - 1);
    spec_is(m, "lj", want, MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED, MBE_FAILED,
            -1);
    close_ok(m);
}
END_TEST

/* ---------------------------------------------------------- shards */

/* A finished shard without forces of frames 0..n-1 with the given
 * statuses (COMPLETED ones with energy[k]); energy[k] of a frame with
 * poke[k] is then written over the stored one, as another writer or an
 * edit would leave it: mbe_shard_put refuses non-finite results, and
 * stores NaN for frames that are not COMPLETED. */
static const char *shard_with(const char *name, size_t n,
                              const int64_t *status, const double *energy,
                              const int *poke)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fixdir, name);
    mbe_shard_meta m = {0};
    m.master_file = "/data/master.h5";
    m.key = "md/argon";
    m.n_frames = (int64_t)n;
    m.n_atoms = 2;
    m.level = "lj";
    m.selection = "all";
    m.calculator = "lj";
    m.calc_settings = "";
    m.tool_version = MBE_VERSION;
    m.host = "node1";
    m.slurm_job_id = m.slurm_array_job_id = m.slurm_array_task_id = "";
    m.shard_id = "00112233445566778899aabbccddeeff";
    m.start_time = "2026-01-01T00:00:00Z";
    m.no_forces = 1;
    m.startup_ms = -1;
    mbe_frames f = {0};
    uint32_t geom[16] = {0};
    mbe_err e = {{0}};
    ck_assert_uint_le(n, 16);
    for (size_t k = 0; k < n; k++)
        ck_assert_int_eq(mbe_frames_push(&f, (int64_t)k, &e), 0);
    mbe_shard *sh = NULL;
    ck_assert_msg(mbe_shard_create(path, &m, &f, geom, &sh, &e) == 0, "%s",
                  e.msg);
    for (size_t k = 0; k < n; k++)
        if (status[k] != MBE_UNDEFINED)
            ck_assert_msg(mbe_shard_put(sh, k, status[k],
                                        poke[k] ? -1.5 : energy[k], NULL, 0,
                                        &e) == 0, "put %zu: %s", k, e.msg);
    ck_assert_msg(mbe_shard_finish(sh, &e) == 0, "%s", e.msg);
    mbe_frames_free(&f);
    if (!poke)
        return path;

    hid_t h = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(h, 0);
    hid_t ds = H5Dopen2(h, "energy", H5P_DEFAULT);
    ck_assert_int_ge(ds, 0);
    haddr_t at = H5Dget_offset(ds);
    ck_assert(at != HADDR_UNDEF);
    H5Dclose(ds);
    H5Fclose(h);
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    for (size_t k = 0; k < n; k++)
        if (poke[k])
            ck_assert_int_eq(pwrite(fd, &energy[k], sizeof energy[k],
                                    (off_t)(at + k * sizeof energy[k])),
                             (ssize_t)sizeof energy[k]);
    ck_assert_int_eq(close(fd), 0);
    return path;
}

static void shard_summary_of(const char *path, mbe_shard_summary *s)
{
    mbe_shard_reader *r = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_shard_open(path, &r, &e) == 0, "%s", e.msg);
    /* Whatever the caller's struct held before does not count. */
    memset(s, 0x55, sizeof *s);
    mbe_shard_summarize(r, s);
    mbe_shard_reader_close(r);
}

static void shard_counts_are(const mbe_shard_summary *s, int64_t completed,
                             int64_t undefined, int64_t scf, int64_t failed)
{
    ck_assert_int_eq(s->count[MBE_COMPLETED], completed);
    ck_assert_int_eq(s->count[MBE_UNDEFINED], undefined);
    ck_assert_int_eq(s->count[MBE_SCF_NOT_CONVERGED], scf);
    ck_assert_int_eq(s->count[MBE_FAILED], failed);
}

/* Mixed statuses; the range is over the COMPLETED frames with a finite
 * energy only: not the energies of FAILED or SCF_NOT_CONVERGED frames,
 * not infinities, not NaN (first, so that it cannot seed the range). */
START_TEST(shard_counts_and_range)
{
    const int64_t st[] = {MBE_COMPLETED, MBE_COMPLETED, MBE_FAILED,
                          MBE_COMPLETED, MBE_SCF_NOT_CONVERGED,
                          MBE_UNDEFINED, MBE_COMPLETED, MBE_COMPLETED,
                          MBE_FAILED, MBE_COMPLETED};
    const double en[] = {NAN, -2.0, -100.0, -1.0, 100.0, 0, INFINITY,
                         -INFINITY, -50.0, -1.25};
    const int poke[] = {1, 0, 1, 0, 1, 0, 1, 1, 1, 0};
    const char *p = shard_with("mixed.h5", 10, st, en, poke);
    mbe_shard_summary s;
    shard_summary_of(p, &s);
    shard_counts_are(&s, 6, 1, 1, 2);
    ck_assert_msg(s.e_min == -2.0 && s.e_max == -1.0, "range %g .. %g",
                  s.e_min, s.e_max);
}
END_TEST

/* No COMPLETED frame: NaN bounds (JSON null, "-" in the table), even
 * where the other frames hold finite energies. */
START_TEST(shard_without_completed_frame)
{
    const int64_t st[] = {MBE_FAILED, MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED,
                          MBE_UNDEFINED};
    const double en[] = {-3.0, 0, 4.0, 0};
    const int poke[] = {1, 0, 1, 0};
    const char *p = shard_with("none-done.h5", 4, st, en, poke);
    mbe_shard_summary s;
    shard_summary_of(p, &s);
    shard_counts_are(&s, 0, 2, 1, 1);
    ck_assert(isnan(s.e_min) && isnan(s.e_max));
}
END_TEST

/* A shard of no frames at all. */
START_TEST(shard_of_no_frames)
{
    const char *p = shard_with("empty.h5", 0, NULL, NULL, NULL);
    mbe_shard_summary s;
    shard_summary_of(p, &s);
    shard_counts_are(&s, 0, 0, 0, 0);
    ck_assert(isnan(s.e_min) && isnan(s.e_max));
}
END_TEST

static Suite *status_suite(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("status");
    tcase_add_unchecked_fixture(tc, write_fixtures, remove_fixtures);
    tcase_add_test(tc, counts_by_status);
    tcase_add_test(tc, energy_range_of_completed_only);
    tcase_add_test(tc, legacy_level_all_completed);
    tcase_add_test(tc, completed_level_with_status_is_not_legacy);
    tcase_add_test(tc, legacy_in_finite_subsystem);
    tcase_add_test(tc, absent_level_all_undefined);
    tcase_add_test(tc, group_without_ground_truth);
    tcase_add_test(tc, frames_with_status_specs);
    tcase_add_test(tc, invalid_status_value_named);
    tcase_add_test(tc, empty_level_refused);
    tcase_add_test(tc, blocks_larger_than_one_read);
    tcase_add_test(tc, shard_counts_and_range);
    tcase_add_test(tc, shard_without_completed_frame);
    tcase_add_test(tc, shard_of_no_frames);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(status_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
