/*
 * merge_plan.h - the pure part of mbe-merge (merge_plan.c): how the shards
 * of one (key, level of theory) combine per master frame, which frames
 * conflict, and what the package's update rule (master-format.md) writes.
 * No I/O, so every case is unit-testable without files.  Private to lib/.
 */
#ifndef MBE_MERGE_PLAN_H
#define MBE_MERGE_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "mbe.h"

/* One shard as the planner sees it: n frames, master indices ascending. */
typedef struct mp_shard {
    const int64_t *frame;
    const int64_t *status;
    const double *energy;
    const uint32_t *crc;
    size_t n;
    int no_forces;   /* energies only: its crc covers no forces */
} mp_shard;

/* One (shard, position) pair holding a master frame. */
typedef struct mp_entry {
    int64_t frame;
    uint32_t shard;  /* position in the caller's shard array = the order
                        in which the shards apply (command line) */
    size_t k;        /* position of the frame in that shard */
} mp_entry;

/* Every shard frame, grouped by master frame. */
typedef struct mp_index {
    mp_entry *ent;      /* sorted by (frame, shard) */
    size_t n_ent;
    int64_t *frame;     /* distinct master frames, ascending */
    size_t *first;      /* entries of frame[u]: ent[first[u] .. first[u+1]) */
    size_t n_frames;
} mp_index;

int mp_index_build(const mp_shard *s, size_t n_shards, mp_index *ix,
                   mbe_err *e);
void mp_index_free(mp_index *ix);

/* Frames COMPLETED in two shards with different results (energy bits or,
 * when both hold forces, result crc32). */
#define MP_CONFLICTS_SHOWN 5
typedef struct mp_conflicts {
    size_t count;                        /* conflicting frames */
    int64_t first[MP_CONFLICTS_SHOWN];   /* the first ones */
    size_t n_first;
    uint32_t shard_a, shard_b;           /* the pair of the first frame */
} mp_conflicts;

void mp_find_conflicts(const mp_index *ix, const mp_shard *s,
                       mp_conflicts *c);

/* The update rule for one status value: what the stored status becomes
 * when a result with status t is stored (master-format.md). */
int64_t mp_rule_status(int64_t stored, int64_t t);

#define MP_NONE SIZE_MAX

/* What to write for the distinct frames of an index. */
typedef struct mp_plan {
    size_t n_frames;          /* = ix->n_frames */
    size_t *src;              /* [n_frames] entry whose energy is written,
                                 MP_NONE: none */
    size_t *fsrc;             /* [n_frames] entry whose forces are written:
                                 the one chosen like src among the shards
                                 with forces; MP_NONE: none (the master's
                                 forces stay) */
    int64_t *status;          /* [n_frames] status to write ... */
    unsigned char *write_status;  /* [n_frames] ... where non-zero */
    unsigned char **is_src;   /* [n_shards][shard n]: the shard's frame k
                                 supplies forces */
    size_t *applied;          /* [n_shards] frames whose results or status
                                 from this shard end up in the master */
    size_t *kept;             /* [n_shards] frames with a result or status
                                 that does not (master COMPLETED, or
                                 another shard's result won) */
    size_t n_shards;
    size_t frames_written;    /* distinct frames with any write */
    size_t ef_frames;         /* frames whose energy changes */
    size_t f_frames;          /* frames whose forces change */
    size_t status_frames;     /* frames whose status is written */
} mp_plan;

/* Plan the writes: stored[u] is the master's current status of
 * ix->frame[u] (COMPLETED for a legacy level); has_status says whether
 * the level has a status dataset at all (legacy levels get none).  The
 * result equals applying the shards one after the other, in array order,
 * with the package's update rule; with MBE_PREFER_FIRST the first
 * COMPLETED result of a frame wins instead of the last. */
int mp_plan_build(const mp_index *ix, const mp_shard *s, size_t n_shards,
                  int prefer, const int64_t *stored, int has_status,
                  mp_plan *p, mbe_err *e);
void mp_plan_free(mp_plan *p);

/* The next run of consecutive master frames, starting at *pos or later,
 * among frame[0..n) (ascending), taking only positions where mask is
 * non-zero (mask NULL: all), at most max_len long (0: unbounded).  Sets
 * *start and *len and advances *pos past the run; returns 0 when no run
 * is left. */
int mp_next_run(const int64_t *frame, const unsigned char *mask, size_t n,
                size_t *pos, size_t max_len, size_t *start, size_t *len);

#endif
