/*
 * child.c - child processes: start a command under /bin/sh, reap it, wait
 * for it with a deadline and a stop flag, kill its process group, and say
 * how it ended.  calc_exec.c runs a command per frame with these, ipi.c
 * the engines of ipi: (--engine) and ase:.
 *
 * Every child gets a process group of its own (set on both sides of the
 * fork, so that a kill of the group never races with its creation), so
 * that what a shell command starts is killed with it; and SIGTERM when we
 * die (PR_SET_PDEATHSIG), so that no engine outlives a killed job.  Waits
 * poll in short sleeps rather than block in waitpid: a stop flag set by a
 * signal handler is seen within a tenth of a second.  Knows nothing of calculators: the
 * caller passes its stop flag.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "child.h"
#include "mbe_internal.h"

extern char **environ;

static void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    nanosleep(&t, NULL); /* EINTR only shortens it; callers loop */
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void child_exec(const char *cmd, int in, int out, int err,
                       char *const *envp, pid_t parent)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(127);
    int null = open("/dev/null", O_RDWR);
    if (in < 0)
        in = null;
    if (out < 0)
        out = null;
    if (err < 0)
        err = null;
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
        dup2(err, 2) < 0)
        _exit(127);
    /* Nothing of ours (HDF5 files, locks, sockets) leaks into the engine. */
    if (close_range(3, ~0u, 0) < 0)
        for (int fd = 3; fd < 4096; fd++)
            close(fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    char *const argv[] = {"sh", "-c", (char *)cmd, NULL};
    execve("/bin/sh", argv, envp);
    _exit(127);
}

int mbe_child_start(const char *cmd, int in, int out, int err,
                    const char *const *env, pid_t *pid, mbe_err *e)
{
    size_t n_env = 0, n_add = 0;
    while (environ && environ[n_env])
        n_env++;
    while (env && env[n_add])
        n_add++;
    char **envp = malloc((n_env + n_add + 1) * sizeof *envp);
    if (!envp)
        return mbe_fail(e, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n_add; i++)
        envp[k++] = (char *)env[i];
    for (size_t i = 0; i < n_env; i++) {
        /* Ours replace inherited variables of the same name. */
        const char *eq = strchr(environ[i], '=');
        size_t len = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        int dup = 0;
        for (size_t j = 0; j < n_add && !dup; j++)
            dup = strncmp(env[j], environ[i], len) == 0 && env[j][len] == '=';
        if (!dup)
            envp[k++] = environ[i];
    }
    envp[k] = NULL;
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0)
        child_exec(cmd, in, out, err, envp, parent);
    int errno_ = errno;
    free(envp);
    if (p < 0)
        return mbe_fail(e, "cannot start '%s': fork: %s", cmd,
                        strerror(errno_));
    setpgid(p, p); /* also here: no race with a kill of the group */
    *pid = p;
    return 0;
}

int mbe_child_exited(pid_t pid, int *status)
{
    int st = 0;
    pid_t r;
    do
        r = waitpid(pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == pid || (r < 0 && errno == ECHILD)) {
        *status = r == pid ? st : 0;
        return 1;
    }
    return 0;
}

int mbe_child_wait(const volatile sig_atomic_t *stop, pid_t pid,
                   double deadline, int *status)
{
    double pause = 0.001;
    for (;;) {
        if (mbe_child_exited(pid, status))
            return 1;
        if (stop && *stop)
            return MBE_EINTR;
        double left = deadline - mbe_now();
        if (left <= 0)
            return 0;
        sleep_s(pause < left ? pause : left);
        if (pause < 0.05)
            pause *= 2;
    }
}

void mbe_child_kill(pid_t pid, double grace, int *status)
{
    int st = 0;
    if (mbe_child_exited(pid, &st)) {
        kill(-pid, SIGKILL); /* leftovers of its group, if any */
    } else {
        kill(-pid, SIGTERM);
        kill(pid, SIGTERM);
        if (mbe_child_wait(NULL, pid, mbe_now() + grace, &st) != 1) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        } else {
            kill(-pid, SIGKILL);
        }
    }
    if (status)
        *status = st;
}

void mbe_child_describe(int status, char *buf, size_t n)
{
    if (WIFEXITED(status))
        snprintf(buf, n, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, n, "ended with wait status %d", status);
}

void mbe_text_tail(const char *text, size_t len, char *buf, size_t n)
{
    if (!n)
        return;
    /* Start of the last 3 non-empty lines. */
    size_t start = len, lines = 0;
    size_t i = len;
    while (i > 0 && lines < 3) {
        size_t end = i;
        while (i > 0 && text[i - 1] != '\n')
            i--;
        int blank = 1;
        for (size_t j = i; j < end; j++)
            if (!isspace((unsigned char)text[j]))
                blank = 0;
        if (!blank) {
            lines++;
            start = i;
        }
        if (i > 0)
            i--;
    }
    /* Joined into a scratch buffer, then its end kept: the last words
     * matter most. */
    char *tmp = malloc(3 * (len - start) + 1);
    if (!tmp) {
        buf[0] = '\0';
        return;
    }
    size_t k = 0;
    int pending_sep = 0;
    for (size_t j = start; j < len; j++) {
        unsigned char ch = (unsigned char)text[j];
        if (ch == '\n' || ch == '\r') {
            pending_sep = k > 0;
            continue;
        }
        if (pending_sep) {
            memcpy(tmp + k, " | ", 3);
            k += 3;
            pending_sep = 0;
        }
        tmp[k++] = ch >= 32 && ch < 127 ? (char)ch : ch == '\t' ? ' ' : '?';
    }
    while (k > 0 && tmp[k - 1] == ' ')
        k--;
    if (k < n) {
        memcpy(buf, tmp, k);
        buf[k] = '\0';
    } else if (n > 4) {
        memcpy(buf, "...", 3);
        memcpy(buf + 3, tmp + k - (n - 4), n - 4);
        buf[n - 1] = '\0';
    } else {
        buf[0] = '\0';
    }
    free(tmp);
}
