/* test_selection.c - how the package's choice of frames sees a level of
 * theory (mbe_master_level_view, mbe_master_read_visible_status) on
 * masters written by h5py (tests/pylib/mbetest.py): the group's
 * level_of_theory, listed, unlisted and legacy levels; and that the
 * stored view (mbe_master_read_status, mbe_master_summarize) and the
 * frames for --missing (mbe_master_frames_with_status) each keep theirs.
 * The end-to-end comparison with a transcription of the package's rules
 * is tests/interop/test_selection.py. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "mbe.h"

/* ------------------------------------------------------------ fixtures */

/* Every master has 6 frames; level "lj" holds the status ST where it has
 * one. */
static const char make_fixtures[] =
    "import os, sys\n"
    "sys.path.insert(0, os.path.join(os.environ[\"MBE_ROOT\"], \"tests\", \"pylib\"))\n"
    "import h5py\n"
    "import numpy as np\n"
    "import mbetest as mt\n"
    "\n"
    "os.chdir(sys.argv[1])\n"
    "K = \"s\"\n"
    "n = 6\n"
    "ST = np.array([0, 1, 2, 3, 0, 1])\n"
    "\n"
    "\n"
    "def master(name, lot=None):\n"
    "    mt.write_structure(name, K, mt.random_cluster(n, 2), [18, 18],\n"
    "                       level_of_theory=lot)\n"
    "\n"
    "\n"
    "def put(name, level, legacy=False):\n"
    "    mt.update_ground_truth(name, K, level, np.zeros(n),\n"
    "                           np.zeros((n, 2, 3)), ST, with_status=not legacy)\n"
    "\n"
    "\n"
    "def levels(name, names):\n"
    "    with h5py.File(name, \"a\") as f:\n"
    "        f[K][\"ground_truth\"].attrs[\"levels_of_theory\"] = np.array(\n"
    "            names, dtype=h5py.string_dtype())\n"
    "\n"
    "\n"
    "master(\"listed.h5\")\n"
    "put(\"listed.h5\", \"lj\")\n"
    "master(\"generator.h5\", \"lj\")\n"
    "put(\"generator.h5\", \"lj\")\n"
    "master(\"fixed.h5\")\n"
    "put(\"fixed.h5\", \"lj\")\n"
    "with h5py.File(\"fixed.h5\", \"a\") as f:\n"
    "    f[K].attrs[\"level_of_theory\"] = np.bytes_(b\"lj\")\n"
    "master(\"hidden.h5\")\n"
    "put(\"hidden.h5\", \"lj\")\n"
    "put(\"hidden.h5\", \"pbe\")\n"
    "levels(\"hidden.h5\", [\"pbe\"])\n"
    "master(\"legacy.h5\")\n"
    "put(\"legacy.h5\", \"lj\", legacy=True)\n"
    "master(\"legacy_hidden.h5\")\n"
    "put(\"legacy_hidden.h5\", \"lj\", legacy=True)\n"
    "levels(\"legacy_hidden.h5\", [])\n"
    "master(\"plain.h5\")\n"
    "master(\"plain_generator.h5\", \"lj\")\n";

static char fixdir[64];

static void write_fixtures(void)
{
    snprintf(fixdir, sizeof fixdir, "/tmp/mbe-test-selection-XXXXXX");
    th_make_fixtures(fixdir, make_fixtures);
}

static void remove_fixtures(void)
{
    th_remove_fixtures(fixdir);
}

/* ------------------------------------------------------------- helpers */

static const mbe_lock_opts no_wait = {0, NULL, NULL};
enum { C = MBE_COMPLETED, U = MBE_UNDEFINED, S = MBE_SCF_NOT_CONVERGED,
       F = MBE_FAILED };
static const int64_t STORED[6] = {C, U, S, F, C, U};
static const int64_t ALL_C[6] = {C, C, C, C, C, C};
static const int64_t ALL_U[6] = {U, U, U, U, U, U};

static mbe_master *open_ok(const char *file)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fixdir, file);
    mbe_master *m = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_open(path, NULL, 0, &no_wait, &m, &e) == 0,
                  "open %s: %s", file, e.msg);
    return m;
}

static void close_ok(mbe_master *m)
{
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_close(m, &e) == 0, "close: %s", e.msg);
}

/* Level "lj" of file: its view, its visible and its stored status. */
static void lj_is(const char *file, mbe_level_view view,
                  const int64_t *visible, const int64_t *stored)
{
    mbe_master *m = open_ok(file);
    mbe_err e = {{0}};
    mbe_level_view v = (mbe_level_view)-1;
    ck_assert_msg(mbe_master_level_view(m, "lj", &v, &e) == 0, "%s: %s",
                  file, e.msg);
    ck_assert_msg(v == view, "%s: view %d, want %d", file, (int)v,
                  (int)view);
    mbe_frames sel = {0};
    ck_assert_int_eq(mbe_frames_all(6, &sel, &e), 0);
    int64_t st[6];
    ck_assert_msg(mbe_master_read_visible_status(m, "lj", &sel, st, &e) == 0,
                  "%s: %s", file, e.msg);
    for (int k = 0; k < 6; k++)
        ck_assert_msg(st[k] == visible[k], "%s: visible frame %d: %lld, "
                      "want %lld", file, k, (long long)st[k],
                      (long long)visible[k]);
    ck_assert_msg(mbe_master_read_status(m, "lj", &sel, st, &e) == 0,
                  "%s: %s", file, e.msg);
    for (int k = 0; k < 6; k++)
        ck_assert_msg(st[k] == stored[k], "%s: stored frame %d: %lld, "
                      "want %lld", file, k, (long long)st[k],
                      (long long)stored[k]);
    mbe_frames_free(&sel);
    close_ok(m);
}

/* The frames --missing prints for "lj", formatted. */
static void missing_is(const char *file, const char *want)
{
    int set[MBE_N_STATUS] = {0};
    set[U] = set[S] = set[F] = 1;
    mbe_master *m = open_ok(file);
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_frames_with_status(m, "lj", set, &f, &e) == 0,
                  "%s: %s", file, e.msg);
    char *s = mbe_frames_format(&f);
    ck_assert_msg(strcmp(s, want) == 0, "%s: missing '%s', want '%s'", file,
                  s, want);
    free(s);
    mbe_frames_free(&f);
    close_ok(m);
}

/* ---------------------------------------------------------------- views */

START_TEST(listed_level_is_its_stored_status)
{
    lj_is("listed.h5", MBE_LEVEL_LISTED, STORED, STORED);
    missing_is("listed.h5", "1-3,5");
}
END_TEST

START_TEST(generator_level_is_all_completed)
{
    lj_is("generator.h5", MBE_LEVEL_GENERATOR, ALL_C, STORED);
    lj_is("plain_generator.h5", MBE_LEVEL_GENERATOR, ALL_C, ALL_U);
    missing_is("generator.h5", "");
    missing_is("plain_generator.h5", "");
}
END_TEST

START_TEST(fixed_length_level_of_theory_never_matches)
{
    /* h5py reads it as bytes, which the package's == never equals. */
    lj_is("fixed.h5", MBE_LEVEL_LISTED, STORED, STORED);
}
END_TEST

START_TEST(unlisted_status_is_hidden)
{
    lj_is("hidden.h5", MBE_LEVEL_HIDDEN, ALL_U, STORED);
    missing_is("hidden.h5", "0-5");
}
END_TEST

START_TEST(legacy_level_listed_or_hidden)
{
    lj_is("legacy.h5", MBE_LEVEL_LISTED, ALL_C, ALL_C);
    missing_is("legacy.h5", "");
    lj_is("legacy_hidden.h5", MBE_LEVEL_HIDDEN, ALL_U, ALL_C);
    missing_is("legacy_hidden.h5", "0-5");
}
END_TEST

START_TEST(absent_level)
{
    lj_is("plain.h5", MBE_LEVEL_ABSENT, ALL_U, ALL_U);
    mbe_master *m = open_ok("generator.h5");
    mbe_level_view v;
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_master_level_view(m, "lj2", &v, &e), 0);
    ck_assert_int_eq(v, MBE_LEVEL_ABSENT);
    close_ok(m);
}
END_TEST

START_TEST(summary_keeps_the_stored_counts)
{
    /* mbe-status's table reports what the file holds, listed or not. */
    mbe_master *m = open_ok("hidden.h5");
    mbe_level_summary s;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_summarize(m, "lj", &s, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(s.count[C], 2);
    ck_assert_int_eq(s.count[U], 2);
    ck_assert_int_eq(s.count[F], 1);
    mbe_level_summary_free(&s);
    close_ok(m);
}
END_TEST

START_TEST(visible_status_checks_the_selection)
{
    mbe_master *m = open_ok("generator.h5");
    mbe_frames sel = {0};
    mbe_err e = {{0}};
    int64_t st[8];
    ck_assert_int_eq(mbe_frames_all(7, &sel, &e), 0);
    ck_assert_int_lt(mbe_master_read_visible_status(m, "lj", &sel, st, &e),
                     0);
    ck_assert_msg(strstr(e.msg, "frame 6 out of range"), "%s", e.msg);
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

/* --------------------------------------------------------------- main */

static Suite *selection_suite(void)
{
    Suite *s = suite_create("selection");
    TCase *tc = tcase_create("level view");
    tcase_add_unchecked_fixture(tc, write_fixtures, remove_fixtures);
    tcase_add_test(tc, listed_level_is_its_stored_status);
    tcase_add_test(tc, generator_level_is_all_completed);
    tcase_add_test(tc, fixed_length_level_of_theory_never_matches);
    tcase_add_test(tc, unlisted_status_is_hidden);
    tcase_add_test(tc, legacy_level_listed_or_hidden);
    tcase_add_test(tc, absent_level);
    tcase_add_test(tc, summary_keeps_the_stored_counts);
    tcase_add_test(tc, visible_status_checks_the_selection);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(selection_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
