/* shim.c - LD_PRELOAD fault and kill injector for the reliability tests.
 *
 * Counts the calls that change files -- write, pwrite, pwrite64, writev,
 * pwritev, fsync, fdatasync, ftruncate, rename, renameat, renameat2, link,
 * unlink, unlinkat -- and at the N-th counted call either kills the process
 * with SIGKILL or makes the call fail with an errno.  Controlled by the
 * environment:
 *
 *   SHIM_MATCH=STR     count only calls on files whose path contains STR
 *                      (the fd's /proc/self/fd link, or the path argument;
 *                      a relative path argument always matches).  Default:
 *                      every fd but 0, 1 and 2.
 *   SHIM_CLASSES=LIST  classes counted, comma-separated, of write, sync,
 *                      truncate, rename, unlink (default: all).
 *   SHIM_KILL_AT=N     raise SIGKILL right after the N-th counted call
 *                      returned (SHIM_KILL_BEFORE=1: instead of doing it).
 *   SHIM_TORN=1        with SHIM_KILL_AT on a write: write only the first
 *                      half of the bytes, then die (a torn write).
 *   SHIM_FAIL_AT=N     the N-th counted call fails without doing anything,
 *   SHIM_FAIL_COUNT=M  and so do the next M-1 counted calls (-1: all later
 *                      ones, like a full disk; default 1),
 *   SHIM_ERRNO=E       with errno E: ENOSPC (default), EIO, EDQUOT, EROFS
 *                      or a number.
 *   SHIM_SHORT=1       the first failing write writes half of its bytes and
 *                      returns that count (a short write), the next fail.
 *   SHIM_TRACE=FILE    append one line per counted call:
 *                      "<n> <call> <class> <path> <offset> <len> <hex of
 *                      the first 8 bytes> <result>"; flushed before a kill.
 *
 * The shim never counts its own trace writes.  Build:
 *   gcc -shared -fPIC -O2 -o shim.so shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { C_WRITE = 1, C_SYNC = 2, C_TRUNC = 4, C_RENAME = 8, C_UNLINK = 16 };

static int inited;
static const char *match;
static unsigned classes = ~0u;
static long kill_at = -1, fail_at = -1, fail_count = 1;
static int kill_before, torn, short_write, fail_errno = ENOSPC;
static int trace_fd = -1;
static long counter;
static int short_done;

static void init(void)
{
    if (inited)
        return;
    inited = 1;
    const char *s;
    match = getenv("SHIM_MATCH");
    if (match && !*match)
        match = NULL;
    if ((s = getenv("SHIM_CLASSES")) && *s) {
        classes = 0;
        if (strstr(s, "write"))
            classes |= C_WRITE;
        if (strstr(s, "sync"))
            classes |= C_SYNC;
        if (strstr(s, "trunc"))
            classes |= C_TRUNC;
        if (strstr(s, "rename"))
            classes |= C_RENAME;
        if (strstr(s, "unlink"))
            classes |= C_UNLINK;
    }
    if ((s = getenv("SHIM_KILL_AT")) && *s)
        kill_at = atol(s);
    if ((s = getenv("SHIM_KILL_BEFORE")) && *s)
        kill_before = atoi(s);
    if ((s = getenv("SHIM_TORN")) && *s)
        torn = atoi(s);
    if ((s = getenv("SHIM_FAIL_AT")) && *s)
        fail_at = atol(s);
    if ((s = getenv("SHIM_FAIL_COUNT")) && *s)
        fail_count = atol(s);
    if ((s = getenv("SHIM_SHORT")) && *s)
        short_write = atoi(s);
    if ((s = getenv("SHIM_ERRNO")) && *s) {
        if (!strcmp(s, "ENOSPC"))
            fail_errno = ENOSPC;
        else if (!strcmp(s, "EIO"))
            fail_errno = EIO;
        else if (!strcmp(s, "EDQUOT"))
            fail_errno = EDQUOT;
        else if (!strcmp(s, "EROFS"))
            fail_errno = EROFS;
        else
            fail_errno = atoi(s);
    }
    if ((s = getenv("SHIM_TRACE")) && *s)
        trace_fd = (int)syscall(SYS_openat, AT_FDCWD, s,
                                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                                0644);
}

static void fd_path(int fd, char *buf, size_t len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, len - 1);
    buf[n > 0 ? n : 0] = '\0';
}

static int fd_matches(int fd, char *path, size_t len)
{
    fd_path(fd, path, len);
    if (!match)
        return fd > 2;
    return strstr(path, match) != NULL;
}

static int path_matches(const char *p)
{
    if (!p)
        return 0;
    if (!match || p[0] != '/')
        return 1;
    return strstr(p, match) != NULL;
}

static void trace(long n, const char *call, unsigned cls, const char *path,
                  long long off, long long len, const void *buf, long res)
{
    if (trace_fd < 0)
        return;
    char hex[17] = "-";
    if (buf && len > 0) {
        const unsigned char *b = buf;
        int m = len < 8 ? (int)len : 8;
        for (int i = 0; i < m; i++)
            snprintf(hex + 2 * i, 3, "%02x", b[i]);
    }
    const char *cn = cls == C_WRITE ? "write" : cls == C_SYNC ? "sync"
                   : cls == C_TRUNC ? "truncate" : cls == C_RENAME ? "rename"
                                                                 : "unlink";
    char line[4096 + 256];
    int k = snprintf(line, sizeof line, "%ld %s %s %s %lld %lld %s %ld\n", n,
                     call, cn, *path ? path : "?", off, len, hex, res);
    if (k > 0)
        syscall(SYS_write, trace_fd, line,
                (size_t)(k < (int)sizeof line ? k : (int)sizeof line - 1));
}

/* What to do with this counted call. */
enum { GO, FAIL, DIE_BEFORE, DIE_AFTER, DIE_TORN, SHORT };

static int decide(unsigned cls, long *n)
{
    *n = __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST);
    if (kill_at > 0 && *n == kill_at) {
        if (kill_before)
            return DIE_BEFORE;
        if (torn && cls == C_WRITE)
            return DIE_TORN;
        return DIE_AFTER;
    }
    if (fail_at > 0 && *n >= fail_at &&
        (fail_count < 0 || *n < fail_at + fail_count)) {
        if (short_write && cls == C_WRITE && !short_done) {
            short_done = 1;
            return SHORT;
        }
        return FAIL;
    }
    return GO;
}

static void die(void)
{
    raise(SIGKILL);
    _exit(137);
}

#define REAL(name, ret, ...)                                                \
    static ret (*real_##name)(__VA_ARGS__);                                 \
    if (!real_##name)                                                       \
        *(void **)&real_##name = dlsym(RTLD_NEXT, #name);

/* One macro body for the fd-based calls that carry a buffer. */
#define FD_CALL(name, cls, off, len, buf, call_expr, half_expr)             \
    init();                                                                 \
    char path[4096];                                                        \
    if (!(classes & (cls)) || !fd_matches(fd, path, sizeof path))           \
        return call_expr;                                                   \
    long n;                                                                 \
    int what = decide(cls, &n);                                             \
    if (what == DIE_BEFORE) {                                               \
        trace(n, #name, cls, path, off, len, buf, -2);                      \
        die();                                                              \
    }                                                                       \
    if (what == FAIL) {                                                     \
        trace(n, #name, cls, path, off, len, buf, -1);                      \
        errno = fail_errno;                                                 \
        return -1;                                                          \
    }                                                                       \
    if (what == DIE_TORN || what == SHORT) {                                \
        long r = (long)(half_expr);                                         \
        trace(n, #name, cls, path, off, len, buf, r);                       \
        if (what == DIE_TORN)                                               \
            die();                                                          \
        return r;                                                           \
    }                                                                       \
    long r = (long)(call_expr);                                             \
    int saved = errno;                                                      \
    trace(n, #name, cls, path, off, len, buf, r);                           \
    if (what == DIE_AFTER)                                                  \
        die();                                                              \
    errno = saved;                                                          \
    return r;

ssize_t write(int fd, const void *buf, size_t count)
{
    REAL(write, ssize_t, int, const void *, size_t)
    FD_CALL(write, C_WRITE, -1LL, (long long)count, buf,
            real_write(fd, buf, count), real_write(fd, buf, count / 2))
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t)
    FD_CALL(pwrite, C_WRITE, (long long)off, (long long)count, buf,
            real_pwrite(fd, buf, count, off),
            real_pwrite(fd, buf, count / 2, off))
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off)
{
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t)
    FD_CALL(pwrite64, C_WRITE, (long long)off, (long long)count, buf,
            real_pwrite64(fd, buf, count, off),
            real_pwrite64(fd, buf, count / 2, off))
}

static size_t iov_len(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev, ssize_t, int, const struct iovec *, int)
    FD_CALL(writev, C_WRITE, -1LL, (long long)iov_len(iov, cnt),
            cnt > 0 ? iov[0].iov_base : NULL, real_writev(fd, iov, cnt),
            real_writev(fd, iov, cnt > 1 ? cnt / 2 : cnt))
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t)
    FD_CALL(pwritev, C_WRITE, (long long)off, (long long)iov_len(iov, cnt),
            cnt > 0 ? iov[0].iov_base : NULL,
            real_pwritev(fd, iov, cnt, off),
            real_pwritev(fd, iov, cnt > 1 ? cnt / 2 : cnt, off))
}

int fsync(int fd)
{
    REAL(fsync, int, int)
    FD_CALL(fsync, C_SYNC, -1LL, 0LL, NULL, real_fsync(fd), real_fsync(fd))
}

int fdatasync(int fd)
{
    REAL(fdatasync, int, int)
    FD_CALL(fdatasync, C_SYNC, -1LL, 0LL, NULL, real_fdatasync(fd),
            real_fdatasync(fd))
}

int ftruncate(int fd, off_t len)
{
    REAL(ftruncate, int, int, off_t)
    FD_CALL(ftruncate, C_TRUNC, (long long)len, 0LL, NULL,
            real_ftruncate(fd, len), real_ftruncate(fd, len))
}

int ftruncate64(int fd, off_t len)
{
    REAL(ftruncate64, int, int, off_t)
    FD_CALL(ftruncate64, C_TRUNC, (long long)len, 0LL, NULL,
            real_ftruncate64(fd, len), real_ftruncate64(fd, len))
}

/* Path-based calls. */
#define PATH_CALL(name, cls, p, call_expr)                                  \
    init();                                                                 \
    if (!(classes & (cls)) || !path_matches(p))                             \
        return call_expr;                                                   \
    long n;                                                                 \
    int what = decide(cls, &n);                                             \
    if (what == DIE_BEFORE) {                                               \
        trace(n, #name, cls, p, -1, 0, NULL, -2);                           \
        die();                                                              \
    }                                                                       \
    if (what == FAIL || what == SHORT) {                                    \
        trace(n, #name, cls, p, -1, 0, NULL, -1);                           \
        errno = fail_errno == ENOSPC && (cls) == C_UNLINK ? EIO             \
                                                          : fail_errno;     \
        return -1;                                                          \
    }                                                                       \
    int r = (call_expr);                                                    \
    int saved = errno;                                                      \
    trace(n, #name, cls, p, -1, 0, NULL, r);                                \
    if (what == DIE_AFTER || what == DIE_TORN)                              \
        die();                                                              \
    errno = saved;                                                          \
    return r;

int rename(const char *a, const char *b)
{
    REAL(rename, int, const char *, const char *)
    PATH_CALL(rename, C_RENAME, b, real_rename(a, b))
}

int renameat(int da, const char *a, int db, const char *b)
{
    REAL(renameat, int, int, const char *, int, const char *)
    PATH_CALL(renameat, C_RENAME, b, real_renameat(da, a, db, b))
}

int renameat2(int da, const char *a, int db, const char *b, unsigned flags)
{
    REAL(renameat2, int, int, const char *, int, const char *, unsigned)
    PATH_CALL(renameat2, C_RENAME, b, real_renameat2(da, a, db, b, flags))
}

int link(const char *a, const char *b)
{
    REAL(link, int, const char *, const char *)
    PATH_CALL(link, C_RENAME, b, real_link(a, b))
}

int unlink(const char *p)
{
    REAL(unlink, int, const char *)
    PATH_CALL(unlink, C_UNLINK, p, real_unlink(p))
}

int unlinkat(int d, const char *p, int flags)
{
    REAL(unlinkat, int, int, const char *, int)
    PATH_CALL(unlinkat, C_UNLINK, p, real_unlinkat(d, p, flags))
}
