/* merge.c - mbe_merge: apply shards to a master (mbe-merge(1)).
 *
 * Before the lock: every shard is opened and verified, and checked against
 * the master read-only (identity, geometry fingerprints); duplicates and
 * conflicts are found.  Any problem stops here and the master is never
 * opened for writing.
 *
 * Under the exclusive lock, taken once:
 *   0. an interrupted earlier merge is rolled back (journal), the master's
 *      identity and merge log are read again;
 *   A. structure (missing ground_truth datasets, levels_of_theory) is
 *      created through the undo journal and committed;
 *   B. rows are written in place: with pwrite at the dataset's file offset
 *      for contiguous datasets (linear in the frames applied; h5py's
 *      point selections are quadratic), through HDF5 hyperslabs for
 *      chunked or otherwise unusual ones (inside the journal, since HDF5
 *      may allocate chunks).  Raw rows are written under HDF5's own lock
 *      on the .h5, so a program holding the file open stops the merge.  Forces, then energies, are made durable
 *      before any status is written, so a kill never leaves a COMPLETED
 *      status beside stale results; merge_plan.c shows why re-running the
 *      same merge then gives the uninterrupted result;
 *   C. the applied shards are appended to the merge log (journal again),
 *      only after B is durable, so a logged shard is fully applied.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ground_truth.h"
#include "mbe_internal.h"
#include "merge_plan.h"

/* What becomes of a shard given on the command line. */
enum { SH_APPLY, SH_INVALID, SH_DUPLICATE, SH_ALREADY };

/* Frames named in messages about bad frames. */
#define SHOWN 5

typedef struct shard_in {
    mbe_shard_reader *r;
    char *key;          /* normalised: no leading or trailing '/' */
    uint32_t digest;    /* of the content (merge log) */
    int state;
    int checked;        /* against the master, before the lock */
    int steady;         /* provably unchanged while it was verified */
    struct stat st;     /* the file after it was verified */
    size_t target;
} shard_in;

/* The shards of one (key, level of theory), in command-line order. */
typedef struct target {
    const char *key;
    const char *level;
    int64_t n_frames;
    int64_t n_atoms;
    size_t *member;
    mp_shard *view;
    size_t n_member;
    mp_index ix;
    mp_plan plan;
    int64_t *stored;
    int forces;         /* some member holds forces: the level needs its
                           forces dataset */
    mbe_gt_level gl;
} target;

typedef struct ctx {
    const char *master;
    mbe_merge_opts o;
    mbe_merge_report *r;
    shard_in *sh;
    size_t n;
    target *t;
    size_t nt;
    int fd;             /* the master, for raw rows */
    char now[32];       /* time of this merge, ISO 8601 UTC */
} ctx;

/* ============================================================ helpers */

static void step(const ctx *c, const char *what, size_t done, size_t total)
{
    if (c->o.on_step)
        c->o.on_step(c->o.ud, what, done, total);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static const mbe_shard_meta *meta(const ctx *c, size_t i)
{
    return mbe_shard_reader_meta(c->sh[i].r);
}

static size_t shard_n(const ctx *c, size_t i)
{
    return mbe_shard_reader_frames(c->sh[i].r)->n;
}

/* "2, 5, 9, ..." of up to SHOWN frames. */
static void frame_list(char *buf, size_t len, const int64_t *f, size_t shown,
                       size_t total)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < shown && at < len; i++)
        at += snprintf(buf + at, len - at, "%s%lld", i ? ", " : "",
                       (long long)f[i]);
    if (total > shown && at < len)
        snprintf(buf + at, len - at, ", ...");
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
    char *p = buf;
    while (n) {
        ssize_t got = pread(fd, p, n, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO; /* the file is shorter than HDF5 says */
            return -1;
        }
        p += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t put = pwrite(fd, p, n, (off_t)off);
        if (put < 0 && errno == EINTR)
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

static void iso_now(char out[32])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ===================================================== report, states */

static void report_free_shard(mbe_merge_shard *s)
{
    free(s->path);
    free(s->shard_id);
    free(s->key);
    free(s->level);
    free(s->error);
}

void mbe_merge_report_free(mbe_merge_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->shards && i < r->n_shards; i++)
        report_free_shard(&r->shards[i]);
    free(r->shards);
    mbe_strlist_free(&r->new_datasets);
    mbe_strlist_free(&r->renamed);
    memset(r, 0, sizeof *r);
}

/* The reason without a leading "<path>: " (the report names the shard). */
static const char *strip_path(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (!strncmp(msg, path, n) && !strncmp(msg + n, ": ", 2))
        return msg + n + 2;
    return msg;
}

static void set_note(ctx *c, size_t i, const char *msg)
{
    mbe_merge_shard *s = &c->r->shards[i];
    free(s->error);
    s->error = strdup(strip_path(msg, s->path));
}

/* A refused shard always carries its reason: mbe-merge tells refused
 * shards (valid 0, error set) from those a failed merge never checked
 * (valid 0, no error). */
static void refuse(ctx *c, size_t i, const char *msg)
{
    c->sh[i].state = SH_INVALID;
    c->r->shards[i].valid = 0;
    set_note(c, i, msg);
}

static void refusef(ctx *c, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refusef(ctx *c, size_t i, const char *fmt, ...)
{
    char msg[MBE_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    refuse(c, i, msg);
}

static int live(const ctx *c, size_t i)
{
    return c->sh[i].state == SH_APPLY;
}

/* Shards that read and verified (whatever else became of them). */
static int readable(const ctx *c, size_t i)
{
    return c->sh[i].r && c->sh[i].state != SH_INVALID;
}

/* Whether shard i is to be applied and no earlier such shard has its
 * key: the one that stands for its key's group. */
static int first_live_of_key(const ctx *c, size_t i)
{
    if (!live(c, i))
        return 0;
    for (size_t j = 0; j < i; j++)
        if (live(c, j) && !strcmp(c->sh[j].key, c->sh[i].key))
            return 0;
    return 1;
}

static size_t count_state(const ctx *c, int state)
{
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        k += c->sh[i].state == state;
    return k;
}

/* ============================================= shards, before the lock */

static uint32_t shard_digest(const mbe_shard_reader *r)
{
    const mbe_frames *f = mbe_shard_reader_frames(r);
    uint32_t d = mbe_crc32(0, f->idx, f->n * 8);
    d = mbe_crc32(d, mbe_shard_reader_status(r), f->n * 8);
    d = mbe_crc32(d, mbe_shard_reader_energy(r), f->n * 8);
    return mbe_crc32(d, mbe_shard_reader_crc(r), f->n * 4);
}

static void report_counts(ctx *c, size_t i)
{
    mbe_merge_shard *s = &c->r->shards[i];
    const mbe_shard_meta *m = meta(c, i);
    const int64_t *st = mbe_shard_reader_status(c->sh[i].r);
    s->shard_id = strdup(m->shard_id);
    s->key = strdup(c->sh[i].key);
    s->level = strdup(m->level);
    s->frames = shard_n(c, i);
    for (size_t k = 0; k < s->frames; k++) {
        s->completed += st[k] == MBE_COMPLETED;
        s->scf_not_converged += st[k] == MBE_SCF_NOT_CONVERGED;
        s->failed += st[k] == MBE_FAILED;
        s->undefined += st[k] == MBE_UNDEFINED;
    }
}

static int is_hex_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!strchr("0123456789abcdef", s[n]))
            return 0;
    return n == 32;
}

static int check_meta(ctx *c, size_t i)
{
    const mbe_shard_meta *m = meta(c, i);
    if (!*m->level)
        refusef(c, i, "the shard names no level of theory");
    else if (!is_hex_id(m->shard_id))
        refusef(c, i, "damaged shard: shard id '%.40s' is not 32 hex digits",
                m->shard_id);
    else if (!*m->key)
        refusef(c, i, "the shard names no key of the master");
    return live(c, i) ? 0 : -1;
}

/* ------------------------------------------ shards that change meanwhile
 *
 * The rows applied under the lock are read from the shards again (memory
 * stays bounded) and each one is checked against the crc verified before
 * the lock as it is written (forces_block): no row that differs from what
 * was verified ever reaches the master.  So that a shard changed in
 * between is refused before anything is written rather than half-way,
 * it is verified again under the lock, before any write, unless it is
 * provably the file that was verified, unchanged: the same inode, size,
 * mtime and ctime as when it was verified, no writer running then, and
 * no change within a second before the verification started (a write in
 * the same clock tick as the last one would leave the times as they
 * were).  The shard's own writer only fills rows that were UNDEFINED
 * (never applied), so a live .part passes. */

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
           a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Changed at or after t0 - 1 s (or dated in the future). */
static int recent(const struct stat *st, const struct timespec *t0)
{
    time_t lim = t0->tv_sec - 1;
    return st->st_mtim.tv_sec >= lim || st->st_ctim.tv_sec >= lim;
}

static int open_shard(ctx *c, size_t i, size_t buf)
{
    mbe_err why = {""};
    const char *path = c->r->shards[i].path;
    struct timespec t0;
    struct stat before;
    clock_gettime(CLOCK_REALTIME, &t0);
    int stated = stat(path, &before) == 0;
    if (mbe_shard_open(path, &c->sh[i].r, &why) < 0) {
        refuse(c, i, why.msg);
        return 0;
    }
    if (!(c->sh[i].key = mbe_normal_key(meta(c, i)->key)))
        return MBE_EFAIL;
    report_counts(c, i);
    if (check_meta(c, i) < 0)
        return 0;
    if (mbe_shard_verify(c->sh[i].r, buf, &why) < 0) {
        refuse(c, i, why.msg);
        return 0;
    }
    c->sh[i].steady = stated && stat(path, &c->sh[i].st) == 0 &&
                      same_file(&before, &c->sh[i].st) &&
                      !recent(&c->sh[i].st, &t0) &&
                      !mbe_shard_reader_running(c->sh[i].r);
    c->sh[i].digest = shard_digest(c->sh[i].r);
    c->r->shards[i].valid = 1;
    return 0;
}

static int open_shards(ctx *c, mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        step(c, "verifying shards", i, c->n);
        if (open_shard(c, i, c->o.buf_bytes) < 0)
            return mbe_fail(e, "out of memory");
    }
    step(c, "verifying shards", c->n, c->n);
    return 0;
}

/* ------------------------------------------------ against the master */

static int check_identity(ctx *c, size_t i, mbe_master *m)
{
    const mbe_shard_meta *s = meta(c, i);
    if (s->n_frames != mbe_master_n_frames(m) ||
        s->n_atoms != mbe_master_n_atoms(m)) {
        refusef(c, i, "computed for %lld frames of %lld atoms, but group "
                "'%s' of %s has %lld frames of %lld atoms",
                (long long)s->n_frames, (long long)s->n_atoms,
                mbe_master_key(m), c->master,
                (long long)mbe_master_n_frames(m),
                (long long)mbe_master_n_atoms(m));
        return -1;
    }
    /* The master may have moved (another directory, another machine), but
     * under its own name: another name is another file. */
    if (strcmp(base_name(s->master_file), base_name(c->master))) {
        refusef(c, i, "computed for master '%s', not '%s' (a moved master "
                "must keep its file name)", s->master_file,
                base_name(c->master));
        return -1;
    }
    return 0;
}

/* Bytes of one frame's geometry in mbe_geometry. */
static size_t geom_frame_bytes(const mbe_master *m)
{
    size_t na = (size_t)mbe_master_n_atoms(m);
    return na * (3 * 8 + 8 + 8) + 9 * 8 + 8;
}

typedef struct geom_bad {
    size_t count;
    int64_t first[SHOWN];
} geom_bad;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int of_key(const ctx *c, size_t i, const char *key)
{
    return live(c, i) && !strcmp(c->sh[i].key, key);
}

/* The distinct frames of the key's shards, ascending. */
static int key_frames(const ctx *c, const char *key, mbe_frames *u,
                      mbe_err *e)
{
    size_t n = 0, at = 0;
    for (size_t i = 0; i < c->n; i++)
        n += of_key(c, i, key) ? shard_n(c, i) : 0;
    if (!(u->idx = malloc((n ? n : 1) * sizeof *u->idx)))
        return mbe_fail(e, "out of memory");
    for (size_t i = 0; i < c->n; i++)
        if (of_key(c, i, key)) {
            const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
            memcpy(u->idx + at, f->idx, f->n * sizeof *f->idx);
            at += f->n;
        }
    size_t k = 1;
    while (k < n && u->idx[k] > u->idx[k - 1])
        k++;
    if (k < n) {
        qsort(u->idx, n, sizeof *u->idx, cmp_i64);
        for (k = n ? 1 : 0, at = k; k < n; k++)
            if (u->idx[k] != u->idx[at - 1])
                u->idx[at++] = u->idx[k];
        n = at;
    }
    u->n = u->cap = n;
    return 0;
}

/* The master's geometry of frames idx[0..cnt), fingerprinted into fp. */
static int fingerprints(mbe_master *m, const int64_t *idx, size_t cnt,
                        uint32_t *fp, mbe_err *e)
{
    mbe_frames sel = {(int64_t *)idx, cnt, cnt};
    mbe_geometry g;
    if (mbe_master_read_geometry(m, &sel, &g, e) < 0)
        return MBE_EFAIL;
    for (size_t k = 0; k < cnt; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        fp[k] = mbe_frame_fingerprint(&v);
    }
    mbe_geometry_free(&g);
    return 0;
}

/* Shard i's frames within the block ub[0..cnt), from its position *pos
 * on, against the block's fingerprints. */
static void compare_block(const ctx *c, size_t i, const int64_t *ub,
                          size_t cnt, const uint32_t *fp, size_t *pos,
                          geom_bad *bad)
{
    const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
    const uint32_t *want = mbe_shard_reader_geom_crc(c->sh[i].r);
    size_t q = 0, k = *pos;
    for (; k < f->n && f->idx[k] <= ub[cnt - 1]; k++) {
        size_t hi = cnt; /* ub[q..hi): the first >= f->idx[k] */
        while (q < hi) {
            size_t mid = q + (hi - q) / 2;
            if (ub[mid] < f->idx[k])
                q = mid + 1;
            else
                hi = mid;
        }
        if (fp[q] == want[k])
            continue;
        if (bad->count < SHOWN)
            bad->first[bad->count] = f->idx[k];
        bad->count++;
    }
    *pos = k;
}

static void refuse_geometry(ctx *c, size_t i, const geom_bad *bad)
{
    char list[160];
    frame_list(list, sizeof list, bad->first,
               bad->count < SHOWN ? bad->count : SHOWN, bad->count);
    refusef(c, i, "the geometry of %zu of %zu frames differs from the "
            "master's (frame%s %s): computed from another master, or its "
            "frames changed since", bad->count, shard_n(c, i),
            bad->count > 1 ? "s" : "", list);
}

/* The master's geometry of the frames of the key's shards, read once per
 * frame in master order (in blocks of at most buf_bytes, so that frames
 * interleaved between shards are read in long runs), against the
 * fingerprints each shard was computed with. */
static int check_geometry(ctx *c, const char *key, mbe_master *m,
                          mbe_err *e)
{
    mbe_frames u = {0};
    if (key_frames(c, key, &u, e) < 0)
        return MBE_EFAIL;
    size_t block = c->o.buf_bytes / (geom_frame_bytes(m) + 4);
    if (block < 1)
        block = 1;
    uint32_t *fp = malloc((u.n < block ? (u.n ? u.n : 1) : block) *
                          sizeof *fp);
    size_t *pos = calloc(c->n, sizeof *pos);
    geom_bad *bad = calloc(c->n, sizeof *bad);
    int rc = fp && pos && bad ? 0 : mbe_fail(e, "out of memory");
    for (size_t k0 = 0; rc == 0 && k0 < u.n; k0 += block) {
        size_t cnt = u.n - k0 < block ? u.n - k0 : block;
        step(c, "checking geometry", k0, u.n);
        rc = fingerprints(m, u.idx + k0, cnt, fp, e);
        for (size_t i = 0; rc == 0 && i < c->n; i++)
            if (of_key(c, i, key))
                compare_block(c, i, u.idx + k0, cnt, fp, &pos[i], &bad[i]);
    }
    for (size_t i = 0; rc == 0 && i < c->n; i++)
        if (of_key(c, i, key) && bad[i].count)
            refuse_geometry(c, i, &bad[i]);
    free(u.idx);
    free(fp);
    free(pos);
    free(bad);
    return rc;
}

static int log_has(const mbe_gt_logrec *v, size_t n, const char *id,
                   uint32_t digest)
{
    char d[9];
    snprintf(d, sizeof d, "%08x", (unsigned)digest);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i].shard_id, id) && !strcmp(v[i].digest, d))
            return 1;
    return 0;
}

/* Shards of key found in the master's merge log: applied before. */
static int mark_applied(ctx *c, hid_t file, const char *key, mbe_err *e)
{
    mbe_gt_logrec *v;
    size_t nv;
    if (mbe_gt_log_read(file, key, &v, &nv, e) < 0) {
        mbe_err_prefix(e, "%s", c->master);
        return MBE_EFAIL;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i) || strcmp(c->sh[i].key, key) ||
            !log_has(v, nv, meta(c, i)->shard_id, c->sh[i].digest))
            continue;
        c->sh[i].state = SH_ALREADY;
        c->r->shards[i].already_applied = 1;
    }
    mbe_gt_log_free(v, nv);
    return 0;
}

static int log_of_open_master(ctx *c, const char *key, mbe_err *e)
{
    hid_t f = H5Fopen(c->master, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mbe_fail(e, "%s: cannot open the master", c->master);
    int rc = mark_applied(c, f, key, e);
    H5Fclose(f);
    return rc;
}

static int check_key_shards(ctx *c, const char *key, mbe_master *m,
                            mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i) || strcmp(c->sh[i].key, key))
            continue;
        c->sh[i].checked = 1;
        check_identity(c, i, m);
    }
    if (check_geometry(c, key, m, e) < 0)
        return MBE_EFAIL;
    /* Read the log here too, so that conflicts with shards applied before
     * do not stop a merge before it waits for the lock. */
    return log_of_open_master(c, key, e);
}

static void refuse_key(ctx *c, const char *key, const char *msg)
{
    for (size_t i = 0; i < c->n; i++)
        if (live(c, i) && !strcmp(c->sh[i].key, key))
            refuse(c, i, msg);
}

/* Each distinct key: the master opened read-only (shared lock) once. */
/* A master that cannot be read at all is no fault of the shards: that
 * ends the merge, also under skip_invalid.  Asked only once a key failed
 * to open, so that a good merge opens the master once per key. */
static int master_readable(ctx *c, mbe_err *e)
{
    mbe_strlist keys = {0};
    int rc = mbe_list_frame_groups(c->master, &c->o.lock, &keys, e);
    mbe_strlist_free(&keys);
    return rc;
}

static int check_against_master(ctx *c, mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i) || c->sh[i].checked)
            continue;
        const char *key = c->sh[i].key;
        mbe_master *m;
        mbe_err why = {""};
        int rc = mbe_master_open(c->master, key, 0, &c->o.lock, &m, &why);
        if (rc == MBE_ETIMEOUT)
            return mbe_failc(e, rc, "%s", why.msg);
        if (rc < 0) {
            if (master_readable(c, e) < 0)
                return MBE_EFAIL;
            refuse_key(c, key, why.msg);
            continue;
        }
        rc = check_key_shards(c, key, m, e);
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0)
            rc = mbe_fail(e, "%s", ce.msg);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Copies of one shard: the first is applied, identical copies are noted,
 * copies with other content (one shard at two stages) are refused. */
static void find_duplicates(ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!readable(c, i))
            continue;
        for (size_t j = 0; j < i; j++) {
            if (!readable(c, j) || c->sh[j].state == SH_DUPLICATE ||
                strcmp(meta(c, i)->shard_id, meta(c, j)->shard_id))
                continue;
            const char *other = c->r->shards[j].path;
            char msg[MBE_ERR_LEN];
            if (c->sh[i].digest == c->sh[j].digest) {
                snprintf(msg, sizeof msg, "a copy of %s (same shard id); "
                         "applied once", other);
                c->sh[i].state = SH_DUPLICATE;
                set_note(c, i, msg);
            } else {
                refusef(c, i, "same shard id as %s but other results (one "
                        "shard at two stages?); give only the newer copy",
                        other);
            }
            break;
        }
    }
}

/* ============================================================ targets */

static void free_targets(ctx *c)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        free(t->member);
        free(t->view);
        mp_index_free(&t->ix);
        mp_plan_free(&t->plan);
        free(t->stored);
    }
    free(c->t);
    c->t = NULL;
    c->nt = 0;
}

static size_t find_target(const ctx *c, const char *key, const char *level)
{
    for (size_t k = 0; k < c->nt; k++)
        if (!strcmp(c->t[k].key, key) && !strcmp(c->t[k].level, level))
            return k;
    return c->nt;
}

static int add_member(target *t, const ctx *c, size_t i)
{
    size_t *mem = realloc(t->member, (t->n_member + 1) * sizeof *mem);
    if (!mem)
        return -1;
    t->member = mem;
    mp_shard *v = realloc(t->view, (t->n_member + 1) * sizeof *v);
    if (!v)
        return -1;
    t->view = v;
    const mbe_shard_reader *r = c->sh[i].r;
    t->view[t->n_member] = (mp_shard){
        mbe_shard_reader_frames(r)->idx, mbe_shard_reader_status(r),
        mbe_shard_reader_energy(r), mbe_shard_reader_crc(r), shard_n(c, i),
        !mbe_shard_reader_has_forces(r)};
    t->forces |= mbe_shard_reader_has_forces(r);
    t->member[t->n_member++] = i;
    return 0;
}

/* Group the shards to apply by (key, level), keeping command-line order,
 * and index each group's frames. */
static int build_targets(ctx *c, mbe_err *e)
{
    free_targets(c);
    c->t = calloc(c->n ? c->n : 1, sizeof *c->t);
    if (!c->t)
        return mbe_fail(e, "out of memory");
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i))
            continue;
        const mbe_shard_meta *m = meta(c, i);
        size_t k = find_target(c, c->sh[i].key, m->level);
        if (k == c->nt) {
            c->t[k] = (target){.key = c->sh[i].key, .level = m->level,
                               .n_frames = m->n_frames,
                               .n_atoms = m->n_atoms};
            c->nt++;
        }
        c->sh[i].target = k;
        if (add_member(&c->t[k], c, i) < 0)
            return mbe_fail(e, "out of memory");
    }
    for (size_t k = 0; k < c->nt; k++)
        if (mp_index_build(c->t[k].view, c->t[k].n_member, &c->t[k].ix, e) <
            0)
            return MBE_EFAIL;
    return 0;
}

static int conflict_error(ctx *c, const target *t, const mp_conflicts *cf,
                          mbe_err *e)
{
    const char *a = c->r->shards[t->member[cf->shard_a]].path;
    const char *b = c->r->shards[t->member[cf->shard_b]].path;
    char list[160], note[MBE_ERR_LEN];
    frame_list(list, sizeof list, cf->first, cf->n_first, cf->count);
    snprintf(note, sizeof note, "conflicts with %s", b);
    set_note(c, t->member[cf->shard_a], note);
    snprintf(note, sizeof note, "conflicts with %s", a);
    set_note(c, t->member[cf->shard_b], note);
    return mbe_fail(e, "%zu frame%s of level '%s' (%s) %s COMPLETED with "
                    "different results in %s and %s; nothing was written "
                    "(use --prefer first|last to choose)",
                    cf->count, cf->count > 1 ? "s" : "", t->level, list,
                    cf->count > 1 ? "are" : "is", a, b);
}

static int check_conflicts(ctx *c, mbe_err *e)
{
    if (c->o.prefer != MBE_PREFER_NONE)
        return 0;
    for (size_t k = 0; k < c->nt; k++) {
        mp_conflicts cf;
        mp_find_conflicts(&c->t[k].ix, c->t[k].view, &cf);
        if (cf.count)
            return conflict_error(c, &c->t[k], &cf, e);
    }
    return 0;
}

/* ================================================ validation, overall */

static int refuse_invalid(ctx *c, mbe_err *e)
{
    size_t bad = count_state(c, SH_INVALID);
    if (!bad || c->o.skip_invalid)
        return 0;
    return mbe_failc(e, MBE_EINVALID,
                     "%zu of %zu shard%s %s invalid; nothing was written",
                     bad, c->n, c->n > 1 ? "s" : "", bad > 1 ? "are" : "is");
}

static int validate(ctx *c, mbe_err *e)
{
    struct stat st;
    if (stat(c->master, &st) < 0)
        return mbe_fail(e, "%s: %s", c->master, strerror(errno));
    int rc = open_shards(c, e);
    if (rc == 0)
        rc = check_against_master(c, e);
    if (rc < 0)
        return rc;
    find_duplicates(c);
    if ((rc = refuse_invalid(c, e)) < 0)
        return rc;
    if ((rc = build_targets(c, e)) == 0)
        rc = check_conflicts(c, e);
    return rc;
}

/* ===================================================== under the lock */

/* The master as validated: same dimensions per key; the merge log again
 * (another merge may have applied some shards meanwhile); the state of
 * each target's datasets. */
static int recheck(ctx *c, hid_t f, mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i))
            continue;
        int64_t nf, na;
        const mbe_shard_meta *m = meta(c, i);
        if (mbe_gt_dims(f, c->sh[i].key, &nf, &na, e) < 0)
            return mbe_fail(e, "%s: group '%s' vanished while waiting for "
                            "the lock", c->master, c->sh[i].key);
        if (nf != m->n_frames || na != m->n_atoms)
            return mbe_fail(e, "%s: group '%s' changed while waiting for "
                            "the lock (now %lld frames of %lld atoms)",
                            c->master, c->sh[i].key, (long long)nf,
                            (long long)na);
    }
    /* Once per key that still has shards to apply.  Only live shards
     * count as earlier ones: a shard of the key found applied (or a copy)
     * before the lock must not stop the others of the key from being
     * looked up again, and refused shards may have no key at all. */
    for (size_t i = 0; i < c->n; i++)
        if (first_live_of_key(c, i) &&
            mark_applied(c, f, c->sh[i].key, e) < 0)
            return MBE_EFAIL;
    return 0;
}

static int inspect_targets(ctx *c, hid_t f, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        if (mbe_gt_inspect(f, t->key, t->level, t->n_frames, t->n_atoms,
                           &t->gl, e) < 0) {
            mbe_err_prefix(e, "%s", c->master);
            return MBE_EFAIL;
        }
    }
    return 0;
}

static hid_t open_ro(const ctx *c, mbe_err *e)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* Strong close: no identifier left open can keep the file open while
     * rows are written around HDF5. */
    if (fapl >= 0)
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    hid_t f = fapl >= 0 ? H5Fopen(c->master, H5F_ACC_RDONLY, fapl) : -1;
    if (fapl >= 0)
        H5Pclose(fapl);
    if (f < 0) {
        char d[300];
        mbe_h5_errdesc(d, sizeof d);
        mbe_fail(e, "%s: cannot open the master: %s", c->master, d);
    }
    return f;
}

static int first_target_of_key(const ctx *c, size_t k)
{
    for (size_t j = 0; j < k; j++)
        if (!strcmp(c->t[j].key, c->t[k].key))
            return 0;
    return 1;
}

/* What phase A will create and rename. */
static int list_new_datasets(ctx *c, hid_t f, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        const target *t = &c->t[k];
        if (mbe_gt_missing(&t->gl, t->key, t->level, t->forces,
                           &c->r->new_datasets, e) < 0)
            return MBE_EFAIL;
        if (t->gl.old_names && first_target_of_key(c, k) &&
            mbe_names_convert(f, t->key, 0, 1, &c->r->renamed, e) < 0)
            return MBE_EFAIL;
    }
    return 0;
}

static int survey(ctx *c, mbe_err *e)
{
    hid_t f = open_ro(c, e);
    if (f < 0)
        return MBE_EFAIL;
    int rc = recheck(c, f, e);
    if (rc == 0)
        rc = build_targets(c, e);
    if (rc == 0)
        rc = check_conflicts(c, e);
    if (rc == 0)
        rc = inspect_targets(c, f, e);
    if (rc == 0)
        rc = list_new_datasets(c, f, e);
    H5Fclose(f);
    return rc;
}

/* ---------------------------------------------------- Phase A: structure */

static int journal_end(hid_t f, mbe_journal *j, int rc, mbe_err *e)
{
    if (rc == 0)
        return mbe_journal_commit(f, j, e);
    mbe_err ae;
    if (mbe_journal_abort(f, j, &ae) < 0) {
        char old[MBE_ERR_LEN];
        memcpy(old, e->msg, sizeof old);
        snprintf(e->msg, sizeof e->msg, "%.500s (and the roll-back failed: "
                 "%.300s; running mbe-merge again rolls back)", old, ae.msg);
    }
    return rc;
}

static int phase_a(ctx *c, mbe_err *e)
{
    int any = 0;
    for (size_t k = 0; k < c->nt; k++)
        any |= mbe_gt_needs_structure(&c->t[k].gl, c->t[k].forces);
    if (!any)
        return 0;
    step(c, "creating datasets", 0, 1);
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < c->nt; k++) {
        target *t = &c->t[k];
        if (mbe_gt_needs_structure(&t->gl, t->forces))
            rc = mbe_gt_ensure(f, t->key, t->level, t->n_frames, t->n_atoms,
                               &t->gl, t->forces, NULL, e);
    }
    if ((rc = journal_end(f, j, rc, e)) < 0)
        return rc;
    step(c, "creating datasets", 1, 1);
    /* Where the new datasets' rows lie. */
    if ((f = open_ro(c, e)) < 0)
        return MBE_EFAIL;
    rc = inspect_targets(c, f, e);
    H5Fclose(f);
    return rc;
}

/* ------------------------------------------- rows: raw or through HDF5 */

typedef struct sink {
    ctx *c;
    const target *t;
    int which;
    hid_t ds;           /* < 0: raw at off */
    uint64_t off;
    size_t row;         /* bytes of a row */
} sink;

static size_t row_bytes(const target *t, int which)
{
    return which == MBE_GT_FORCES ? (size_t)t->n_atoms * 3 * 8 : 8;
}

static hid_t mem_type(int which)
{
    return which == MBE_GT_STATUS ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
}

static int h5_rows(hid_t ds, int which, int64_t frame, size_t count,
                   void *buf, int write)
{
    hid_t fs = H5Dget_space(ds);
    hsize_t start[3] = {(hsize_t)frame, 0, 0}, cnt[3];
    int rank = fs >= 0 ? H5Sget_simple_extent_dims(fs, cnt, NULL) : -1;
    cnt[0] = count;
    hid_t ms = rank >= 1 ? H5Screate_simple(rank, cnt, NULL) : -1;
    int ok = ms >= 0 &&
             H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt,
                                 NULL) >= 0 &&
             (write ? H5Dwrite(ds, mem_type(which), ms, fs, H5P_DEFAULT, buf)
                    : H5Dread(ds, mem_type(which), ms, fs, H5P_DEFAULT,
                              buf)) >= 0;
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return ok ? 0 : -1;
}

static const char *kind_name(int which)
{
    return which == MBE_GT_FORCES   ? "forces"
           : which == MBE_GT_ENERGY ? "energies"
                                    : "status";
}

static int sink_write(sink *s, int64_t frame, size_t count, const void *buf,
                      mbe_err *e)
{
    size_t n = count * s->row;
    int rc = s->ds < 0
                 ? pwrite_full(s->c->fd, buf, n,
                               s->off + (uint64_t)frame * s->row)
                 : h5_rows(s->ds, s->which, frame, count, (void *)buf, 1);
    if (rc < 0) {
        char d[300] = "";
        if (s->ds < 0)
            snprintf(d, sizeof d, "%s", strerror(errno));
        else
            mbe_h5_errdesc(d, sizeof d);
        return mbe_fail(e, "%s: cannot write %s of level '%s' at frames "
                        "%lld..%lld: %s", s->c->master, kind_name(s->which),
                        s->t->level, (long long)frame,
                        (long long)frame + (long long)count - 1, d);
    }
    s->c->r->bytes_written += n;
    return 0;
}

/* Rows per block for a buffer of buf_bytes. */
static size_t rows_per_block(const ctx *c, size_t row)
{
    size_t b = c->o.buf_bytes / row;
    return b ? b : 1;
}

/* The frames whose energy (src) or forces (fsrc) are written. */
static unsigned char *source_mask(const target *t, const size_t *src)
{
    unsigned char *m = calloc(t->ix.n_frames ? t->ix.n_frames : 1, 1);
    for (size_t u = 0; m && u < t->ix.n_frames; u++)
        m[u] = src[u] != MP_NONE;
    return m;
}

/* Forces rows per buffer: two buffers of half of buf_bytes each (one row
 * at least), so that the memory used is that of --buffer. */
static size_t force_rows(const ctx *c, size_t row)
{
    size_t b = c->o.buf_bytes / 2 / row;
    return b ? b : 1;
}

/* Row k of member j, just read, is what was verified before the lock: its
 * crc with the status and energy read then (and kept since). */
static int check_row(const sink *s, size_t j, size_t k, const double *row,
                     mbe_err *e)
{
    const mp_shard *v = &s->t->view[j];
    if (mbe_result_crc(v->status[k], v->energy[k], row, s->t->n_atoms) ==
        v->crc[k])
        return 0;
    const char *path = s->c->r->shards[s->t->member[j]].path;
    return mbe_fail(e, "%s changed after it was verified: the forces of "
                    "frame %lld no longer match its crc32, and were not "
                    "written (rows written so far are the verified ones; no "
                    "status was written)", path, (long long)v->frame[k]);
}

/* Member j's frames [a, b] (shard positions) that supply results, their
 * forces read in one piece into buf, checked, and written in runs of
 * consecutive master frames. */
static int forces_block(sink *s, size_t j, size_t a, size_t b, double *buf,
                        mbe_err *e)
{
    const target *t = s->t;
    const unsigned char *mask = t->plan.is_src[j];
    mbe_shard_reader *r = s->c->sh[t->member[j]].r;
    size_t per = s->row / 8;
    if (mbe_shard_read_forces(r, a, b + 1 - a, buf, e) < 0)
        return MBE_EFAIL;
    for (size_t k = a; k <= b; k++)
        if (mask[k] && check_row(s, j, k, buf + (k - a) * per, e) < 0)
            return MBE_EFAIL;
    const int64_t *fr = t->view[j].frame;
    size_t pos = a, start, len;
    while (mp_next_run(fr, mask, b + 1, &pos, 0, &start, &len))
        if (sink_write(s, fr[start], len, buf + (start - a) * per, e) < 0)
            return MBE_EFAIL;
    return 0;
}

/* Forces are written in master-frame order, a window of at most rows
 * frames of the target's index at a time.  Each member supplying frames
 * of the window has them within rows of its positions (a shard holds a
 * frame once), read in one piece.  With one such member its rows are
 * written from where they were read; with several (job j taking frames
 * j, j+4, ...), they are gathered in frame order first, so that the
 * master is written in long runs rather than a pwrite per frame. */
typedef struct fwin {
    size_t rows;
    double *in, *out;       /* rows rows each */
    unsigned char *mask;    /* [ix.n_frames]: frame has a result */
    size_t *cnt, *lo, *hi;  /* [n_member]: frames in the window, span */
    size_t *first, *fill;   /* [n_member]: their place in ord */
    size_t *ord;            /* [rows]: window frames grouped by member */
} fwin;

static void fwin_free(fwin *w)
{
    free(w->mask);
    free(w->cnt);
    free(w->lo);
    free(w->hi);
    free(w->first);
    free(w->fill);
    free(w->ord);
}

static int fwin_init(fwin *w, const sink *s, double *buf, mbe_err *e)
{
    size_t nm = s->t->n_member ? s->t->n_member : 1;
    memset(w, 0, sizeof *w);
    w->rows = force_rows(s->c, s->row);
    w->in = buf;
    w->out = buf + w->rows * (s->row / 8);
    w->mask = source_mask(s->t, s->t->plan.fsrc);
    w->cnt = malloc(nm * sizeof *w->cnt);
    w->lo = malloc(nm * sizeof *w->lo);
    w->hi = malloc(nm * sizeof *w->hi);
    w->first = malloc(nm * sizeof *w->first);
    w->fill = malloc(nm * sizeof *w->fill);
    w->ord = malloc(w->rows * sizeof *w->ord);
    if (w->mask && w->cnt && w->lo && w->hi && w->first && w->fill && w->ord)
        return 0;
    fwin_free(w);
    return mbe_fail(e, "out of memory");
}

/* The window's frames of each member, grouped by member: ord. */
static void group_window(fwin *w, const target *t, size_t u0, size_t u1)
{
    size_t at = 0;
    for (size_t j = 0; j < t->n_member; j++) {
        w->first[j] = at;
        w->fill[j] = 0;
        at += w->cnt[j];
    }
    for (size_t u = u0; u < u1; u++)
        if (w->mask[u]) {
            size_t j = t->ix.ent[t->plan.fsrc[u]].shard;
            w->ord[w->first[j] + w->fill[j]++] = u;
        }
}

/* Several members: each one's rows read, checked and put in frame order
 * into out, then written in runs of consecutive frames. */
static int gather_window(sink *s, fwin *w, size_t u0, size_t u1, mbe_err *e)
{
    const target *t = s->t;
    size_t per = s->row / 8;
    group_window(w, t, u0, u1);
    for (size_t j = 0; j < t->n_member; j++) {
        if (!w->cnt[j])
            continue;
        mbe_shard_reader *r = s->c->sh[t->member[j]].r;
        if (mbe_shard_read_forces(r, w->lo[j], w->hi[j] + 1 - w->lo[j],
                                  w->in, e) < 0)
            return MBE_EFAIL;
        for (size_t q = w->first[j]; q < w->first[j] + w->cnt[j]; q++) {
            size_t u = w->ord[q], k = t->ix.ent[t->plan.fsrc[u]].k;
            const double *row = w->in + (k - w->lo[j]) * per;
            if (check_row(s, j, k, row, e) < 0)
                return MBE_EFAIL;
            memcpy(w->out + (u - u0) * per, row, s->row);
        }
    }
    size_t pos = u0, start, len;
    while (mp_next_run(t->ix.frame, w->mask, u1, &pos, 0, &start, &len))
        if (sink_write(s, t->ix.frame[start], len,
                       w->out + (start - u0) * per, e) < 0)
            return MBE_EFAIL;
    return 0;
}

/* Frames [u0, u1) of the index; *n: how many of them have results. */
static int forces_window(sink *s, fwin *w, size_t u0, size_t u1, size_t *n,
                         mbe_err *e)
{
    const target *t = s->t;
    size_t members = 0, only = 0;
    *n = 0;
    for (size_t j = 0; j < t->n_member; j++)
        w->cnt[j] = 0;
    for (size_t u = u0; u < u1; u++) {
        if (!w->mask[u])
            continue;
        const mp_entry *x = &t->ix.ent[t->plan.fsrc[u]];
        if (!w->cnt[x->shard]++) {
            w->lo[x->shard] = x->k;
            only = x->shard;
            members++;
        }
        w->hi[x->shard] = x->k;
        ++*n;
    }
    if (!members)
        return 0;
    if (members == 1)
        return forces_block(s, only, w->lo[only], w->hi[only], w->in, e);
    return gather_window(s, w, u0, u1, e);
}

static int write_forces(sink *s, double *buf, size_t *done, size_t total,
                        mbe_err *e)
{
    fwin w;
    if (fwin_init(&w, s, buf, e) < 0)
        return MBE_EFAIL;
    size_t n = s->t->ix.n_frames;
    int rc = 0;
    for (size_t u0 = 0; rc == 0 && u0 < n; u0 += w.rows) {
        size_t u1 = n - u0 < w.rows ? n : u0 + w.rows, got;
        rc = forces_window(s, &w, u0, u1, &got, e);
        /* Start writing back what is written so far, so that the disk
         * works while the next windows are read and checked and the
         * fsync that makes the forces durable has less left to wait
         * for.  Only a hint: errors are those of that fsync. */
        if (s->ds < 0 && got)
            sync_file_range(s->c->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        *done += got;
        step(s->c, "writing forces", *done, total);
    }
    fwin_free(&w);
    return rc;
}

/* Energies or status of the frames in mask, in runs, from the plan. */
static int write_column(sink *s, const unsigned char *mask, double *buf,
                        mbe_err *e)
{
    const target *t = s->t;
    const mp_plan *p = &t->plan;
    size_t pos = 0, start, len, max = rows_per_block(s->c, 8);
    while (mp_next_run(t->ix.frame, mask, t->ix.n_frames, &pos, max, &start,
                       &len)) {
        for (size_t u = start; u < start + len; u++) {
            if (s->which == MBE_GT_STATUS) {
                memcpy(buf + (u - start), &p->status[u], 8);
            } else {
                const mp_entry *x = &t->ix.ent[p->src[u]];
                buf[u - start] = t->view[x->shard].energy[x->k];
            }
        }
        if (sink_write(s, t->ix.frame[start], len, buf, e) < 0)
            return MBE_EFAIL;
    }
    return 0;
}

static int write_kind(sink *s, double *buf, size_t *done, size_t total,
                      mbe_err *e)
{
    if (s->which == MBE_GT_FORCES)
        return write_forces(s, buf, done, total, e);
    if (s->which == MBE_GT_STATUS)
        return write_column(s, s->t->plan.write_status, buf, e);
    unsigned char *m = source_mask(s->t, s->t->plan.src);
    if (!m)
        return mbe_fail(e, "out of memory");
    int rc = write_column(s, m, buf, e);
    free(m);
    return rc;
}

static size_t forces_total(const ctx *c)
{
    size_t n = 0;
    for (size_t k = 0; k < c->nt; k++)
        n += c->t[k].plan.f_frames;
    return n;
}

/* Rows of the given kinds (in that order) of every target whose dataset
 * is raw (raw != 0) or not, the latter through HDF5 in file f. */
static int write_pass(ctx *c, const int *kinds, int nk, int raw, hid_t f,
                      double *buf, mbe_err *e)
{
    size_t done = 0, total = forces_total(c);
    for (int q = 0; q < nk; q++) {
        for (size_t k = 0; k < c->nt; k++) {
            const target *t = &c->t[k];
            const mbe_gt_ds *d = &t->gl.ds[kinds[q]];
            if (!d->exists || d->raw != raw)
                continue;
            sink s = {c, t, kinds[q], -1, d->offset,
                      row_bytes(t, kinds[q])};
            if (!raw &&
                (s.ds = mbe_gt_open(f, t->key, t->level, kinds[q], e)) < 0)
                return MBE_EFAIL;
            int rc = write_kind(&s, buf, &done, total, e);
            if (s.ds >= 0)
                H5Dclose(s.ds);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

static int needs_hdf5(const ctx *c, const int *kinds, int nk)
{
    for (int q = 0; q < nk; q++)
        for (size_t k = 0; k < c->nt; k++)
            if (c->t[k].gl.ds[kinds[q]].exists &&
                !c->t[k].gl.ds[kinds[q]].raw)
                return 1;
    return 0;
}

static int sync_master(const ctx *c, mbe_err *e)
{
    if (fsync(c->fd) < 0)
        return mbe_fail(e, "%s: fsync: %s", c->master, strerror(errno));
    return 0;
}

/* Whether HDF5 would flock() the master when opening it, as
 * HDF5_USE_FILE_LOCKING or the library's default say; *ignore_nosys: a
 * file system without flock is tolerated (BEST_EFFORT).  The journal's
 * driver follows the same rules. */
static int h5_file_locking(int *ignore_nosys)
{
    const char *env = getenv("HDF5_USE_FILE_LOCKING");
    *ignore_nosys = 0;
    if (env && (!strcmp(env, "FALSE") || !strcmp(env, "0")))
        return 0;
    if (env && !strcmp(env, "BEST_EFFORT")) {
        *ignore_nosys = 1;
        return 1;
    }
    if (env && (!strcmp(env, "TRUE") || !strcmp(env, "1")))
        return 1;
    hbool_t use = 1, ignore = 0;
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) {
        H5Pget_file_locking(fapl, &use, &ignore);
        H5Pclose(fapl);
    }
    *ignore_nosys = ignore ? 1 : 0;
    return use ? 1 : 0;
}

/* HDF5's own exclusive lock on the .h5, held while rows are written
 * around HDF5: a program that has the file open through HDF5 without the
 * package's lock (h5py in a notebook) holds HDF5's shared lock, and must
 * make the merge fail before it changes a byte, exactly as the journal's
 * driver makes structural changes fail.  Released before HDF5 opens the
 * file again, since flock() locks of two descriptors of one process
 * exclude each other too. */
static int lock_rows(const ctx *c, mbe_err *e)
{
    int ignore;
    if (!h5_file_locking(&ignore) || flock(c->fd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno == ENOSYS && ignore)
        return 0;
    return mbe_fail(e, "cannot lock %s (%s): is it open in another "
                    "program, e.g. h5py?", c->master, strerror(errno));
}

static void unlock_rows(const ctx *c)
{
    flock(c->fd, LOCK_UN);
}

/* One stage: raw rows, made durable, then the others through the journal
 * (committed = durable). */
static int write_stage(ctx *c, const int *kinds, int nk, double *buf,
                       mbe_err *e)
{
    if (lock_rows(c, e) < 0)
        return MBE_EFAIL;
    int rc = write_pass(c, kinds, nk, 1, -1, buf, e);
    if (rc == 0)
        rc = sync_master(c, e);
    unlock_rows(c);
    if (rc < 0)
        return rc;
    if (!needs_hdf5(c, kinds, nk))
        return 0;
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    rc = write_pass(c, kinds, nk, 0, f, buf, e);
    return journal_end(f, j, rc, e);
}

/* ----------------------------------------------------- stored status */

static int read_stored_raw(ctx *c, target *t, mbe_err *e)
{
    size_t pos = 0, start, len, max = rows_per_block(c, 8);
    uint64_t off = t->gl.ds[MBE_GT_STATUS].offset;
    while (mp_next_run(t->ix.frame, NULL, t->ix.n_frames, &pos, max, &start,
                       &len))
        if (pread_full(c->fd, t->stored + start, len * 8,
                       off + (uint64_t)t->ix.frame[start] * 8) < 0)
            return mbe_fail(e, "%s: cannot read the status of level '%s': "
                            "%s", c->master, t->level, strerror(errno));
    return 0;
}

static int read_stored_h5(ctx *c, target *t, mbe_err *e)
{
    hid_t f = open_ro(c, e);
    if (f < 0)
        return MBE_EFAIL;
    hid_t ds = mbe_gt_open(f, t->key, t->level, MBE_GT_STATUS, e);
    int rc = ds >= 0 ? 0 : MBE_EFAIL;
    size_t pos = 0, start, len, max = rows_per_block(c, 8);
    while (rc == 0 && mp_next_run(t->ix.frame, NULL, t->ix.n_frames, &pos,
                                  max, &start, &len))
        if (h5_rows(ds, MBE_GT_STATUS, t->ix.frame[start], len,
                    t->stored + start, 0) < 0)
            rc = mbe_fail(e, "%s: cannot read the status of level '%s'",
                          c->master, t->level);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    return rc;
}

/* The master's status of the target's frames only; a level without a
 * status dataset reads as COMPLETED (legacy) or, when it does not exist
 * yet (dry run), UNDEFINED. */
static int read_stored(ctx *c, target *t, mbe_err *e)
{
    size_t n = t->ix.n_frames;
    if (!(t->stored = malloc((n ? n : 1) * sizeof *t->stored)))
        return mbe_fail(e, "out of memory");
    const mbe_gt_ds *d = &t->gl.ds[MBE_GT_STATUS];
    if (d->exists)
        return d->raw ? read_stored_raw(c, t, e) : read_stored_h5(c, t, e);
    int64_t v = mbe_gt_is_legacy(&t->gl) ? MBE_COMPLETED : MBE_UNDEFINED;
    for (size_t u = 0; u < n; u++)
        t->stored[u] = v;
    return 0;
}

static void credit_shards(ctx *c, const target *t)
{
    for (size_t j = 0; j < t->n_member; j++) {
        mbe_merge_shard *s = &c->r->shards[t->member[j]];
        s->applied = t->plan.applied[j];
        s->kept = t->plan.kept[j];
    }
    c->r->frames_written += t->plan.frames_written;
}

static int plan_all(ctx *c, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        int has_status = !mbe_gt_is_legacy(&t->gl);
        if (read_stored(c, t, e) < 0 ||
            mp_plan_build(&t->ix, t->view, t->n_member, c->o.prefer,
                          t->stored, has_status, &t->plan, e) < 0)
            return MBE_EFAIL;
        credit_shards(c, t);
    }
    return 0;
}

/* ------------------------------------------------------ Phase B: rows */

static int phase_b(ctx *c, mbe_err *e)
{
    static const int data[] = {MBE_GT_FORCES, MBE_GT_ENERGY};
    static const int status[] = {MBE_GT_STATUS};
    if ((c->fd = open(c->master, O_RDWR | O_CLOEXEC)) < 0)
        return mbe_fail(e, "%s: cannot open for writing: %s", c->master,
                        strerror(errno));
    if (plan_all(c, e) < 0)
        return MBE_EFAIL;
    size_t row = 8;
    for (size_t k = 0; k < c->nt; k++)
        if (row_bytes(&c->t[k], MBE_GT_FORCES) > row)
            row = row_bytes(&c->t[k], MBE_GT_FORCES);
    /* Two rows at least (write_forces), even when they are larger than
     * buf_bytes. */
    size_t bytes = c->o.buf_bytes > 2 * row ? c->o.buf_bytes : 2 * row;
    double *buf = malloc(bytes);
    if (!buf)
        return mbe_fail(e, "out of memory for a %zu-byte buffer", bytes);
    int rc = write_stage(c, data, 2, buf, e);
    if (rc == 0)
        rc = write_stage(c, status, 1, buf, e);
    free(buf);
    return rc;
}

/* ---------------------------------------------------- Phase C: the log */

static mbe_gt_logrec log_record(const ctx *c, size_t i, char digest[9])
{
    const mbe_merge_shard *s = &c->r->shards[i];
    snprintf(digest, 9, "%08x", (unsigned)c->sh[i].digest);
    return (mbe_gt_logrec){
        .shard_id = s->shard_id, .key = s->key, .level = s->level,
        .time = (char *)c->now, .path = s->path, .digest = digest,
        .frames = (int64_t)s->frames, .completed = (int64_t)s->completed,
        .applied = (int64_t)s->applied};
}

/* The records of the applied shards of key i's group. */
static int log_key(const ctx *c, hid_t f, size_t i, mbe_err *e)
{
    mbe_gt_logrec *v = calloc(c->n, sizeof *v);
    char (*dig)[9] = calloc(c->n, sizeof *dig);
    size_t n = 0;
    int rc = v && dig ? 0 : mbe_fail(e, "out of memory");
    for (size_t j = i; rc == 0 && j < c->n; j++)
        if (live(c, j) && !strcmp(c->sh[j].key, c->sh[i].key))
            v[n] = log_record(c, j, dig[n]), n++;
    if (rc == 0 && mbe_gt_log_append(f, c->sh[i].key, v, n, e) < 0)
        rc = MBE_EFAIL;
    free(v);
    free(dig);
    return rc;
}

static int phase_c(ctx *c, mbe_err *e)
{
    if (!count_state(c, SH_APPLY))
        return 0;
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->n; i++)
        if (first_live_of_key(c, i))
            rc = log_key(c, f, i, e);
    return journal_end(f, j, rc, e);
}

/* ------------------------------------------------------------ the lock */

static int recover(ctx *c, mbe_err *e)
{
    int rolled = 0;
    if (mbe_journal_recover(c->master, &rolled, e) < 0)
        return MBE_EFAIL;
    c->r->recovered |= rolled;
    return 0;
}

static int dry_run_locked(ctx *c, mbe_err *e)
{
    if (survey(c, e) < 0)
        return MBE_EFAIL;
    if ((c->fd = open(c->master, O_RDONLY | O_CLOEXEC)) < 0)
        return mbe_fail(e, "%s: %s", c->master, strerror(errno));
    return plan_all(c, e);
}

/* Under the lock, before anything is written: each shard to apply that
 * may have changed since it was verified is verified again. */
static int reverify(ctx *c, mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i))
            continue;
        struct stat now;
        const char *path = c->r->shards[i].path;
        if (c->sh[i].steady && stat(path, &now) == 0 &&
            same_file(&now, &c->sh[i].st))
            continue;
        step(c, "verifying changed shards", i, c->n);
        mbe_err why = {""};
        if (mbe_shard_verify(c->sh[i].r, c->o.buf_bytes, &why) < 0) {
            set_note(c, i, "changed after it was verified");
            return mbe_fail(e, "%s changed after it was verified: %s; "
                            "nothing was written", path,
                            strip_path(why.msg, path));
        }
    }
    return 0;
}

static int merge_locked(ctx *c, mbe_err *e)
{
    if (recover(c, e) < 0 || survey(c, e) < 0 || reverify(c, e) < 0 ||
        phase_a(c, e) < 0 ||
        phase_b(c, e) < 0 || phase_c(c, e) < 0)
        return MBE_EFAIL;
    return sync_master(c, e);
}

static int with_lock(ctx *c, mbe_err *e)
{
    mbe_lock lk;
    int rc = mbe_lock_acquire(c->master, !c->o.dry_run, &c->o.lock, &lk, e);
    if (rc < 0)
        return rc;
    rc = c->o.dry_run ? dry_run_locked(c, e) : merge_locked(c, e);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    mbe_lock_release(&lk);
    return rc;
}

/* A merge killed while changing structure left the master half-changed;
 * roll it back before reading the master at all. */
static int recover_first(ctx *c, mbe_err *e)
{
    if (!mbe_master_needs_recovery(c->master))
        return 0;
    if (c->o.dry_run)
        return mbe_fail(e, "%s: an interrupted merge awaits roll-back; run "
                        "mbe-merge without --dry-run", c->master);
    mbe_lock lk;
    int rc = mbe_lock_acquire(c->master, 1, &c->o.lock, &lk, e);
    if (rc < 0)
        return rc;
    rc = recover(c, e);
    mbe_lock_release(&lk);
    return rc;
}

/* ======================================================= 0.2 names */

static int convert_all(hid_t f, const char *master, const mbe_merge_opts *o,
                       mbe_strlist *renamed, mbe_err *e)
{
    mbe_strlist keys;
    if (mbe_h5_frame_groups(f, master, &keys, e) < 0)
        return MBE_EFAIL;
    size_t buf = o->buf_bytes ? o->buf_bytes : MBE_MERGE_BUF_DEFAULT;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < keys.n; i++)
        rc = mbe_names_convert(f, keys.v[i], buf, o->dry_run, renamed, e);
    if (rc < 0)
        mbe_err_prefix(e, "%s", master);
    mbe_strlist_free(&keys);
    return rc;
}

static int convert_locked(const char *master, const mbe_merge_opts *o,
                          mbe_strlist *renamed, mbe_err *e)
{
    int rolled;
    if (!o->dry_run && mbe_journal_recover(master, &rolled, e) < 0)
        return MBE_EFAIL;
    if (o->dry_run) {
        hid_t f = H5Fopen(master, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
            return mbe_fail(e, "%s: cannot open the master", master);
        int rc = convert_all(f, master, o, renamed, e);
        H5Fclose(f);
        return rc;
    }
    mbe_journal *j;
    hid_t f = mbe_journal_open(master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    return journal_end(f, j, convert_all(f, master, o, renamed, e), e);
}

int mbe_merge_convert_names(const char *master, const mbe_merge_opts *o,
                            mbe_strlist *renamed, mbe_err *e)
{
    mbe_h5_quiet();
    struct stat st;
    if (stat(master, &st) < 0)
        return mbe_fail(e, "%s: %s", master, strerror(errno));
    if (o->dry_run && mbe_master_needs_recovery(master))
        return mbe_fail(e, "%s: an interrupted merge awaits roll-back; run "
                        "mbe-merge without --dry-run", master);
    mbe_lock lk;
    int rc = mbe_lock_acquire(master, !o->dry_run, &o->lock, &lk, e);
    if (rc < 0)
        return rc;
    rc = convert_locked(master, o, renamed, e);
    mbe_lock_release(&lk);
    return rc;
}

/* ============================================================= public */

int mbe_master_needs_recovery(const char *path)
{
    char *j = mbe_asprintf("%s" MBE_JOURNAL_SUFFIX, path);
    if (!j)
        return 0;
    int rc = access(j, F_OK) == 0;
    free(j);
    return rc;
}

static int init(ctx *c, const char *master, char *const *shards, size_t n,
                const mbe_merge_opts *o, mbe_merge_report *r, mbe_err *e)
{
    memset(c, 0, sizeof *c);
    memset(r, 0, sizeof *r);
    c->master = master;
    c->r = r;
    c->n = n;
    c->fd = -1;
    if (o)
        c->o = *o;
    else
        c->o.lock.timeout = MBE_LOCK_TIMEOUT_DEFAULT;
    if (!c->o.buf_bytes)
        c->o.buf_bytes = MBE_MERGE_BUF_DEFAULT;
    iso_now(c->now);
    c->sh = calloc(n ? n : 1, sizeof *c->sh);
    r->shards = calloc(n ? n : 1, sizeof *r->shards);
    if (!c->sh || !r->shards)
        return mbe_fail(e, "out of memory");
    r->n_shards = n;
    for (size_t i = 0; i < n; i++)
        if (!(r->shards[i].path = strdup(shards[i])))
            return mbe_fail(e, "out of memory");
    return 0;
}

static void ctx_free(ctx *c)
{
    free_targets(c);
    for (size_t i = 0; c->sh && i < c->n; i++) {
        mbe_shard_reader_close(c->sh[i].r);
        free(c->sh[i].key);
    }
    free(c->sh);
}

int mbe_merge(const char *master, char *const *shards, size_t n_shards,
              const mbe_merge_opts *o, mbe_merge_report *r, mbe_err *e)
{
    mbe_h5_quiet();
    mbe_err local;
    mbe_merge_report local_r;
    if (!e)
        e = &local;
    if (!r)
        r = &local_r;
    memset(r, 0, sizeof *r);
    if (!master || !*master || !n_shards || !shards) {
        mbe_fail(e, "no %s given", n_shards ? "master file" : "shards");
        return MBE_EFAIL;
    }
    ctx c;
    int rc = init(&c, master, shards, n_shards, o, r, e);
    if (rc == 0)
        rc = recover_first(&c, e);
    if (rc == 0)
        rc = validate(&c, e);
    if (rc == 0 && count_state(&c, SH_APPLY))
        rc = with_lock(&c, e);
    ctx_free(&c);
    if (r == &local_r)
        mbe_merge_report_free(r);
    return rc;
}
