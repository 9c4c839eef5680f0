/* test_compute.c - the compute job (mbe_compute): a job with the lj
 * calculator over a master made here, resume after a stop, a non-finite
 * energy stored as FAILED, and a shard of another job refused. */
#include <check.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"
#include "mbe.h"

#define N_FRAMES 4

static char dir[64];
static char master[128], shard[128], part[160];

/* What the job told us. */
typedef struct seen {
    char lines[16][MBE_ERR_LEN + 512];
    size_t n_lines;
    size_t begun, frames, failed;
    char error[MBE_ERR_LEN];       /* of the last failed frame */
    size_t stop_after;             /* frames; 0: never */
    volatile sig_atomic_t stop;
} seen;

static void on_say(void *ud, int kind, const char *msg)
{
    seen *s = ud;
    (void)kind;
    if (s->n_lines < 16)
        snprintf(s->lines[s->n_lines++], sizeof s->lines[0], "%s", msg);
}

static void on_frame(void *ud, const mbe_compute_frame *f)
{
    seen *s = ud;
    if (f->event == MBE_FRAMES_BEGIN)
        s->begun += f->n;
    if (f->event != MBE_FRAME_DONE)
        return;
    s->frames++;
    if (f->status != MBE_COMPLETED) {
        s->failed++;
        snprintf(s->error, sizeof s->error, "%s", f->error);
    } else {
        ck_assert(isfinite(f->e_atom));
    }
    if (s->stop_after && s->frames == s->stop_after)
        s->stop = SIGTERM;
}

/* Whether a line the job said starts with prefix. */
static int said(const seen *s, const char *prefix)
{
    for (size_t i = 0; i < s->n_lines; i++)
        if (strncmp(s->lines[i], prefix, strlen(prefix)) == 0)
            return 1;
    return 0;
}

/* Two argon atoms per frame; in frame `close` (unless -1) 1e-30 Å apart,
 * where the Lennard-Jones energy overflows. */
static void make_master(int close)
{
    double pos[N_FRAMES * 6] = {0};
    int64_t z[N_FRAMES * 2], idx[N_FRAMES];
    double mass[N_FRAMES * 2];
    for (int k = 0; k < N_FRAMES; k++) {
        idx[k] = k;
        pos[k * 6 + 3] = k == close ? 1e-30 : 3.5 + 0.1 * k;
        z[2 * k] = z[2 * k + 1] = 18;
        mass[2 * k] = mass[2 * k + 1] = 39.948;
    }
    mbe_geometry g = {N_FRAMES, 2, idx, pos, z, mass, 0, NULL};
    mbe_lock_opts lk = {5, NULL, NULL};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_write_structure(master, "argon", &g, 1, &lk,
                                             &e) == 0, "%s", e.msg);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/mbe_compute_XXXXXX");
    ck_assert(mkdtemp(dir));
    snprintf(master, sizeof master, "%s/master.h5", dir);
    snprintf(shard, sizeof shard, "%s/shard.h5", dir);
    snprintf(part, sizeof part, "%s.part", shard);
}

static void teardown(void)
{
    th_remove_fixtures(dir);
}

static mbe_compute_opts job(seen *s, const char *frames)
{
    mbe_compute_opts o = {
        .master = master, .output = shard, .frames = frames,
        .level = "lj_test", .no_forces = 0,
        .lock = {5, NULL, NULL}, .sync_interval = 1.0,
        .stop = &s->stop, .on_say = on_say, .on_frame = on_frame, .ud = s};
    return o;
}

static mbe_calc *lj(void)
{
    mbe_calc_opts co;
    mbe_calc_opts_default(&co);
    mbe_calc *c = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_calc_new("lj", &co, &c, &e) == 0, "%s", e.msg);
    return c;
}

static int run(const mbe_compute_opts *o, mbe_compute_report *rep,
               mbe_err *e)
{
    memset(e, 0, sizeof *e);
    return mbe_compute(o, lj(), rep, e);
}

/* Stored status of every frame of the shard at path. */
static void statuses(const char *path, int64_t *st, size_t *n)
{
    mbe_shard *sh = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_shard_resume(path, &sh, &e) == 0, "%s", e.msg);
    const mbe_frames *f = mbe_shard_frames(sh);
    *n = f->n;
    for (size_t k = 0; k < f->n; k++)
        st[k] = mbe_shard_status(sh, k);
    ck_assert(mbe_shard_close(sh, &e) == 0);
}

START_TEST(lj_job_computes_every_frame)
{
    make_master(-1);
    seen s = {0};
    mbe_compute_opts o = job(&s, NULL);
    mbe_compute_report rep;
    mbe_err e;
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(rep.completed, N_FRAMES);
    ck_assert_uint_eq(rep.failed, 0);
    ck_assert(!rep.interrupted);
    ck_assert_str_eq(rep.output, shard);
    ck_assert_uint_eq(s.begun, N_FRAMES);
    ck_assert_uint_eq(s.frames, N_FRAMES);
    ck_assert(said(&s, "computing 4 frames of "));
    ck_assert(said(&s, "/tmp/"));
    ck_assert(access(shard, F_OK) == 0 && access(part, F_OK) != 0);
    int64_t st[N_FRAMES];
    size_t n;
    statuses(shard, st, &n);
    ck_assert_uint_eq(n, N_FRAMES);
    for (size_t k = 0; k < n; k++)
        ck_assert_int_eq(st[k], MBE_COMPLETED);
    /* The same job again: nothing left. */
    seen s2 = {0};
    o = job(&s2, NULL);
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(s2.frames, 0);
    ck_assert(said(&s2, "resuming "));
    ck_assert(said(&s2, "nothing left to compute in "));
}
END_TEST

START_TEST(stop_then_resume)
{
    make_master(-1);
    seen s = {0};
    s.stop_after = 2;
    mbe_compute_opts o = job(&s, NULL);
    mbe_compute_report rep;
    mbe_err e;
    ck_assert_int_eq(run(&o, &rep, &e), MBE_EINTR);
    ck_assert(rep.interrupted);
    ck_assert_uint_eq(rep.completed, 2);
    ck_assert(said(&s, "interrupted by signal 15 after 2 frames; "));
    ck_assert(access(part, F_OK) == 0 && access(shard, F_OK) != 0);
    seen s2 = {0};
    o = job(&s2, NULL);
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(rep.completed, 2);
    ck_assert_uint_eq(s2.frames, 2);
    char want[256];
    snprintf(want, sizeof want, "resuming %s: 2 of 4 frames left", shard);
    ck_assert(said(&s2, want));
    int64_t st[N_FRAMES];
    size_t n;
    statuses(shard, st, &n);
    for (size_t k = 0; k < n; k++)
        ck_assert_int_eq(st[k], MBE_COMPLETED);
}
END_TEST

START_TEST(non_finite_energy_is_failed)
{
    make_master(1);
    seen s = {0};
    mbe_compute_opts o = job(&s, NULL);
    mbe_compute_report rep;
    mbe_err e;
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(rep.completed, N_FRAMES - 1);
    ck_assert_uint_eq(rep.failed, 1);
    /* mbe_calc_compute words it; compute.c's own check is the guard for
     * a calculator that would not. */
    ck_assert_str_eq(s.error, "lj returned a non-finite energy or force");
    int64_t st[N_FRAMES];
    size_t n;
    statuses(shard, st, &n);
    ck_assert_int_eq(st[0], MBE_COMPLETED);
    ck_assert_int_eq(st[1], MBE_FAILED);
}
END_TEST

START_TEST(shard_of_another_job_refused)
{
    make_master(-1);
    seen s = {0};
    mbe_compute_opts o = job(&s, "0-1");
    mbe_compute_report rep;
    mbe_err e;
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    seen s2 = {0};
    o = job(&s2, "0-2");
    ck_assert_int_eq(run(&o, &rep, &e), MBE_EFAIL);
    ck_assert_str_eq(rep.stage, "cannot start");
    ck_assert_msg(strstr(e.msg, "belongs to another job (its frame "
                         "selection differs") != NULL, "%s", e.msg);
    ck_assert_uint_eq(s2.frames, 0);
    /* Another level, and --no-forces, are refused too. */
    o = job(&s2, "0-1");
    o.level = "other";
    ck_assert_int_eq(run(&o, &rep, &e), MBE_EFAIL);
    ck_assert_msg(strstr(e.msg, "its level of theory differs") != NULL, "%s",
                  e.msg);
    o = job(&s2, "0-1");
    o.no_forces = 1;
    ck_assert_int_eq(run(&o, &rep, &e), MBE_EFAIL);
    ck_assert_msg(strstr(e.msg, "computed without --no-forces") != NULL,
                  "%s", e.msg);
}
END_TEST

/* Several keys: one shard of one member per key; a piece of other keys
 * does not continue it. */
START_TEST(keys_into_one_bundle)
{
    make_master(-1);
    mbe_geometry g = {0};
    mbe_lock_opts lk = {5, NULL, NULL};
    mbe_err e = {{0}};
    mbe_master *m = NULL;
    mbe_frames all = {0};
    ck_assert(mbe_master_open(master, "argon", 0, &lk, &m, &e) == 0);
    for (int64_t k = 0; k < N_FRAMES; k++)
        ck_assert(mbe_frames_push(&all, k, &e) == 0);
    ck_assert(mbe_master_read_geometry(m, &all, &g, &e) == 0);
    ck_assert(mbe_master_close(m, &e) == 0);
    ck_assert_msg(mbe_master_write_structure(master, "argon2", &g, 0, &lk,
                                             &e) == 0, "%s", e.msg);
    mbe_geometry_free(&g);
    mbe_frames_free(&all);
    mbe_strlist keys = {0};
    ck_assert(mbe_strlist_push(&keys, "argon*", &e) == 0);
    seen s = {0};
    mbe_compute_opts o = job(&s, NULL);
    o.keys = &keys;
    mbe_compute_report rep;
    ck_assert_msg(run(&o, &rep, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(rep.completed, 2 * N_FRAMES);
    ck_assert(said(&s, "2 of 2 keys in piece 1/1 (8 frames)"));
    mbe_shard *sh = NULL;
    ck_assert(mbe_shard_resume(shard, &sh, &e) == 0);
    ck_assert_uint_eq(mbe_shard_members(sh), 2);
    ck_assert(mbe_shard_close(sh, &e) == 0);
    mbe_strlist one = {0};
    ck_assert(mbe_strlist_push(&one, "argon2", &e) == 0);
    ck_assert(mbe_strlist_push(&one, "argon2", &e) == 0);
    o.keys = &one;
    ck_assert_int_eq(run(&o, &rep, &e), MBE_EFAIL);
    ck_assert_msg(strstr(e.msg, "holds 2 keys, this piece 1") != NULL, "%s",
                  e.msg);
    mbe_strlist_free(&one);
    mbe_strlist_free(&keys);
}
END_TEST

static Suite *compute_suite(void)
{
    Suite *s = suite_create("compute");
    TCase *tc = tcase_create("job");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, lj_job_computes_every_frame);
    tcase_add_test(tc, stop_then_resume);
    tcase_add_test(tc, non_finite_energy_is_failed);
    tcase_add_test(tc, shard_of_another_job_refused);
    tcase_add_test(tc, keys_into_one_bundle);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    mbe_init();
    SRunner *sr = srunner_create(compute_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
