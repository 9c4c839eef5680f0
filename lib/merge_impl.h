/*
 * merge_impl.h - the state of one mbe_merge, shared by merge.c (the
 * phases and the checks) and merge_write.c (the rows).  Private to lib/.
 */
#ifndef MBE_MERGE_IMPL_H
#define MBE_MERGE_IMPL_H

#include <hdf5.h>

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
    int checked;        /* against the master, under the lock */
    size_t target;
} shard_in;

/* Shards that keep a descriptor open after they are read; the others
 * open their file again for each read (mbe_shard_reader_release_fd), so
 * that a merge of 10^4 shards runs under ulimit -n 128. */
#define KEPT_FDS 48

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
    size_t kept_fds;    /* shards holding a descriptor */
    size_t bad;         /* the shard whose row failed its crc (EINVALID
                           from the writes) */
    char now[32];       /* time of this merge, ISO 8601 UTC */
} ctx;

/* Progress of a long step (o.on_step). */
void mg_step(const ctx *c, const char *what, size_t done, size_t total);
/* Commit the journal when rc is 0, else roll the change back; returns
 * rc, or the commit's failure. */
int mg_journal_end(hid_t f, mbe_journal *j, int rc, mbe_err *e);
/* Phase B (merge_write.c): the planned rows of every target, written in
 * place: forces with the energies of the same frames, window by window in
 * master order, each forces row checked against its crc as it is read
 * (c->fd open for writing); made durable; then the statuses, made
 * durable.  MBE_EINVALID, with c->bad the shard, when a row fails its
 * crc: rows written so far are verified results, no status was written. */
int mg_write_rows(ctx *c, mbe_err *e);
/* Rows of row bytes per block of the buffer (one at least). */
size_t mg_rows_per_block(const ctx *c, size_t row);
/* count rows of a ground-truth dataset from frame on, through HDF5. */
int mg_h5_rows(hid_t ds, int which, int64_t frame, size_t count, void *buf,
               int write);

#endif
