/* test_journal.c - the undo journal of structural changes (journal.c):
 * commit, abort, recovery of damaged journals, and processes killed at
 * random times and right before each write-like system call. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "mbe_internal.h"

/* ------------------------------------------------------------ fixtures */

#define GROUP "ground_truth"
#define ATTR "levels_of_theory"
#define ATTR_OLD "PBE/def2-SVP"
#define ATTR_NEW "PBE/def2-SVP,wB97X/def2-TZVP"
#define N_FRAMES 20000      /* original: ~0.6 MB of data */
#define N_NEW_SMALL 4096    /* new datasets, functional tests */
#define N_NEW_BIG 500000    /* new datasets of 4 MB, kill tests */

struct fx {
    char dir[64];
    char path[96];
    char jpath[128];
    unsigned char *orig; /* the master's bytes before any change */
    size_t orig_len;
};

static double val(size_t i)
{
    return 0.25 * (double)i - 7.0;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Put the original bytes back in place (same inode, as a user's file). */
static void restore(const struct fx *fx)
{
    int fd = open(fx->path, O_WRONLY | O_TRUNC);
    ck_assert_msg(fd >= 0, "open %s: %s", fx->path, strerror(errno));
    ck_assert(write(fd, fx->orig, fx->orig_len) == (ssize_t)fx->orig_len);
    close(fd);
    unlink(fx->jpath);
}

static int same_as_orig(const struct fx *fx)
{
    size_t n = 0;
    unsigned char *b = slurp(fx->path, &n);
    int same = b && n == fx->orig_len && !memcmp(b, fx->orig, n);
    free(b);
    return same;
}

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Variants of the fixture. */
enum {
    /* Newest file format: superblock v3, which HDF5 rewrites as soon as
     * the file is opened read-write. */
    FX_LATEST = 1,
    /* Bytes after HDF5's end of allocation: HDF5 cuts the file at open,
     * i.e. it shrinks below its original size. */
    FX_TAIL = 2
};

/* A master-like file: a group with two datasets and a string attribute. */
static void fx_setup(struct fx *fx, int flags)
{
    mbe_h5_quiet();
    const char *tmp = getenv("TMPDIR");
    snprintf(fx->dir, sizeof fx->dir, "%s/mbe-jt-XXXXXX",
             tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof fx->path, "%s/master.h5", fx->dir);
    snprintf(fx->jpath, sizeof fx->jpath, "%s%s", fx->path,
             MBE_JOURNAL_SUFFIX);

    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (flags & FX_LATEST)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    hid_t f = H5Fcreate(fx->path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    ck_assert(f >= 0);
    H5Pclose(fapl);
    hid_t g = H5Gcreate2(f, GROUP, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ck_assert(g >= 0);
    double *buf = malloc(3 * N_FRAMES * sizeof *buf);
    for (size_t i = 0; i < 3 * N_FRAMES; i++)
        buf[i] = val(i);
    hsize_t d1[1] = {N_FRAMES}, d2[2] = {N_FRAMES, 3};
    hid_t s1 = H5Screate_simple(1, d1, NULL), s2 = H5Screate_simple(2, d2, NULL);
    hid_t e = H5Dcreate2(g, "energy", H5T_IEEE_F64LE, s1, H5P_DEFAULT,
                         H5P_DEFAULT, H5P_DEFAULT);
    hid_t p = H5Dcreate2(f, "positions", H5T_IEEE_F64LE, s2, H5P_DEFAULT,
                         H5P_DEFAULT, H5P_DEFAULT);
    ck_assert(e >= 0 && p >= 0);
    ck_assert(H5Dwrite(e, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       buf) >= 0);
    ck_assert(H5Dwrite(p, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       buf) >= 0);
    ck_assert(mbe_h5_attr_write_str(g, ATTR, ATTR_OLD) == 0);
    H5Dclose(e);
    H5Dclose(p);
    H5Sclose(s1);
    H5Sclose(s2);
    H5Gclose(g);
    ck_assert(H5Fclose(f) >= 0);
    free(buf);
    if (flags & FX_TAIL) {
        FILE *t = fopen(fx->path, "ab");
        ck_assert_ptr_nonnull(t);
        for (int i = 0; i < 10000; i++)
            fputc((i * 7 + 3) & 0xff, t);
        fclose(t);
    }
    fx->orig = slurp(fx->path, &fx->orig_len);
    ck_assert_ptr_nonnull(fx->orig);
}

static void fx_teardown(struct fx *fx)
{
    unlink(fx->path);
    unlink(fx->jpath);
    char tmp[128];
    snprintf(tmp, sizeof tmp, "%s/copy.h5", fx->dir);
    unlink(tmp);
    rmdir(fx->dir);
    free(fx->orig);
}

/* The structural change of a merge: three new contiguous datasets,
 * allocated early and filled with NaN, and a rewritten group attribute. */
static int apply_change(hid_t file, size_t n)
{
    int rc = -1;
    hid_t g = H5Gopen2(file, GROUP, H5P_DEFAULT);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t dims[1] = {n};
    hid_t sp = H5Screate_simple(1, dims, NULL);
    double nan = NAN;
    if (g < 0 || dcpl < 0 || sp < 0 ||
        H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 ||
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_ALLOC) < 0 ||
        H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan) < 0)
        goto out;
    for (int k = 0; k < 3; k++) {
        char name[32];
        snprintf(name, sizeof name, "new_%d", k);
        hid_t d = H5Dcreate2(g, name, H5T_IEEE_F64LE, sp, H5P_DEFAULT, dcpl,
                             H5P_DEFAULT);
        if (d < 0)
            goto out;
        H5Dclose(d);
    }
    if (mbe_h5_attr_write_str(g, ATTR, ATTR_NEW) < 0)
        goto out;
    rc = 0;
out:
    if (sp >= 0)
        H5Sclose(sp);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (g >= 0)
        H5Gclose(g);
    return rc;
}

/* What a child process does: the change through the journal, committed
 * (how == 0) or the process ends after a flush without commit, as if
 * killed (how == 1), or after two flushes rewriting the same metadata
 * (how == 2).  Returns an exit status; never returns for how != 0. */
static int change_process(const char *path, size_t n, int how)
{
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(path, &j, &e);
    if (f < 0) {
        fprintf(stderr, "journal open: %s\n", e.msg);
        return 2;
    }
    if (apply_change(f, n) < 0) {
        fprintf(stderr, "change failed\n");
        mbe_journal_abort(f, j, &e);
        return 3;
    }
    if (how) {
        H5Fflush(f, H5F_SCOPE_GLOBAL);
        if (how == 2) {
            hid_t g = H5Gopen2(f, GROUP, H5P_DEFAULT);
            mbe_h5_attr_write_str(g, ATTR, "x");
            mbe_h5_attr_write_str(g, ATTR, ATTR_OLD ",again");
            H5Gclose(g);
            H5Fflush(f, H5F_SCOPE_GLOBAL);
        }
        _exit(0); /* a crash: no commit, no clean-up */
    }
    if (mbe_journal_commit(f, j, &e) < 0) {
        fprintf(stderr, "commit: %s\n", e.msg);
        return 4;
    }
    return 0;
}

/* Run how != 0 of change_process in a child. */
static void crash_child(const char *path, size_t n, int how)
{
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0)
        _exit(change_process(path, n, how));
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed");
}

enum { ST_ORIGINAL, ST_COMMITTED };

/* Open with plain HDF5 and check the content: the original data always,
 * then either the original attribute and no new dataset, or the new
 * attribute and three NaN-filled datasets of n values. */
static int check_content(const char *path, size_t n, char *why, size_t wn)
{
    int state = -1;
    snprintf(why, wn, "?");
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        snprintf(why, wn, "does not open with HDF5");
        return -1;
    }
    hid_t g = H5Gopen2(f, GROUP, H5P_DEFAULT);
    double *buf = malloc((n > 3 * N_FRAMES ? n : 3 * N_FRAMES) * sizeof *buf);
    char *attr = NULL;
    hid_t e = g >= 0 ? H5Dopen2(g, "energy", H5P_DEFAULT) : -1;
    hid_t p = H5Dopen2(f, "positions", H5P_DEFAULT);
    if (g < 0 || e < 0 || p < 0 || !buf) {
        snprintf(why, wn, "original objects missing");
        goto out;
    }
    if (H5Dread(e, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        goto out;
    for (size_t i = 0; i < N_FRAMES; i++)
        if (buf[i] != val(i)) {
            snprintf(why, wn, "energy[%zu] changed", i);
            goto out;
        }
    if (H5Dread(p, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        goto out;
    for (size_t i = 0; i < 3 * N_FRAMES; i++)
        if (buf[i] != val(i)) {
            snprintf(why, wn, "positions[%zu] changed", i);
            goto out;
        }
    if (mbe_h5_attr_read_str(g, ATTR, &attr) < 0) {
        snprintf(why, wn, "attribute unreadable");
        goto out;
    }
    int nnew = 0;
    for (int k = 0; k < 3; k++) {
        char name[32];
        snprintf(name, sizeof name, "new_%d", k);
        if (H5Lexists(g, name, H5P_DEFAULT) <= 0)
            continue;
        nnew++;
        hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
        hid_t s = d >= 0 ? H5Dget_space(d) : -1;
        int ok = s >= 0 && H5Sget_simple_extent_npoints(s) == (hssize_t)n &&
                 H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                         buf) >= 0;
        for (size_t i = 0; ok && i < n; i++)
            ok = isnan(buf[i]);
        if (s >= 0)
            H5Sclose(s);
        if (d >= 0)
            H5Dclose(d);
        if (!ok) {
            snprintf(why, wn, "%s wrong", name);
            goto out;
        }
    }
    if (!strcmp(attr, ATTR_OLD) && nnew == 0)
        state = ST_ORIGINAL;
    else if (!strcmp(attr, ATTR_NEW) && nnew == 3)
        state = ST_COMMITTED;
    else
        snprintf(why, wn, "half a change: attribute '%s', %d new datasets",
                 attr, nnew);
out:
    free(attr);
    free(buf);
    if (e >= 0)
        H5Dclose(e);
    if (p >= 0)
        H5Dclose(p);
    if (g >= 0)
        H5Gclose(g);
    H5Fclose(f);
    return state;
}

static void expect_original(const struct fx *fx)
{
    char why[256];
    ck_assert_msg(same_as_orig(fx), "master not byte-identical to before");
    ck_assert_msg(check_content(fx->path, N_NEW_SMALL, why, sizeof why) ==
                  ST_ORIGINAL, "content: %s", why);
    ck_assert_msg(!exists(fx->jpath), "journal left");
}

/* ---------------------------------------------------------- functional */

static void commit_case(int flags)
{
    struct fx fx;
    fx_setup(&fx, flags);
    ck_assert_int_eq(change_process(fx.path, N_NEW_SMALL, 0), 0);
    ck_assert_msg(!exists(fx.jpath), "journal left after commit");
    char why[256];
    ck_assert_msg(check_content(fx.path, N_NEW_SMALL, why, sizeof why) ==
                  ST_COMMITTED, "content: %s", why);

    /* h5py reads the result. */
    const char *py = getenv("PYTHON");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s -c 'import h5py' 2>/dev/null",
             py ? py : "/usr/bin/python3");
    if (system(cmd) != 0) {
        printf("journal: h5py not available, h5py check skipped\n");
    } else {
        snprintf(cmd, sizeof cmd,
                 "%s -c 'import h5py, numpy, sys\n"
                 "f = h5py.File(sys.argv[1], \"r\")\n"
                 "g = f[\"" GROUP "\"]\n"
                 "a = g.attrs[\"" ATTR "\"]\n"
                 "a = a.decode() if isinstance(a, bytes) else a\n"
                 "assert a == \"" ATTR_NEW "\", a\n"
                 "for k in range(3):\n"
                 "    d = g[\"new_%%d\" %% k][...]\n"
                 "    assert d.shape == (%d,) and numpy.isnan(d).all()\n"
                 "assert g[\"energy\"][3] == 0.75 - 7.0\n' %s",
                 py ? py : "/usr/bin/python3", N_NEW_SMALL, fx.path);
        ck_assert_msg(system(cmd) == 0, "h5py could not read the result");
    }
    fx_teardown(&fx);
}

START_TEST(commit_makes_change_durable)
{
    commit_case(0);
}
END_TEST

START_TEST(commit_latest_format)
{
    commit_case(FX_LATEST);
}
END_TEST

START_TEST(commit_cuts_tail)
{
    commit_case(FX_TAIL);
}
END_TEST

START_TEST(abort_restores_bytes)
{
    for (int flags = 0; flags < 4; flags++) {
        struct fx fx;
        fx_setup(&fx, flags);
        mbe_err e = {{0}};
        mbe_journal *j = NULL;
        hid_t f = mbe_journal_open(fx.path, &j, &e);
        ck_assert_msg(f >= 0, "open: %s", e.msg);
        ck_assert(exists(fx.jpath));
        ck_assert_int_eq(apply_change(f, N_NEW_SMALL), 0);
        /* Make HDF5 write its metadata, so there is something to undo. */
        ck_assert(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0);
        ck_assert_msg(!same_as_orig(&fx), "flush changed nothing");
        /* An object left open: abort closes it. */
        hid_t g = H5Gopen2(f, GROUP, H5P_DEFAULT);
        ck_assert(g >= 0);
        ck_assert_msg(mbe_journal_abort(f, j, &e) == 0, "abort: %s", e.msg);
        ck_assert(H5Iis_valid(g) <= 0);
        expect_original(&fx);
        fx_teardown(&fx);
    }
}
END_TEST

START_TEST(commit_with_open_object_rolls_back)
{
    struct fx fx;
    fx_setup(&fx, 0);
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(fx.path, &j, &e);
    ck_assert_msg(f >= 0, "open: %s", e.msg);
    ck_assert_int_eq(apply_change(f, N_NEW_SMALL), 0);
    hid_t g = H5Gopen2(f, GROUP, H5P_DEFAULT);
    ck_assert(g >= 0);
    ck_assert(mbe_journal_commit(f, j, &e) < 0);
    ck_assert_msg(strstr(e.msg, "still open") && strstr(e.msg, "rolled back"),
                  "message: %s", e.msg);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

START_TEST(recover_without_journal)
{
    struct fx fx;
    fx_setup(&fx, 0);
    mbe_err e = {{0}};
    int rb = -1;
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(rb, 0);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

START_TEST(leftover_journal_blocks_open)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 1);
    ck_assert(exists(fx.jpath));
    ck_assert(!same_as_orig(&fx));

    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(fx.path, &j, &e);
    ck_assert(f < 0 && j == NULL);
    ck_assert_msg(strstr(e.msg, MBE_JOURNAL_SUFFIX) &&
                  strstr(e.msg, "interrupted") &&
                  strstr(e.msg, "mbe_journal_recover"), "message: %s", e.msg);
    ck_assert_msg(exists(fx.jpath), "the failed open removed the journal");

    int rb = 0;
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(rb, 1);
    expect_original(&fx);
    /* Works again afterwards. */
    ck_assert_int_eq(change_process(fx.path, N_NEW_SMALL, 0), 0);
    char why[256];
    ck_assert_msg(check_content(fx.path, N_NEW_SMALL, why, sizeof why) ==
                  ST_COMMITTED, "content: %s", why);
    fx_teardown(&fx);
}
END_TEST

/* A change killed through a link is seen and rolled back through the
 * real name, and the other way round. */
static void crash_through(int via_link_first)
{
    struct fx fx;
    fx_setup(&fx, 0);
    char link_path[200];
    snprintf(link_path, sizeof link_path, "%s/link.h5", fx.dir);
    ck_assert_int_eq(symlink("master.h5", link_path), 0);
    crash_child(via_link_first ? link_path : fx.path, N_NEW_SMALL, 1);
    ck_assert_msg(exists(fx.jpath), "no journal at the real name");
    ck_assert(mbe_master_needs_recovery(fx.path));
    ck_assert(mbe_master_needs_recovery(link_path));
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(link_path, &j, &e);
    ck_assert_msg(f < 0 && strstr(e.msg, "interrupted"), "%s", e.msg);
    int rb = 0;
    ck_assert_msg(mbe_journal_recover(via_link_first ? fx.path : link_path,
                                      &rb, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(rb, 1);
    expect_original(&fx);
    unlink(link_path);
    fx_teardown(&fx);
}

START_TEST(crash_through_link_seen_by_real_name)
{
    crash_through(1);
}
END_TEST

START_TEST(crash_through_real_name_seen_by_link)
{
    crash_through(0);
}
END_TEST

START_TEST(twice_overwritten_range_restored)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 2);
    mbe_err e = {{0}};
    int rb = 0;
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(rb, 1);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

START_TEST(torn_last_record_ignored)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 1);
    /* A record that was being appended when the process died: complete
     * head claiming 4096 bytes, only some of them there. */
    unsigned char rec[24 + 100] = {'M', 'B', 'J', 'R'};
    rec[8] = 0x10;      /* offset 16 */
    rec[17] = 0x10;     /* length 4096 */
    memset(rec + 24, 0xee, 100);
    int fd = open(fx.jpath, O_WRONLY | O_APPEND);
    ck_assert(fd >= 0);
    ck_assert(write(fd, rec, sizeof rec) == (ssize_t)sizeof rec);
    close(fd);
    mbe_err e = {{0}};
    int rb = 0;
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    ck_assert_int_eq(rb, 1);
    expect_original(&fx);

    /* Zeros after the last record (the file grew, its data was lost). */
    crash_child(fx.path, N_NEW_SMALL, 1);
    fd = open(fx.jpath, O_WRONLY | O_APPEND);
    unsigned char zeros[300] = {0};
    ck_assert(write(fd, zeros, sizeof zeros) == (ssize_t)sizeof zeros);
    close(fd);
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

START_TEST(torn_header_removed)
{
    struct fx fx;
    fx_setup(&fx, 0);
    for (int len = 0; len <= 64; len += 32) {
        int fd = open(fx.jpath, O_WRONLY | O_CREAT | O_EXCL, 0644);
        ck_assert(fd >= 0);
        unsigned char junk[64] = "MBE-JRNL";
        ck_assert(write(fd, junk, (size_t)len) == len);
        close(fd);
        mbe_err e = {{0}};
        int rb = 0;
        ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s",
                      e.msg);
        ck_assert_int_eq(rb, 1);
        expect_original(&fx);
    }
    fx_teardown(&fx);
}
END_TEST

START_TEST(damaged_journal_refused)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 1);
    size_t n = 0;
    unsigned char *jb = slurp(fx.jpath, &n);
    ck_assert(jb && n > 64 + 28 + 28);
    /* Flip a byte inside the first record, which is not the last one
     * (or else it would count as torn): a crash cannot do that. */
    int fd = open(fx.jpath, O_WRONLY);
    unsigned char b = jb[64 + 30] ^ 0xff;
    ck_assert(pwrite(fd, &b, 1, 64 + 30) == 1);
    close(fd);
    mbe_err e = {{0}};
    int rb = 0;
    ck_assert(mbe_journal_recover(fx.path, &rb, &e) < 0);
    ck_assert_msg(strstr(e.msg, "damaged") && strstr(e.msg, "backup"),
                  "message: %s", e.msg);
    ck_assert(exists(fx.jpath));
    /* Repair the journal: recovery works. */
    fd = open(fx.jpath, O_WRONLY);
    ck_assert(pwrite(fd, jb + 64 + 30, 1, 64 + 30) == 1);
    close(fd);
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    expect_original(&fx);
    free(jb);
    fx_teardown(&fx);
}
END_TEST

START_TEST(replaced_master_refused)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 1);
    /* The master is replaced by a copy (new inode). */
    char copy[128];
    snprintf(copy, sizeof copy, "%s/copy.h5", fx.dir);
    size_t n = 0;
    unsigned char *b = slurp(fx.path, &n);
    FILE *f = fopen(copy, "wb");
    ck_assert(f && fwrite(b, 1, n, f) == n);
    fclose(f);
    free(b);
    ck_assert(rename(copy, fx.path) == 0);
    mbe_err e = {{0}};
    int rb = 0;
    ck_assert(mbe_journal_recover(fx.path, &rb, &e) < 0);
    ck_assert_msg(strstr(e.msg, "replaced") && strstr(e.msg, "delete"),
                  "message: %s", e.msg);
    ck_assert(exists(fx.jpath));
    fx_teardown(&fx);
}
END_TEST

/* The journal's bytes as the comment of journal.c lays them out, with
 * zlib's crc32 (computed here, not by lib/): a journal left by an older
 * build is rolled back by a newer one. */
static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

START_TEST(journal_bytes_as_documented)
{
    struct fx fx;
    fx_setup(&fx, 0);
    crash_child(fx.path, N_NEW_SMALL, 1);
    size_t n = 0;
    unsigned char *jb = slurp(fx.jpath, &n);
    ck_assert(jb && n > 64);
    struct stat st;
    ck_assert(stat(fx.path, &st) == 0);
    ck_assert(!memcmp(jb, "MBE-JRNL", 8));
    ck_assert_uint_eq(le(jb + 8, 4), 1);
    ck_assert_uint_eq(le(jb + 12, 4), 64);
    ck_assert_uint_eq(le(jb + 16, 8), fx.orig_len);
    ck_assert_uint_eq(le(jb + 24, 8), fx.orig_len);
    ck_assert_uint_eq(le(jb + 32, 8), (uint64_t)st.st_dev);
    ck_assert_uint_eq(le(jb + 40, 8), (uint64_t)st.st_ino);
    ck_assert_uint_eq(le(jb + 56, 4), 0);
    ck_assert_uint_eq(le(jb + 60, 4), crc32(0L, jb, 60));
    size_t pos = 64, nrec = 0;
    while (pos < n) {
        ck_assert(n - pos >= 28);
        const unsigned char *r = jb + pos;
        uint64_t off = le(r + 8, 8), len = le(r + 16, 8);
        ck_assert_uint_eq(le(r, 4), 0x524a424du); /* "MBJR" */
        ck_assert_uint_eq(le(r + 4, 4), 0);
        ck_assert(len > 0 && off + len <= fx.orig_len);
        ck_assert(len + 28 <= n - pos);
        /* The original bytes of the master at off. */
        ck_assert(!memcmp(r + 24, fx.orig + off, (size_t)len));
        ck_assert_uint_eq(le(r + 24 + len, 4),
                          crc32(0L, r, (uInt)(24 + len)));
        pos += 28 + (size_t)len;
        nrec++;
    }
    ck_assert_uint_eq(pos, n);
    ck_assert(nrec > 0);
    free(jb);
    int rb = 0;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_journal_recover(fx.path, &rb, &e) == 0, "%s", e.msg);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

START_TEST(not_hdf5_fails_cleanly)
{
    struct fx fx;
    fx_setup(&fx, 0);
    FILE *f = fopen(fx.path, "wb");
    fputs("not an HDF5 file\n", f);
    fclose(f);
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    ck_assert(mbe_journal_open(fx.path, &j, &e) < 0);
    ck_assert_ptr_null(j);
    ck_assert_msg(strstr(e.msg, fx.path), "message: %s", e.msg);
    ck_assert(!exists(fx.jpath));
    fx_teardown(&fx);
}
END_TEST

START_TEST(hdf5_file_lock_respected)
{
    struct fx fx;
    fx_setup(&fx, 0);
    /* Another program (h5py) has the file open: HDF5 holds a shared flock
     * on it. */
    int fd = open(fx.path, O_RDONLY);
    ck_assert(fd >= 0 && flock(fd, LOCK_SH) == 0);
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(fx.path, &j, &e);
    ck_assert(f < 0 && j == NULL);
    ck_assert_msg(strstr(e.msg, "lock") && strstr(e.msg, fx.path),
                  "message: %s", e.msg);
    expect_original(&fx);
    /* HDF5_USE_FILE_LOCKING=FALSE turns HDF5's lock off, as with sec2.
     * HDF5 reads it when it starts, so in a new process. */
    /* The path, not /proc/self/exe itself: under valgrind that link is
     * the valgrind tool, and only readlink() of it is redirected. */
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert(len > 0);
    self[len] = '\0';
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        setenv("HDF5_USE_FILE_LOCKING", "FALSE", 1);
        execl(self, "test_journal", "--open-and-abort", fx.path,
              (char *)NULL);
        _exit(127);
    }
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "open with HDF5_USE_FILE_LOCKING=FALSE failed");
    close(fd);
    expect_original(&fx);
    fx_teardown(&fx);
}
END_TEST

/* ----------------------------------------------------------- kill tests */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: deterministic, independent of the C library. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

struct outcome {
    int untouched;   /* killed before the journal existed */
    int rolled_back; /* recovery restored the original */
    int committed;   /* the change was complete (journal gone) */
};

/* After the child is gone: recover, then the master must be exactly the
 * original or exactly the committed change. */
static void judge(const struct fx *fx, size_t n, struct outcome *o,
                  const char *when)
{
    mbe_err e = {{0}};
    int rb = 0;
    int rc = mbe_journal_recover(fx->path, &rb, &e);
    ck_assert_msg(rc == 0, "%s: recover: %s", when, e.msg);
    ck_assert_msg(!exists(fx->jpath), "%s: journal left", when);
    char why[256];
    int st = check_content(fx->path, n, why, sizeof why);
    if (same_as_orig(fx)) {
        ck_assert_msg(st == ST_ORIGINAL, "%s: content: %s", when, why);
        if (rb)
            o->rolled_back++;
        else
            o->untouched++;
    } else {
        ck_assert_msg(!rb, "%s: rolled back, but not byte-identical", when);
        ck_assert_msg(st == ST_COMMITTED, "%s: neither original nor "
                      "committed: %s", when, why);
        o->committed++;
    }
}

START_TEST(kill_at_random_times)
{
    struct fx fx;
    fx_setup(&fx, 0);
    /* How long one change takes here, from fork to exit: the longest of
     * three runs. */
    double dur = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        pid_t pid = fork();
        ck_assert(pid >= 0);
        if (pid == 0)
            _exit(change_process(fx.path, N_NEW_BIG, 0));
        int st = 0;
        ck_assert(waitpid(pid, &st, 0) == pid);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "change failed");
        if (now() - t0 > dur)
            dur = now() - t0;
        restore(&fx);
    }

    int reps = 120;
    /* Stay well inside the time limit on slow disks. */
    if (dur * reps > 40.0)
        reps = (int)(40.0 / dur) > 100 ? (int)(40.0 / dur) : 100;
    uint64_t seed = 0x5eed1234abcdull;
    struct outcome o = {0};
    double start = now();
    for (int r = 0; r < reps; r++) {
        restore(&fx);
        /* Delays spread over the whole run, a little past its end. */
        double delay = dur * 1.2 * (double)(rng_next(&seed) >> 11) /
                       (double)(1ull << 53);
        pid_t pid = fork();
        ck_assert(pid >= 0);
        if (pid == 0)
            _exit(change_process(fx.path, N_NEW_BIG, 0));
        struct timespec ts = {(time_t)delay,
                              (long)((delay - (double)(time_t)delay) * 1e9)};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int st = 0;
        ck_assert(waitpid(pid, &st, 0) == pid);
        ck_assert_msg(WIFSIGNALED(st) || WEXITSTATUS(st) == 0,
                      "child failed with status %d", WEXITSTATUS(st));
        char when[64];
        snprintf(when, sizeof when, "kill %d after %.1f ms", r,
                 delay * 1e3);
        judge(&fx, N_NEW_BIG, &o, when);
    }
    printf("journal kill test: %d kills at random times over %.1f ms "
           "(one change), %.1f s total: %d untouched, %d rolled back, "
           "%d committed\n", reps, dur * 1e3, now() - start, o.untouched,
           o.rolled_back, o.committed);
    fflush(stdout);
    ck_assert_int_eq(o.untouched + o.rolled_back + o.committed, reps);
    /* Commits are not required: a slow disk (other tests running) may
     * stretch every run past the longest delay. */
    ck_assert_msg(o.rolled_back > 0, "the delays did not cover the change");
    fx_teardown(&fx);
}
END_TEST

/* Is this system call entry one that changes what is on disk? */
static int write_like(const struct __ptrace_syscall_info *si)
{
    switch (si->entry.nr) {
    case SYS_write:
    case SYS_pwrite64:
    case SYS_writev:
    case SYS_pwritev:
    case SYS_ftruncate:
    case SYS_fsync:
    case SYS_fdatasync:
    case SYS_unlinkat:
    case SYS_renameat:
#ifdef SYS_unlink
    case SYS_unlink:
#endif
#ifdef SYS_rename
    case SYS_rename:
#endif
        return 1;
    case SYS_openat:
        return (si->entry.args[2] & O_CREAT) != 0;
#ifdef SYS_open
    case SYS_open:
        return (si->entry.args[1] & O_CREAT) != 0;
#endif
    default:
        return 0;
    }
}

/* Run the change in a traced child and SIGKILL it on entry to its
 * kill_at-th write-like system call (1-based; 0: never).  Returns how many
 * such calls it made, or -1 when tracing is not possible here. */
static long traced_run(const struct fx *fx, size_t n, long kill_at)
{
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
            _exit(99);
        raise(SIGSTOP);
        _exit(change_process(fx->path, n, 0));
    }
    int st = 0;
    ck_assert(waitpid(pid, &st, 0) == pid);
    if (WIFEXITED(st)) {
        ck_assert_int_eq(WEXITSTATUS(st), 99);
        return -1;
    }
    ck_assert(WIFSTOPPED(st));
    if (ptrace(PTRACE_SETOPTIONS, pid, NULL,
               (void *)(long)(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)) <
        0) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        return -1;
    }
    long count = 0;
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, pid, NULL, (void *)(long)sig) < 0)
            break;
        sig = 0;
        ck_assert(waitpid(pid, &st, 0) == pid);
        if (WIFEXITED(st) || WIFSIGNALED(st))
            return count;
        if (!WIFSTOPPED(st))
            continue;
        if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
            sig = WSTOPSIG(st); /* pass real signals on */
            continue;
        }
        struct __ptrace_syscall_info si;
        if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *)sizeof si, &si) <= 0)
            continue;
        if (si.op != PTRACE_SYSCALL_INFO_ENTRY || !write_like(&si))
            continue;
        if (++count == kill_at) {
            kill(pid, SIGKILL);
            /* Without the stop resumed, the kill takes effect now: the
             * call is never executed. */
            ptrace(PTRACE_CONT, pid, NULL, NULL);
            while (waitpid(pid, &st, 0) == pid && !WIFSIGNALED(st) &&
                   !WIFEXITED(st))
                ;
            return count;
        }
    }
    waitpid(pid, &st, 0);
    return count;
}

/* Kill the change right before each of its write-like system calls, for
 * one fixture variant. */
static void kill_before_each_write_case(int flags, const char *name)
{
    struct fx fx;
    fx_setup(&fx, flags);
    /* Smaller datasets: the point is the order of the writes. */
    size_t n = 120000;
    long total = traced_run(&fx, n, 0);
    if (total < 0) {
        printf("journal: ptrace not permitted here, exact-point kill test "
               "skipped\n");
        fx_teardown(&fx);
        return;
    }
    char why[256];
    ck_assert_msg(check_content(fx.path, n, why, sizeof why) == ST_COMMITTED,
                  "traced run did not commit: %s", why);
    ck_assert(!exists(fx.jpath));
    /* At most 300 points, spread evenly, always including the last. */
    long step = total > 300 ? (total + 299) / 300 : 1;
    struct outcome o = {0};
    int runs = 0;
    double start = now();
    for (long k = total; k >= 1; k -= step) {
        restore(&fx);
        long got = traced_run(&fx, n, k);
        ck_assert_int_ge(got, 0);
        char when[96];
        snprintf(when, sizeof when, "%s: killed before write-like call %ld",
                 name, k);
        judge(&fx, n, &o, when);
        runs++;
    }
    printf("journal exact-point test, %s: %ld write-like calls per change, "
           "%d kills in %.1f s: %d untouched, %d rolled back, %d "
           "committed\n", name, total, runs, now() - start, o.untouched,
           o.rolled_back, o.committed);
    fflush(stdout);
    ck_assert(o.rolled_back > 0);
    fx_teardown(&fx);
}

START_TEST(kill_before_each_write)
{
    kill_before_each_write_case(0, "default format");
    kill_before_each_write_case(FX_LATEST, "latest format");
    kill_before_each_write_case(FX_TAIL, "file cut at open");
}
END_TEST

static Suite *journal_suite(void)
{
    Suite *s = suite_create("journal");
    TCase *tc = tcase_create("functional");
    tcase_add_test(tc, commit_makes_change_durable);
    tcase_add_test(tc, commit_latest_format);
    tcase_add_test(tc, commit_cuts_tail);
    tcase_add_test(tc, abort_restores_bytes);
    tcase_add_test(tc, commit_with_open_object_rolls_back);
    tcase_add_test(tc, recover_without_journal);
    tcase_add_test(tc, leftover_journal_blocks_open);
    tcase_add_test(tc, crash_through_link_seen_by_real_name);
    tcase_add_test(tc, crash_through_real_name_seen_by_link);
    tcase_add_test(tc, twice_overwritten_range_restored);
    tcase_add_test(tc, torn_last_record_ignored);
    tcase_add_test(tc, torn_header_removed);
    tcase_add_test(tc, damaged_journal_refused);
    tcase_add_test(tc, replaced_master_refused);
    tcase_add_test(tc, journal_bytes_as_documented);
    tcase_add_test(tc, not_hdf5_fails_cleanly);
    tcase_add_test(tc, hdf5_file_lock_respected);
    suite_add_tcase(s, tc);

    tc = tcase_create("kill");
    tcase_set_timeout(tc, 110);
    tcase_add_test(tc, kill_at_random_times);
    tcase_add_test(tc, kill_before_each_write);
    suite_add_tcase(s, tc);
    return s;
}

/* Helper mode for hdf5_file_lock_respected: open through the journal,
 * change, abort. */
static int open_and_abort(const char *path)
{
    mbe_err e = {{0}};
    mbe_journal *j = NULL;
    hid_t f = mbe_journal_open(path, &j, &e);
    if (f < 0) {
        fprintf(stderr, "open: %s\n", e.msg);
        return 1;
    }
    if (apply_change(f, N_NEW_SMALL) < 0 || mbe_journal_abort(f, j, &e) < 0) {
        fprintf(stderr, "change or abort failed: %s\n", e.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--open-and-abort"))
        return open_and_abort(argv[2]);
    SRunner *sr = srunner_create(journal_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
