/* test_lock.c - the flock() on <master>.lock: shared and exclusive modes,
 * time-outs, refusals, and exclusion of (and by) the Python package. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "mbe.h"

/* ------------------------------------------------------------ helpers */

static char dir[64];
static char master[256];
static char lock_path[300];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/mbe-test-lock-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(master, sizeof master, "%s/master.h5", dir);
    snprintf(lock_path, sizeof lock_path, "%s.lock", master);
    /* The lock refuses a master that does not exist. */
    FILE *f = fopen(master, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
}

static void teardown(void)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chmod -R u+w '%s' && rm -rf '%s'", dir, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct waits {
    int calls;
    double waited[8];
    char path[200];
};

static void on_wait(void *ud, const char *path, double waited)
{
    struct waits *w = ud;
    if (w->calls < 8)
        w->waited[w->calls] = waited;
    w->calls++;
    snprintf(w->path, sizeof w->path, "%s", path);
}

static int take(int exclusive, double timeout, struct waits *w, mbe_lock *l,
                mbe_err *e)
{
    mbe_lock_opts o = {timeout, w ? on_wait : NULL, w};
    return mbe_lock_acquire(master, exclusive, &o, l, e);
}

static void take_ok(int exclusive, mbe_lock *l)
{
    mbe_err e = {{0}};
    int rc = take(exclusive, 0, NULL, l, &e);
    ck_assert_msg(rc == 0, "lock failed: %s", e.msg);
    ck_assert_int_ge(l->fd, 0);
    ck_assert_str_eq(l->path, lock_path);
}

static void assert_has(const char *msg, const char *frag)
{
    ck_assert_msg(strstr(msg, frag), "message '%s' lacks '%s'", msg, frag);
    ck_assert_msg(!strchr(msg, '\n'), "multi-line message '%s'", msg);
}

/* Fails with a plain error (not a time-out), leaving l empty. */
static void refused(const char *frag1, const char *frag2)
{
    mbe_lock l = {-1, NULL, -1, NULL};
    mbe_err e = {{0}};
    int rc = take(1, 0, NULL, &l, &e);
    ck_assert_int_eq(rc, MBE_EFAIL);
    ck_assert_int_eq(l.fd, -1);
    ck_assert_ptr_null(l.path);
    assert_has(e.msg, frag1);
    if (frag2)
        assert_has(e.msg, frag2);
}

/* A child process holding the lock (exclusive) for `seconds`, then
 * removing the master when remove_master; returns once it holds it. */
static pid_t child_holds_then(double seconds, int remove_master)
{
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mbe_lock l;
        mbe_err e;
        close(p[0]);
        if (take(1, 0, NULL, &l, &e) < 0)
            _exit(1);
        if (write(p[1], "x", 1) != 1)
            _exit(1);
        struct timespec ts = {(time_t)seconds,
                              (long)((seconds - (time_t)seconds) * 1e9)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
        _exit(remove_master && unlink(master) < 0 ? 1 : 0);
    }
    close(p[1]);
    char c;
    ck_assert_int_eq(read(p[0], &c, 1), 1);
    close(p[0]);
    return pid;
}

static pid_t child_holds(double seconds)
{
    return child_holds_then(seconds, 0);
}

static void reap(pid_t pid)
{
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "child failed (status %d)", st);
}

/* The package's lock, taken by the real Python: exclusive flock on
 * <master>.lock held for `seconds`, then exit.  Returns once held. */
static pid_t python_holds_on(const char *path, double seconds)
{
    static const char script[] =
        "import fcntl, sys, time\n"
        "fh = open(sys.argv[1] + '.lock', 'a')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "open(sys.argv[2], 'w').close()\n"
        "time.sleep(float(sys.argv[3]))\n";
    char ready[200], secs[32];
    snprintf(ready, sizeof ready, "%s/python-ready", dir);
    snprintf(secs, sizeof secs, "%g", seconds);
    unlink(ready);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(th_python(), th_python(), "-c", script, path, ready, secs,
              (char *)NULL);
        _exit(127);
    }
    for (double t0 = now(); access(ready, F_OK) != 0;) {
        int st;
        ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0,
                      "%s exited before taking the lock", th_python());
        ck_assert_msg(now() - t0 < 30, "python never took the lock");
        usleep(10000);
    }
    return pid;
}

static pid_t python_holds(double seconds)
{
    return python_holds_on(master, seconds);
}

/* Exit status of Python trying flock(LOCK_NB) on path's lock in the given
 * mode: 0 when it got the lock, 3 when it was held. */
static int python_tries_on(const char *path, const char *mode)
{
    static const char script[] =
        "import fcntl, sys\n"
        "fh = open(sys.argv[1] + '.lock', 'a')\n"
        "try:\n"
        "    fcntl.flock(fh, getattr(fcntl, sys.argv[2]) | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n"
        "    sys.exit(3)\n";
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(th_python(), th_python(), "-c", script, path, mode, (char *)NULL);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static int python_tries(const char *mode)
{
    return python_tries_on(master, mode);
}

/* Run fn as an unprivileged user: root ignores directory permissions, so
 * the read-only cases need someone else.  fn returns 0 for success or
 * leaves a message in why; a child reports it on stderr. */
static void as_user(int (*fn)(char *why, size_t n))
{
    char why[512] = "";
    if (geteuid() != 0) {
        ck_assert_msg(fn(why, sizeof why) == 0, "%s", why);
        return;
    }
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
            _exit(2);
        if (fn(why, sizeof why) == 0)
            _exit(0);
        fprintf(stderr, "as uid 65534: %s\n", why);
        _exit(1);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 2,
                  "cannot become an unprivileged user");
    ck_assert_msg(WEXITSTATUS(st) == 0,
                  "failed as an unprivileged user (see stderr)");
}

/* ---------------------------------------------------------------- modes */

START_TEST(shared_locks_coexist)
{
    mbe_lock a, b;
    take_ok(0, &a);
    take_ok(0, &b);
    ck_assert_int_ne(a.fd, b.fd);
    mbe_lock_release(&a);
    mbe_lock_release(&b);
    ck_assert_int_eq(a.fd, -1);
    ck_assert_ptr_null(a.path);
}
END_TEST

static void excludes(int first, int second)
{
    mbe_lock a, b = {-1, NULL, -1, NULL};
    mbe_err e = {{0}};
    take_ok(first, &a);
    ck_assert_int_eq(take(second, 0, NULL, &b, &e), MBE_ETIMEOUT);
    ck_assert_int_eq(b.fd, -1);
    ck_assert_ptr_null(b.path);
    assert_has(e.msg, lock_path);
    assert_has(e.msg, "held by another process");
    mbe_lock_release(&a);
    take_ok(second, &b);
    mbe_lock_release(&b);
}

START_TEST(exclusive_excludes_shared)
{
    excludes(1, 0);
}
END_TEST

START_TEST(shared_excludes_exclusive)
{
    excludes(0, 1);
}
END_TEST

START_TEST(exclusive_excludes_exclusive)
{
    excludes(1, 1);
}
END_TEST

START_TEST(other_process_excluded)
{
    mbe_lock a;
    take_ok(1, &a);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        mbe_lock b;
        mbe_err e;
        _exit(take(0, 0, NULL, &b, &e) == MBE_ETIMEOUT ? 0 : 1);
    }
    reap(pid);
    mbe_lock_release(&a);
}
END_TEST

START_TEST(null_options_mean_defaults)
{
    mbe_lock l;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_lock_acquire(master, 1, NULL, &l, &e) == 0, "%s",
                  e.msg);
    mbe_lock_release(&l);
}
END_TEST

START_TEST(release_and_retake)
{
    mbe_lock a, b;
    take_ok(1, &a);
    mbe_lock_release(&a);
    mbe_lock_release(&a); /* harmless */
    struct stat st;
    ck_assert_msg(stat(lock_path, &st) == 0, "the lock file must stay");
    take_ok(1, &b);
    mbe_lock_release(&b);
    mbe_lock_release(NULL);
}
END_TEST

START_TEST(created_mode_follows_umask)
{
    mbe_lock a;
    mode_t old = umask(022);
    take_ok(0, &a);
    umask(old);
    struct stat st;
    ck_assert_int_eq(stat(lock_path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    ck_assert_int_eq(st.st_mode & 0777, 0644);
    mbe_lock_release(&a);
}
END_TEST

/* ------------------------------------------------------------- waiting */

START_TEST(timeout_reports_and_waits)
{
    mbe_lock a, b;
    mbe_err e = {{0}};
    struct waits w = {0};
    take_ok(1, &a);
    double t0 = now();
    int rc = take(0, 0.3, &w, &b, &e);
    double took = now() - t0;
    ck_assert_int_eq(rc, MBE_ETIMEOUT);
    ck_assert_msg(took >= 0.29 && took < 1.5, "waited %.3f s", took);
    ck_assert_int_eq(w.calls, 1);
    ck_assert(w.waited[0] < 0.1);
    ck_assert_str_eq(w.path, lock_path);
    assert_has(e.msg, lock_path);
    assert_has(e.msg, "for more than 0.3 s");
    assert_has(e.msg, "try again later or raise --timeout");
    mbe_lock_release(&a);
}
END_TEST

START_TEST(single_attempt_does_not_wait)
{
    mbe_lock a, b;
    mbe_err e = {{0}};
    struct waits w = {0};
    take_ok(1, &a);
    double t0 = now();
    ck_assert_int_eq(take(1, -1, &w, &b, &e), MBE_ETIMEOUT);
    ck_assert(now() - t0 < 0.05);
    ck_assert_int_eq(w.calls, 0);
    assert_has(e.msg, "held by another process");
    mbe_lock_release(&a);
}
END_TEST

START_TEST(on_wait_every_ten_seconds)
{
    mbe_lock a, b;
    mbe_err e = {{0}};
    struct waits w = {0};
    take_ok(1, &a);
    ck_assert_int_eq(take(0, 10.6, &w, &b, &e), MBE_ETIMEOUT);
    ck_assert_int_eq(w.calls, 2);
    ck_assert(w.waited[0] < 0.1);
    ck_assert_msg(w.waited[1] >= 10.0 && w.waited[1] < 10.7, "%.3f",
                  w.waited[1]);
    mbe_lock_release(&a);
}
END_TEST

START_TEST(waits_until_released)
{
    mbe_lock b;
    mbe_err e = {{0}};
    struct waits w = {0};
    pid_t pid = child_holds(0.5);
    double t0 = now();
    int rc = take(1, 20, &w, &b, &e);
    double took = now() - t0;
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_msg(took >= 0.3 && took < 3, "waited %.3f s", took);
    ck_assert_int_eq(w.calls, 1);
    mbe_lock_release(&b);
    reap(pid);
}
END_TEST

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
    (void)sig;
    alarms++;
}

START_TEST(signals_during_wait_are_retried)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART: calls fail with EINTR */
    ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
    struct itimerval it = {{0, 7000}, {0, 7000}};
    pid_t pid = child_holds(0.6);
    ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
    mbe_lock b;
    mbe_err e = {{0}};
    int rc = take(0, 20, NULL, &b, &e);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_gt(alarms, 10);
    mbe_lock_release(&b);
    reap(pid);
}
END_TEST

/* ------------------------------------------------------------ refusals */

START_TEST(symlink_refused)
{
    char target[200];
    snprintf(target, sizeof target, "%s/elsewhere", dir);
    FILE *f = fopen(target, "w");
    ck_assert_ptr_nonnull(f);
    fputs("precious", f);
    fclose(f);
    ck_assert_int_eq(symlink(target, lock_path), 0);
    refused("is a symbolic link; refusing it", lock_path);
    struct stat st;
    ck_assert_int_eq(stat(target, &st), 0);
    ck_assert_int_eq(st.st_size, 8);
}
END_TEST

START_TEST(dangling_symlink_refused)
{
    char target[200];
    snprintf(target, sizeof target, "%s/nothing", dir);
    ck_assert_int_eq(symlink(target, lock_path), 0);
    refused("is a symbolic link; refusing it", NULL);
    ck_assert_int_ne(access(target, F_OK), 0);
}
END_TEST

START_TEST(directory_refused)
{
    ck_assert_int_eq(mkdir(lock_path, 0755), 0);
    refused("not a regular file", lock_path);
}
END_TEST

START_TEST(fifo_refused)
{
    ck_assert_int_eq(mkfifo(lock_path, 0644), 0);
    refused("not a regular file", lock_path);
}
END_TEST

START_TEST(missing_directory)
{
    snprintf(master, sizeof master, "%s/no/such/master.h5", dir);
    char want[400];
    snprintf(want, sizeof want, "directory %s/no/such does not exist", dir);
    mbe_lock l = {-1, NULL, -1, NULL};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_lock_acquire(master, MBE_LOCK_EXCLUSIVE |
                                      MBE_LOCK_NEW_MASTER, NULL, &l, &e),
                     MBE_EFAIL);
    ck_assert_ptr_null(l.path);
    assert_has(e.msg, want);
    assert_has(e.msg, "master.h5.lock");
}
END_TEST

static int readonly_dir_existing(char *why, size_t n)
{
    mbe_lock l;
    mbe_err e = {{0}};
    for (int ex = 0; ex <= 1; ex++) {
        if (take(ex, 0, NULL, &l, &e) < 0) {
            snprintf(why, n, "%s", e.msg);
            return -1;
        }
        mbe_lock_release(&l);
    }
    return 0;
}

START_TEST(readonly_directory_with_lock_file)
{
    int fd = open(lock_path, O_CREAT | O_WRONLY, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(chmod(lock_path, 0444), 0);
    ck_assert_int_eq(chmod(dir, 0555), 0);
    as_user(readonly_dir_existing);
    /* Exclusion still holds through a read-only descriptor. */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
            _exit(1);
        mbe_lock l;
        mbe_err e;
        if (take(1, 0, NULL, &l, &e) < 0)
            _exit(1);
        mbe_lock l2;
        /* Second descriptor in this process: must conflict. */
        _exit(take(0, 0, NULL, &l2, &e) == MBE_ETIMEOUT ? 0 : 1);
    }
    reap(pid);
}
END_TEST

static int readonly_dir_missing(char *why, size_t n)
{
    mbe_lock l;
    mbe_err e = {{0}};
    if (take(0, 0, NULL, &l, &e) == 0) {
        snprintf(why, n, "lock taken in a read-only directory");
        return -1;
    }
    char want[400];
    snprintf(want, sizeof want, "directory %s is not writable", dir);
    if (!strstr(e.msg, want) || !strstr(e.msg, lock_path)) {
        snprintf(why, n, "message '%s' lacks '%s'", e.msg, want);
        return -1;
    }
    return 0;
}

START_TEST(readonly_directory_without_lock_file)
{
    ck_assert_int_eq(chmod(dir, 0555), 0);
    as_user(readonly_dir_missing);
}
END_TEST

/* -------------------------------------------- the Python package's lock */

START_TEST(python_lock_waited_for)
{
    mbe_lock b;
    mbe_err e = {{0}};
    struct waits w = {0};
    pid_t pid = python_holds(1.5);
    double t0 = now();
    int rc = take(0, 30, &w, &b, &e);
    double took = now() - t0;
    ck_assert_msg(rc == 0, "%s", e.msg);
    ck_assert_int_ge(w.calls, 1);
    ck_assert_msg(took > 0.5, "did not wait for python (%.3f s)", took);
    mbe_lock_release(&b);
    reap(pid);
}
END_TEST

START_TEST(python_lock_times_out)
{
    mbe_lock b;
    mbe_err e = {{0}};
    struct waits w = {0};
    pid_t pid = python_holds(1.5);
    ck_assert_int_eq(take(0, 0.3, &w, &b, &e), MBE_ETIMEOUT);
    ck_assert_int_eq(w.calls, 1);
    assert_has(e.msg, "for more than 0.3 s");
    reap(pid);
}
END_TEST

START_TEST(python_excluded_by_us)
{
    mbe_lock a;
    take_ok(0, &a);
    ck_assert_int_eq(python_tries("LOCK_EX"), 3);
    ck_assert_int_eq(python_tries("LOCK_SH"), 0);
    mbe_lock_release(&a);
    take_ok(1, &a);
    ck_assert_int_eq(python_tries("LOCK_SH"), 3);
    mbe_lock_release(&a);
    ck_assert_int_eq(python_tries("LOCK_EX"), 0);
}
END_TEST

/* ---------------------------------------------------- the master's path */

static char link_path[300];
static char link_lock[320];

/* link.h5 -> master.h5, as a user's master reached through a link. */
static void make_link(void)
{
    snprintf(link_path, sizeof link_path, "%s/link.h5", dir);
    snprintf(link_lock, sizeof link_lock, "%s.lock", link_path);
    ck_assert_int_eq(symlink(master, link_path), 0);
}

static int acquire_path(const char *path, int flags, double timeout,
                        mbe_lock *l, mbe_err *e)
{
    mbe_lock_opts o = {timeout, NULL, NULL};
    return mbe_lock_acquire(path, flags, &o, l, e);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

START_TEST(missing_master_makes_no_lock_file)
{
    ck_assert_int_eq(unlink(master), 0);
    refused(master, "No such file or directory");
    ck_assert_msg(!exists(lock_path), "stray %s", lock_path);
}
END_TEST

START_TEST(directory_master_makes_no_lock_file)
{
    ck_assert_int_eq(unlink(master), 0);
    ck_assert_int_eq(mkdir(master, 0755), 0);
    refused(master, "Is a directory");
    ck_assert_msg(!exists(lock_path), "stray %s", lock_path);
}
END_TEST

START_TEST(new_master_may_be_missing)
{
    ck_assert_int_eq(unlink(master), 0);
    mbe_lock l;
    mbe_err e = {{0}};
    ck_assert_msg(acquire_path(master, MBE_LOCK_EXCLUSIVE |
                               MBE_LOCK_NEW_MASTER, 0, &l, &e) == 0,
                  "%s", e.msg);
    ck_assert_str_eq(l.path, lock_path);
    ck_assert_ptr_null(l.real_path);
    mbe_lock_release(&l);
}
END_TEST

START_TEST(link_locks_both_names)
{
    make_link();
    mbe_lock l;
    mbe_err e = {{0}};
    ck_assert_msg(acquire_path(link_path, 0, 0, &l, &e) == 0, "%s", e.msg);
    ck_assert_str_eq(l.path, link_lock);
    ck_assert_str_eq(l.real_path, lock_path);
    ck_assert_int_eq(python_tries_on(master, "LOCK_EX"), 3);
    ck_assert_int_eq(python_tries_on(link_path, "LOCK_EX"), 3);
    ck_assert_int_eq(python_tries_on(master, "LOCK_SH"), 0);
    mbe_lock_release(&l);
    ck_assert_int_eq(python_tries_on(master, "LOCK_EX"), 0);
    ck_assert_int_eq(python_tries_on(link_path, "LOCK_EX"), 0);
}
END_TEST

/* The package holds the lock of one name (the real one when on_real);
 * taking the link's locks times out on that one and removes neither
 * lock file. */
static void python_blocks_link(int on_real)
{
    make_link();
    mbe_lock l;
    mbe_err e = {{0}};
    pid_t pid = python_holds_on(on_real ? master : link_path, 1.5);
    ck_assert_int_eq(acquire_path(link_path, 0, 0.3, &l, &e), MBE_ETIMEOUT);
    assert_has(e.msg, on_real ? lock_path : link_lock);
    ck_assert_msg(exists(lock_path), "%s removed", lock_path);
    reap(pid);
}

/* The package given the real name locks only master.h5.lock. */
START_TEST(link_waits_for_python_on_real_name)
{
    python_blocks_link(1);
}
END_TEST

/* Waiting in vain for the link's lock removes nothing: the master is
 * there, and so stays the real name's lock file made on the way. */
START_TEST(link_time_out_keeps_lock_files)
{
    python_blocks_link(0);
}
END_TEST

START_TEST(dangling_link_master_refused)
{
    ck_assert_int_eq(unlink(master), 0);
    make_link();
    mbe_lock l = {-1, NULL, -1, NULL};
    mbe_err e = {{0}};
    ck_assert_int_eq(acquire_path(link_path, MBE_LOCK_EXCLUSIVE |
                                  MBE_LOCK_NEW_MASTER, 0, &l, &e),
                     MBE_EFAIL);
    assert_has(e.msg, "symbolic link to a missing file");
    ck_assert(!exists(link_lock) && !exists(lock_path));
}
END_TEST

/* Two names of one lock file: taken once, not waited for by ourselves
 * (a second flock on another descriptor would wait for the first). */
START_TEST(hard_linked_lock_files)
{
    make_link();
    int fd = open(lock_path, O_CREAT | O_WRONLY, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(link(lock_path, link_lock), 0);
    mbe_lock l;
    mbe_err e = {{0}};
    ck_assert_msg(acquire_path(link_path, MBE_LOCK_EXCLUSIVE, 0, &l, &e) == 0,
                  "%s", e.msg);
    ck_assert_int_eq(python_tries_on(master, "LOCK_SH"), 3);
    mbe_lock_release(&l);
}
END_TEST

/* The link's lock file was made by us and used by nobody else: removed.
 * The real one is the child's: kept. */
START_TEST(master_gone_while_waiting)
{
    make_link();
    pid_t pid = child_holds_then(0.5, 1);
    mbe_lock l = {-1, NULL, -1, NULL};
    mbe_err e = {{0}};
    ck_assert_int_eq(acquire_path(link_path, 0, 20, &l, &e), MBE_EFAIL);
    assert_has(e.msg, "gone while its lock was awaited");
    ck_assert_ptr_null(l.path);
    reap(pid);
    ck_assert_msg(!exists(link_lock), "stray %s", link_lock);
    ck_assert_msg(exists(lock_path), "%s removed", lock_path);
}
END_TEST

static Suite *lock_suite(void)
{
    Suite *s = suite_create("lock");
    TCase *tc = tcase_create("modes");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, shared_locks_coexist);
    tcase_add_test(tc, exclusive_excludes_shared);
    tcase_add_test(tc, shared_excludes_exclusive);
    tcase_add_test(tc, exclusive_excludes_exclusive);
    tcase_add_test(tc, other_process_excluded);
    tcase_add_test(tc, null_options_mean_defaults);
    tcase_add_test(tc, release_and_retake);
    tcase_add_test(tc, created_mode_follows_umask);
    suite_add_tcase(s, tc);

    tc = tcase_create("waiting");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, timeout_reports_and_waits);
    tcase_add_test(tc, single_attempt_does_not_wait);
    tcase_add_test(tc, on_wait_every_ten_seconds);
    tcase_add_test(tc, waits_until_released);
    tcase_add_test(tc, signals_during_wait_are_retried);
    suite_add_tcase(s, tc);

    tc = tcase_create("refusals");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, symlink_refused);
    tcase_add_test(tc, dangling_symlink_refused);
    tcase_add_test(tc, directory_refused);
    tcase_add_test(tc, fifo_refused);
    tcase_add_test(tc, missing_directory);
    tcase_add_test(tc, readonly_directory_with_lock_file);
    tcase_add_test(tc, readonly_directory_without_lock_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("python");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, python_lock_waited_for);
    tcase_add_test(tc, python_lock_times_out);
    tcase_add_test(tc, python_excluded_by_us);
    suite_add_tcase(s, tc);

    tc = tcase_create("paths");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, missing_master_makes_no_lock_file);
    tcase_add_test(tc, directory_master_makes_no_lock_file);
    tcase_add_test(tc, new_master_may_be_missing);
    tcase_add_test(tc, link_locks_both_names);
    tcase_add_test(tc, link_waits_for_python_on_real_name);
    tcase_add_test(tc, link_time_out_keeps_lock_files);
    tcase_add_test(tc, dangling_link_master_refused);
    tcase_add_test(tc, hard_linked_lock_files);
    tcase_add_test(tc, master_gone_while_waiting);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lock_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
