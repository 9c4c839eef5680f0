/* merge_write.c - phase B of mbe_merge: the planned rows, written in place
 * (see merge_impl.h).
 *
 * Rows go with pwrite to the file offsets of contiguous datasets, linear
 * in the frames applied (h5py's point selections are quadratic), or
 * through HDF5 hyperslabs inside the undo journal for chunked or otherwise
 * unusual datasets, since HDF5 may allocate chunks.  Raw rows are written
 * under HDF5's own lock on the .h5, so that a program holding the file
 * open through HDF5 stops the merge before it changes a byte.
 *
 * Each shard is read once.  Its forces are read under the lock, a window
 * of master frames at a time, checked against the row's crc, and written;
 * the energies of the window's frames follow at once.  So when a row fails
 * its crc, every frame written so far has the verified energy and forces
 * of one shard, and no status has been written: the master holds nothing
 * a reader could take for a result it is not.  Forces and energies are
 * made durable before any status is written, so that a kill never leaves
 * a COMPLETED status beside stale results (merge_plan.c: running the same
 * merge again then gives the uninterrupted result). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "merge_impl.h"

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

int mg_h5_rows(hid_t ds, int which, int64_t frame, size_t count, void *buf,
               int write)
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
                 ? mbe_pwrite_full(s->c->fd, buf, n,
                                   s->off + (uint64_t)frame * s->row)
                 : mg_h5_rows(s->ds, s->which, frame, count, (void *)buf, 1);
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

size_t mg_rows_per_block(const ctx *c, size_t row)
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

/* Row k of member j, just read: COMPLETED, finite and matching its crc,
 * or the shard is refused (MBE_EINVALID) before the row is written. */
static int check_row(sink *s, size_t j, size_t k, const double *row,
                     mbe_err *e)
{
    size_t i = s->t->member[j];
    int rc = mbe_shard_check_row(s->c->sh[i].r, k, row);
    if (rc == 0)
        return 0;
    s->c->bad = i;
    if (rc == -2)
        return mbe_failc(e, MBE_EINVALID, "%s: frame %lld is COMPLETED but "
                         "holds a non-finite force: the file is damaged",
                         s->c->r->shards[i].name,
                         (long long)s->t->view[j].frame[k]);
    return mbe_failc(e, MBE_EINVALID, "%s: the forces of frame %lld do not "
                     "match its crc32: the file is damaged, or changed "
                     "after it was opened",
                     s->c->r->shards[i].name,
                     (long long)s->t->view[j].frame[k]);
}

static int read_rows(sink *s, size_t j, size_t k0, size_t count, double *buf,
                     mbe_err *e)
{
    size_t i = s->t->member[j];
    if (mbe_shard_read_forces(s->c->sh[i].r, k0, count, buf, e) == 0)
        return 0;
    s->c->bad = i; /* the reader's message names the shard */
    return MBE_EINVALID;
}

/* Member j's frames [a, b] (shard positions) that supply forces, read in
 * one piece into buf, checked, and written in runs of consecutive master
 * frames. */
static int forces_block(sink *s, size_t j, size_t a, size_t b, double *buf,
                        mbe_err *e)
{
    const target *t = s->t;
    const unsigned char *mask = t->plan.is_src[j];
    size_t per = s->row / 8;
    int rc = read_rows(s, j, a, b + 1 - a, buf, e);
    for (size_t k = a; rc == 0 && k <= b; k++)
        if (mask[k])
            rc = check_row(s, j, k, buf + (k - a) * per, e);
    if (rc < 0)
        return rc;
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
    unsigned char *mask;    /* [ix.n_frames]: frame has forces to write */
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
        int rc = read_rows(s, j, w->lo[j], w->hi[j] + 1 - w->lo[j], w->in, e);
        for (size_t q = w->first[j];
             rc == 0 && q < w->first[j] + w->cnt[j]; q++) {
            size_t u = w->ord[q], k = t->ix.ent[t->plan.fsrc[u]].k;
            const double *row = w->in + (k - w->lo[j]) * per;
            rc = check_row(s, j, k, row, e);
            if (rc == 0)
                memcpy(w->out + (u - u0) * per, row, s->row);
        }
        if (rc < 0)
            return rc;
    }
    size_t pos = u0, start, len;
    while (mp_next_run(t->ix.frame, w->mask, u1, &pos, 0, &start, &len))
        if (sink_write(s, t->ix.frame[start], len,
                       w->out + (start - u0) * per, e) < 0)
            return MBE_EFAIL;
    return 0;
}

/* Frames [u0, u1) of the index; *n: how many of them have forces. */
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

/* Energies or statuses of the frames in mask within [u0, u1), in runs,
 * from the plan. */
static int write_column(sink *s, const unsigned char *mask, size_t u0,
                        size_t u1, double *buf, mbe_err *e)
{
    const target *t = s->t;
    const mp_plan *p = &t->plan;
    size_t pos = u0, start, len, max = mg_rows_per_block(s->c, 8);
    while (mp_next_run(t->ix.frame, mask, u1, &pos, max, &start, &len)) {
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

/* ------------------------------------------------------- one target */

/* Where one kind of row goes: raw at its offset, or through HDF5 in f. */
static int sink_open(sink *s, ctx *c, const target *t, int which, hid_t f,
                     mbe_err *e)
{
    *s = (sink){c, t, which, -1, t->gl.ds[which].offset, row_bytes(t, which)};
    if (f < 0)
        return 0;
    s->ds = mbe_gt_open(f, t->key, t->level, which, e);
    return s->ds < 0 ? MBE_EFAIL : 0;
}

static void sink_close(sink *s)
{
    if (s->ds >= 0)
        H5Dclose(s->ds);
    s->ds = -1;
}

/* Forces and energies of one target, window by window. */
static int data_windows(sink *fs, sink *es, double *buf, size_t *done,
                        size_t total, mbe_err *e)
{
    const target *t = es->t;
    ctx *c = es->c;
    fwin w = {0};   /* gcc 14 cannot see that forces guards every use */
    int forces = fs && t->plan.f_frames;
    if (forces && fwin_init(&w, fs, buf, e) < 0)
        return MBE_EFAIL;
    unsigned char *emask = source_mask(t, t->plan.src);
    size_t win = forces ? w.rows : mg_rows_per_block(c, 8);
    size_t n = t->ix.n_frames;
    /* A window's energies at most: a buffer of the whole --buffer here
     * would double the merge's peak memory for nothing. */
    double *ebuf = malloc((n < win ? (n ? n : 1) : win) * sizeof *ebuf);
    int rc = emask && ebuf ? 0 : mbe_fail(e, "out of memory");
    for (size_t u0 = 0; rc == 0 && u0 < n; u0 += win) {
        size_t u1 = n - u0 < win ? n : u0 + win, got = 0;
        if (forces)
            rc = forces_window(fs, &w, u0, u1, &got, e);
        if (rc == 0)
            rc = write_column(es, emask, u0, u1, ebuf, e);
        /* Start writing back what is written so far, so that the disk
         * works while the next windows are read and checked and the
         * fsync that makes them durable has less left to wait for.  Only
         * a hint: errors are those of that fsync. */
        if (rc == 0 && es->ds < 0 && got)
            sync_file_range(c->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        *done += got;
        mg_step(c, "writing forces", *done, total);
    }
    if (forces)
        fwin_free(&w);
    free(emask);
    free(ebuf);
    return rc;
}

/* Whether the target's rows of this stage go raw (else through HDF5). */
static int stage_raw(const target *t, int status)
{
    const mbe_gt_ds *d = t->gl.ds;
    if (status)
        return d[MBE_GT_STATUS].raw;
    return d[MBE_GT_ENERGY].raw && (!t->plan.f_frames ||
                                    d[MBE_GT_FORCES].raw);
}

static int target_rows(ctx *c, const target *t, int status, hid_t f,
                       double *buf, size_t *done, size_t total, mbe_err *e)
{
    sink a = {.ds = -1}, b = {.ds = -1};
    int rc, forces = !status && t->plan.f_frames;
    if (status) {
        if ((rc = sink_open(&a, c, t, MBE_GT_STATUS, f, e)) == 0)
            rc = write_column(&a, t->plan.write_status, 0, t->ix.n_frames,
                              buf, e);
        sink_close(&a);
        return rc;
    }
    rc = sink_open(&b, c, t, MBE_GT_ENERGY, f, e);
    if (rc == 0 && forces)
        rc = sink_open(&a, c, t, MBE_GT_FORCES, f, e);
    if (rc == 0)
        rc = data_windows(forces ? &a : NULL, &b, buf, done, total, e);
    if (forces)
        sink_close(&a);
    sink_close(&b);
    return rc;
}

static size_t forces_total(const ctx *c)
{
    size_t n = 0;
    for (size_t k = 0; k < c->nt; k++)
        n += c->t[k].plan.f_frames;
    return n;
}

/* Every target of the stage whose rows go raw (f < 0) or not. */
static int stage_pass(ctx *c, int status, hid_t f, double *buf, size_t *done,
                      mbe_err *e)
{
    size_t total = forces_total(c);
    for (size_t k = 0; k < c->nt; k++) {
        const target *t = &c->t[k];
        if (stage_raw(t, status) != (f < 0))
            continue;
        int rc = target_rows(c, t, status, f, buf, done, total, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int needs_hdf5(const ctx *c, int status)
{
    for (size_t k = 0; k < c->nt; k++)
        if (!stage_raw(&c->t[k], status))
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

/* One stage: raw rows, made durable, then the others through the journal
 * (committed = durable). */
static int write_stage(ctx *c, int status, double *buf, mbe_err *e)
{
    size_t done = 0;
    if (lock_rows(c, e) < 0)
        return MBE_EFAIL;
    int rc = stage_pass(c, status, -1, buf, &done, e);
    /* Rows written before a refused one are verified: made durable too. */
    int sc = rc == 0 || rc == MBE_EINVALID ? sync_master(c, e) : 0;
    flock(c->fd, LOCK_UN);
    if (rc < 0 || sc < 0)
        return rc < 0 ? rc : sc;
    if (!needs_hdf5(c, status))
        return 0;
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    mbe_err je;
    rc = stage_pass(c, status, f, buf, &done, e);
    /* Verified rows are committed; only I/O failures roll back. */
    int jc = mg_journal_end(f, j, rc == MBE_EINVALID ? 0 : rc, &je);
    if (rc == 0 && jc < 0)
        *e = je;
    return rc < 0 ? rc : jc;
}

int mg_write_rows(ctx *c, mbe_err *e)
{
    size_t row = 8;
    for (size_t k = 0; k < c->nt; k++)
        if (row_bytes(&c->t[k], MBE_GT_FORCES) > row)
            row = row_bytes(&c->t[k], MBE_GT_FORCES);
    /* Two rows at least (gather_window), even when they are larger than
     * buf_bytes. */
    size_t bytes = c->o.buf_bytes > 2 * row ? c->o.buf_bytes : 2 * row;
    double *buf = malloc(bytes);
    if (!buf)
        return mbe_fail(e, "out of memory for a %zu-byte buffer", bytes);
    int rc = write_stage(c, 0, buf, e);
    if (rc == 0)
        rc = write_stage(c, 1, buf, e);
    free(buf);
    return rc;
}
