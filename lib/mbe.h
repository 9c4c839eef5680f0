/*
 * mbe.h - the one public header of libmbe, the library behind the mbe-shard
 * programs.  Every file format (master, shard, XYZ) is owned here; programs
 * never call HDF5 themselves.
 *
 * Conventions: functions that can fail return 0 on success and a negative
 * value on failure, and fill the mbe_err the caller passed with a one-line
 * message (no trailing newline).  Nothing in the library prints or exits.
 */
#ifndef MBE_H
#define MBE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define MBE_VERSION "0.2.0"

/* ------------------------------------------------------------------ errors */

#define MBE_ERR_LEN 1024

typedef struct mbe_err {
    char msg[MBE_ERR_LEN];
} mbe_err;

enum mbe_rc {
    MBE_OK = 0,
    MBE_EFAIL = -1,     /* any failure; the message says which */
    MBE_ETIMEOUT = -2,  /* a lock could not be had within the time-out */
    MBE_EINTR = -3,     /* interrupted on request (signal flag) */
    MBE_EINVALID = -4,  /* inputs refused; a report says which and why */
    MBE_ENOTSHARD = -5, /* an HDF5 file without the shard format
                           attribute: a master, or another file */
    MBE_EBUSY = -6,     /* HDF5 refused to open the file: another
                           program holds it open for writing */
    MBE_ERECOVERY = -7  /* an interrupted merge awaits recovery (run
                           mbe-merge again): what the master says now
                           is not what it will say */
};

/* Fill e (may be NULL) with a formatted message; returns MBE_EFAIL. */
int mbe_fail(mbe_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Same, with the given return code. */
int mbe_failc(mbe_err *e, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix an existing message: "<prefix>: <old message>". */
void mbe_err_prefix(mbe_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Messages and files: a function given a path starts a message about that
 * file with "PATH: " (a member of a shard of several keys: "PATH:/I: ",
 * mbe_shard_reader_name); a few name it inside the sentence ("no
 * frame-holding group in PATH"), and messages about something else (the
 * lock file, memory, an argument) name that instead.  A caller that names
 * the file itself prints "PATH: " and mbe_err_strip_path(msg, PATH): the
 * prefix is never repeated and nothing else is taken off.  Returns msg
 * past a leading "PATH: ", or msg. */
const char *mbe_err_strip_path(const char *msg, const char *path);
/* The other side of the rule, for a caller that passes on a message about
 * path: prefix "PATH: " unless the message starts with "PATH:" already. */
void mbe_err_name_file(mbe_err *e, const char *path);

/* ------------------------------------------------------ status of a frame */

/* Values stored in status_<level> datasets (master-format.md). */
enum mbe_status {
    MBE_COMPLETED = 0,
    MBE_UNDEFINED = 1,
    MBE_SCF_NOT_CONVERGED = 2,
    MBE_FAILED = 3
};
#define MBE_N_STATUS 4

/* "COMPLETED", ...; "INVALID" for values outside the enum. */
const char *mbe_status_name(int64_t status);

/* ----------------------------------------------------------- string lists */

typedef struct mbe_strlist {
    char **v;
    size_t n;
} mbe_strlist;

int mbe_strlist_push(mbe_strlist *l, const char *s, mbe_err *e);
void mbe_strlist_free(mbe_strlist *l);

/* ------------------------------------------------------ frame selection */

/* A set of 0-based frame indices, sorted ascending, without repeats. */
typedef struct mbe_frames {
    int64_t *idx;
    size_t n;
    size_t cap;
} mbe_frames;

/* Parse "0-99,120,200-210" (0-based, inclusive).  n_frames >= 0 bounds the
 * indices; pass a negative n_frames to skip the bound check.  Refuses empty
 * specs, negative numbers, reversed ranges, overlaps and repeats, overflow
 * and stray characters, with a message naming the offending part.  out is
 * overwritten (left empty on failure); out NULL checks without allocating.
 * Selections hold at most 2^31 frames. */
int mbe_frames_parse(const char *spec, int64_t n_frames, mbe_frames *out,
                     mbe_err *e);
/* 0 .. n-1 */
int mbe_frames_all(int64_t n, mbe_frames *out, mbe_err *e);
/* Copy of src. */
int mbe_frames_copy(const mbe_frames *src, mbe_frames *out, mbe_err *e);
/* Append one index larger than every index already held. */
int mbe_frames_push(mbe_frames *f, int64_t idx, mbe_err *e);
/* Compact spec of the set ("0-99,120"); "" for the empty set.  Malloc'd,
 * NULL only when out of memory. */
char *mbe_frames_format(const mbe_frames *f);
/* Position of frame idx in f, or -1. */
ptrdiff_t mbe_frames_find(const mbe_frames *f, int64_t idx);
void mbe_frames_free(mbe_frames *f);

/* Frame indices in the order they were given, without repeats: the pool
 * that --chunk splits.  The package splits its selected frames as given
 * and sorts only each job's piece, so the order decides who gets what. */
typedef struct mbe_frame_list {
    int64_t *idx;
    size_t n;
} mbe_frame_list;

/* As mbe_frames_parse (same syntax and refusals, repeats and overlaps
 * included), but the frames stay in the order written: "5-7,0" is 5, 6,
 * 7, 0.  out is left empty on failure. */
int mbe_frame_list_parse(const char *spec, int64_t n_frames,
                         mbe_frame_list *out, mbe_err *e);
/* 0 .. n-1 */
int mbe_frame_list_all(int64_t n, mbe_frame_list *out, mbe_err *e);
void mbe_frame_list_free(mbe_frame_list *l);

/* "I/N" with 1 <= I <= N. */
int mbe_chunk_parse(const char *s, int64_t *i, int64_t *n, mbe_err *e);
/* The frames of job i of n (1-based): piece i of pool split like
 * numpy.array_split (the first len % n pieces one frame longer; pieces
 * may be empty when n > len), then sorted into a set.  A frame twice in
 * the piece, or a negative one, is refused.  out is left empty on
 * failure. */
int mbe_frame_list_chunk(const mbe_frame_list *pool, int64_t i, int64_t n,
                         mbe_frames *out, mbe_err *e);
/* I and N of this task of a SLURM job array, from SLURM_ARRAY_TASK_ID,
 * _MIN, _MAX, _STEP and _COUNT (read with getenv). */
int mbe_chunk_from_slurm(int64_t *i, int64_t *n, mbe_err *e);
/* Keep only the frames whose status (status[k] belongs to f->idx[k]) is not
 * COMPLETED. */
void mbe_frames_drop_completed(mbe_frames *f, const int64_t *status);

/* ------------------------------------------------------------------ lock */

/* Called while a lock is being waited for: once when the first attempt
 * fails, then about every few seconds.  waited is in seconds. */
typedef void (*mbe_wait_fn)(void *ud, const char *lock_path, double waited);

typedef struct mbe_lock_opts {
    double timeout;      /* seconds; <= 0 means one attempt only */
    mbe_wait_fn on_wait; /* may be NULL */
    void *ud;
} mbe_lock_opts;

#define MBE_LOCK_TIMEOUT_DEFAULT 300.0

typedef struct mbe_lock {
    int fd;              /* -1 when not held */
    char *path;          /* "<master>.lock", the master's path as given */
    int real_fd;         /* the lock of the file a symbolic link names */
    char *real_path;     /* "<resolved master>.lock"; NULL when the master
                            is not a symbolic link */
} mbe_lock;

/* Flags of mbe_lock_acquire; 0 is the shared lock of a master that must
 * exist. */
#define MBE_LOCK_EXCLUSIVE 1
#define MBE_LOCK_NEW_MASTER 2 /* the master may be missing (it is about to
                                 be created) */

/* flock() <master_path>.lock, shared or exclusive, polling until
 * opts->timeout; the lock file is created when missing and must not be a
 * symbolic link.  The master must be a regular file (or, with
 * MBE_LOCK_NEW_MASTER, missing): no lock file is made for a path that
 * names nothing, and one this call made is removed again when the master
 * is gone once the lock is held.  A master that is a symbolic link is
 * locked under both names, as the package locks the name it is given:
 * "<resolved>.lock" first, then "<master_path>.lock", within the one
 * time-out.  Returns MBE_ETIMEOUT when the time-out passed. */
int mbe_lock_acquire(const char *master_path, int flags,
                     const mbe_lock_opts *opts, mbe_lock *out, mbe_err *e);
void mbe_lock_release(mbe_lock *l);

/* Whether master (a path as given) has the file name of recorded (a shard's
 * master_file): the same name as given or as the symbolic link master
 * resolves to.  Programs refuse another name unless told the master was
 * renamed or copied (--allow-renamed); the fingerprints decide then. */
int mbe_master_name_matches(const char *recorded, const char *master);

/* ------------------------------------------------------ geometry of frames */

/* Geometry of some frames of a Structure, all arrays frame-major. */
typedef struct mbe_geometry {
    size_t n;                 /* frames held */
    int64_t n_atoms;
    int64_t *index;           /* [n] frame indices in the master */
    double *positions;        /* [n][n_atoms][3], Å */
    int64_t *atomic_numbers;  /* [n][n_atoms] */
    double *masses;           /* [n][n_atoms], u */
    int periodic;
    double *cells;            /* [n][3][3], rows are lattice vectors, Å;
                                 NULL when not periodic */
} mbe_geometry;

/* One frame, as a calculator sees it (pointers into an mbe_geometry). */
typedef struct mbe_frame_view {
    int64_t index;
    int64_t n_atoms;
    const int64_t *atomic_numbers;
    const double *positions;
    const double *cell;       /* NULL when not periodic */
} mbe_frame_view;

void mbe_geometry_frame(const mbe_geometry *g, size_t k, mbe_frame_view *v);
void mbe_geometry_free(mbe_geometry *g);
/* crc32 (zlib) over one frame's positions, atomic numbers and cell, as
 * little-endian IEEE doubles / int64: the fingerprint shards keep. */
uint32_t mbe_frame_fingerprint(const mbe_frame_view *v);

/* --------------------------------------------------------------- elements */

/* 0 when sym is not an element symbol (case as in the periodic table). */
int mbe_element_z(const char *sym);
/* NULL outside 1..118. */
const char *mbe_element_symbol(int z);
/* Standard atomic weight in u as ASE uses it; NaN outside 1..118. */
double mbe_element_mass(int z);

/* ----------------------------------------------------------------- master */

typedef struct mbe_master mbe_master;

/* Open a master read-only under a shared lock on <path>.lock (writable:
 * read-write under the exclusive lock).  key NULL: the only frame-holding
 * group in the file (Structure, Trajectory, or a FiniteSubsystem's
 * cluster_of_molecules); several: an error listing them.  Checks the
 * group's layout; every inconsistency names file, key and dataset. */
int mbe_master_open(const char *path, const char *key, int writable,
                    const mbe_lock_opts *lk, mbe_master **out, mbe_err *e);
/* Before a master is read in process: when its superblock is older than
 * version 2 (h5py's and mbe-import's masters: no checksums), every piece
 * of its metadata is read in a child process first (master_probe.c,
 * mbe-shard(5) "Damaged files").  Fails with one line when libhdf5
 * crashed, hung (MBE_PROBE_TIMEOUT) or met damaged metadata there;
 * returns 0 also when the file cannot be opened at all (the open that
 * follows says why).  mbe_master_open and mbe_list_frame_groups call it
 * under their lock; a caller holding the lock across many opens calls it
 * once and opens with mbe_master_open_checked. */
int mbe_master_check(const char *path, mbe_err *e);
/* mbe_master_open without mbe_master_check, for a caller that holds the
 * master's lock (mbe_lock_acquire) and checked it under that lock: one
 * check for every group, not one walk of the file per group. */
int mbe_master_open_checked(const char *path, const char *key, int writable,
                            const mbe_lock_opts *lk, mbe_master **out,
                            mbe_err *e);
/* Close the file, then release the lock.  Returns an error if the final
 * flush failed (writable masters). */
int mbe_master_close(mbe_master *m, mbe_err *e);

const char *mbe_master_path(const mbe_master *m);
/* Key of the frame-holding group (for a FiniteSubsystem, ends in
 * /cluster_of_molecules). */
const char *mbe_master_key(const mbe_master *m);
int64_t mbe_master_n_frames(const mbe_master *m);
int64_t mbe_master_n_atoms(const mbe_master *m);
int mbe_master_periodic(const mbe_master *m);

/* Spellings of Å in dataset names ("positions (Å)"): the package writes
 * U+212B ANGSTROM SIGN; mbe-shard 0.2 and older wrote U+00C5.  Bits. */
enum mbe_spelling {
    MBE_SPELL_NONE = 0,
    MBE_SPELL_PACKAGE = 1,  /* U+212B */
    MBE_SPELL_0_2 = 2       /* U+00C5 */
};
/* The spellings the group's positions and cell_vectors use. */
int mbe_master_spelling(const mbe_master *m);

/* Keys of every frame-holding group in an open master's file. */
int mbe_master_list_groups(mbe_master *m, mbe_strlist *keys, mbe_err *e);
/* Same, for a file given by path (shared lock while reading). */
int mbe_list_frame_groups(const char *path, const mbe_lock_opts *lk,
                          mbe_strlist *keys, mbe_err *e);

/* Geometry of the frames in sel only (hyperslab reads). */
int mbe_master_read_geometry(mbe_master *m, const mbe_frames *sel,
                             mbe_geometry *g, mbe_err *e);
/* Levels of theory listed in ground_truth's levels_of_theory (sorted). */
int mbe_master_levels(mbe_master *m, mbe_strlist *levels, mbe_err *e);
/* Stored status of the frames in sel for a level: UNDEFINED for every frame
 * when the level is absent, COMPLETED for a legacy level (results, no
 * status dataset).  Listed in levels_of_theory or not: what the files
 * hold, as the package's update rule reads it. */
int mbe_master_read_status(mbe_master *m, const char *level,
                           const mbe_frames *sel, int64_t *status,
                           mbe_err *e);

/* How the package's choice of frames to compute sees a level of theory
 * (api/classes.py, _completed_frames). */
typedef enum mbe_level_view {
    MBE_LEVEL_LISTED,    /* in levels_of_theory: its stored status */
    MBE_LEVEL_GENERATOR, /* the group's level_of_theory attribute (the
                            model that generated the geometries): every
                            frame COMPLETED, whatever is stored */
    MBE_LEVEL_ABSENT,    /* not listed, nothing stored: every frame
                            UNDEFINED */
    MBE_LEVEL_HIDDEN     /* not listed but with datasets in ground_truth,
                            which the package does not see: every frame
                            UNDEFINED */
} mbe_level_view;

int mbe_master_level_view(mbe_master *m, const char *level,
                          mbe_level_view *view, mbe_err *e);
/* Status of the frames in sel for a level as that choice sees it (see
 * mbe_level_view): what decides which frames a job computes and which are
 * missing. */
int mbe_master_read_visible_status(mbe_master *m, const char *level,
                                   const mbe_frames *sel, int64_t *status,
                                   mbe_err *e);

/* Energies (eV/atom) of the frames in sel for a level; NaN where the level
 * holds none. */
int mbe_master_read_energies(mbe_master *m, const char *level,
                             const mbe_frames *sel, double *energy,
                             mbe_err *e);

/* Write a Structure group at key in the master layout (file created when
 * missing) under the exclusive lock.  An existing key is an error unless
 * overwrite, which deletes the old group first. */
int mbe_master_write_structure(const char *path, const char *key,
                               const mbe_geometry *g, int overwrite,
                               const mbe_lock_opts *lk, mbe_err *e);

/* -------------------------------------------------------- many keys */

/* Whether a -k argument is a shell pattern (holds '*', '?' or '['). */
int mbe_key_is_pattern(const char *key);
/* The keys one job covers: for each of opts in order, the key itself or,
 * for a pattern, every group of groups (the frame-holding groups, sorted
 * as mbe_list_frame_groups gives them) it matches with fnmatch(3) ('*'
 * matches '/' too); then with all every group.  A key selected twice
 * keeps its first place; a pattern that matches nothing is an error.
 * Plain keys are not looked up here (mbe_master_open does it). */
int mbe_keys_select(const mbe_strlist *groups, const mbe_strlist *opts,
                    int all, mbe_strlist *out, mbe_err *e);
/* A frame spec as users write it in files: over several lines (a line
 * break separates like ','), blanks around ',' and '-' and at line ends
 * dropped.  Malloc'd; NULL when out of memory. */
char *mbe_spec_normalize(const char *text);
/* Whether a spec is keyed: lines "KEY: SPEC", one per key (mbe-status
 * --missing over several keys prints this form). */
int mbe_spec_is_keyed(const char *text);
/* Frame specs of each of keys from text: a keyed spec gives each key its
 * line ("" for keys it does not name; a key not in keys, or named twice,
 * is an error); a plain spec applies to every key.  specs->n == keys->n,
 * each normalized. */
int mbe_keyed_spec_split(const char *text, const mbe_strlist *keys,
                         mbe_strlist *specs, mbe_err *e);
/* Piece i of n (1-based) of the pool of (key, frame) pairs: the frames of
 * lists[0] in their order, then those of lists[1], ..., split like
 * numpy.array_split; out[k] (n_keys of them) gets key k's frames of the
 * piece, sorted.  All are left empty on failure. */
int mbe_pool_chunk(const mbe_frame_list *lists, size_t n_keys, int64_t i,
                   int64_t n, mbe_frames *out, mbe_err *e);
/* Name of the shard of the i-th key of a job over several keys:
 * "out.h5" -> "out.k0003.h5" (".k0003" appended when out has no .h5).
 * Malloc'd; NULL when out of memory. */
char *mbe_key_shard_path(const char *shard, size_t i);

/* The keys of one job, as the master names them, and each one's frames. */
typedef struct mbe_pool {
    mbe_strlist keys;     /* in pool order; a FiniteSubsystem's ends in
                             /cluster_of_molecules */
    int64_t *n_frames;    /* [keys.n] frames of each group */
    mbe_frames *pieces;   /* [keys.n] this job's frames of each key, sorted
                             (mbe_pool_plan only; NULL otherwise) */
} mbe_pool;

/* Keys of master selected by opts and all (mbe_keys_select), each opened
 * (shared lock) for its name and size; one group selected twice under
 * two names is an error. */
int mbe_pool_keys(const char *master, const mbe_strlist *opts, int all,
                  const mbe_lock_opts *lk, mbe_pool *out, mbe_err *e);
/* Same, and the piece i of n of the pool: frames (NULL: every frame of
 * every key; else plain or keyed, mbe_keyed_spec_split) give each key's
 * frames in their order, then mbe_pool_chunk. */
int mbe_pool_plan(const char *master, const mbe_strlist *opts, int all,
                  const char *frames, int64_t i, int64_t n,
                  const mbe_lock_opts *lk, mbe_pool *out, mbe_err *e);
void mbe_pool_free(mbe_pool *p);

/* ------------------------------------------------------------------- XYZ */

/* Read an XYZ or extended-XYZ trajectory (ASE conventions: Lattice="..."
 * makes a frame periodic, pbc, Properties=species:S:1:pos:R:3:...).  Every
 * frame must have the same number of atoms and the same periodicity.
 * g->index is 0..n-1. */
int mbe_xyz_read(const char *path, mbe_geometry *g, mbe_err *e);

/* ------------------------------------------------------------ calculators */

typedef struct mbe_calc mbe_calc;

/* Settings of every calculator; each uses the ones it knows. */
typedef struct mbe_calc_opts {
    double charge;       /* total charge, e */
    int uhf;             /* unpaired electrons */
    double accuracy;     /* xtb accuracy (1.0) */
    double etemp;        /* electronic temperature, K (300) */
    int max_iter;        /* SCF iterations (250) */
    double lj_epsilon;   /* eV */
    double lj_sigma;     /* Å */
    double lj_cutoff;    /* Å; <= 0: no cut-off (molecules only) */
    /* External engines (ipi:, exec:). */
    double connect_timeout; /* s an i-PI engine has to connect (60) */
    double frame_timeout;   /* s one frame may take; 0: no limit (0) */
    double ipi_box;         /* Å, edge of the cubic box sent to an i-PI
                               engine for non-periodic frames (50) */
    const char *engine;     /* ipi: command started after binding; NULL:
                               the engine is started by someone else */
    const char *engine_log; /* file the started engine's output goes to;
                               NULL: /dev/null */
    const int64_t *engine_atoms; /* ipi: atomic numbers of the engine's
                                    atoms in its order; NULL: those of the
                                    first frame computed */
    int64_t n_engine_atoms;
    /* ipi:HOST:PORT may listen on other than loopback addresses ("*",
     * a host's name) and accept engines on other hosts (0). */
    int ipi_remote;
    /* CODATA version of the Bohr and Hartree the i-PI engine converts
     * with: 2018 (default) or 2014 (ASE 3.22's SocketClient). */
    int ipi_codata;
    /* ase: the engine program (libexec/mbe-shard/mbe-ase-engine), run
     * with $MBE_PYTHON or python3. */
    const char *ase_engine;
    /* Things worth one line to the user that are not errors (a client
     * refused by the i-PI server).  May be NULL. */
    void (*notice)(void *ud, const char *msg);
    void *notice_ud;
    /* Signal flag of the caller: when it becomes non-zero, waits for an
     * engine or a command are abandoned and compute returns MBE_EINTR.
     * May be NULL. */
    volatile sig_atomic_t *stop;
} mbe_calc_opts;

void mbe_calc_opts_default(mbe_calc_opts *o);

/* Command-line options of the calculators, each a setting of
 * mbe_calc_opts that its calculators list in their tables: a program
 * offers them all (getopt_long rows, --help) without naming any. */
typedef enum mbe_calc_opt_kind {
    MBE_CALC_OPT_NUMBER,    /* double: a finite number */
    MBE_CALC_OPT_INTEGER,   /* int */
    MBE_CALC_OPT_SECONDS,   /* double: a finite number >= 0 */
    MBE_CALC_OPT_POSITIVE_SECONDS, /* double: a finite number > 0 */
    MBE_CALC_OPT_FLAG,      /* int set to 1; the option takes no value */
    MBE_CALC_OPT_STRING,    /* const char *: the value itself, not copied */
    /* A file the program reads into settings (--engine-atoms: an XYZ file
     * whose first frame's atoms become engine_atoms).  Reading files is
     * the program's, so there is no field: offset is 0 and
     * mbe_calc_option_set refuses it. */
    MBE_CALC_OPT_FILE
} mbe_calc_opt_kind;

typedef struct mbe_calc_option {
    const char *name;      /* long option without "--" */
    mbe_calc_opt_kind kind;
    size_t offset;         /* of its field in mbe_calc_opts */
    const char *arg_name;  /* the value in --help ("S"); NULL for flags */
    /* --help text: lines without newline at the end, '\n' between. */
    const char *help;
    /* What the kind does not say about a good value (NULL: nothing),
     * called with o holding it: 0, or negative with the reason in e, e.g.
     * "'2015' is not 2014 or 2018". */
    int (*check)(const char *value, const mbe_calc_opts *o, mbe_err *e);
} mbe_calc_option;

/* The i-th option of all calculators, in the order of the calculators and
 * of their tables, each name once (several calculators share
 * --frame-timeout); NULL past the last. */
const mbe_calc_option *mbe_calc_option_at(size_t i);
/* Store value (NULL for a flag) in opt's field of o.  A malformed value
 * leaves o as it was and fails with e as "--NAME: 'VALUE' is not a
 * number" (an integer, a number of seconds, a positive number of seconds,
 * or what the row's check says). */
int mbe_calc_option_set(const mbe_calc_option *opt, const char *value,
                        mbe_calc_opts *o, mbe_err *e);

/* "gfn2-xtb", "gfn1-xtb", "gfn-ff", "lj", and the external engines
 * "ipi:NAME" (i-PI server on the UNIX socket /tmp/ipi_NAME),
 * "ipi:HOST:PORT" (i-PI server on TCP), "exec:COMMAND" (COMMAND run
 * through /bin/sh for each frame, extended XYZ in and out) and
 * "ase:MODULE:CALL" (the ASE calculator CALL of MODULE in our engine,
 * o->ase_engine).  The strings of o are copied. */
int mbe_calc_new(const char *name, const mbe_calc_opts *o, mbe_calc **out,
                 mbe_err *e);
/* What mbe_calc_new checks before it starts anything: a known name, its
 * argument, and the values of o (NULL: the defaults).  Programs call it
 * while they read their arguments, so that a mistyped calculator is a
 * usage error. */
int mbe_calc_check(const char *name, const mbe_calc_opts *o, mbe_err *e);
/* Whether the calculator is an external engine (ipi:, exec:), whose level
 * of theory only its user knows. */
int mbe_calc_external(const mbe_calc *c);
/* Canonical name. */
const char *mbe_calc_name(const mbe_calc *c);
/* The default level of theory, malloc'd into *level: the name of a
 * built-in calculator, the level_of_theory attribute of an ase:
 * calculator (its engine is started to learn it), NULL when there is none
 * (ipi:, exec:, an ase: calculator without one). */
int mbe_calc_default_level(mbe_calc *c, char **level, mbe_err *e);
/* Every setting as "key=value" lines, for the shard's provenance.
 * Malloc'd; NULL when out of memory. */
char *mbe_calc_settings(const mbe_calc *c);
/* Whether two such settings texts describe one method: the same
 * calculator ("method=" line) and the same settings but for those that
 * only say how to reach an engine or how long to wait (address, engine,
 * time-outs).  A job is resumed, and shards of one level merged, only
 * when they are. */
int mbe_calc_same_method(const char *settings_a, const char *settings_b);
/* The settings that make the method, on one line ("method=lj lj_sigma=3.4
 * ..."), for messages.  Malloc'd; NULL when out of memory. */
char *mbe_calc_method(const char *settings);
/* Compute one frame: total energy in eV and forces (minus the gradient) in
 * eV/Å, [n_atoms][3].  Returns the frame's status (MBE_COMPLETED,
 * MBE_SCF_NOT_CONVERGED or MBE_FAILED, the latter two with e filled), or a
 * negative rc when the calculator itself is unusable from now on
 * (MBE_EINTR: abandoned because opts.stop was set; the frame has no
 * result). */
int mbe_calc_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                     double *forces, mbe_err *e);
void mbe_calc_free(mbe_calc *c);

/* ------------------------------------------------------------------ shard */

/* Provenance of a shard (mbe-shard(5)); every string may be "" but not
 * NULL once read back. */
typedef struct mbe_shard_meta {
    char *master_file;     /* absolute path of the master when computed */
    char *key;             /* frame-holding group */
    int64_t n_frames;      /* of the master's group */
    int64_t n_atoms;
    char *level;           /* level of theory */
    char *selection;       /* requested frames before skipping completed */
    char *calculator;
    char *calc_settings;   /* "key=value" lines */
    char *tool_version;
    char *host;
    char *slurm_job_id;
    char *slurm_array_job_id;
    char *slurm_array_task_id;
    char *shard_id;        /* 32 lowercase hex digits, unique */
    char *start_time;      /* ISO 8601 UTC */
    int no_forces;         /* energies only (mbe-compute --no-forces): no
                              forces dataset, shard format version 3 */
    int64_t startup_ms;    /* ms the job took before its first frame: the
                              calculator's set-up (xtb's parametrisation,
                              an engine started) and the master's read;
                              -1 when unknown (attribute absent) */
} mbe_shard_meta;

void mbe_shard_meta_free(mbe_shard_meta *m);
/* A fresh random shard id (32 hex digits + NUL). */
int mbe_shard_new_id(char out[33], mbe_err *e);

/* crc32 of one frame's results: status (int64 LE), energy per atom
 * (double LE), forces (n_atoms*3 doubles LE), in that order; a shard
 * without forces passes n_atoms 0. */
uint32_t mbe_result_crc(int64_t status, double energy_per_atom,
                        const double *forces, int64_t n_atoms);

typedef struct mbe_shard mbe_shard;

/* Temporary name a shard has while being computed: "<path>.part". */
char *mbe_shard_part_path(const char *path);

/* Create <path>.part holding every frame of frames as UNDEFINED, with
 * geometry fingerprints geom_crc[k] for frames->idx[k]; durable on
 * return. */
int mbe_shard_create(const char *path, const mbe_shard_meta *meta,
                     const mbe_frames *frames, const uint32_t *geom_crc,
                     mbe_shard **out, mbe_err *e);
/* A shard of several keys (a bundle, shard format 4): member i holds
 * frames[i] of the group meta[i].key, with fingerprints geom_crc[i]
 * (NULL when frames[i] is empty); 1 <= n <= 65535.  Each member is a shard
 * of its own to readers and mbe-merge (its own shard_id); they share one
 * file, one .part and one finish.  The calls below act on the selected
 * member (mbe_shard_select; 0 at first). */
int mbe_shard_create_bundle(const char *path, size_t n,
                            const mbe_shard_meta *meta,
                            const mbe_frames *frames,
                            const uint32_t *const *geom_crc,
                            mbe_shard **out, mbe_err *e);
/* Reopen an unfinished <path>.part (or a finished <path>) to continue it;
 * every member of a bundle. */
int mbe_shard_resume(const char *path, mbe_shard **out, mbe_err *e);
/* Members of the shard: 1 unless a bundle. */
size_t mbe_shard_members(const mbe_shard *s);
int mbe_shard_select(mbe_shard *s, size_t member, mbe_err *e);
const mbe_shard_meta *mbe_shard_meta_of(const mbe_shard *s);
const mbe_frames *mbe_shard_frames(const mbe_shard *s);
/* The geometry fingerprints stored at creation, one per frame. */
const uint32_t *mbe_shard_geom_crc(const mbe_shard *s);
/* Stored status of the k-th frame of the shard. */
int64_t mbe_shard_status(const mbe_shard *s, size_t k);
/* Store the k-th frame's result (energy per atom, eV; forces eV/Å; both
 * ignored unless COMPLETED, then NaN is stored) and its crc; durable on
 * return when durable is non-zero, else at the next mbe_shard_sync. */
int mbe_shard_put(mbe_shard *s, size_t k, int64_t status,
                  double energy_per_atom, const double *forces, int durable,
                  mbe_err *e);
int mbe_shard_sync(mbe_shard *s, mbe_err *e);
/* Record the end time, make durable, close, rename <path>.part to path and
 * sync the directory.  s is freed in every case. */
int mbe_shard_finish(mbe_shard *s, mbe_err *e);
/* Make durable and close, leaving <path>.part for a later resume.  s is
 * freed in every case. */
int mbe_shard_close(mbe_shard *s, mbe_err *e);

/* Reading shards, with memory bounded by the caller's buffers. */
typedef struct mbe_shard_reader mbe_shard_reader;

/* The shard, or member 0 of a bundle. */
int mbe_shard_open(const char *path, mbe_shard_reader **out, mbe_err *e);
/* Member i of a bundle (0 of any other shard): a reader of its own. */
int mbe_shard_open_member(const char *path, size_t member,
                          mbe_shard_reader **out, mbe_err *e);
/* Members of the file the reader read (1 unless a bundle). */
size_t mbe_shard_reader_members(const mbe_shard_reader *r);
size_t mbe_shard_reader_member(const mbe_shard_reader *r);
int mbe_shard_reader_is_bundle(const mbe_shard_reader *r);
/* How messages name it: the path, "<path>:/<i>" for member i of a bundle
 * (the HDF5 group that holds it). */
const char *mbe_shard_reader_name(const mbe_shard_reader *r);
const mbe_shard_meta *mbe_shard_reader_meta(const mbe_shard_reader *r);
/* Whether the shard was finished (renamed) or left by an unfinished job. */
int mbe_shard_reader_finished(const mbe_shard_reader *r);
/* Whether a running mbe-compute was writing it when it was opened (the
 * reader then sees the frames finished so far). */
int mbe_shard_reader_running(const mbe_shard_reader *r);
/* End time ("" when unfinished). */
const char *mbe_shard_reader_end_time(const mbe_shard_reader *r);
/* Frames, status, energies, crcs and geometry fingerprints, all of length
 * n = number of frames of the shard (8 bytes a frame each). */
const mbe_frames *mbe_shard_reader_frames(const mbe_shard_reader *r);
const int64_t *mbe_shard_reader_status(const mbe_shard_reader *r);
const double *mbe_shard_reader_energy(const mbe_shard_reader *r);
const uint32_t *mbe_shard_reader_crc(const mbe_shard_reader *r);
const uint32_t *mbe_shard_reader_geom_crc(const mbe_shard_reader *r);
/* Whether the shard holds forces (mbe_shard_meta.no_forces: not). */
int mbe_shard_reader_has_forces(const mbe_shard_reader *r);
/* Forces of shard frames [k0, k0+count) into buf [count][n_atoms][3];
 * an error for a shard without forces. */
int mbe_shard_read_forces(mbe_shard_reader *r, size_t k0, size_t count,
                          double *buf, mbe_err *e);
/* Close the shard's HDF5 file and keep what was read: the arrays above stay
 * valid, and mbe_shard_read_forces reads with pread at the forces' offset
 * from one plain descriptor, so that a reader holds no HDF5 cache.  Only
 * for forces stored contiguous (what mbe-compute writes); returns whether
 * the reader is detached (0: it keeps the HDF5 file open, e.g. a shard
 * rewritten by h5py with chunks, or a version 1 shard). */
int mbe_shard_reader_detach(mbe_shard_reader *r);
/* Close that descriptor too: each read then opens the file by its path,
 * and refuses a file renamed over it since it was opened.  Thousands of
 * shards then hold no descriptor at all. */
void mbe_shard_reader_release_fd(mbe_shard_reader *r);
/* Check every frame's crc (forces read in blocks of at most buf_bytes).
 * Returns 0 when all match; otherwise MBE_EFAIL with the count and the
 * first bad frames in the message. */
int mbe_shard_verify(mbe_shard_reader *r, size_t buf_bytes, mbe_err *e);
/* Check the crc of every frame that needs no forces read: frames without
 * results (their forces are NaN), and every frame of a shard without
 * forces.  COMPLETED frames of a shard with forces are checked as their
 * forces are read (mbe_shard_check_row): mbe-merge reads each shard once. */
int mbe_shard_check_rows(const mbe_shard_reader *r, mbe_err *e);
/* 0 when frame k is COMPLETED with finite forces (just read) whose crc is
 * the stored one; -1 when the crc differs, -2 when it matches forces that
 * are not finite (a file not written by mbe-compute). */
int mbe_shard_check_row(const mbe_shard_reader *r, size_t k,
                        const double *forces);
void mbe_shard_reader_close(mbe_shard_reader *r);

/* ---------------------------------------------------------- programs */

/* First call of a program.  A close that fails (a full disk, EIO) leaves
 * the file in HDF5's table, and HDF5's own clean-up at exit would close it
 * again and crash; every mbe_ function closes what it opens, so programs
 * skip that clean-up and exit with their one-line error instead. */
void mbe_init(void);

/* ------------------------------------------------------------------ merge */

enum mbe_prefer {
    MBE_PREFER_NONE = 0,   /* differing COMPLETED results are a conflict */
    MBE_PREFER_FIRST,      /* the first shard (command-line order) wins */
    MBE_PREFER_LAST        /* the last one wins */
};

typedef void (*mbe_step_fn)(void *ud, const char *what, size_t done,
                            size_t total);

typedef struct mbe_merge_opts {
    int prefer;            /* enum mbe_prefer */
    int skip_invalid;      /* apply the valid shards, report the others */
    int dry_run;           /* plan and report, write nothing */
    int allow_mixed;       /* merge shards of one level computed with
                              different methods (settings) */
    int allow_renamed;     /* accept shards computed for a master of
                              another file name (a copy, a renamed file)
                              when key, shape and geometry match */
    size_t buf_bytes;      /* I/O buffer; 0: MBE_MERGE_BUF_DEFAULT */
    mbe_lock_opts lock;
    mbe_step_fn on_step;   /* progress, may be NULL */
    void *ud;
} mbe_merge_opts;

/* As fast as a larger buffer, and keeps a merge's peak memory within the
 * issue's bound (bench/RESULTS.md, "Memory"). */
#define MBE_MERGE_BUF_DEFAULT (8u << 20)

/* What happened to one shard. */
typedef struct mbe_merge_shard {
    char *path;            /* the file, as given */
    char *name;            /* in messages: path, or "<path>:/<i>" for
                              member i of a shard of several keys */
    size_t member;         /* 0 unless a member of such a shard */
    char *shard_id;
    char *key;
    char *level;
    int valid;             /* 0: refused, error says why */
    char *error;
    int already_applied;   /* in the master's merge log before this run */
    size_t frames;         /* frames in the shard */
    size_t completed;      /* ... by status in the shard */
    size_t scf_not_converged;
    size_t failed;
    size_t undefined;
    size_t applied;        /* frames whose results or status were written */
    size_t kept;           /* not written: master already COMPLETED, or
                              another shard's result preferred */
    size_t earlier;        /* frames an earlier merge of this shard (a
                              previous stage of it) took: not applied
                              again */
    char *master_file;     /* set when the shard was computed for a master
                              of another name (allow_renamed): that one */
} mbe_merge_shard;

typedef struct mbe_merge_report {
    mbe_merge_shard *shards;
    size_t n_shards;
    mbe_strlist new_datasets;  /* "key: dataset" created by this run */
    mbe_strlist renamed;       /* "key: dataset" given the package's
                                  spelling of its name (0.2 names) */
    size_t frames_written;     /* distinct master frames written */
    size_t bytes_written;
    int recovered;             /* an interrupted merge was rolled back */
    int stopped;               /* ended at a damaged row of a refused
                                  shard (its error says so): verified
                                  results were written, no status */
    double lock_held_s;        /* the exclusive lock (every other writer
                                  of the master waited this long) */
} mbe_merge_report;

/* Validate every shard, then under the exclusive lock (taken once) apply
 * them to the master with the package's update rule.  Returns 0 on
 * success (also with skip_invalid and some shards refused: check
 * report.shards[i].valid); MBE_EFAIL when any shard is invalid (without
 * skip_invalid), on conflicts, or on I/O errors, with the master either
 * unchanged or finished by running the same merge again. */
int mbe_merge(const char *master, char *const *shards, size_t n_shards,
              const mbe_merge_opts *o, mbe_merge_report *r, mbe_err *e);
void mbe_merge_report_free(mbe_merge_report *r);

/* Give the 0.2 names (U+00C5, see enum mbe_spelling) of every
 * frame-holding group of a master the package's spelling, under the
 * exclusive lock and the undo journal; mbe_merge does the same for the
 * groups it writes.  Only o->lock, o->dry_run (list, change nothing) and
 * o->buf_bytes are used; "key: dataset" of each name is pushed to
 * renamed. */
int mbe_merge_convert_names(const char *master, const mbe_merge_opts *o,
                            mbe_strlist *renamed, mbe_err *e);
/* Drop the merge log of every frame-holding group (one that cannot be read
 * stops every merge), under the exclusive lock and the undo journal;
 * "key/ground_truth/mbe_merge_log" of each is pushed to dropped.  The log
 * is rebuilt as shards are merged again: the update rule gives the same
 * master for shards applied twice, except that an older stage of a shard
 * then applies its frames again over results merged since. */
int mbe_merge_reset_log(const char *master, const mbe_merge_opts *o,
                        mbe_strlist *dropped, mbe_err *e);

/* A shard recorded as applied in a master's merge log. */
typedef struct mbe_merge_log_entry {
    char *shard_id;
    char *level;
    char *time;            /* ISO 8601 UTC of the merge */
    char *path;            /* shard as mbe-merge named it (its name) */
    int64_t frames;
} mbe_merge_log_entry;

int mbe_master_merge_log(mbe_master *m, mbe_merge_log_entry **out,
                         size_t *n, mbe_err *e);
void mbe_merge_log_free(mbe_merge_log_entry *v, size_t n);
/* Whether an interrupted structural change of the master awaits roll-back
 * (run mbe-merge again). */
int mbe_master_needs_recovery(const char *path);

/* ---------------------------------------------------------------- compute */

/* What a compute job says: INFO lines are progress a quiet job drops,
 * ALERT lines (an interruption) are always shown. */
enum mbe_compute_say { MBE_COMPUTE_INFO = 0, MBE_COMPUTE_ALERT };
typedef void (*mbe_compute_say_fn)(void *ud, int kind, const char *msg);

/* The frames of one shard (member) as they are computed: BEGIN with the
 * number to compute, FRAME after each one is stored, END. */
enum mbe_compute_event { MBE_FRAMES_BEGIN = 0, MBE_FRAME_DONE,
                         MBE_FRAMES_END };
typedef struct mbe_compute_frame {
    int event;             /* enum mbe_compute_event */
    size_t n;              /* BEGIN: frames to compute */
    int64_t index;         /* FRAME: in the master */
    int status;            /* FRAME: enum mbe_status stored */
    double e_atom;         /* FRAME: eV/atom; NaN unless COMPLETED */
    double seconds;        /* FRAME: the calculator's time */
    const char *error;     /* FRAME: the calculator's words when not
                              COMPLETED */
} mbe_compute_frame;
typedef void (*mbe_compute_frame_fn)(void *ud, const mbe_compute_frame *f);

typedef struct mbe_compute_opts {
    const char *master;
    const char *output;        /* the shard */
    const char *key;           /* one key (NULL: the only group) */
    const mbe_strlist *keys;   /* several keys (patterns allowed): one
                                  shard of one member per key; NULL for
                                  one key */
    int all_keys;              /* with keys: every frame-holding group */
    const char *frames;        /* spec (keyed specs with keys); NULL: all */
    const char *chunk;         /* "I/N", "slurm" or NULL */
    const char *level;         /* level of the results */
    int overwrite;             /* also compute frames already COMPLETED */
    int no_forces;
    int allow_renamed;         /* continue a shard of a renamed master */
    mbe_lock_opts lock;
    double sync_interval;      /* seconds between fsyncs of quick frames */
    double t_start;            /* CLOCK_MONOTONIC seconds when the job
                                  began (the calculator's start counts in
                                  its start-up); 0: now */
    volatile sig_atomic_t *stop; /* set (to the signal) to stop: the shard
                                  keeps every stored frame; may be NULL */
    mbe_compute_say_fn on_say;     /* may be NULL */
    mbe_compute_frame_fn on_frame; /* may be NULL */
    void *ud;
} mbe_compute_opts;

typedef struct mbe_compute_report {
    size_t completed, failed;  /* frames computed, by outcome */
    double startup_s, frames_s, first_frame_s;
    const char *output;        /* the last shard written (opts->output, or
                                  a per-key shard of an 0.2 job); valid
                                  while opts is */
    int interrupted;           /* stopped by *opts->stop */
    const char *stage;         /* of an error: "lock", "cannot start",
                                  "computing", "closing the shard",
                                  "finishing the shard", or NULL */
} mbe_compute_report;

/* Compute the selected frames of the master into a private shard, created
 * or resumed (only by the job that made it: the same master, key, level,
 * frames, calculator and --no-forces, and the same geometry).  The master
 * is read under the shared lock only while the frames are read; every
 * frame is stored, durable within sync_interval.  With keys, the job's
 * piece of the (key, frame) pool goes into one shard of one member per key
 * (shard format 4), or into the shards of one key each that mbe-shard 0.2
 * began.  calc is freed (the engine stopped) before the shard is finished.
 * Returns 0 (failed frames are in the report), MBE_ETIMEOUT, MBE_EINTR
 * (the shard's .part keeps the frames) or MBE_EFAIL, with e and
 * report->stage. */
int mbe_compute(const mbe_compute_opts *o, mbe_calc *calc,
                mbe_compute_report *report, mbe_err *e);

/* ----------------------------------------------------------------- status */

/* What a master holds for one level of theory. */
typedef struct mbe_level_summary {
    char *level;
    int legacy;                     /* results without a status dataset */
    int has_energies, has_forces, has_status;  /* which datasets exist */
    int forces_spelling;            /* MBE_SPELL_* bits of the forces */
    int64_t n_frames;
    int64_t count[MBE_N_STATUS];    /* frames by status */
    double e_min, e_max;            /* eV/atom over COMPLETED frames; NaN
                                       when none */
} mbe_level_summary;

/* Count the frames of a level by stored status (mbe_master_read_status),
 * reading in bounded blocks. */
int mbe_master_summarize(mbe_master *m, const char *level,
                         mbe_level_summary *out, mbe_err *e);
void mbe_level_summary_free(mbe_level_summary *s);

/* What a shard (member) holds: its frames by stored status. */
typedef struct mbe_shard_summary {
    int64_t count[MBE_N_STATUS];    /* frames by status */
    double e_min, e_max;            /* eV/atom over COMPLETED frames with a
                                       finite energy; NaN when none */
} mbe_shard_summary;

/* The twin of mbe_master_summarize for what the reader has read. */
void mbe_shard_summarize(const mbe_shard_reader *r, mbe_shard_summary *out);
/* Frames of a level whose visible status (mbe_master_read_visible_status)
 * is in the set given by want[status] (e.g. every status but COMPLETED for
 * "missing"). */
int mbe_master_frames_with_status(mbe_master *m, const char *level,
                                  const int want[MBE_N_STATUS],
                                  mbe_frames *out, mbe_err *e);

/* How --missing and --failed of mbe-status choose frames. */
typedef struct mbe_missing_opts {
    const char *level;
    int undefined;          /* UNDEFINED frames too (missing); else only
                               FAILED and SCF_NOT_CONVERGED (failed) */
    mbe_lock_opts lock;
    /* Called for each group once it is open, with the group's name as the
     * master names it and how the package sees the level there, before
     * its frames are read: a caller explains a view other than
     * MBE_LEVEL_LISTED, in the order of the lock's waits.  May be NULL. */
    void (*on_view)(void *ud, const char *key, mbe_level_view view);
    void *ud;
} mbe_missing_opts;

/* The spec (mbe_frames_format; "" when none; the caller frees it, NULL
 * on failure) of the frames of group key (NULL: the only one) whose
 * visible status o selects, read under the shared lock.  MBE_ERECOVERY
 * while an interrupted merge awaits recovery: the recovery may bring back
 * frames that now look done. */
int mbe_master_missing(const char *path, const char *key,
                       const mbe_missing_opts *o, char **spec, mbe_err *e);
/* Same over the keys of a pool (mbe_pool_keys with keys and all): one
 * "KEY: SPEC" line for each key with frames (mbe-compute(1) reads them
 * back with the same key options), joined by newlines; "" when none has
 * any. */
int mbe_master_missing_keyed(const char *path, const mbe_strlist *keys,
                             int all, const mbe_missing_opts *o,
                             char **spec, mbe_err *e);

#endif
