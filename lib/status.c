/* status.c - what a master holds for a level of theory: frames counted by
 * stored status, the energy range of the COMPLETED ones, and the frames
 * with a given status as the package's choice of frames sees it (for
 * resubmitting the missing ones); the same counts of a shard.
 *
 * Everything goes through the public reading functions of master.c, one
 * block of frames at a time, so memory stays bounded whatever n_frames;
 * a shard's through the public accessors of its reader, which holds its
 * frames in memory already. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

/* Frames read per call: 24 bytes a frame (index, status, energy), so a
 * block costs about 25 MB while the number of HDF5 calls stays small. */
static const size_t STATUS_BLOCK = (size_t)1 << 20;

/* One block of consecutive frames [first, first + n) as a selection; the
 * index buffer of sel is reused between blocks. */
static void block_fill(mbe_frames *sel, int64_t first, size_t n)
{
    for (size_t k = 0; k < n; k++)
        sel->idx[k] = first + (int64_t)k;
    sel->n = n;
}

/* Buffers of one block. */
typedef struct block_bufs {
    mbe_frames sel;
    int64_t *status;
    double *energy;     /* NULL when energies are not wanted */
    size_t cap;
} block_bufs;

static int bufs_alloc(block_bufs *b, int64_t n_frames, int energies,
                      mbe_err *e)
{
    memset(b, 0, sizeof *b);
    size_t cap = n_frames <= 0 ? 1
                 : (uint64_t)n_frames < STATUS_BLOCK ? (size_t)n_frames
                                                     : STATUS_BLOCK;
    b->cap = cap;
    b->sel.idx = malloc(cap * sizeof *b->sel.idx);
    b->sel.cap = cap;
    b->status = malloc(cap * sizeof *b->status);
    if (energies)
        b->energy = malloc(cap * sizeof *b->energy);
    if (!b->sel.idx || !b->status || (energies && !b->energy))
        return mbe_fail(e, "out of memory for a block of %zu frames", cap);
    return 0;
}

static void bufs_free(block_bufs *b)
{
    free(b->sel.idx);
    free(b->status);
    free(b->energy);
    memset(b, 0, sizeof *b);
}

/* mbe_master_read_status (what is stored) or
 * mbe_master_read_visible_status (what the package's choice of frames
 * sees). */
typedef int (*status_reader)(mbe_master *m, const char *level,
                             const mbe_frames *sel, int64_t *status,
                             mbe_err *e);

/* Read the status of the next block; an unknown status value means the
 * file was written by something that does not follow the format, and
 * counting it as anything would hide that. */
static int read_block(mbe_master *m, const char *level, status_reader read,
                      block_bufs *b, int64_t first, size_t n, mbe_err *e)
{
    block_fill(&b->sel, first, n);
    if (read(m, level, &b->sel, b->status, e) < 0)
        return MBE_EFAIL;
    for (size_t k = 0; k < n; k++)
        if (b->status[k] < 0 || b->status[k] >= MBE_N_STATUS)
            return mbe_fail(e, "%s: %s: level '%s': frame %lld has status "
                            "%lld, not one of 0-3",
                            mbe_master_path(m), mbe_master_key(m), level,
                            (long long)(first + (int64_t)k),
                            (long long)b->status[k]);
    return 0;
}

/* Which datasets a level has.  No public reader tells a legacy level
 * apart from one whose every frame is COMPLETED, so the ground_truth group
 * is looked at directly, through a second handle on the file: HDF5 shares
 * the already open file, and the caller's lock covers both handles.  Any
 * failure to look means "none": the counts, which come from
 * mbe_master_read_status, are right either way. */
static void level_datasets(mbe_master *m, const char *level,
                           mbe_level_summary *out)
{
    char *sname = mbe_gt_status_name(level);
    char *ename = mbe_gt_energy_name(level);
    char *fname = mbe_gt_forces_name(level);
    const char *key = mbe_master_key(m);
    char *gpath = mbe_asprintf("/%s/%s", strcmp(key, "/") ? key : "",
                               MBE_GROUP_GT);
    hid_t file = -1, gt = -1;
    if (!sname || !ename || !fname || !gpath)
        goto out;
    file = H5Fopen(mbe_master_path(m), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0)
        goto out;
    if ((gt = H5Gopen2(file, gpath, H5P_DEFAULT)) < 0)
        goto out;
    int sp = mbe_h5_spellings(gt, fname);
    out->has_status = H5Lexists(gt, sname, H5P_DEFAULT) > 0;
    out->has_energies = H5Lexists(gt, ename, H5P_DEFAULT) > 0;
    out->forces_spelling = sp > 0 ? sp : MBE_SPELL_NONE;
    out->has_forces = sp > 0;
    out->legacy = !out->has_status && (out->has_energies || out->has_forces);
out:
    if (gt >= 0)
        H5Gclose(gt);
    if (file >= 0)
        H5Fclose(file);
    free(sname);
    free(ename);
    free(fname);
    free(gpath);
}

/* Energy range over the COMPLETED frames of a block; non-finite energies
 * (a COMPLETED frame without a stored energy) are skipped. */
static void energy_range(const block_bufs *b, size_t n, double *lo,
                         double *hi)
{
    for (size_t k = 0; k < n; k++) {
        double v = b->energy[k];
        if (b->status[k] != MBE_COMPLETED || !isfinite(v))
            continue;
        if (isnan(*lo) || v < *lo)
            *lo = v;
        if (isnan(*hi) || v > *hi)
            *hi = v;
    }
}

static int summarize_blocks(mbe_master *m, const char *level,
                            mbe_level_summary *out, mbe_err *e)
{
    block_bufs b;
    int rc = bufs_alloc(&b, out->n_frames, 1, e);
    for (int64_t f0 = 0; rc == 0 && f0 < out->n_frames;
         f0 += (int64_t)b.cap) {
        size_t n = (size_t)(out->n_frames - f0) < b.cap
                       ? (size_t)(out->n_frames - f0) : b.cap;
        rc = read_block(m, level, mbe_master_read_status, &b, f0, n, e);
        size_t done = 0;
        for (size_t k = 0; rc == 0 && k < n; k++) {
            out->count[b.status[k]]++;
            done += b.status[k] == MBE_COMPLETED;
        }
        /* Energies are read only where there is something to take. */
        if (rc == 0 && done) {
            rc = mbe_master_read_energies(m, level, &b.sel, b.energy, e);
            if (rc == 0)
                energy_range(&b, n, &out->e_min, &out->e_max);
        }
    }
    bufs_free(&b);
    return rc;
}

int mbe_master_summarize(mbe_master *m, const char *level,
                         mbe_level_summary *out, mbe_err *e)
{
    memset(out, 0, sizeof *out);
    out->e_min = out->e_max = NAN;
    out->n_frames = mbe_master_n_frames(m);
    if (!level || !*level)
        return mbe_fail(e, "empty level of theory");
    if (!(out->level = mbe_strdup(level)))
        return mbe_fail(e, "out of memory");
    if (summarize_blocks(m, level, out, e) < 0) {
        mbe_level_summary_free(out);
        return MBE_EFAIL;
    }
    level_datasets(m, level, out);
    return 0;
}

void mbe_level_summary_free(mbe_level_summary *s)
{
    if (!s)
        return;
    free(s->level);
    memset(s, 0, sizeof *s);
    s->e_min = s->e_max = NAN;
}

int mbe_master_frames_with_status(mbe_master *m, const char *level,
                                  const int want[MBE_N_STATUS],
                                  mbe_frames *out, mbe_err *e)
{
    memset(out, 0, sizeof *out);
    if (!level || !*level)
        return mbe_fail(e, "empty level of theory");
    int64_t n_frames = mbe_master_n_frames(m);
    block_bufs b;
    int rc = bufs_alloc(&b, n_frames, 0, e);
    for (int64_t f0 = 0; rc == 0 && f0 < n_frames; f0 += (int64_t)b.cap) {
        size_t n = (size_t)(n_frames - f0) < b.cap ? (size_t)(n_frames - f0)
                                                   : b.cap;
        rc = read_block(m, level, mbe_master_read_visible_status, &b, f0,
                        n, e);
        for (size_t k = 0; rc == 0 && k < n; k++)
            if (want[b.status[k]])
                rc = mbe_frames_push(out, f0 + (int64_t)k, e);
    }
    bufs_free(&b);
    if (rc < 0)
        mbe_frames_free(out);
    return rc;
}

void mbe_shard_summarize(const mbe_shard_reader *r, mbe_shard_summary *out)
{
    const mbe_frames *f = mbe_shard_reader_frames(r);
    const int64_t *st = mbe_shard_reader_status(r);
    const double *en = mbe_shard_reader_energy(r);
    memset(out, 0, sizeof *out);
    out->e_min = out->e_max = NAN;
    for (size_t k = 0; k < f->n; k++) {
        /* The reader has refused shards with unknown status values. */
        if (st[k] >= 0 && st[k] < MBE_N_STATUS)
            out->count[st[k]]++;
        if (st[k] != MBE_COMPLETED || !isfinite(en[k]))
            continue;
        if (isnan(out->e_min) || en[k] < out->e_min)
            out->e_min = en[k];
        if (isnan(out->e_max) || en[k] > out->e_max)
            out->e_max = en[k];
    }
}
