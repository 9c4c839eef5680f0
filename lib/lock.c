/* lock.c - the flock() on "<master>.lock" that the Python package takes too
 * (master-format.md, "The lock that every writer takes").
 *
 * The package locks "<path as given>.lock", so a master reached through a
 * symbolic link has two lock files in use: the link's and the real file's.
 * Both are taken, the real file's first, by every program; see
 * mbe_lock_acquire. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
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

/* One lock file being taken. */
typedef struct held {
    int fd;
    char *path;
    int created;  /* this call created the file */
    int waited;   /* someone else held it meanwhile, so had it open */
} held;

/* O_NONBLOCK only keeps a FIFO planted at the path from blocking open();
 * such a file is refused right after.  O_EXCL first, so that we know
 * whether the file is ours to remove again (drop_created). */
static int open_lock_file(held *h, mbe_err *e)
{
    const int common = O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
    h->fd = open(h->path, O_CREAT | O_EXCL | O_RDWR | common, 0666);
    h->created = h->fd >= 0;
    if (h->fd < 0 && errno == EEXIST)
        h->fd = open(h->path, O_RDWR | common);
    if (h->fd < 0 && (errno == EACCES || errno == EPERM || errno == EROFS)) {
        /* A lock file someone else created, in a directory or with a mode
         * we may not write: flock() works on a read-only descriptor. */
        int err = errno;
        h->fd = open(h->path, O_RDONLY | common);
        if (h->fd < 0 && errno == ENOENT)
            errno = err;
    }
    if (h->fd < 0)
        return explain_open_error(h->path, errno, e);
    struct stat st;
    if (fstat(h->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(h->fd);
        h->fd = -1;
        return mbe_fail(e, "lock file %s is not a regular file", h->path);
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

/* Both lock files share one time-out: t0 is when the first was tried. */
static int wait_for_lock(held *h, int op, const mbe_lock_opts *o, double t0,
                         mbe_err *e)
{
    int got = try_lock(h->fd, op, h->path, e);
    if (got != 0)
        return got > 0 ? 0 : got;
    h->waited = 1;
    double start = mbe_now(), delay = POLL_FIRST;
    double next_report = REPORT_EVERY;
    if (o->timeout <= 0 || start - t0 >= o->timeout)
        return timeout_error(h->path, o->timeout, e);
    if (o->on_wait)
        o->on_wait(o->ud, h->path, 0.0);
    for (;;) {
        double left = o->timeout - (mbe_now() - t0);
        if (left <= 0)
            return timeout_error(h->path, o->timeout, e);
        sleep_for(delay < left ? delay : left);
        delay = delay * 1.5 < POLL_MAX ? delay * 1.5 : POLL_MAX;
        if ((got = try_lock(h->fd, op, h->path, e)) != 0)
            return got > 0 ? 0 : got;
        double waited = mbe_now() - start;
        if (o->on_wait && waited >= next_report) {
            o->on_wait(o->ud, h->path, waited);
            next_report += REPORT_EVERY;
        }
    }
}

/* A lock file this call created for a master that then turned out to be
 * gone is removed, but only while nobody else can be using it: we hold it
 * exclusively, nobody held it while we waited (so it was ours alone from
 * its creation), and the path still names it. */
static void drop_created(held *h)
{
    struct stat a, b;
    if (h->fd < 0 || !h->created || h->waited)
        return;
    if (flock(h->fd, LOCK_EX | LOCK_NB) == 0 && fstat(h->fd, &a) == 0 &&
        lstat(h->path, &b) == 0 && a.st_dev == b.st_dev &&
        a.st_ino == b.st_ino)
        unlink(h->path);
}

static void close_held(held *h)
{
    if (h->fd >= 0)
        close(h->fd);
    free(h->path);
    h->fd = -1;
    h->path = NULL;
}

static int not_a_file(const char *path, const struct stat *st, mbe_err *e)
{
    return mbe_fail(e, "%s: %s", path,
                    S_ISDIR(st->st_mode) ? strerror(EISDIR)
                                         : "not a regular file");
}

/* Checked before any lock file is made, so that a mistyped path leaves no
 * stray "<path>.lock".  *real: the resolved path when master is a
 * symbolic link (its lock file is another one), else NULL. */
static int check_master(const char *master, int flags, char **real,
                        mbe_err *e)
{
    struct stat st;
    *real = NULL;
    if (lstat(master, &st) < 0) {
        if (errno == ENOENT && (flags & MBE_LOCK_NEW_MASTER))
            return 0;
        return mbe_fail(e, "%s: %s", master, strerror(errno));
    }
    if (!S_ISLNK(st.st_mode))
        return S_ISREG(st.st_mode) ? 0 : not_a_file(master, &st, e);
    /* A master created through a dangling link would get a lock file
     * nobody else takes: its target's name is the package's choice. */
    if (stat(master, &st) < 0)
        return mbe_fail(e, "%s: symbolic link to a missing file: %s", master,
                        strerror(errno));
    if (!S_ISREG(st.st_mode))
        return not_a_file(master, &st, e);
    if (!(*real = realpath(master, NULL)))
        return mbe_fail(e, "%s: cannot resolve the symbolic link: %s",
                        master, strerror(errno));
    return 0;
}

static int same_file(int fd1, int fd2)
{
    struct stat a, b;
    return fstat(fd1, &a) == 0 && fstat(fd2, &b) == 0 &&
           a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* 1: the file is the one of `first` (a lock file hard-linked to the
 * other), so it is not taken again: a second flock of it on another
 * descriptor of ours would wait for the first. */
static int take(held *h, const held *first, int op, const mbe_lock_opts *o,
                double t0, mbe_err *e)
{
    int rc = open_lock_file(h, e);
    if (rc < 0)
        return rc;
    if (first && same_file(first->fd, h->fd)) {
        close_held(h);
        return 1;
    }
    return wait_for_lock(h, op, o, t0, e);
}

/* The master may have been removed (or renamed away) while we waited. */
static int still_there(const char *master, int flags, held *h, size_t n,
                       mbe_err *e)
{
    struct stat st;
    if ((flags & MBE_LOCK_NEW_MASTER) || stat(master, &st) == 0)
        return 0;
    int err = errno;
    for (size_t k = 0; k < n; k++)
        drop_created(&h[k]);
    return mbe_fail(e, "%s: %s (gone while its lock was awaited)", master,
                    strerror(err));
}

static int take_all(const char *master, int flags, const mbe_lock_opts *o,
                    held *h, size_t *n, mbe_err *e)
{
    int op = (flags & MBE_LOCK_EXCLUSIVE) ? LOCK_EX : LOCK_SH;
    double t0 = mbe_now();
    for (size_t k = 0; k < *n; k++) {
        int rc = take(&h[k], k ? &h[0] : NULL, op, o, t0, e);
        if (rc == 1) {
            *n = k;
            break;
        }
        /* A time-out or an error leaves the lock files, as the package
         * would: the master was there when we looked. */
        if (rc < 0)
            return rc;
    }
    return still_there(master, flags, h, *n, e);
}

/* The real file's lock first, then the link's: two of our processes never
 * wait for each other in a cycle, since any process holding a link's
 * lock holds the real one already, and Python holds one lock only. */
int mbe_lock_acquire(const char *master_path, int flags,
                     const mbe_lock_opts *opts, mbe_lock *out, mbe_err *e)
{
    out->fd = out->real_fd = -1;
    out->path = out->real_path = NULL;
    mbe_lock_opts defaults = {MBE_LOCK_TIMEOUT_DEFAULT, NULL, NULL};
    const mbe_lock_opts *o = opts ? opts : &defaults;
    char *real = NULL;
    if (check_master(master_path, flags, &real, e) < 0)
        return MBE_EFAIL;
    held h[2] = {{-1, NULL, 0, 0}, {-1, NULL, 0, 0}};
    size_t n = real ? 2 : 1;
    h[0].path = real ? mbe_asprintf("%s.lock", real)
                     : mbe_asprintf("%s.lock", master_path);
    h[1].path = real ? mbe_asprintf("%s.lock", master_path) : NULL;
    free(real);
    int rc = h[0].path && (n == 1 || h[1].path)
                 ? take_all(master_path, flags, o, h, &n, e)
                 : mbe_fail(e, "out of memory");
    if (rc < 0) {
        close_held(&h[0]);
        close_held(&h[1]);
        return rc;
    }
    if (n == 1) {
        free(h[1].path);
        out->fd = h[0].fd;
        out->path = h[0].path;
        return 0;
    }
    out->fd = h[1].fd;
    out->path = h[1].path;
    out->real_fd = h[0].fd;
    out->real_path = h[0].path;
    return 0;
}

/* Closing drops the flock.  The files stay: unlinking one would let a
 * process that opened the old inode and one that creates a new one both
 * "hold" the lock. */
void mbe_lock_release(mbe_lock *l)
{
    if (!l)
        return;
    if (l->fd >= 0 && l->path)
        close(l->fd);
    if (l->real_fd >= 0 && l->real_path)
        close(l->real_fd);
    free(l->path);
    free(l->real_path);
    l->fd = l->real_fd = -1;
    l->path = l->real_path = NULL;
}
