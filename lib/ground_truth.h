/*
 * ground_truth.h - the ground_truth subgroup of a master as mbe-merge
 * writes it (ground_truth.c): level datasets created exactly as h5py
 * creates them, the levels_of_theory index, where each dataset's raw data
 * lies, and the merge log.  Private to lib/; every function takes an open
 * HDF5 file and the key of a frame-holding group.
 */
#ifndef MBE_GROUND_TRUTH_H
#define MBE_GROUND_TRUTH_H

#include <hdf5.h>
#include <stdint.h>

#include "mbe.h"

/* Name of the merge log dataset inside <key>/ground_truth.  The package
 * reads only datasets of levels listed in levels_of_theory, so it never
 * sees this one. */
#define MBE_GT_LOG "mbe_merge_log"

enum { MBE_GT_ENERGY, MBE_GT_FORCES, MBE_GT_STATUS, MBE_GT_N };

/* One level dataset. */
typedef struct mbe_gt_ds {
    int exists;
    int raw;          /* contiguous, allocated, unfiltered, little-endian
                         float64 / int64 on a little-endian host: its rows
                         may be written with pwrite at offset */
    uint64_t offset;  /* of the raw data in the file, when raw */
} mbe_gt_ds;

/* State of one level of theory in one group. */
typedef struct mbe_gt_level {
    int has_gt;       /* the ground_truth group exists */
    int listed;       /* the level is in levels_of_theory */
    int old_names;    /* the group holds names in the 0.2 spelling */
    mbe_gt_ds ds[MBE_GT_N];
} mbe_gt_level;

/* Results without a status dataset: the package reads every frame as
 * COMPLETED.  mbe_gt_ensure creates the status dataset of such a level
 * with COMPLETED for every frame, the status the package holds in memory
 * for it when it stores new results (Structure.run, then save). */
int mbe_gt_is_legacy(const mbe_gt_level *l);
/* Whether mbe_gt_ensure has anything to create, rename or list; forces:
 * the level is to have a forces dataset (some shard holds forces). */
int mbe_gt_needs_structure(const mbe_gt_level *l, int forces);

/* n_frames and n_atoms attributes of the group at key. */
int mbe_gt_dims(hid_t file, const char *key, int64_t *n_frames,
                int64_t *n_atoms, mbe_err *e);

/* Which datasets of level exist in key's ground_truth, their shapes and
 * types checked against n_frames and n_atoms, and whether each one can be
 * written raw. */
int mbe_gt_inspect(hid_t file, const char *key, const char *level,
                   int64_t n_frames, int64_t n_atoms, mbe_gt_level *out,
                   mbe_err *e);

/* "key: dataset" for each dataset mbe_gt_ensure would create, pushed to
 * names. */
int mbe_gt_missing(const mbe_gt_level *l, const char *key, const char *level,
                   int forces, mbe_strlist *names, mbe_err *e);

/* Create what is missing for level: the ground_truth group, its datasets
 * (NaN / UNDEFINED, or COMPLETED for the status of a legacy level) and
 * its entry in levels_of_theory, and give the group's 0.2 names their
 * package spelling (renamed, when not NULL, gets "key: dataset" for
 * each).  The forces dataset only when forces is non-zero: an
 * energies-only level has none, as the package's forces=False leaves it.
 * l is the state mbe_gt_inspect found. */
int mbe_gt_ensure(hid_t file, const char *key, const char *level,
                  int64_t n_frames, int64_t n_atoms, const mbe_gt_level *l,
                  int forces, mbe_strlist *renamed, mbe_err *e);

/* Open one of the level's datasets (which: MBE_GT_ENERGY, ...). */
hid_t mbe_gt_open(hid_t file, const char *key, const char *level, int which,
                  mbe_err *e);

/* A record of the merge log. */
typedef struct mbe_gt_logrec {
    char *shard_id;
    char *key;
    char *level;
    char *time;       /* ISO 8601 UTC */
    char *path;       /* the shard as given to mbe-merge */
    char *digest;     /* crc32 of the shard's content, 8 hex digits: a shard
                         resumed after a merge has another digest */
    int64_t frames;   /* frames in the shard */
    int64_t completed;
    int64_t applied;
    char *frame_set;  /* the frames this merge took from the shard (not
                         UNDEFINED, not taken before), a frame spec */
    char *frame_digest; /* crc32 of their (index, row crc) pairs, 8 hex
                           digits: a later stage of the shard skips them
                           while their rows are unchanged */
    char *calculator; /* the shard's calculator and settings: later */
    char *calc_settings; /* shards of the level must use the same method */
} mbe_gt_logrec;

/* The whole log of key's group (none: *n = 0); records written before
 * the frame_set .. calc_settings fields existed read them as "". */
int mbe_gt_log_read(hid_t file, const char *key, mbe_gt_logrec **v,
                    size_t *n, mbe_err *e);
/* Append records, creating the log when missing; a log of the older
 * record type is rewritten in the current one first. */
int mbe_gt_log_append(hid_t file, const char *key, const mbe_gt_logrec *v,
                      size_t n, mbe_err *e);
void mbe_gt_log_free(mbe_gt_logrec *v, size_t n);

#endif
