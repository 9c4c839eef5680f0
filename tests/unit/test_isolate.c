/* test_isolate.c - mbe_isolated: a function run in a child process comes
 * back as its result and message, and a crash, an endless loop or a stop
 * signal in it as an error of the caller, never as the caller's end. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mbe_internal.h"

static int returns(void *arg, mbe_err *e)
{
    int *v = arg;
    *v = 99; /* the child's memory only */
    return mbe_fail(e, "child says %d", 7);
}

static int succeeds(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    return 0;
}

/* As a fault would: the signal with the default action (a null
 * dereference would end as UBSan's report under the sanitizers). */
static int crashes(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    raise(SIGSEGV);
    return 0;
}

static int aborts(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    abort();
}

static int loops(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    for (;;)
        pause();
    return 0;
}

static int is_stopped(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    raise(SIGTERM);
    return 0;
}

static int exits(void *arg, mbe_err *e)
{
    (void)arg;
    (void)e;
    _exit(3);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

START_TEST(result_and_message_come_back)
{
    int v = 1;
    mbe_isolation how;
    mbe_err e = {""};
    ck_assert_int_eq(mbe_isolated(returns, &v, 10, &how, &e), MBE_EFAIL);
    ck_assert_str_eq(e.msg, "child says 7");
    ck_assert_int_eq(v, 1);
    ck_assert(how.replied && !how.crashed && !how.timed_out && !how.signal);
    ck_assert_int_eq(mbe_isolated(succeeds, NULL, 10, &how, &e), 0);
    ck_assert(how.replied);
}
END_TEST

START_TEST(crash_is_an_error)
{
    mbe_isolation how;
    mbe_err e = {""};
    ck_assert_int_eq(mbe_isolated(crashes, NULL, 10, &how, &e), MBE_EFAIL);
    ck_assert(how.crashed && !how.replied && !how.timed_out);
    ck_assert_int_eq(how.signal, SIGSEGV);
    ck_assert_msg(strstr(e.msg, "killed by signal 11"), "%s", e.msg);
    ck_assert_int_eq(mbe_isolated(aborts, NULL, 10, &how, &e), MBE_EFAIL);
    ck_assert(how.crashed);
    ck_assert_int_eq(how.signal, SIGABRT);
}
END_TEST

START_TEST(endless_loop_is_stopped)
{
    mbe_isolation how;
    mbe_err e = {""};
    double t0 = now();
    ck_assert_int_eq(mbe_isolated(loops, NULL, 1, &how, &e), MBE_EFAIL);
    double took = now() - t0;
    ck_assert(how.timed_out && !how.crashed && !how.replied);
    ck_assert_str_eq(e.msg, "did not finish within 1 s");
    ck_assert_msg(took >= 0.9 && took < 10, "took %.2f s", took);
    /* No child is left behind. */
    ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
}
END_TEST

START_TEST(stop_signal_is_not_a_crash)
{
    mbe_isolation how;
    mbe_err e = {""};
    ck_assert_int_eq(mbe_isolated(is_stopped, NULL, 10, &how, &e), MBE_EFAIL);
    ck_assert(!how.crashed && !how.replied);
    ck_assert_int_eq(how.signal, SIGTERM);
    /* Leaving without a result is a crash too (sanitizers exit so). */
    ck_assert_int_eq(mbe_isolated(exits, NULL, 10, &how, &e), MBE_EFAIL);
    ck_assert(how.crashed && !how.replied && !how.signal);
    ck_assert_msg(strstr(e.msg, "exit status 3"), "%s", e.msg);
}
END_TEST

static volatile sig_atomic_t parent_got;
static void on_term(int sig)
{
    parent_got = sig;
}

/* The caller's own handlers stay in place for the caller. */
START_TEST(parent_handlers_kept)
{
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    mbe_isolation how;
    mbe_err e = {""};
    ck_assert_int_eq(mbe_isolated(is_stopped, NULL, 10, &how, &e), MBE_EFAIL);
    ck_assert_int_eq(parent_got, 0);
    raise(SIGTERM);
    ck_assert_int_eq(parent_got, SIGTERM);
}
END_TEST

static Suite *isolate_suite(void)
{
    Suite *s = suite_create("isolate");
    TCase *tc = tcase_create("isolate");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, result_and_message_come_back);
    tcase_add_test(tc, crash_is_an_error);
    tcase_add_test(tc, endless_loop_is_stopped);
    tcase_add_test(tc, stop_signal_is_not_a_crash);
    tcase_add_test(tc, parent_handlers_kept);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(isolate_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
