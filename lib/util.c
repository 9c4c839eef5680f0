/* util.c - error messages, string lists, status names, whole-buffer I/O,
 * file names and clocks. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mbe_internal.h"

/* Programs print a message as one line: text from elsewhere (HDF5's
 * descriptions hold newlines, a command's stderr has many) is folded. */
static void one_line(char *s)
{
    char *w = s;
    int space = 0;
    for (const char *r = s; *r; r++) {
        if (*r == '\n' || *r == '\r' || *r == '\t') {
            space = w != s;
            continue;
        }
        if (space && *r != ' ')
            *w++ = ' ';
        space = 0;
        *w++ = *r;
    }
    *w = '\0';
}

static int vfail(mbe_err *e, int rc, const char *fmt, va_list ap)
{
    if (e) {
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        one_line(e->msg);
    }
    return rc;
}

int mbe_fail(mbe_err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(e, MBE_EFAIL, fmt, ap);
    va_end(ap);
    return rc;
}

int mbe_failc(mbe_err *e, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(e, rc, fmt, ap);
    va_end(ap);
    return rc;
}

void mbe_err_prefix(mbe_err *e, const char *fmt, ...)
{
    if (!e)
        return;
    char old[MBE_ERR_LEN];
    memcpy(old, e->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof e->msg - 2)
        return;
    /* Copy what fits of the old message after "prefix: ". */
    snprintf(e->msg + n, sizeof e->msg - n, ": %.*s",
             (int)(sizeof e->msg - n - 3), old);
    one_line(e->msg);
}

void mbe_err_name_file(mbe_err *e, const char *path)
{
    size_t n = strlen(path);
    /* "PATH:" also covers "PATH:KEY" and a member's "PATH:/I: ". */
    if (e && (strncmp(e->msg, path, n) || e->msg[n] != ':'))
        mbe_err_prefix(e, "%s", path);
}

const char *mbe_err_strip_path(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (!strncmp(msg, path, n) && !strncmp(msg + n, ": ", 2))
        return msg + n + 2;
    return msg;
}

const char *mbe_status_name(int64_t status)
{
    static const char *const names[] = {"COMPLETED", "UNDEFINED",
                                        "SCF_NOT_CONVERGED", "FAILED"};
    if (status < 0 || status >= MBE_N_STATUS)
        return "INVALID";
    return names[status];
}

char *mbe_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *mbe_asprintf(const char *fmt, ...)
{
    char *out = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : out;
}

int mbe_strlist_push(mbe_strlist *l, const char *s, mbe_err *e)
{
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);
    if (!v)
        return mbe_fail(e, "out of memory");
    l->v = v;
    if (!(l->v[l->n] = strdup(s)))
        return mbe_fail(e, "out of memory");
    l->n++;
    return 0;
}

void mbe_strlist_free(mbe_strlist *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* ------------------------------------------------------ whole-buffer I/O */

ssize_t mbe_pread_upto(int fd, void *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, (char *)buf + done, n - done,
                            (off_t)(off + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            break;
        done += (size_t)got;
    }
    return (ssize_t)done;
}

int mbe_pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    ssize_t got = mbe_pread_upto(fd, buf, n, off);
    if (got < 0)
        return -1;
    if ((size_t)got < n) {
        errno = EIO; /* the file is shorter than its layout says */
        return -1;
    }
    return 0;
}

int mbe_pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    int zero = 0;
    while (n) {
        ssize_t put = pwrite(fd, p, n, (off_t)off);
        if (put < 0 && errno == EINTR)
            continue;
        /* Nothing written: asking again gives the cause (ENOSPC). */
        if (put == 0 && ++zero < 3)
            continue;
        if (put <= 0) {
            if (put == 0)
                errno = EIO;
            return -1;
        }
        p += put;
        off += (uint64_t)put;
        n -= (size_t)put;
    }
    return 0;
}

/* ------------------------------------------------------- names, times */

const char *mbe_base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

void mbe_iso_time(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    /* Whole: a shard stores all 32 bytes (its end_time). */
    memset(out, 0, 32);
    if (gmtime_r(&t, &tm))
        strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

double mbe_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int mbe_poll_ms(double deadline, int slice)
{
    if (deadline <= 0)
        return slice;
    double left = deadline - mbe_now();
    if (left <= 0)
        return -1;
    /* One ms late rather than early: a poll that wakes just before the
     * deadline would only poll again for 0 ms. */
    return left * 1000 < slice ? (int)(left * 1000) + 1 : slice;
}
