/*
 * merge_impl.h - the state of one mbe_merge, shared by merge.c (the
 * phases), merge_check.c (the checks of the shards), merge_write.c (the
 * rows) and merge_log.c (the merge log).  Private to lib/.
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
    int64_t *eff;       /* status without the frames an earlier merge of
                           this shard took (merge_log.c); NULL: the
                           shard's own */
} shard_in;

/* The merge log of one key, as read under the lock. */
typedef struct mg_log {
    const char *key;
    mbe_gt_logrec *v;
    size_t n;
} mg_log;

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
    mg_log *logs;       /* of every key with shards to apply */
    size_t n_logs;
    size_t bad;         /* the shard whose row failed its crc (EINVALID
                           from the writes) */
    char now[32];       /* time of this merge, ISO 8601 UTC */
} ctx;

/* Progress of a long step (o.on_step). */
void mg_step(const ctx *c, const char *what, size_t done, size_t total);
/* merge.c: the small helpers the files share. */
const mbe_shard_meta *mg_meta(const ctx *c, size_t i);
/* Frames of shard i. */
size_t mg_shard_n(const ctx *c, size_t i);
/* "2, 5, 9, ..." of up to SHOWN frames. */
void mg_frame_list(char *buf, size_t len, const int64_t *f, size_t shown,
                   size_t total);
void mg_report_free_shard(mbe_merge_shard *s);
/* Shard i's note in the report, msg without a leading "<path>: ". */
void set_note(ctx *c, size_t i, const char *msg);
/* Shard i refused (SH_INVALID), msg its reason. */
void mg_refuse(ctx *c, size_t i, const char *msg);
void mg_refusef(ctx *c, size_t i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether shard i is still to be applied (SH_APPLY). */
int mg_live(const ctx *c, size_t i);
size_t mg_count_state(const ctx *c, int state);
/* merge_check.c, before the lock.  Every shard given opened and checked
 * on its own (the members of a bundle become entries of their own): a bad
 * one refused; fails only for want of memory. */
int mg_open_shards(ctx *c, mbe_err *e);
/* Copies of one shard: the first applied, identical ones SH_DUPLICATE,
 * others (one shard at two stages) refused. */
int mg_find_duplicates(ctx *c, mbe_err *e);
/* The live shards not yet checked against the master (identity, geometry
 * fingerprints), under the lock; a shard that fails is refused, a master
 * that cannot be read fails. */
int mg_check_against_master(ctx *c, mbe_err *e);
/* MBE_EINVALID, e filled, when a shard was refused and not o.skip_invalid. */
int mg_refuse_invalid(ctx *c, mbe_err *e);
/* Commit the journal when rc is 0, else roll the change back; returns
 * rc, or the commit's failure. */
int mg_journal_end(hid_t f, mbe_journal *j, int rc, mbe_err *e);
/* merge_log.c.  The merge logs of the keys with live shards, read: shards
 * applied before unchanged become SH_ALREADY, frames a merge of an
 * earlier stage of a shard took are skipped (eff). */
int mg_read_logs(ctx *c, hid_t f, mbe_err *e);
void mg_logs_free(ctx *c);
/* A shard's status as the merge sees it (eff, or its own). */
const int64_t *mg_status(const ctx *c, size_t i);
/* Whether shard i has a frame to apply. */
int mg_has_work(const ctx *c, size_t i);
/* One method per level, across its shards and with the log; e filled,
 * MBE_EFAIL, when not (unless o.allow_mixed). */
int mg_check_methods(const ctx *c, mbe_err *e);
/* Append this merge's records (phase C, inside the journal). */
int mg_append_logs(const ctx *c, hid_t f, mbe_err *e);
/* e's message about an unreadable log, with the way out. */
int mg_log_damaged(const ctx *c, const char *key, mbe_err *e);

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
