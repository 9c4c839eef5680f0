/* master_write.c - writing a Structure group into a master, byte for byte
 * as mbe_automation.storage does through h5py (master-format.md). */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5compat.h"
#include "mbe_internal.h"

/* ---------------------------------------------------------- validation */

static int check_key(const char *key, mbe_err *e)
{
    const char *k = key && key[0] == '/' ? key + 1 : key;
    if (!k || !*k)
        return mbe_fail(e, "empty key");
    /* Each component must be a plain name: HDF5 would read "a//b" as
     * "a/b" and "." as the group itself, so the key would not name the
     * group that readers look up. */
    for (const char *p = k; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') ||
            (n == 2 && p[0] == '.' && p[1] == '.'))
            return mbe_fail(e, "bad key '%s': empty, '.' or '..' component",
                            key);
        p += n;
        if (*p == '/' && !*++p)
            return mbe_fail(e, "bad key '%s': ends in '/'", key);
    }
    return 0;
}

static int check_frames(const mbe_geometry *g, mbe_err *e)
{
    size_t na = (size_t)g->n_atoms;
    for (size_t k = 0; k < g->n; k++) {
        for (size_t i = 0; i < na; i++) {
            const double *p = g->positions + (k * na + i) * 3;
            int64_t z = g->atomic_numbers[k * na + i];
            double m = g->masses[k * na + i];
            if (!isfinite(p[0]) || !isfinite(p[1]) || !isfinite(p[2]))
                return mbe_fail(e, "frame %zu, atom %zu: non-finite position",
                                k, i);
            if (z < 1 || z > 118)
                return mbe_fail(e, "frame %zu, atom %zu: atomic number %lld "
                                "outside 1-118", k, i, (long long)z);
            if (!isfinite(m) || m <= 0)
                return mbe_fail(e, "frame %zu, atom %zu: bad mass %g", k, i,
                                m);
        }
        for (int j = 0; g->periodic && j < 9; j++)
            if (!isfinite(g->cells[9 * k + (size_t)j]))
                return mbe_fail(e, "frame %zu: non-finite cell vector", k);
    }
    return 0;
}

static int check_geometry(const mbe_geometry *g, mbe_err *e)
{
    if (!g || g->n == 0)
        return mbe_fail(e, "no frames to write");
    if (g->n_atoms <= 0)
        return mbe_fail(e, "frames without atoms");
    if ((uint64_t)g->n_atoms > SIZE_MAX / 24 / g->n)
        return mbe_fail(e, "too many frames and atoms");
    if (!g->positions || !g->atomic_numbers || !g->masses ||
        (g->periodic && !g->cells))
        return mbe_fail(e, "incomplete geometry (missing arrays)");
    return check_frames(g, e);
}

/* Whether every frame holds the same values (n items of size bytes). */
static int same_every_frame(const void *v, size_t frames, size_t bytes)
{
    const char *p = v;
    for (size_t k = 1; k < frames; k++)
        if (memcmp(p, p + k * bytes, bytes) != 0)
            return 0;
    return 1;
}

/* ----------------------------------------------------------- HDF5 I/O */

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* Link creation list as h5py makes it for groups: intermediate groups on,
 * names flagged UTF-8 when they are not plain ASCII. */
static hid_t link_plist(const char *name)
{
    hid_t p = H5Pcreate(H5P_LINK_CREATE);
    if (p < 0)
        return p;
    if (H5Pset_create_intermediate_group(p, 1) < 0 ||
        H5Pset_char_encoding(p, is_ascii(name) ? H5T_CSET_ASCII
                                               : H5T_CSET_UTF8) < 0) {
        H5Pclose(p);
        return -1;
    }
    return p;
}

/* "what: innermost HDF5 error" */
static int h5fail(mbe_err *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int h5fail(mbe_err *e, const char *fmt, ...)
{
    char why[256], what[MBE_ERR_LEN];
    mbe_h5_errdesc(why, sizeof why);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return mbe_fail(e, "%s%s%s", what, *why ? ": " : "", why);
}

/* A contiguous dataset without compression and without object times, as
 * h5py's create_dataset(data=...) makes it.  h5py links datasets with the
 * default link list, so their names are flagged ASCII even when they hold
 * UTF-8 ("positions (Å)"); we do the same. */
static int write_dataset(hid_t grp, const char *name, hid_t ftype,
                         hid_t mtype, int rank, const hsize_t *dims,
                         const void *buf)
{
    hid_t s = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hid_t d = -1;
    int rc = -1;
    if (s >= 0 && dcpl >= 0 && H5Pset_obj_track_times(dcpl, 0) >= 0)
        d = H5Dcreate2(grp, name, ftype, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d >= 0)
        rc = H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0 ? -1
                                                                        : 0;
    if (d >= 0 && H5Dclose(d) < 0)
        rc = -1;
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (s >= 0)
        H5Sclose(s);
    return rc;
}

/* Datasets of the layout; the ones that do not vary between frames are
 * stored once, as the package stores them. */
static int write_datasets(hid_t grp, const mbe_geometry *g,
                          const char **failed)
{
    hsize_t n = g->n, na = (hsize_t)g->n_atoms;
    size_t nab = (size_t)na;
    int same_atoms =
        same_every_frame(g->atomic_numbers, g->n, nab * sizeof(int64_t)) &&
        same_every_frame(g->masses, g->n, nab * sizeof(double));
    hsize_t pos_dims[3] = {n, na, 3}, at_dims[2] = {n, na};
    const hsize_t *ad = same_atoms ? at_dims + 1 : at_dims;
    int ar = same_atoms ? 1 : 2;

    *failed = MBE_DS_POSITIONS;
    if (write_dataset(grp, MBE_DS_POSITIONS, H5T_IEEE_F64LE,
                      H5T_NATIVE_DOUBLE, 3, pos_dims, g->positions) < 0)
        return -1;
    *failed = MBE_DS_ATOMIC_NUMBERS;
    if (write_dataset(grp, MBE_DS_ATOMIC_NUMBERS, H5T_STD_I64LE,
                      H5T_NATIVE_INT64, ar, ad, g->atomic_numbers) < 0)
        return -1;
    *failed = MBE_DS_MASSES;
    if (write_dataset(grp, MBE_DS_MASSES, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                      ar, ad, g->masses) < 0)
        return -1;
    if (!g->periodic)
        return 0;
    int same_cell = same_every_frame(g->cells, g->n, 9 * sizeof(double));
    hsize_t cell_dims[3] = {n, 3, 3};
    *failed = MBE_DS_CELL;
    return write_dataset(grp, MBE_DS_CELL, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                         same_cell ? 2 : 3, same_cell ? cell_dims + 1
                                                      : cell_dims,
                         g->cells);
}

/* dataclass goes last: until it is there, readers (which look for it) do
 * not take the group for frames. */
static int write_attrs(hid_t grp, const mbe_geometry *g, const char **failed)
{
    *failed = "attributes";
    if (mbe_h5_attr_write_i64(grp, "n_frames", (int64_t)g->n) < 0 ||
        mbe_h5_attr_write_i64(grp, "n_atoms", g->n_atoms) < 0 ||
        mbe_h5_attr_write_bool(grp, "periodic", g->periodic) < 0 ||
        mbe_h5_attr_write_str(grp, "feature_vectors_type", "none") < 0 ||
        mbe_h5_attr_write_str(grp, "dataclass", "Structure") < 0)
        return -1;
    return 0;
}

static int write_group(hid_t f, const char *path, const char *name,
                       const mbe_geometry *g, mbe_err *e)
{
    const char *failed = "group";
    hid_t lcpl = link_plist(name);
    hid_t grp = lcpl < 0 ? -1
                         : H5Gcreate2(f, name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = grp >= 0 && write_datasets(grp, g, &failed) == 0 &&
                     write_attrs(grp, g, &failed) == 0
                 ? 0
                 : -1;
    if (rc < 0)
        h5fail(e, "cannot write %s", failed);
    if (grp >= 0 && H5Gclose(grp) < 0 && rc == 0)
        rc = h5fail(e, "cannot close group %s", name);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (rc < 0)
        mbe_err_prefix(e, "%s:%s", path, name);
    return rc;
}

/* --------------------------------------------------------------- keys */

/* Whether the object at name exists; an existing prefix that is not a
 * group is an error (HDF5 could not create anything below it). */
static int probe_key(hid_t f, const char *path, const char *key, int *exists,
                     mbe_err *e)
{
    char *buf = mbe_strdup(key);
    if (!buf)
        return mbe_fail(e, "out of memory");
    int rc = 0;
    *exists = 1;
    size_t len = strlen(key);
    for (size_t end = key[0] == '/' ? 1 : 0; end <= len && *exists; end++) {
        if (end < len && key[end] != '/')
            continue;
        buf[end] = '\0';
        htri_t ex = H5Lexists(f, buf, H5P_DEFAULT);
        if (ex < 0) {
            rc = h5fail(e, "cannot look up '%s' in %s", buf, path);
        } else if (!ex) {
            *exists = 0;
        } else if (end < len) {
            hid_t o = H5Oopen(f, buf, H5P_DEFAULT);
            int grp = o >= 0 && H5Iget_type(o) == H5I_GROUP;
            if (o >= 0)
                H5Oclose(o);
            if (!grp)
                rc = mbe_fail(e, "'%s' in %s is not a group", buf, path);
        }
        buf[end] = key[end];
        if (rc < 0)
            break;
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------------- files */

/* A new master: on failure the file goes, nothing else was in it. */
static int write_new(const char *path, const char *key,
                     const mbe_geometry *g, mbe_err *e)
{
    /* Default property lists, like h5py: the oldest file format that holds
     * the data, readable by every HDF5 since 1.8. */
    hid_t f = H5Fcreate(path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) {
        /* On a full disk libhdf5 leaves the empty file it made; one that
         * was there (EEXIST: made without the lock) is not ours. */
        struct stat st;
        if (mbe_h5_errno() != EEXIST && stat(path, &st) == 0 &&
            S_ISREG(st.st_mode) && st.st_size == 0)
            unlink(path);
        return h5fail(e, "cannot create %s", path);
    }
    int rc = write_group(f, path, key, g, e);
    if (rc == 0 && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0)
        rc = h5fail(e, "cannot flush %s", path);
    if (rc == 0 && mbe_h5_fsync(f) < 0)
        rc = mbe_fail(e, "cannot fsync %s: %s", path, strerror(errno));
    if (H5Fclose(f) < 0 && rc == 0)
        rc = h5fail(e, "cannot close %s", path);
    if (rc < 0)
        unlink(path);
    else if (mbe_fsync_dir_of(path) < 0)
        rc = mbe_fail(e, "cannot fsync the directory of %s: %s", path,
                      strerror(errno));
    return rc;
}

static int change_existing(hid_t f, const char *path, const char *key,
                           const mbe_geometry *g, int overwrite, mbe_err *e)
{
    int exists = 0;
    if (probe_key(f, path, key, &exists, e) < 0)
        return MBE_EFAIL;
    if (exists && !overwrite)
        return mbe_fail(e, "key '%s' already exists in %s (use --overwrite "
                        "to replace it)", key, path);
    /* HDF5 never shrinks a file: the old group's space stays unused. */
    if (exists && H5Ldelete(f, key, H5P_DEFAULT) < 0)
        return h5fail(e, "cannot delete the old '%s' in %s", key, path);
    return write_group(f, path, key, g, e);
}

/* An existing master holds the users' results: the change goes through
 * the undo journal, so that a failure or a crash at any point leaves the
 * file as it was (the half-written group included).  A journal left by an
 * interrupted change (of mbe-merge, say) is rolled back first; writing
 * over it would make that roll-back restore stale bytes into our
 * change. */
static int write_existing(const char *path, const char *key,
                          const mbe_geometry *g, int overwrite, mbe_err *e)
{
    if (mbe_h5_is_hdf5(path) <= 0)
        return mbe_fail(e, "%s is not an HDF5 file", path);
    if (mbe_journal_recover(path, NULL, e) < 0 ||
        mbe_master_check(path, e) < 0)
        return MBE_EFAIL;
    mbe_journal *j;
    hid_t f = mbe_journal_open(path, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    if (change_existing(f, path, key, g, overwrite, e) < 0) {
        mbe_err ae;
        if (mbe_journal_abort(f, j, &ae) < 0)
            mbe_fail(e, "%.400s; %.500s", e->msg, ae.msg);
        return MBE_EFAIL;
    }
    return mbe_journal_commit(f, j, e);
}

static int write_locked(const char *path, const char *key,
                        const mbe_geometry *g, int overwrite, mbe_err *e)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            return write_new(path, key, g, e);
        return mbe_fail(e, "cannot open %s: %s", path, strerror(errno));
    }
    if (S_ISDIR(st.st_mode))
        return mbe_fail(e, "cannot open %s: is a directory", path);
    return write_existing(path, key, g, overwrite, e);
}

int mbe_master_write_structure(const char *path, const char *key,
                               const mbe_geometry *g, int overwrite,
                               const mbe_lock_opts *lk, mbe_err *e)
{
    if (check_key(key, e) < 0 || check_geometry(g, e) < 0)
        return MBE_EFAIL;
    mbe_h5_quiet();
    mbe_lock lock;
    int rc = mbe_lock_acquire(path, MBE_LOCK_EXCLUSIVE | MBE_LOCK_NEW_MASTER,
                              lk, &lock, e);
    if (rc < 0)
        return rc;
    rc = write_locked(path, key, g, overwrite, e);
    mbe_lock_release(&lock);
    return rc;
}
