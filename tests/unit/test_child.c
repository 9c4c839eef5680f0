/* test_child.c - child processes (lib/child.c) on their own, without a
 * calculator: the environment and streams a child gets, waits with a
 * deadline and a stop flag, kills of the whole group, and the words for
 * how a child ended and for the tail of what it wrote. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "mbe_internal.h"

/* Start cmd with its standard output into *out_fd (read end). */
static pid_t start_piped(const char *cmd, const char *const *env,
                         int *out_fd)
{
    int p[2];
    ck_assert(pipe2(p, O_CLOEXEC) == 0);
    pid_t pid;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_child_start(cmd, -1, p[1], -1, env, &pid, &e) == 0,
                  "%s", e.msg);
    close(p[1]);
    *out_fd = p[0];
    return pid;
}

/* Run cmd with its standard output into a pipe; what it wrote, up to
 * n-1 bytes, and its wait status. */
static int run_output(const char *cmd, const char *const *env, char *out,
                      size_t n)
{
    int fd;
    pid_t pid = start_piped(cmd, env, &fd);
    size_t k = 0;
    ssize_t got;
    while (k + 1 < n && (got = read(fd, out + k, n - 1 - k)) > 0)
        k += (size_t)got;
    out[k] = '\0';
    close(fd);
    int st = 0;
    ck_assert_int_eq(mbe_child_wait(NULL, pid, mbe_now() + 10, &st), 1);
    return st;
}

START_TEST(environment_added_and_replaced)
{
    setenv("MBE_TEST_CHILD_A", "inherited", 1);
    setenv("MBE_TEST_CHILD_B", "kept", 1);
    const char *env[] = {"MBE_TEST_CHILD_A=ours", NULL};
    char out[256];
    int st = run_output("echo \"$MBE_TEST_CHILD_A $MBE_TEST_CHILD_B\"; "
                        "env | grep -c '^MBE_TEST_CHILD_A='",
                        env, out, sizeof out);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_str_eq(out, "ours kept\n1\n");
    unsetenv("MBE_TEST_CHILD_A");
    unsetenv("MBE_TEST_CHILD_B");
}
END_TEST

START_TEST(own_group_and_no_leaked_descriptors)
{
    /* A descriptor of ours without O_CLOEXEC must not reach the child. */
    int fd = open("/dev/null", O_RDONLY);
    ck_assert(fd > 2);
    char cmd[128], out[256];
    snprintf(cmd, sizeof cmd,
             "[ -e /proc/self/fd/%d ] && echo leaked; "
             "cut -d' ' -f5 /proc/$$/stat; echo $$", fd);
    int st = run_output(cmd, NULL, out, sizeof out);
    close(fd);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    long pgid = 0, pid = 0;
    ck_assert_msg(sscanf(out, "%ld\n%ld", &pgid, &pid) == 2, "output: %s",
                  out);
    ck_assert_int_eq(pgid, pid);
}
END_TEST

START_TEST(wait_times_out_then_kill_takes_the_group)
{
    /* Orphans of the child's shell come to us, to be reaped below. */
    ck_assert(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
    pid_t pid;
    mbe_err e = {{0}};
    ck_assert(mbe_child_start("sleep 30 & sleep 30; wait", -1, -1, -1, NULL,
                              &pid, &e) == 0);
    int st = 0;
    double t0 = mbe_now();
    ck_assert_int_eq(mbe_child_wait(NULL, pid, t0 + 0.3, &st), 0);
    ck_assert(mbe_now() - t0 >= 0.3);
    ck_assert(mbe_now() - t0 < 5);
    mbe_child_kill(pid, 2.0, &st);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    /* The background sleep went with it, well before its 30 s. */
    int left = 0;
    while (waitpid(-pid, &left, 0) > 0)
        ck_assert(WIFSIGNALED(left));
    ck_assert(mbe_now() - t0 < 10);
}
END_TEST

START_TEST(kill_after_grace_when_term_ignored)
{
    int fd;
    pid_t pid = start_piped("trap '' TERM; echo ready; "
                            "while :; do sleep 0.05; done", NULL, &fd);
    char ready[8] = "";
    ck_assert(read(fd, ready, sizeof ready - 1) > 0); /* the trap is set */
    close(fd);
    int st = 0;
    double t0 = mbe_now();
    mbe_child_kill(pid, 0.5, &st);
    ck_assert(mbe_now() - t0 >= 0.5);
    ck_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}
END_TEST

START_TEST(stop_flag_ends_the_wait)
{
    pid_t pid;
    mbe_err e = {{0}};
    ck_assert(mbe_child_start("sleep 30", -1, -1, -1, NULL, &pid, &e) == 0);
    volatile sig_atomic_t stop = 0;
    int st = 0;
    ck_assert_int_eq(mbe_child_wait(&stop, pid, mbe_now() + 0.2, &st), 0);
    stop = 1;
    double t0 = mbe_now();
    ck_assert_int_eq(mbe_child_wait(&stop, pid, mbe_now() + 30, &st),
                     MBE_EINTR);
    ck_assert(mbe_now() - t0 < 1);
    mbe_child_kill(pid, 2.0, &st);
    ck_assert(mbe_child_exited(pid, &st));
}
END_TEST

START_TEST(exited_reaps_once)
{
    pid_t pid;
    mbe_err e = {{0}};
    ck_assert(mbe_child_start("exit 3", -1, -1, -1, NULL, &pid, &e) == 0);
    int st = 0;
    ck_assert_int_eq(mbe_child_wait(NULL, pid, mbe_now() + 10, &st), 1);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    /* Reaped already: reported as ended, with status 0. */
    st = -1;
    ck_assert(mbe_child_exited(pid, &st));
    ck_assert_int_eq(st, 0);
}
END_TEST

START_TEST(describe)
{
    char b[96];
    mbe_child_describe(3 << 8, b, sizeof b);
    ck_assert_str_eq(b, "exited with status 3");
    mbe_child_describe(SIGKILL, b, sizeof b);
    ck_assert_str_eq(b, "killed by signal 9 (Killed)");
}
END_TEST

START_TEST(text_tail)
{
    char b[64];
    const char *t = "one\n\ntwo\r\nthree\t3\nfour\x01\n\n";
    mbe_text_tail(t, strlen(t), b, sizeof b);
    ck_assert_str_eq(b, "two | three 3 | four?");
    /* Too long: the end is kept, after "...". */
    mbe_text_tail(t, strlen(t), b, 12);
    ck_assert_str_eq(b, "... | four?");
    ck_assert_int_eq(strlen(b), 11);
    mbe_text_tail("\n \n", 3, b, sizeof b);
    ck_assert_str_eq(b, "");
}
END_TEST

static Suite *child_suite(void)
{
    Suite *s = suite_create("child");
    TCase *tc = tcase_create("child");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, environment_added_and_replaced);
    tcase_add_test(tc, own_group_and_no_leaked_descriptors);
    tcase_add_test(tc, wait_times_out_then_kill_takes_the_group);
    tcase_add_test(tc, kill_after_grace_when_term_ignored);
    tcase_add_test(tc, stop_flag_ends_the_wait);
    tcase_add_test(tc, exited_reaps_once);
    tcase_add_test(tc, describe);
    tcase_add_test(tc, text_tail);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(child_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
