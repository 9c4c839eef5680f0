/* lock.c - the flock() on "<master>.lock" that the Python package takes too
 * (master-format.md, "The lock that every writer takes"). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mbe_internal.h"

#define POLL_FIRST 0.05  /* s: the first sleep between attempts */
#define POLL_MAX 1.0     /* s: sleeps grow up to this */
#define REPORT_EVERY 10.0 /* s between on_wait calls after the first */

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_for(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    /* An interrupted sleep just makes the next attempt come sooner. */
    nanosleep(&ts, NULL);
}

static int fail_dir(const char *path, const char *why, mbe_err *e)
{
    char *copy = mbe_strdup(path);
    if (!copy)
        return mbe_fail(e, "out of memory");
    int rc = mbe_fail(e, "cannot create lock file %s: directory %s %s", path,
                      dirname(copy), why);
    free(copy);
    return rc;
}

/* Why open() failed, in the words a user can act on. */
static int explain_open_error(const char *path, int err, mbe_err *e)
{
    struct stat st;
    int exists = lstat(path, &st) == 0;
    if (exists && S_ISLNK(st.st_mode))
        return mbe_fail(e, "lock file %s is a symbolic link; refusing it",
                        path);
    if (exists && !S_ISREG(st.st_mode))
        return mbe_fail(e, "lock file %s is not a regular file", path);
    if (!exists && err == ENOENT)
        return fail_dir(path, "does not exist", e);
    if (!exists && (err == EACCES || err == EPERM || err == EROFS))
        return fail_dir(path, err == EROFS ? "is on a read-only file system"
                                           : "is not writable", e);
    return mbe_fail(e, "cannot open lock file %s: %s", path, strerror(err));
}

/* O_NONBLOCK only keeps a FIFO planted at the path from blocking open();
 * such a file is refused right after. */
static int open_lock_file(const char *path, int *fd, mbe_err *e)
{
    const int common = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
    *fd = open(path, O_CREAT | O_RDWR | common, 0666);
    if (*fd < 0 && (errno == EACCES || errno == EPERM || errno == EROFS)) {
        /* A lock file someone else created, in a directory or with a mode
         * we may not write: flock() works on a read-only descriptor. */
        int err = errno;
        *fd = open(path, O_RDONLY | common);
        if (*fd < 0 && errno == ENOENT)
            errno = err;
    }
    if (*fd < 0)
        return explain_open_error(path, errno, e);
    struct stat st;
    if (fstat(*fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(*fd);
        *fd = -1;
        return mbe_fail(e, "lock file %s is not a regular file", path);
    }
    return 0;
}

static int timeout_error(const char *path, double timeout, mbe_err *e)
{
    if (timeout <= 0)
        return mbe_failc(e, MBE_ETIMEOUT,
                         "lock %s held by another process (the Python "
                         "package or another mbe job holds it); try again "
                         "later or raise --timeout", path);
    return mbe_failc(e, MBE_ETIMEOUT,
                     "lock %s held by another process for more than %g s "
                     "(the Python package or another mbe job holds it); try "
                     "again later or raise --timeout", path, timeout);
}

/* 1 when taken, 0 when held elsewhere, negative on a real error. */
static int try_lock(int fd, int op, const char *path, mbe_err *e)
{
    for (;;) {
        if (flock(fd, op | LOCK_NB) == 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK)
            return 0;
        return mbe_fail(e, "cannot lock %s: %s", path, strerror(errno));
    }
}

static int wait_for_lock(int fd, int op, const char *path,
                         const mbe_lock_opts *o, mbe_err *e)
{
    int got = try_lock(fd, op, path, e);
    if (got != 0)
        return got > 0 ? 0 : got;
    if (o->timeout <= 0)
        return timeout_error(path, o->timeout, e);
    double t0 = now_mono(), delay = POLL_FIRST, next_report = REPORT_EVERY;
    if (o->on_wait)
        o->on_wait(o->ud, path, 0.0);
    for (;;) {
        double waited = now_mono() - t0;
        if (waited >= o->timeout)
            return timeout_error(path, o->timeout, e);
        double left = o->timeout - waited;
        sleep_for(delay < left ? delay : left);
        delay = delay * 1.5 < POLL_MAX ? delay * 1.5 : POLL_MAX;
        if ((got = try_lock(fd, op, path, e)) != 0)
            return got > 0 ? 0 : got;
        waited = now_mono() - t0;
        if (o->on_wait && waited >= next_report) {
            o->on_wait(o->ud, path, waited);
            next_report += REPORT_EVERY;
        }
    }
}

int mbe_lock_acquire(const char *master_path, int exclusive,
                     const mbe_lock_opts *opts, mbe_lock *out, mbe_err *e)
{
    out->fd = -1;
    out->path = NULL;
    mbe_lock_opts defaults = {MBE_LOCK_TIMEOUT_DEFAULT, NULL, NULL};
    const mbe_lock_opts *o = opts ? opts : &defaults;
    char *path = mbe_asprintf("%s.lock", master_path);
    if (!path)
        return mbe_fail(e, "out of memory");
    int fd, rc = open_lock_file(path, &fd, e);
    if (rc == 0)
        rc = wait_for_lock(fd, exclusive ? LOCK_EX : LOCK_SH, path, o, e);
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        free(path);
        return rc;
    }
    out->fd = fd;
    out->path = path;
    return 0;
}

/* Closing drops the flock.  The file stays: unlinking it would let a
 * process that opened the old inode and one that creates a new one both
 * "hold" the lock. */
void mbe_lock_release(mbe_lock *l)
{
    if (!l)
        return;
    if (l->fd >= 0 && l->path)
        close(l->fd);
    free(l->path);
    l->fd = -1;
    l->path = NULL;
}
