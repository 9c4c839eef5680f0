/*
 * mbe_internal.h - declarations shared between the files of lib/ only.
 * Not installed; programs include mbe.h alone.
 */
#ifndef MBE_INTERNAL_H
#define MBE_INTERNAL_H

#include <hdf5.h>
#include <sys/types.h>

#include "mbe.h"

/* Every name of the master layout (master-format.md) is defined here and
 * in names.c, byte for byte as the package writes it: '/' inside unit
 * names is U+2215 DIVISION SLASH, and Å is U+212B ANGSTROM SIGN.
 * mbe-shard 0.2 and older wrote U+00C5 for Å (the "0.2 spelling"); HDF5
 * compares names as bytes, so the package does not see those datasets.
 * Readers accept both spellings, writers use the package's only, and
 * mbe-merge renames 0.2 names in the groups it writes. */
#define MBE_DIVSLASH "\xe2\x88\x95"
#define MBE_ANGSTROM "\xe2\x84\xab"
#define MBE_ANGSTROM_0_2 "\xc3\x85" /* U+00C5: mbe-shard 0.2 only */
#define MBE_DS_POSITIONS "positions (" MBE_ANGSTROM ")"
#define MBE_DS_ATOMIC_NUMBERS "atomic_numbers"
#define MBE_DS_MASSES "masses (u)"
#define MBE_DS_CELL "cell_vectors (" MBE_ANGSTROM ")"
#define MBE_DS_FORCES "forces (eV" MBE_DIVSLASH MBE_ANGSTROM ")"
#define MBE_DS_VELOCITIES "velocities (" MBE_ANGSTROM MBE_DIVSLASH "fs)"
#define MBE_GROUP_GT "ground_truth"
#define MBE_ATTR_LEVELS "levels_of_theory"
#define MBE_ATTR_LEVEL_OF_THEORY "level_of_theory"

/* Dataset names of a level of theory in ground_truth, with every '/' of the
 * level replaced by U+2215.  Malloc'd; NULL when out of memory. */
char *mbe_gt_energy_name(const char *level);
char *mbe_gt_forces_name(const char *level);
char *mbe_gt_status_name(const char *level);

/* name (in the package's spelling) as mbe-shard 0.2 spelt it.  Malloc'd;
 * NULL when out of memory. */
char *mbe_name_0_2(const char *name);
/* Which spellings of name are links in loc (a bit set of MBE_SPELL_*);
 * -1 on errors. */
int mbe_h5_spellings(hid_t loc, const char *name);
/* The name under which name exists in loc: the package's spelling when it
 * is there, else the 0.2 spelling.  Malloc'd; NULL when neither exists
 * (*spell MBE_SPELL_NONE) or on errors.  spell may be NULL. */
char *mbe_h5_existing_name(hid_t loc, const char *name, int *spell);
/* Give every dataset of the frame-holding group at key (and of its
 * ground_truth) that bears a 0.2 name its package name: positions,
 * cell_vectors, forces, velocities, and forces_<level> of every level.
 * Where both spellings of a level's forces exist (the package computed
 * more frames after a 0.2 merge), rows that are NaN in the package's
 * dataset are filled from the 0.2 one before it is deleted; other
 * a duplicate of any other dataset is left as it is (readers take the
 * package's).  Each "key: dataset" renamed is pushed to done (may be
 * NULL).  Only under the exclusive lock, through the undo journal; dry
 * non-zero lists what would be renamed and changes nothing. */
int mbe_names_convert(hid_t file, const char *key, size_t buf_bytes,
                      int dry, mbe_strlist *done, mbe_err *e);

/* mbe_master_open, read-only, for a caller that holds the master's lock
 * already (the lock is neither taken nor released). */
int mbe_master_open_held(const char *path, const char *key, mbe_master **out,
                         mbe_err *e);

/* Keys of every frame-holding group of an open file, sorted (path names
 * the file in messages). */
int mbe_h5_frame_groups(hid_t file, const char *path, mbe_strlist *keys,
                        mbe_err *e);

/* A group key without leading and trailing slashes; "/" for the root.
 * Malloc'd; NULL when out of memory. */
char *mbe_normal_key(const char *key);

/* HDF5 must not print its error stack: the library reports through mbe_err.
 * Called by every entry point that touches HDF5. */
void mbe_h5_quiet(void);
/* The innermost HDF5 error description of the current stack, for messages
 * ("" when none).  When a file driver's description in it reports an
 * errno, strerror's words for it instead ("No space left on device";
 * "cannot lock the file: Resource temporarily unavailable"), never the
 * driver's text of file names, descriptors and byte counts. */
void mbe_h5_errdesc(char *buf, size_t n);
/* The errno a description of the current stack reports, 0 when none. */
int mbe_h5_errno(void);

/* Variable-length UTF-8 string type as h5py writes it (caller closes). */
hid_t mbe_h5_vlen_str(void);
/* The numpy-bool enum h5py writes: {FALSE=0, TRUE=1} over int8. */
hid_t mbe_h5_bool_enum(void);

/* Scalar attributes as h5py writes and reads them; the readers accept any
 * integer type and fixed or variable strings. */
int mbe_h5_attr_read_i64(hid_t obj, const char *name, int64_t *v);
int mbe_h5_attr_read_str(hid_t obj, const char *name, char **v);
/* As mbe_h5_attr_read_str, but a variable-length string is left unread
 * and -2 returned. */
int mbe_h5_attr_read_fixed_str(hid_t obj, const char *name, char **v);
int mbe_h5_attr_write_i64(hid_t obj, const char *name, int64_t v);
int mbe_h5_attr_write_str(hid_t obj, const char *name, const char *v);
/* A fixed-length UTF-8 string of strlen(v)+1 bytes, NUL-terminated. */
int mbe_h5_attr_write_fixed_str(hid_t obj, const char *name, const char *v);
int mbe_h5_attr_write_bool(hid_t obj, const char *name, int v);

/* fsync the file behind an open HDF5 file (after H5Fflush). */
int mbe_h5_fsync(hid_t file);
/* fsync a directory (after a rename in it). */
int mbe_fsync_dir_of(const char *path);

/* zlib's crc32 (crc.c): the crc of len more bytes after crc, the crc of
 * the bytes before them (0 for none); len 0 returns crc. */
uint32_t mbe_crc32(uint32_t crc, const void *buf, size_t len);
/* The crc32 of n values of sz bytes (sz <= 512) in little-endian byte
 * order: the memory as it stands on little-endian hosts, each value
 * reversed elsewhere, so that checksums agree between machines. */
uint32_t mbe_crc32_le(uint32_t crc, const void *p, size_t n, size_t sz);
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
/* n values of sz bytes, each reversed (big-endian hosts only). */
void mbe_to_le(void *dst, const void *src, size_t n, size_t sz);
#endif

/* pread/pwrite of all n bytes at off, retrying short transfers and
 * EINTR: 0, or -1 with errno (EIO at an unexpected end of file, or when
 * pwrite writes nothing three times in a row). */
int mbe_pread_full(int fd, void *buf, size_t n, uint64_t off);
int mbe_pwrite_full(int fd, const void *buf, size_t n, uint64_t off);
/* pread of up to n bytes at off, retrying short reads and EINTR: the
 * bytes read, fewer than n only at end of file, or -1 with errno. */
ssize_t mbe_pread_upto(int fd, void *buf, size_t n, uint64_t off);
/* CLOCK_MONOTONIC in seconds. */
double mbe_now(void);
/* The time-out of one poll() in a wait that looks at a stop flag every
 * slice ms: slice, or less to wake at deadline (mbe_now's clock; <= 0 for
 * none); -1 once deadline has passed. */
int mbe_poll_ms(double deadline, int slice);
/* The current time in UTC as ISO 8601 to the second,
 * "2026-01-31T23:59:59Z", into out, every byte after it zero ("" if the
 * clock is beyond struct tm). */
void mbe_iso_time(char out[32]);
/* What follows the last '/' of path (all of it when there is none). */
const char *mbe_base_name(const char *path);

char *mbe_strdup(const char *s);
/* malloc'd printf. */
char *mbe_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Runs fn(arg, e) in a child process (isolate.c) and returns what it
 * returned, with its message in e, as if it had run here; nothing it
 * changes in memory comes back.  When the child crashes, is stopped by a
 * signal or takes longer than timeout_s, returns MBE_EFAIL, says so in
 * e ("killed by signal 11 (Segmentation fault)", "did not finish
 * within 60 s") and in how. */
typedef struct mbe_isolation {
    int replied;   /* fn returned; its result and message are in e */
    int crashed;   /* died of SIGSEGV, SIGBUS, SIGABRT, ... */
    int timed_out; /* killed at the time-out */
    int signal;    /* the signal it died of, 0 if none */
} mbe_isolation;
int mbe_isolated(int (*fn)(void *, mbe_err *), void *arg, unsigned timeout_s,
                 mbe_isolation *how, mbe_err *e);

/* fn(arg) through mbe_isolated with the time-out of MBE_PROBE_TIMEOUT
 * (60 s): the file path, which libhdf5 cannot check, read first in a
 * child.  A crash or a hang becomes "PATH: damaged HDF5 file: libhdf5
 * crashed reading it: ..."; fn's own failure comes back with its code
 * and message. */
int mbe_probe_isolated(const char *path, int (*fn)(void *, mbe_err *),
                       void *arg, mbe_err *e);
/* The version of the superblock of path (0-3), or MBE_EFAIL when it has
 * no HDF5 signature or cannot be read. */
int mbe_h5_superblock_version(const char *path, mbe_err *e);

/* Undo journal for structural changes of a master (journal.c).  HDF5 is
 * not crash-consistent while it rewrites metadata; every byte that the
 * journaling driver overwrites below the file's original end is first
 * saved to <path>.mbe-journal and made durable, so an interrupted change
 * can be rolled back exactly.  Used under the exclusive lock only. */
typedef struct mbe_journal mbe_journal;

#define MBE_JOURNAL_SUFFIX ".mbe-journal"
/* Whether an interrupted change of path awaits roll-back.  The journal of
 * a master reached through a symbolic link is at the name of the file it
 * resolves to (0.2 and older left it at the link's: found too). */
int mbe_journal_pending(const char *path);
/* If <path>.mbe-journal exists, restore the saved bytes, truncate to the
 * original size, fsync, remove the journal.  *rolled_back tells whether
 * anything was done. */
int mbe_journal_recover(const char *path, int *rolled_back, mbe_err *e);
/* Open the master read-write through the journaling driver. */
hid_t mbe_journal_open(const char *path, mbe_journal **j, mbe_err *e);
/* H5Fclose, fsync the master, then remove the journal (the change is
 * committed). */
int mbe_journal_commit(hid_t file, mbe_journal *j, mbe_err *e);
/* Close the file and roll the change back now. */
int mbe_journal_abort(hid_t file, mbe_journal *j, mbe_err *e);

#endif
