/* test_missing.c - the frames of mbe-status --missing and --failed
 * (mbe_master_missing, mbe_master_missing_keyed) on masters written by
 * h5py as the package writes them (tests/pylib/mbetest.py): the specs of
 * one key and the "KEY: SPEC" lines of several, how the level is seen in
 * each group, and no spec while a merge awaits recovery. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "mbe.h"

/* ------------------------------------------------------------ fixtures */

/* two.h5: md/a (8 frames, level lj stored), md/b (5 frames, all
 * COMPLETED) and the FiniteSubsystem fs/dimer (3 frames, no lj). */
static const char make_fixtures[] =
    "import os, sys\n"
    "sys.path.insert(0, os.path.join(os.environ[\"MBE_ROOT\"], \"tests\", \"pylib\"))\n"
    "import h5py\n"
    "import numpy as np\n"
    "import mbetest as mt\n"
    "\n"
    "os.chdir(sys.argv[1])\n"
    "\n"
    "\n"
    "def put(name, key, level, st):\n"
    "    n = len(st)\n"
    "    mt.update_ground_truth(name, key, level, np.zeros(n),\n"
    "                           np.zeros((n, 2, 3)), np.array(st))\n"
    "\n"
    "\n"
    "mt.write_structure(\"two.h5\", \"md/a\", mt.random_cluster(8, 2), [18, 18])\n"
    "put(\"two.h5\", \"md/a\", \"lj\", [0, 1, 2, 3, 0, 0, 1, 3])\n"
    "mt.write_structure(\"two.h5\", \"md/b\", mt.random_cluster(5, 2), [18, 18])\n"
    "put(\"two.h5\", \"md/b\", \"lj\", [0, 0, 0, 0, 0])\n"
    "mt.write_finite_subsystem(\"two.h5\", \"fs/dimer\",\n"
    "                          mt.random_cluster(3, 2), [1, 1])\n"
    "\n"
    "mt.write_structure(\"generator.h5\", \"s\", mt.random_cluster(4, 2),\n"
    "                   [18, 18], level_of_theory=\"lj\")\n"
    "put(\"generator.h5\", \"s\", \"lj\", [1, 3, 2, 1])\n"
    "\n"
    "mt.write_structure(\"hidden.h5\", \"s\", mt.random_cluster(4, 2), [18, 18])\n"
    "put(\"hidden.h5\", \"s\", \"lj\", [0, 0, 3, 0])\n"
    "put(\"hidden.h5\", \"s\", \"pbe\", [0, 0, 0, 0])\n"
    "with h5py.File(\"hidden.h5\", \"a\") as f:\n"
    "    f[\"s\"][\"ground_truth\"].attrs[\"levels_of_theory\"] = np.array(\n"
    "        [\"pbe\"], dtype=h5py.string_dtype())\n"
    "\n"
    "mt.write_structure(\"recover.h5\", \"s\", mt.random_cluster(4, 2), [18, 18])\n"
    "put(\"recover.h5\", \"s\", \"lj\", [0, 1, 0, 3])\n"
    "# What mbe-merge leaves when killed in a structural change.\n"
    "open(\"recover.h5.mbe-journal\", \"wb\").close()\n";

static char fixdir[64];

static void write_fixtures(void)
{
    snprintf(fixdir, sizeof fixdir, "/tmp/mbe-test-missing-XXXXXX");
    th_make_fixtures(fixdir, make_fixtures);
}

static void remove_fixtures(void)
{
    th_remove_fixtures(fixdir);
}

/* ------------------------------------------------------------- helpers */

/* The views reported, as "KEY=VIEW;" in order. */
static char views[512];

static void on_view(void *ud, const char *key, mbe_level_view view)
{
    ck_assert_ptr_eq(ud, views);
    size_t n = strlen(views);
    snprintf(views + n, sizeof views - n, "%s=%d;", key, (int)view);
}

static mbe_missing_opts opts(int undefined)
{
    mbe_missing_opts o = {.level = "lj", .undefined = undefined,
                          .lock = {0, NULL, NULL}, .on_view = on_view,
                          .ud = views};
    views[0] = '\0';
    return o;
}

static const char *in_fix(const char *file)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fixdir, file);
    return path;
}

/* The spec of key (NULL: the only group) of file, which must be want. */
static void spec_is(const char *file, const char *key, int undefined,
                    const char *want)
{
    mbe_missing_opts o = opts(undefined);
    char *spec = NULL;
    mbe_err e = {{0}};
    int rc = mbe_master_missing(in_fix(file), key, &o, &spec, &e);
    ck_assert_msg(rc == 0, "%s:%s: %s", file, key ? key : "", e.msg);
    ck_assert_ptr_nonnull(spec);
    ck_assert_msg(strcmp(spec, want) == 0, "%s:%s: '%s', want '%s'", file,
                  key ? key : "", spec, want);
    free(spec);
}

/* The keyed spec of the keys pattern (NULL: --all-keys) of file. */
static void keyed_is(const char *file, const char *pattern, int undefined,
                     const char *want)
{
    mbe_missing_opts o = opts(undefined);
    mbe_strlist keys = {0};
    mbe_err e = {{0}};
    if (pattern)
        ck_assert_int_eq(mbe_strlist_push(&keys, pattern, &e), 0);
    char *spec = NULL;
    int rc = mbe_master_missing_keyed(in_fix(file), &keys, !pattern, &o,
                                      &spec, &e);
    ck_assert_msg(rc == 0, "%s: %s", file, e.msg);
    ck_assert_ptr_nonnull(spec);
    ck_assert_msg(strcmp(spec, want) == 0, "%s %s: '%s', want '%s'", file,
                  pattern ? pattern : "--all-keys", spec, want);
    free(spec);
    mbe_strlist_free(&keys);
}

/* --------------------------------------------------------------- tests */

/* --missing: every frame not COMPLETED; --failed: FAILED and
 * SCF_NOT_CONVERGED only. */
START_TEST(missing_and_failed_of_one_key)
{
    spec_is("two.h5", "md/a", 1, "1-3,6-7");
    ck_assert_str_eq(views, "md/a=0;");
    spec_is("two.h5", "md/a", 0, "2-3,7");
    spec_is("two.h5", "md/b", 1, "");
    spec_is("two.h5", "md/b", 0, "");
    /* No lj in the group: every frame is missing, none has failed. */
    spec_is("two.h5", "fs/dimer", 1, "0-2");
    ck_assert_str_eq(views, "fs/dimer/cluster_of_molecules=2;");
    spec_is("two.h5", "fs/dimer", 0, "");
}
END_TEST

/* The package's view decides, and the caller hears it under the group's
 * own name (the only group when key is NULL). */
START_TEST(views_reported)
{
    spec_is("generator.h5", NULL, 1, "");
    ck_assert_str_eq(views, "s=1;");
    spec_is("generator.h5", NULL, 0, "");
    spec_is("hidden.h5", NULL, 1, "0-3");
    ck_assert_str_eq(views, "s=3;");
    spec_is("hidden.h5", NULL, 0, "");
}
END_TEST

/* One "KEY: SPEC" line per key with frames, in pool order; keys with
 * none are left out, and no key with any gives "". */
START_TEST(keyed_lines)
{
    keyed_is("two.h5", NULL, 1,
             "fs/dimer/cluster_of_molecules: 0-2\nmd/a: 1-3,6-7");
    ck_assert_str_eq(views,
                     "fs/dimer/cluster_of_molecules=2;md/a=0;md/b=0;");
    keyed_is("two.h5", NULL, 0, "md/a: 2-3,7");
    keyed_is("two.h5", "md/*", 1, "md/a: 1-3,6-7");
    keyed_is("two.h5", "md/b", 1, "");
    keyed_is("two.h5", "fs/*", 0, "");
}
END_TEST

/* While a merge awaits recovery, no spec at all: MBE_ERECOVERY, which
 * mbe-status tells from other failures. */
START_TEST(recovery_pending)
{
    mbe_missing_opts o = opts(1);
    char *spec = (char *)"x";
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_master_missing(in_fix("recover.h5"), NULL, &o,
                                        &spec, &e), MBE_ERECOVERY);
    ck_assert_ptr_null(spec);
    ck_assert_str_eq(mbe_err_strip_path(e.msg, in_fix("recover.h5")),
                     "an interrupted merge awaits recovery: run mbe-merge "
                     "again first");
    ck_assert_str_eq(views, "");
    mbe_strlist keys = {0};
    ck_assert_int_eq(mbe_strlist_push(&keys, "s", &e), 0);
    spec = (char *)"x";
    ck_assert_int_eq(mbe_master_missing_keyed(in_fix("recover.h5"), &keys,
                                              0, &o, &spec, &e),
                     MBE_ERECOVERY);
    ck_assert_ptr_null(spec);
    ck_assert(strstr(e.msg, "run mbe-merge again first"));
    mbe_strlist_free(&keys);
}
END_TEST

/* Other failures are plain ones that name the file. */
START_TEST(errors_name_the_file)
{
    mbe_missing_opts o = opts(1);
    char *spec = NULL;
    mbe_err e = {{0}};
    const char *p = in_fix("two.h5");
    int rc = mbe_master_missing(p, "nope", &o, &spec, &e);
    ck_assert_int_eq(rc, MBE_EFAIL);
    ck_assert_ptr_null(spec);
    ck_assert_msg(mbe_err_strip_path(e.msg, p) != e.msg, "%s", e.msg);
    /* Several groups and no key: the library says which to choose. */
    rc = mbe_master_missing(p, NULL, &o, &spec, &e);
    ck_assert_int_eq(rc, MBE_EFAIL);
    ck_assert_ptr_null(spec);
    ck_assert_msg(strstr(e.msg, "several frame-holding groups"), "%s",
                  e.msg);
}
END_TEST

static Suite *missing_suite(void)
{
    Suite *s = suite_create("missing");
    TCase *tc = tcase_create("missing");
    tcase_add_unchecked_fixture(tc, write_fixtures, remove_fixtures);
    tcase_add_test(tc, missing_and_failed_of_one_key);
    tcase_add_test(tc, views_reported);
    tcase_add_test(tc, keyed_lines);
    tcase_add_test(tc, recovery_pending);
    tcase_add_test(tc, errors_name_the_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(missing_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
