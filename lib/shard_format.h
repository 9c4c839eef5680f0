/*
 * shard_format.h - the layout of a shard file (mbe-shard(5)) and the
 * helpers its writer (shard_write.c) and its reader (shard_read.c) share
 * (shard_common.c).  Private to lib/.
 *
 * Every name and number of the format is here, so that the writer and the
 * reader cannot drift apart, and so that adding a format version starts in
 * one place (HACKING.md, "Adding a shard format version").
 */
#ifndef MBE_SHARD_FORMAT_H
#define MBE_SHARD_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "mbe_internal.h"

/* ============================================================= layout */

#define SH_ATTR_FORMAT "mbe_shard_format"
#define SH_FORMAT_NAME "mbe-shard"
#define SH_ATTR_VERSION "mbe_shard_format_version"

/* The format versions, in the root attribute SH_ATTR_VERSION.  The reader
 * takes SH_FORMAT_OLDEST to SH_FORMAT_BUNDLE and refuses any other version
 * in one line that names it.  The old versions need no code of their own
 * beyond the few conditionals named here, so they have no file of their
 * own either.
 *
 * Version 1, written by mbe-shard 0.1.0 only, read by every release since:
 * version 2's layout in a file with a version 0 superblock and
 * variable-length strings, whose metadata libhdf5 does not checksum.  Its
 * reading is the reader's untrusted path, which every file libhdf5 cannot
 * check takes (h5py rewrites too): reader_open_file sees the superblock
 * and sets isolate, open_isolated (shard_read.c) opens the file in a child
 * first, then reader_str reads variable-length strings and
 * sh_vlen_str_unreadable names a damaged global heap.  A resumed version 1
 * shard stays version 1: resume only overwrites raw rows.
 *
 * Version 2, written by mbe-shard 0.2.0 and later for shards with forces,
 * read by 0.2.0 and later: superblock 2, fixed-length strings, every
 * attribute and link in the root's object header (sh_create_plists,
 * shard_write.c), so libhdf5 checks every piece of metadata before it
 * decodes it. */
#define SH_FORMAT_OLDEST 1
#define SH_FORMAT_FORCES 2
/* Version 3, written by mbe-shard 0.3 and later for energies-only shards
 * (mbe-compute --no-forces), refused by 0.2 in one line rather than
 * misread: version 2 with the root attribute has_forces, and with
 * has_forces 0 no forces dataset.  Its one conditional on reading is in
 * reader_check_format; sh_meta_write (shard_write.c) chooses 2 or 3. */
#define SH_FORMAT_VERSION 3
/* Version 4, a bundle, written by mbe-shard 0.3 and later for a job over
 * several keys, refused by older readers in one line: one group per key,
 * "0", "1", ..., each holding what the root of a version 2 or 3 shard
 * holds except the two format attributes, and has_forces always; the root
 * holds the format attributes and n_members.  Every member is a shard of
 * its own to readers: its own shard_id, key, frames and finished flag.
 * Read by reader_member (shard_read.c), laid out by build (shard_write.c).
 * mbe-shard 0.2 wrote one version 2 or 3 shard per key instead, which a
 * job begun so continues as it began (compute.c). */
#define SH_FORMAT_BUNDLE 4
#define SH_ATTR_MEMBERS "n_members"
#define SH_MAX_MEMBERS 65535
#define SH_ATTR_HAS_FORCES "has_forces"
#define SH_ATTR_INDEX_CRC "index_crc32"
/* Optional (mbe-shard 0.3): readers of 0.2 ignore it. */
#define SH_ATTR_STARTUP "startup_ms"
#define SH_END_TIME_LEN 32
/* Keeps n_atoms*3*8 (one frame's forces) far inside size_t. */
#define SH_MAX_ATOMS ((int64_t)1 << 31)
/* Forces buffer of the crc scan at resume. */
#define SH_SCAN_BUF ((size_t)8 << 20)

enum {
    SH_FRAMES, SH_STATUS, SH_ENERGY, SH_FORCES, SH_CRC, SH_GEOM, SH_END,
    SH_FINISHED, SH_N_DS
};

#define SH_DS_FRAMES "frames"
#define SH_DS_STATUS "status"
#define SH_DS_ENERGY "energy"
#define SH_DS_FORCES "forces"
#define SH_DS_CRC "crc32"
#define SH_DS_GEOM "geometry_crc32"
#define SH_DS_END "end_time"
#define SH_DS_FINISHED "finished"

static const char *const sh_ds_names[SH_N_DS] = {
    SH_DS_FRAMES, SH_DS_STATUS, SH_DS_ENERGY, SH_DS_FORCES,
    SH_DS_CRC,    SH_DS_GEOM,   SH_DS_END,    SH_DS_FINISHED};

/* String fields of mbe_shard_meta, each a root attribute of that name. */
static const struct {
    const char *name;
    size_t off;
} sh_meta_strs[] = {
    {"master_file", offsetof(mbe_shard_meta, master_file)},
    {"key", offsetof(mbe_shard_meta, key)},
    {"level", offsetof(mbe_shard_meta, level)},
    {"selection", offsetof(mbe_shard_meta, selection)},
    {"calculator", offsetof(mbe_shard_meta, calculator)},
    {"calc_settings", offsetof(mbe_shard_meta, calc_settings)},
    {"tool_version", offsetof(mbe_shard_meta, tool_version)},
    {"host", offsetof(mbe_shard_meta, host)},
    {"slurm_job_id", offsetof(mbe_shard_meta, slurm_job_id)},
    {"slurm_array_job_id", offsetof(mbe_shard_meta, slurm_array_job_id)},
    {"slurm_array_task_id", offsetof(mbe_shard_meta, slurm_array_task_id)},
    {"shard_id", offsetof(mbe_shard_meta, shard_id)},
    {"start_time", offsetof(mbe_shard_meta, start_time)},
};
#define SH_N_META_STRS (sizeof sh_meta_strs / sizeof sh_meta_strs[0])

/* ===================================================== shard_common.c */

/* Field i of sh_meta_strs in m. */
char **sh_meta_str(mbe_shard_meta *m, size_t i);
const char *sh_meta_str_c(const mbe_shard_meta *m, size_t i);

/* The innermost HDF5 error, by value so it can sit in an argument list. */
typedef struct h5desc_t {
    char s[300];
} h5desc_t;

h5desc_t sh_h5desc(void);
/* "<path>: <what>: <the HDF5 error or strerror(errno)>"; MBE_EFAIL. */
int sh_h5fail(mbe_err *e, const char *path, const char *what);
int sh_sysfail(mbe_err *e, const char *path, const char *what);
/* Keeps the HDF5 error in *why (when not NULL) before clean-up calls
 * clear it. */
void sh_keep_why(h5desc_t *why);

/* The crc of attribute index_crc32: datasets frames and geometry_crc32. */
int64_t sh_index_crc(const int64_t *frames, const uint32_t *geom, size_t n);

/* Rows [k0, k0+count) of a dataset whose first dimension is the frame,
 * every other dimension whole: read, or written when write. */
int sh_rows_io(hid_t ds, hid_t mtype, size_t k0, size_t count, void *buf,
               int write, h5desc_t *why);
/* The type of dataset end_time; the caller closes it. */
hid_t sh_end_time_type(void);
/* Whether the dataset's data is found without an index. */
int sh_raw_in_place(hid_t ds);
/* Whether a live mbe-compute holds the writer's lock of the file. */
int sh_writer_running(const char *path);

/* ======================================================= shard_read.c */

/* Resume checks every row so (shard_write.c): rows whose crc does not
 * match go to bad (the first max_bad of them; their count to n_bad),
 * UNDEFINED ones only when all. */
int sh_crc_scan(mbe_shard_reader *r, size_t buf_bytes, int all, size_t *bad,
                size_t max_bad, size_t *n_bad, size_t *nonfinite,
                mbe_err *e);

#endif
