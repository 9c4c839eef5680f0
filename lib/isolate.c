/* isolate.c - running a function in a child process, so that a crash or
 * an endless loop inside a library we call (libhdf5 on a damaged file)
 * ends as an error message instead of ending the program.
 *
 * The child shares nothing it could damage: it reports one result through
 * a pipe and leaves with _exit, so it runs no atexit handler and flushes
 * no stdio buffer or HDF5 file of the parent.  Locks held by the parent
 * (flock, OFD locks) belong to open file descriptions the child shares and
 * does not release: they stay with the parent. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "mbe_internal.h"

typedef struct reply {
    int rc;
    char msg[MBE_ERR_LEN];
} reply;

/* Signals by which the child may have crashed (not been stopped). */
static int is_crash(int sig)
{
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL ||
           sig == SIGFPE || sig == SIGABRT || sig == SIGTRAP ||
           sig == SIGSYS;
}

static void child(int fd, int (*fn)(void *, mbe_err *), void *arg,
                  unsigned timeout_s)
{
    /* The parent's handlers would turn a crash into whatever it does
     * (sanitizers report and exit): the child must die by the signal.
     * Stop requests end it at once; the parent notices them itself. */
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
                               SIGTRAP, SIGSYS, SIGTERM, SIGINT, SIGUSR1,
                               SIGHUP, SIGALRM};
    sigset_t all;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL);
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
#ifdef __linux__
    /* Never outlive a parent that was killed while it waited. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    alarm(timeout_s + 5);
    reply r;
    memset(&r, 0, sizeof r);
    mbe_err e = {""};
    r.rc = fn(arg, &e);
    snprintf(r.msg, sizeof r.msg, "%s", e.msg);
    ssize_t n = write(fd, &r, sizeof r);
    _exit(n == (ssize_t)sizeof r ? 0 : 1);
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Reads the reply until EOF or the deadline; 1 when it came whole, 0 on
 * EOF without it, -1 at the deadline. */
static int await_reply(int fd, reply *r, long long deadline)
{
    size_t got = 0;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int k = poll(&p, 1, left > 1000 ? 1000 : (int)left);
        if (k < 0 && errno != EINTR)
            return 0;
        if (k <= 0)
            continue;
        ssize_t n = read(fd, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        got += (size_t)n;
        if (got == sizeof *r)
            return 1;
    }
}

static int reap(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return 0;
}

int mbe_isolated(int (*fn)(void *, mbe_err *), void *arg,
                 unsigned timeout_s, mbe_isolation *how, mbe_err *e)
{
    how->replied = how->crashed = how->timed_out = how->signal = 0;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return mbe_fail(e, "cannot create a pipe: %s", strerror(errno));
    fflush(NULL); /* nothing buffered is written twice */
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return mbe_fail(e, "cannot start a process: %s", strerror(err));
    }
    if (pid == 0) {
        close(fds[0]);
        child(fds[1], fn, arg, timeout_s);
    }
    close(fds[1]);
    reply r;
    int got = await_reply(fds[0], &r, now_ms() + 1000LL * timeout_s);
    close(fds[0]);
    if (got < 0)
        kill(pid, SIGKILL);
    int status = 0;
    if (reap(pid, &status) < 0)
        return mbe_fail(e, "cannot wait for a process: %s", strerror(errno));
    if (got > 0) {
        how->replied = 1;
        if (e)
            snprintf(e->msg, sizeof e->msg, "%s", r.msg);
        return r.rc;
    }
    if (got < 0) {
        how->timed_out = 1;
        return mbe_fail(e, "did not finish within %u s", timeout_s);
    }
    if (WIFSIGNALED(status)) {
        how->signal = WTERMSIG(status);
        how->crashed = is_crash(how->signal);
        return mbe_fail(e, "killed by signal %d (%s)", how->signal,
                        strsignal(how->signal));
    }
    /* Ended without returning: a sanitizer's report, or exit() called
     * somewhere inside the library. */
    how->crashed = 1;
    return mbe_fail(e, "ended with exit status %d without a result",
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* Seconds a file libhdf5 cannot check may take to read in the child. */
#define PROBE_TIMEOUT 60

static unsigned probe_timeout(void)
{
    const char *v = getenv("MBE_PROBE_TIMEOUT");
    char *end;
    unsigned long t = v ? strtoul(v, &end, 10) : 0;
    return v && *v && !*end && t > 0 && t < 86400 ? (unsigned)t
                                                  : PROBE_TIMEOUT;
}

int mbe_probe_isolated(const char *path, int (*fn)(void *, mbe_err *),
                       void *arg, mbe_err *e)
{
    mbe_isolation how;
    mbe_err pe = {""};
    unsigned t = probe_timeout();
    int rc = mbe_isolated(fn, arg, t, &how, &pe);
    if (rc == 0)
        return 0;
    if (how.crashed)
        return mbe_fail(e, "%s: damaged HDF5 file: libhdf5 crashed "
                        "reading it: %s", path, pe.msg);
    if (how.timed_out)
        return mbe_fail(e, "%s: damaged HDF5 file: libhdf5 did not "
                        "finish reading it within %u s "
                        "(MBE_PROBE_TIMEOUT)", path, t);
    if (how.signal)
        return mbe_fail(e, "%s: reading it was stopped by signal %d",
                        path, how.signal);
    /* The child's own message names the file when it replied. */
    return how.replied ? mbe_failc(e, rc, "%s", pe.msg)
                       : mbe_fail(e, "%s: %s", path, pe.msg);
}
