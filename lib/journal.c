/*
 * journal.c - undo journal for structural changes of a master.
 *
 * HDF5 rewrites metadata in place (object headers, B-tree nodes, heaps,
 * the superblock) and is not crash-consistent: a process killed during a
 * flush can leave a file that no longer opens.  The change is therefore
 * made through a virtual file driver of our own.  It does plain POSIX I/O
 * on the master, and before it overwrites any byte below the size the file
 * had when it was opened (orig_eof) it copies the original bytes into
 * <path>.mbe-journal and makes that copy durable.  Bytes at or past
 * orig_eof need no copy: rolling back truncates the file to orig_eof.
 *
 * Journal file (all integers little-endian; crc32 is zlib's, crc.c):
 *
 *   header, 64 bytes:
 *     0  magic "MBE-JRNL"
 *     8  u32 version (1)          12  u32 header size (64)
 *    16  u64 orig_eof             24  u64 master size when opened
 *    32  u64 st_dev of master     40  u64 st_ino of master
 *    48  u64 creation time (s)    56  u32 reserved (0)
 *    60  u32 crc32 of bytes 0..59
 *   records, appended one after another:
 *     0  u32 magic "MBJR"          4  u32 reserved (0)
 *     8  u64 offset in master     16  u64 length n
 *    24  n original bytes     24+n  u32 crc32 of bytes 0..24+n-1
 *
 * Order of durability, which is what makes roll-back exact:
 *   1. the journal is created (O_EXCL), its header written and fsynced and
 *      its directory fsynced before the master is opened through HDF5;
 *   2. every record is fdatasynced before the overwrite it protects is
 *      issued, so a record torn by a crash protects nothing that happened;
 *   3. at commit the master is fsynced before the journal is unlinked.
 * A range is saved once, with its original bytes: a sorted list of the
 * ranges already saved is kept, and a write that only touches saved ranges
 * costs nothing.  Otherwise one record covers the write's unsaved bytes,
 * from the first to the last, widened to whole 4 KiB pages (clipped to
 * orig_eof) because HDF5 writes neighbouring metadata in many small
 * pieces: one record and one fdatasync per page, not per piece.  Bytes not
 * yet saved are always original ones, so widening is safe; where a record
 * also spans bytes saved (and maybe overwritten) before, the older record
 * still holds their original value, and roll-back applies records newest
 * first, so the oldest copy of every byte wins.
 *
 * Locking: the caller holds the exclusive flock on <path>.lock.  The
 * driver's lock callback additionally takes HDF5's own flock on the .h5
 * (as the sec2 driver does), so an h5py reader holding the file open makes
 * the open fail instead of seeing the file change under it.  HDF5 itself
 * skips the call when HDF5_USE_FILE_LOCKING=FALSE; with BEST_EFFORT, file
 * systems without flock are tolerated.
 *
 * No global mutable state: the driver class is a constant, it is
 * registered per journal and unregistered when the journal ends; the
 * journal reaches the driver through the file access property list.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "h5compat.h"
#include "mbe_internal.h"

#define JHDR_SIZE 64
#define JHDR_MAGIC "MBE-JRNL"
#define JVERSION 1u
#define JREC_MAGIC 0x524a424du /* "MBJR" little-endian */
#define JREC_HEAD 24
#define JREC_TAIL 4
/* Granule of saved ranges (see the comment at the top). */
#define JGRAIN 4096u
/* Largest record: bigger gaps (truncate of a large tail) are split so the
 * buffer stays small. */
#define JREC_MAX (1u << 20)
/* Largest offset pread/pwrite can take (off_t is signed 64 bit). */
#define JMAXADDR ((haddr_t)INT64_MAX)

struct range {
    uint64_t start, end; /* [start, end) */
};

struct mbe_journal {
    char *path;          /* master */
    char *jpath;         /* <path>.mbe-journal */
    int mfd;             /* master, read-write; used by the driver */
    int jfd;             /* journal, write-only */
    uint64_t orig_eof;   /* master size at open */
    uint64_t dev, ino;   /* identity of the master */
    uint64_t jend;       /* journal size = where the next record goes */
    struct range *saved; /* ranges durably saved, sorted, disjoint */
    size_t nsaved, capsaved;
    size_t nrec;         /* records written */
    hid_t drv;           /* our driver, registered for this journal */
    int drv_open;        /* a driver instance is using this journal */
    int broken;          /* a write failed: no overwrite may follow */
    char err[512];       /* first driver failure, for messages */
};

/* What the file access property list carries to the driver's open. */
struct jfapl {
    mbe_journal *j;
};

/* One open file of the driver.  pub must come first: HDF5 sees an H5FD_t. */
typedef struct jfile {
    H5FD_t pub;
    mbe_journal *j;
    int fd;                  /* == j->mfd, not owned */
    haddr_t eoa, eof;
    int ignore_nolock;       /* flock unsupported by the file system is ok */
} jfile;

/* ------------------------------------------------------- small helpers */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The journal belongs to the file, not to one of its names: a merge
 * killed while run through a symbolic link is rolled back by one given
 * the real name, and the other way round. */
static char *journal_path(const char *path)
{
    struct stat st;
    char *real = lstat(path, &st) == 0 && S_ISLNK(st.st_mode)
                     ? realpath(path, NULL) : NULL;
    char *j = mbe_asprintf("%s%s", real ? real : path, MBE_JOURNAL_SUFFIX);
    free(real);
    return j;
}

/* The journal to roll back: at the real name, or one that mbe-shard 0.2
 * and older left at the name of a link.  Malloc'd; NULL when out of
 * memory. */
static char *pending_journal(const char *path)
{
    char *j = journal_path(path);
    if (!j || access(j, F_OK) == 0 || errno != ENOENT)
        return j;
    char *old = mbe_asprintf("%s%s", path, MBE_JOURNAL_SUFFIX);
    if (old && access(old, F_OK) == 0) {
        free(j);
        return old;
    }
    free(old);
    return j;
}

int mbe_journal_pending(const char *path)
{
    char *j = pending_journal(path);
    int rc = j && access(j, F_OK) == 0;
    free(j);
    return rc;
}

/* A driver failure: remember the first one for the caller's message, stop
 * every later overwrite (when set_broken) and tell HDF5. */
static void drv_fail(mbe_journal *j, int set_broken, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void drv_fail(mbe_journal *j, int set_broken, const char *fmt, ...)
{
    char msg[sizeof j->err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (j) {
        if (!j->err[0])
            snprintf(j->err, sizeof j->err, "%s", msg);
        if (set_broken)
            j->broken = 1;
    }
    H5Epush2(H5E_DEFAULT, __FILE__, "journal driver", __LINE__, H5E_ERR_CLS,
             H5E_VFL, H5E_WRITEERROR, "%s", msg);
}

/* ------------------------------------------------- ranges already saved */

static int range_cmp(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Add [start, end) to the saved list, merging neighbours. */
static int saved_add(mbe_journal *j, const struct range *add, size_t n)
{
    if (j->nsaved + n > j->capsaved) {
        size_t cap = j->capsaved ? j->capsaved : 16;
        while (cap < j->nsaved + n)
            cap *= 2;
        struct range *v = realloc(j->saved, cap * sizeof *v);
        if (!v)
            return -1;
        j->saved = v;
        j->capsaved = cap;
    }
    memcpy(j->saved + j->nsaved, add, n * sizeof *add);
    j->nsaved += n;
    qsort(j->saved, j->nsaved, sizeof *j->saved, range_cmp);
    size_t out = 0;
    for (size_t i = 1; i < j->nsaved; i++) {
        if (j->saved[i].start <= j->saved[out].end) {
            if (j->saved[i].end > j->saved[out].end)
                j->saved[out].end = j->saved[i].end;
        } else {
            j->saved[++out] = j->saved[i];
        }
    }
    j->nsaved = out + 1;
    return 0;
}

/* Append one record holding the current (original) bytes [off, off+n) of
 * the master.  Not synced here: the caller syncs once for all records. */
static int append_record(mbe_journal *j, uint64_t off, size_t n)
{
    unsigned char *rec = malloc(JREC_HEAD + n + JREC_TAIL);
    if (!rec) {
        drv_fail(j, 1, "journal: out of memory");
        return -1;
    }
    put_u32(rec, JREC_MAGIC);
    put_u32(rec + 4, 0);
    put_u64(rec + 8, off);
    put_u64(rec + 16, n);
    ssize_t got = mbe_pread_upto(j->mfd, rec + JREC_HEAD, n, off);
    if (got < 0 || (size_t)got != n) {
        /* Every unsaved byte below orig_eof must still be there: a short
         * read means the file was changed behind our back. */
        drv_fail(j, 1, "journal: cannot read the original bytes %llu..%llu "
                 "of %s: %s", (unsigned long long)off,
                 (unsigned long long)(off + n), j->path,
                 got < 0 ? strerror(errno) : "file shorter than at open");
        free(rec);
        return -1;
    }
    put_u32(rec + JREC_HEAD + n, mbe_crc32(0, rec, JREC_HEAD + n));
    if (mbe_pwrite_full(j->jfd, rec, JREC_HEAD + n + JREC_TAIL, j->jend) < 0) {
        drv_fail(j, 1, "journal: cannot write %s: %s", j->jpath,
                 strerror(errno));
        free(rec);
        return -1;
    }
    free(rec);
    j->jend += JREC_HEAD + n + JREC_TAIL;
    j->nrec++;
    return 0;
}

/* Make sure the original bytes of [a, b) ∩ [0, orig_eof) are durably in
 * the journal.  Must be called before the range is overwritten or cut. */
static int save_range(mbe_journal *j, uint64_t a, uint64_t b)
{
    if (j->broken) {
        drv_fail(j, 0, "journal: an earlier journal write failed; refusing "
                 "to modify %s", j->path);
        return -1;
    }
    if (b > j->orig_eof)
        b = j->orig_eof;
    if (a >= b)
        return 0;
    a -= a % JGRAIN;
    b = b % JGRAIN ? b + (JGRAIN - b % JGRAIN) : b;
    if (b > j->orig_eof)
        b = j->orig_eof;

    /* First and last byte of [a, b) not covered by the saved list. */
    uint64_t first = b, last = a;
    size_t i = 0;
    while (i < j->nsaved && j->saved[i].end <= a)
        i++;
    for (uint64_t pos = a; pos < b;) {
        if (i < j->nsaved && j->saved[i].start <= pos) {
            pos = j->saved[i].end;
            i++;
            continue;
        }
        uint64_t end = i < j->nsaved && j->saved[i].start < b
                           ? j->saved[i].start : b;
        if (first == b)
            first = pos;
        last = end;
        pos = end;
    }
    if (first >= last)
        return 0;
    /* One record spans all gaps, even where it covers bytes saved (and
     * perhaps overwritten) before: roll-back applies records newest first,
     * so the earliest record of every byte, the one with its original
     * value, wins.  One record per sync keeps the rule of recovery simple:
     * only the last record can be torn. */
    for (uint64_t o = first; o < last; o += JREC_MAX) {
        size_t n = last - o < JREC_MAX ? (size_t)(last - o) : JREC_MAX;
        if (append_record(j, o, n) < 0)
            return -1;
        /* The record must be on disk before the overwrite is issued: a
         * crash right after the overwrite must find it. */
        if (fdatasync(j->jfd) < 0) {
            drv_fail(j, 1, "journal: cannot sync %s: %s", j->jpath,
                     strerror(errno));
            return -1;
        }
    }
    struct range r = {first, last};
    if (saved_add(j, &r, 1) < 0) {
        drv_fail(j, 1, "journal: out of memory");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------- the driver */

static void *jd_fapl_copy(const void *fa)
{
    struct jfapl *c = malloc(sizeof *c);
    if (c)
        memcpy(c, fa, sizeof *c);
    return c;
}

static herr_t jd_fapl_free(void *fa)
{
    free(fa);
    return 0;
}

static void *jd_fapl_get(H5FD_t *f)
{
    struct jfapl fa = {((jfile *)f)->j};
    return jd_fapl_copy(&fa);
}

/* sec2 semantics: HDF5_USE_FILE_LOCKING=BEST_EFFORT, or the fapl's
 * "ignore when disabled" flag, let a file system without flock pass. */
static int ignore_disabled_locks(hid_t fapl)
{
    const char *env = getenv("HDF5_USE_FILE_LOCKING");
    if (env && !strcmp(env, "BEST_EFFORT"))
        return 1;
    if (env && (!strcmp(env, "TRUE") || !strcmp(env, "1")))
        return 0;
    hbool_t use = 1, ignore = 0;
    if (H5Pget_file_locking(fapl, &use, &ignore) < 0)
        return 0;
    return ignore ? 1 : 0;
}

static H5FD_t *jd_open(const char *name, unsigned flags, hid_t fapl,
                       haddr_t maxaddr)
{
    const struct jfapl *fa = H5Pget_driver_info(fapl);
    if (!fa || !fa->j) {
        drv_fail(NULL, 0, "journal driver: no journal in the file access "
                 "property list (open through mbe_journal_open)");
        return NULL;
    }
    mbe_journal *j = fa->j;
    if (j->drv_open) {
        drv_fail(j, 0, "journal driver: %s is already open", j->path);
        return NULL;
    }
    if (!(flags & H5F_ACC_RDWR) ||
        (flags & (H5F_ACC_TRUNC | H5F_ACC_CREAT | H5F_ACC_EXCL))) {
        drv_fail(j, 0, "journal driver: only opens existing files "
                 "read-write");
        return NULL;
    }
    if (maxaddr == 0 || maxaddr == HADDR_UNDEF || maxaddr > JMAXADDR) {
        drv_fail(j, 0, "journal driver: bogus maxaddr");
        return NULL;
    }
    /* The driver writes through the descriptor the journal opened; make
     * sure HDF5 names the same file. */
    struct stat st;
    if (stat(name, &st) < 0 || (uint64_t)st.st_ino != j->ino ||
        (uint64_t)st.st_dev != j->dev) {
        drv_fail(j, 0, "journal driver: %s is not the file the journal "
                 "was opened for", name);
        return NULL;
    }
    jfile *f = calloc(1, sizeof *f);
    if (!f) {
        drv_fail(j, 0, "journal driver: out of memory");
        return NULL;
    }
    f->j = j;
    f->fd = j->mfd;
    f->eof = j->orig_eof;
    f->eoa = 0;
    f->ignore_nolock = ignore_disabled_locks(fapl);
    j->drv_open = 1;
    return &f->pub;
}

static herr_t jd_close(H5FD_t *_f)
{
    jfile *f = (jfile *)_f;
    /* The descriptor belongs to the journal: commit fsyncs it, roll-back
     * reopens the file by name. */
    f->j->drv_open = 0;
    free(f);
    return 0;
}

static int jd_cmp(const H5FD_t *_a, const H5FD_t *_b)
{
    const jfile *a = (const jfile *)_a, *b = (const jfile *)_b;
    if (a->j->dev != b->j->dev)
        return a->j->dev < b->j->dev ? -1 : 1;
    if (a->j->ino != b->j->ino)
        return a->j->ino < b->j->ino ? -1 : 1;
    return 0;
}

static herr_t jd_query(const H5FD_t *f, unsigned long *flags)
{
    (void)f;
    /* As sec2, without SWMR: the metadata accumulator and the aggregators
     * also mean fewer, larger writes, hence fewer journal records. */
    if (flags)
        *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA |
                 H5FD_FEAT_DATA_SIEVE | H5FD_FEAT_AGGREGATE_SMALLDATA |
                 H5FD_FEAT_POSIX_COMPAT_HANDLE |
                 H5FD_FEAT_DEFAULT_VFD_COMPATIBLE;
    return 0;
}

static haddr_t jd_get_eoa(const H5FD_t *f, H5FD_mem_t type)
{
    (void)type;
    return ((const jfile *)f)->eoa;
}

static herr_t jd_set_eoa(H5FD_t *f, H5FD_mem_t type, haddr_t addr)
{
    (void)type;
    if (addr > JMAXADDR) {
        drv_fail(((jfile *)f)->j, 0, "journal driver: address overflow");
        return -1;
    }
    ((jfile *)f)->eoa = addr;
    return 0;
}

static haddr_t jd_get_eof(const H5FD_t *f, H5FD_mem_t type)
{
    (void)type;
    return ((const jfile *)f)->eof;
}

static herr_t jd_get_handle(H5FD_t *_f, hid_t fapl, void **handle)
{
    (void)fapl;
    jfile *f = (jfile *)_f;
    if (!handle)
        return -1;
    *handle = &f->fd;
    return 0;
}

/* An I/O request must lie inside the allocated address space. */
static int region_bad(const jfile *f, haddr_t addr, size_t size)
{
    return addr == HADDR_UNDEF || addr > JMAXADDR || size > JMAXADDR ||
           addr + size > JMAXADDR || addr + size > f->eoa;
}

static herr_t jd_read(H5FD_t *_f, H5FD_mem_t type, hid_t dxpl, haddr_t addr,
                      size_t size, void *buf)
{
    (void)type;
    (void)dxpl;
    jfile *f = (jfile *)_f;
    if (region_bad(f, addr, size)) {
        drv_fail(f->j, 0, "journal driver: read of %zu bytes at %llu past "
                 "the end of the allocated space", size,
                 (unsigned long long)addr);
        return -1;
    }
    ssize_t got = mbe_pread_upto(f->fd, buf, size, addr);
    if (got < 0) {
        drv_fail(f->j, 0, "journal driver: cannot read %s: %s", f->j->path,
                 strerror(errno));
        return -1;
    }
    /* Allocated but never written: reads as zeros, as in sec2. */
    memset((char *)buf + got, 0, size - (size_t)got);
    return 0;
}

static herr_t jd_write(H5FD_t *_f, H5FD_mem_t type, hid_t dxpl, haddr_t addr,
                       size_t size, const void *buf)
{
    (void)type;
    (void)dxpl;
    jfile *f = (jfile *)_f;
    if (region_bad(f, addr, size)) {
        drv_fail(f->j, 0, "journal driver: write of %zu bytes at %llu past "
                 "the end of the allocated space", size,
                 (unsigned long long)addr);
        return -1;
    }
    if (save_range(f->j, addr, addr + size) < 0)
        return -1;
    if (mbe_pwrite_full(f->fd, buf, size, addr) < 0) {
        /* The original bytes are saved; a partial overwrite is rolled
         * back with them.  No further change may be committed. */
        drv_fail(f->j, 1, "journal driver: cannot write %s: %s", f->j->path,
                 strerror(errno));
        return -1;
    }
    if (addr + size > f->eof)
        f->eof = addr + size;
    return 0;
}

/* Called at flush and close to set the file size to the allocated size.
 * Cutting below orig_eof destroys original bytes: save them first. */
static herr_t jd_truncate(H5FD_t *_f, hid_t dxpl, hbool_t closing)
{
    (void)dxpl;
    (void)closing;
    jfile *f = (jfile *)_f;
    if (f->eoa == f->eof)
        return 0;
    if (f->eoa < f->j->orig_eof && save_range(f->j, f->eoa, f->eof) < 0)
        return -1;
    if (ftruncate(f->fd, (off_t)f->eoa) < 0) {
        drv_fail(f->j, 1, "journal driver: cannot truncate %s: %s",
                 f->j->path, strerror(errno));
        return -1;
    }
    f->eof = f->eoa;
    return 0;
}

static herr_t jd_lock(H5FD_t *_f, hbool_t rw)
{
    jfile *f = (jfile *)_f;
    if (flock(f->fd, (rw ? LOCK_EX : LOCK_SH) | LOCK_NB) < 0) {
        if (errno == ENOSYS && f->ignore_nolock)
            return 0;
        drv_fail(f->j, 0, "cannot lock %s (%s): is it open in another "
                 "program, e.g. h5py?", f->j->path, strerror(errno));
        return -1;
    }
    return 0;
}

static herr_t jd_unlock(H5FD_t *_f)
{
    jfile *f = (jfile *)_f;
    if (flock(f->fd, LOCK_UN) < 0) {
        if (errno == ENOSYS && f->ignore_nolock)
            return 0;
        drv_fail(f->j, 0, "cannot unlock %s: %s", f->j->path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

/* The driver value of HDF5 1.14: one of 256-511, which The HDF Group
 * leaves to drivers it has not registered.  It is never stored in a file
 * (no superblock driver info: sb_size is NULL) and the class is only
 * registered inside this process, so it need not be unique elsewhere. */
#define JOURNAL_VFD_VALUE 456

/* HDF5 1.14's callbacks for vector and selection I/O, del and ctl are
 * left NULL (h5compat.h): HDF5 then splits vector and selection writes
 * into calls of jd_write, so every write still passes save_range. */
static const H5FD_class_t journal_class = {
    MBE_H5FD_CLASS_ID(JOURNAL_VFD_VALUE)
    .name = "mbe_journal",
    .maxaddr = JMAXADDR,
    .fc_degree = H5F_CLOSE_WEAK,
    .terminate = NULL,
    .sb_size = NULL,
    .sb_encode = NULL,
    .sb_decode = NULL,
    .fapl_size = sizeof(struct jfapl),
    .fapl_get = jd_fapl_get,
    .fapl_copy = jd_fapl_copy,
    .fapl_free = jd_fapl_free,
    .dxpl_size = 0,
    .dxpl_copy = NULL,
    .dxpl_free = NULL,
    .open = jd_open,
    .close = jd_close,
    .cmp = jd_cmp,
    .query = jd_query,
    .get_type_map = NULL,
    .alloc = NULL,
    .free = NULL,
    .get_eoa = jd_get_eoa,
    .set_eoa = jd_set_eoa,
    .get_eof = jd_get_eof,
    .get_handle = jd_get_handle,
    .read = jd_read,
    .write = jd_write,
    .flush = NULL,
    .truncate = jd_truncate,
    .lock = jd_lock,
    .unlock = jd_unlock,
    .fl_map = H5FD_FLMAP_DICHOTOMY,
};

/* ------------------------------------------------------------ recovery */

struct rec {
    uint64_t joff; /* where its bytes are in the journal */
    uint64_t off, len;
};

/* Outcome of reading a journal. */
enum scan_rc { SCAN_OK, SCAN_TORN_HEADER, SCAN_FAIL };

struct scan {
    uint64_t orig_eof, dev, ino;
    struct rec *recs;
    size_t n;
};

static int all_zero(int fd, uint64_t from, uint64_t to)
{
    unsigned char buf[4096];
    while (from < to) {
        size_t n = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
        ssize_t got = mbe_pread_upto(fd, buf, n, from);
        if (got <= 0)
            return 0;
        for (ssize_t i = 0; i < got; i++)
            if (buf[i])
                return 0;
        from += (uint64_t)got;
    }
    return 1;
}

/* Read and check the header and every complete record.  A torn last
 * record is dropped: it was being written when the process died, so the
 * overwrite it was to protect had not been issued. */
static enum scan_rc scan_journal(int jfd, const char *jpath, const char *path,
                                 struct scan *s, mbe_err *e)
{
    memset(s, 0, sizeof *s);
    struct stat st;
    if (fstat(jfd, &st) < 0) {
        mbe_fail(e, "cannot read %s: %s; fix the problem and run the "
                 "command again", jpath, strerror(errno));
        return SCAN_FAIL;
    }
    uint64_t size = (uint64_t)st.st_size;
    unsigned char h[JHDR_SIZE];
    ssize_t got = mbe_pread_upto(jfd, h, sizeof h, 0);
    if (got < 0) {
        mbe_fail(e, "cannot read %s: %s; fix the problem and run the "
                 "command again", jpath, strerror(errno));
        return SCAN_FAIL;
    }
    int hdr_ok = got == JHDR_SIZE && !memcmp(h, JHDR_MAGIC, 8) &&
                 get_u32(h + 60) == mbe_crc32(0, h, 60);
    if (!hdr_ok) {
        /* Records are only appended after the header is durable, so a
         * journal that is no more than a bad header protects nothing: the
         * crash came before the master was touched. */
        if (size <= JHDR_SIZE)
            return SCAN_TORN_HEADER;
        mbe_fail(e, "%s is damaged (bad header) and the interrupted change "
                 "of %s cannot be rolled back; restore %s from a backup, "
                 "then delete %s", jpath, path, path, jpath);
        return SCAN_FAIL;
    }
    if (get_u32(h + 8) != JVERSION || get_u32(h + 12) != JHDR_SIZE) {
        mbe_fail(e, "%s has journal version %u, this program knows %u: "
                 "roll the interrupted change of %s back with the program "
                 "that wrote it", jpath, get_u32(h + 8), JVERSION, path);
        return SCAN_FAIL;
    }
    s->orig_eof = get_u64(h + 16);
    s->dev = get_u64(h + 32);
    s->ino = get_u64(h + 40);

    size_t cap = 0;
    uint64_t pos = JHDR_SIZE;
    while (pos < size) {
        unsigned char rh[JREC_HEAD];
        int torn = 0, bad = 0;
        uint64_t len = 0, off = 0;
        if (size - pos < JREC_HEAD + JREC_TAIL) {
            torn = 1;
        } else if (mbe_pread_upto(jfd, rh, sizeof rh, pos) != JREC_HEAD) {
            mbe_fail(e, "cannot read %s: %s; fix the problem and run the "
                     "command again", jpath, strerror(errno));
            goto fail;
        } else if (get_u32(rh) != JREC_MAGIC) {
            /* Every record but the last was synced before the next one was
             * written, so garbage can only be the last record, torn by a
             * crash (zeros when the file grew but its data was lost). */
            if (size - pos <= JREC_HEAD + JREC_MAX + JREC_TAIL ||
                all_zero(jfd, pos, size))
                torn = 1;
            else
                bad = 1;
        } else {
            off = get_u64(rh + 8);
            len = get_u64(rh + 16);
            if (len == 0 || len > JREC_MAX || off > s->orig_eof ||
                len > s->orig_eof - off) {
                bad = 1;
            } else if (len + JREC_HEAD + JREC_TAIL > size - pos) {
                torn = 1;
            } else {
                unsigned char *buf = malloc(JREC_HEAD + len + JREC_TAIL);
                if (!buf) {
                    mbe_fail(e, "out of memory");
                    goto fail;
                }
                size_t n = JREC_HEAD + (size_t)len + JREC_TAIL;
                if (mbe_pread_upto(jfd, buf, n, pos) != (ssize_t)n) {
                    free(buf);
                    mbe_fail(e, "cannot read %s: %s; fix the problem and "
                             "run the command again", jpath,
                             strerror(errno));
                    goto fail;
                }
                int ok = get_u32(buf + n - JREC_TAIL) ==
                         mbe_crc32(0, buf, n - JREC_TAIL);
                free(buf);
                if (!ok) {
                    /* Only the last record can be torn. */
                    if (pos + n == size)
                        torn = 1;
                    else
                        bad = 1;
                }
            }
        }
        if (torn)
            break;
        if (bad) {
            mbe_fail(e, "%s is damaged at byte %llu and the interrupted "
                     "change of %s cannot be rolled back; restore %s from a "
                     "backup, then delete %s", jpath,
                     (unsigned long long)pos, path, path, jpath);
            goto fail;
        }
        if (s->n == cap) {
            cap = cap ? 2 * cap : 64;
            struct rec *v = realloc(s->recs, cap * sizeof *v);
            if (!v) {
                mbe_fail(e, "out of memory");
                goto fail;
            }
            s->recs = v;
        }
        s->recs[s->n++] = (struct rec){pos + JREC_HEAD, off, len};
        pos += JREC_HEAD + len + JREC_TAIL;
    }
    return SCAN_OK;
fail:
    free(s->recs);
    s->recs = NULL;
    return SCAN_FAIL;
}

/* Remove the journal durably: after this nothing will roll back. */
static int remove_journal(const char *jpath, mbe_err *e)
{
    if (unlink(jpath) < 0 && errno != ENOENT)
        return mbe_fail(e, "cannot delete %s: %s", jpath, strerror(errno));
    if (mbe_fsync_dir_of(jpath) < 0)
        return mbe_fail(e, "cannot sync the directory of %s: %s", jpath,
                        strerror(errno));
    return 0;
}

/* Put the saved bytes back, newest first, and cut the master to its
 * original size.  Idempotent: a crash in here is repaired by running it
 * again. */
static int apply_journal(int jfd, const char *jpath, const char *path,
                         const struct scan *s, mbe_err *e)
{
    int mfd = open(path, O_RDWR | O_CLOEXEC);
    if (mfd < 0) {
        if (errno == ENOENT)
            return mbe_fail(e, "%s is missing but its undo journal %s "
                            "exists; put the master back and run the "
                            "command again, or delete %s if the master was "
                            "removed on purpose", path, jpath, jpath);
        return mbe_fail(e, "cannot open %s to roll back an interrupted "
                        "change: %s; fix the problem and run the command "
                        "again (%s must stay until then)", path,
                        strerror(errno), jpath);
    }
    struct stat st;
    if (fstat(mfd, &st) < 0) {
        int err = errno;
        close(mfd);
        return mbe_fail(e, "cannot stat %s: %s", path, strerror(err));
    }
    /* The device number of a network file system may differ between
     * nodes, the inode number does not. */
    if ((uint64_t)st.st_ino != s->ino) {
        close(mfd);
        return mbe_fail(e, "%s was written for another file than the "
                        "current %s (inode %llu, now %llu): the master was "
                        "replaced after an interrupted change; if the "
                        "current master is intact, delete %s", jpath, path,
                        (unsigned long long)s->ino,
                        (unsigned long long)st.st_ino, jpath);
    }
    int rc = 0;
    const char *what = "";
    unsigned char *buf = NULL;
    for (size_t k = s->n; k-- > 0 && rc == 0;) {
        const struct rec *r = &s->recs[k];
        unsigned char *nb = realloc(buf, (size_t)r->len);
        if (!nb) {
            rc = -1;
            what = "out of memory";
            errno = ENOMEM;
            break;
        }
        buf = nb;
        if (mbe_pread_upto(jfd, buf, (size_t)r->len, r->joff) !=
            (ssize_t)r->len) {
            rc = -1;
            what = "reading the journal";
        } else if (mbe_pwrite_full(mfd, buf, (size_t)r->len, r->off) < 0) {
            rc = -1;
            what = "writing the master";
        }
    }
    free(buf);
    if (rc == 0 && ftruncate(mfd, (off_t)s->orig_eof) < 0) {
        rc = -1;
        what = "truncating the master";
    }
    if (rc == 0 && fsync(mfd) < 0) {
        rc = -1;
        what = "syncing the master";
    }
    int err = errno;
    close(mfd);
    if (rc < 0)
        return mbe_fail(e, "rolling back the interrupted change of %s "
                        "failed (%s: %s); fix the problem and run the "
                        "command again (%s must stay until then)", path,
                        what, strerror(err), jpath);
    return 0;
}

int mbe_journal_recover(const char *path, int *rolled_back, mbe_err *e)
{
    if (rolled_back)
        *rolled_back = 0;
    char *jpath = pending_journal(path);
    if (!jpath)
        return mbe_fail(e, "out of memory");
    int jfd = open(jpath, O_RDONLY | O_CLOEXEC);
    if (jfd < 0) {
        int err = errno;
        int rc = 0;
        if (err != ENOENT)
            rc = mbe_fail(e, "cannot open %s: %s; fix the problem and run "
                          "the command again", jpath, strerror(err));
        free(jpath);
        return rc;
    }
    struct scan s;
    enum scan_rc sr = scan_journal(jfd, jpath, path, &s, e);
    int rc = 0;
    if (sr == SCAN_FAIL)
        rc = -1;
    else if (sr == SCAN_OK)
        rc = apply_journal(jfd, jpath, path, &s, e);
    close(jfd);
    free(s.recs);
    if (rc == 0) {
        rc = remove_journal(jpath, e);
        if (rc == 0 && rolled_back)
            *rolled_back = 1;
    }
    free(jpath);
    return rc;
}

/* ----------------------------------------------------- open and commit */

static void journal_free(mbe_journal *j)
{
    if (!j)
        return;
    if (j->mfd >= 0)
        close(j->mfd);
    if (j->jfd >= 0)
        close(j->jfd);
    if (j->drv >= 0)
        H5FDunregister(j->drv);
    free(j->saved);
    free(j->path);
    free(j->jpath);
    free(j);
}

/* Write the header and make the journal's existence durable before any
 * byte of the master may change. */
static int write_header(mbe_journal *j, mbe_err *e)
{
    unsigned char h[JHDR_SIZE] = {0};
    memcpy(h, JHDR_MAGIC, 8);
    put_u32(h + 8, JVERSION);
    put_u32(h + 12, JHDR_SIZE);
    put_u64(h + 16, j->orig_eof);
    put_u64(h + 24, j->orig_eof);
    put_u64(h + 32, j->dev);
    put_u64(h + 40, j->ino);
    put_u64(h + 48, (uint64_t)time(NULL));
    put_u32(h + 60, mbe_crc32(0, h, 60));
    if (mbe_pwrite_full(j->jfd, h, sizeof h, 0) < 0 || fsync(j->jfd) < 0)
        return mbe_fail(e, "cannot write %s: %s", j->jpath, strerror(errno));
    if (mbe_fsync_dir_of(j->jpath) < 0)
        return mbe_fail(e, "cannot sync the directory of %s: %s", j->jpath,
                        strerror(errno));
    j->jend = JHDR_SIZE;
    return 0;
}

/* Close every object of the file and the file, so the driver is closed
 * and nothing can write through it later. */
static void close_everything(hid_t file)
{
    if (file < 0 || H5Iis_valid(file) <= 0)
        return;
    ssize_t n = H5Fget_obj_count(file, H5F_OBJ_ALL);
    hid_t *ids = n > 0 ? malloc((size_t)n * sizeof *ids) : NULL;
    if (ids) {
        n = H5Fget_obj_ids(file, H5F_OBJ_ALL, (size_t)n, ids);
        for (int pass = 0; pass < 2; pass++) {
            /* Objects first, file ids last. */
            for (ssize_t k = 0; k < n; k++) {
                H5I_type_t t = H5Iget_type(ids[k]);
                if (pass == 0 && t != H5I_FILE) {
                    if (t == H5I_ATTR)
                        H5Aclose(ids[k]);
                    else if (t == H5I_DATASET)
                        H5Dclose(ids[k]);
                    else if (t == H5I_GROUP)
                        H5Gclose(ids[k]);
                    else if (t == H5I_DATATYPE)
                        H5Tclose(ids[k]);
                } else if (pass == 1 && t == H5I_FILE && ids[k] != file) {
                    H5Fclose(ids[k]);
                }
            }
        }
        free(ids);
    }
    H5Fclose(file);
}

/* Roll the change back from the journal and free j.  On failure e says
 * what to do.  When HDF5 still holds the file open through our driver it
 * may write later, so the journal must stay valid and so must j: it is
 * left for recovery, j is deliberately not freed, and no further
 * overwrite is allowed. */
static int rollback_free(mbe_journal *j, mbe_err *e)
{
    if (j->drv_open) {
        j->broken = 1;
        return mbe_fail(e, "%s is still open in this process, so it cannot "
                        "be rolled back now; run the command again to roll "
                        "it back", j->path);
    }
    close(j->mfd);
    j->mfd = -1;
    close(j->jfd);
    j->jfd = -1;
    int rb = 0;
    int rc = mbe_journal_recover(j->path, &rb, e);
    journal_free(j);
    return rc;
}

/* The change cannot be committed: roll it back, free j, and say why. */
static int fail_rollback(mbe_journal *j, mbe_err *e, const char *why)
{
    mbe_err re = {{0}};
    if (rollback_free(j, &re) < 0)
        return mbe_fail(e, "%s; rolling the change back failed too: %s", why,
                        re.msg);
    return mbe_fail(e, "%s; the change was rolled back", why);
}

hid_t mbe_journal_open(const char *path, mbe_journal **jp, mbe_err *e)
{
    mbe_h5_quiet();
    *jp = NULL;
    mbe_journal *j = calloc(1, sizeof *j);
    if (!j)
        return mbe_fail(e, "out of memory");
    j->mfd = j->jfd = -1;
    j->drv = H5I_INVALID_HID;
    j->path = mbe_strdup(path);
    j->jpath = journal_path(path);
    if (!j->path || !j->jpath) {
        journal_free(j);
        return mbe_fail(e, "out of memory");
    }
    j->mfd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (j->mfd < 0 || fstat(j->mfd, &st) < 0) {
        mbe_fail(e, "cannot open %s: %s", path, strerror(errno));
        journal_free(j);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        journal_free(j);
        return mbe_fail(e, "%s is not a regular file", path);
    }
    j->orig_eof = (uint64_t)st.st_size;
    j->dev = (uint64_t)st.st_dev;
    j->ino = (uint64_t)st.st_ino;

    j->jfd = open(j->jpath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (j->jfd < 0) {
        int err = errno;
        if (err == EEXIST)
            mbe_fail(e, "%s exists: an earlier change of %s was interrupted "
                     "and must be rolled back first (mbe_journal_recover, "
                     "done when the command is run again under the lock)",
                     j->jpath, path);
        else
            mbe_fail(e, "cannot create %s: %s", j->jpath, strerror(err));
        journal_free(j);
        return -1;
    }
    if (write_header(j, e) < 0) {
        /* Nothing of the master was touched yet. */
        unlink(j->jpath);
        journal_free(j);
        return -1;
    }

    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    struct jfapl fa = {j};
    j->drv = H5FDregister(&journal_class);
    if (j->drv >= 0)
        fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* SEMI: H5Fclose fails while objects are open instead of leaving the
     * file open (and unflushed) behind the commit's back. */
    if (fapl < 0 || H5Pset_driver(fapl, j->drv, &fa) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_SEMI) < 0) {
        char d[256];
        mbe_h5_errdesc(d, sizeof d);
        if (fapl >= 0)
            H5Pclose(fapl);
        unlink(j->jpath);
        journal_free(j);
        return mbe_fail(e, "cannot set up the journaling driver: %s", d);
    }
    file = H5Fopen(path, H5F_ACC_RDWR, fapl);
    H5Pclose(fapl);
    if (file < 0) {
        char d[256], why[MBE_ERR_LEN];
        mbe_h5_errdesc(d, sizeof d);
        snprintf(why, sizeof why, "cannot open %s: %s", path,
                 j->err[0] ? j->err : d[0] ? d : "not an HDF5 file?");
        /* Opening may already have written (superblock flags). */
        mbe_err re = {{0}};
        if (rollback_free(j, &re) < 0)
            return mbe_fail(e, "%s; rolling back failed: %s", why, re.msg);
        return mbe_fail(e, "%s", why);
    }
    *jp = j;
    return file;
}

int mbe_journal_commit(hid_t file, mbe_journal *j, mbe_err *e)
{
    mbe_h5_quiet();
    if (!j)
        return mbe_fail(e, "mbe_journal_commit: no journal");
    char why[MBE_ERR_LEN];
    /* With objects open, the SEMI close refuses cleanly and the objects
     * can be closed; any other failed close is one that must not be
     * retried (see below). */
    ssize_t open_objs = H5Fget_obj_count(file, H5F_OBJ_DATASET |
                                         H5F_OBJ_GROUP | H5F_OBJ_DATATYPE |
                                         H5F_OBJ_ATTR | H5F_OBJ_LOCAL);
    herr_t hr = H5Fclose(file);
    if (hr < 0 || j->drv_open) {
        char d[256];
        mbe_h5_errdesc(d, sizeof d);
        if (j->drv_open)
            snprintf(why, sizeof why, "cannot commit the change of %s: "
                     "objects of the file are still open", j->path);
        else
            snprintf(why, sizeof why, "cannot commit the change of %s: %s",
                     j->path, j->err[0] ? j->err : d);
        /* After a close that failed writing, the id is half torn down:
         * closing it again crashes HDF5 1.10 (H5F__close).  It is left as
         * it is; programs skip HDF5's clean-up at exit (mbe_init). */
        if (hr >= 0 || open_objs > 0)
            close_everything(file);
        return fail_rollback(j, e, why);
    }
    if (j->broken) {
        snprintf(why, sizeof why, "cannot commit the change of %s: %s",
                 j->path, j->err);
        return fail_rollback(j, e, why);
    }
    /* Every byte of the change must be durable before the journal, the
     * only way back, goes. */
    if (fsync(j->mfd) < 0) {
        snprintf(why, sizeof why, "cannot commit the change of %s: fsync: "
                 "%s", j->path, strerror(errno));
        return fail_rollback(j, e, why);
    }
    close(j->jfd);
    j->jfd = -1;
    int rc = remove_journal(j->jpath, e);
    if (rc < 0)
        mbe_err_prefix(e, "the change of %s is written, but its journal "
                       "must go or the next run rolls the change back",
                       j->path);
    journal_free(j);
    return rc;
}

int mbe_journal_abort(hid_t file, mbe_journal *j, mbe_err *e)
{
    mbe_h5_quiet();
    if (!j) {
        close_everything(file);
        return 0;
    }
    close_everything(file);
    if (rollback_free(j, e) < 0) {
        mbe_err_prefix(e, "aborting the change failed");
        return -1;
    }
    return 0;
}
