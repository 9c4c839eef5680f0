/* ground_truth.c - see ground_truth.h.
 *
 * Datasets are created as h5py creates them from numpy arrays
 * (create_dataset(name, data=...)): contiguous, no filters, no time stamps,
 * allocation time LATE, fill time IFSET with the default fill value (0),
 * little-endian float64 / int64, maximum shape = shape, links flagged
 * ASCII even for non-ASCII names (h5py passes no link creation list).
 * Their contents (NaN, UNDEFINED) are written at creation, as h5py writes
 * the array it is given, so that the storage exists and mbe-merge can
 * write rows in place without touching HDF5 metadata again. */
#define _GNU_SOURCE
#include "ground_truth.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "h5compat.h"
#include "mbe_internal.h"

#define LOG_CHUNK 16

/* ------------------------------------------------------------ helpers */

static int h5fail(mbe_err *e, const char *fmt, const char *a, const char *b)
{
    char d[300];
    mbe_h5_errdesc(d, sizeof d);
    char what[600];
    snprintf(what, sizeof what, fmt, a, b);
    return mbe_fail(e, "%s: %s", what, *d ? d : "HDF5 error");
}

static char *ds_name(const char *level, int which)
{
    switch (which) {
    case MBE_GT_ENERGY:
        return mbe_gt_energy_name(level);
    case MBE_GT_FORCES:
        return mbe_gt_forces_name(level);
    default:
        return mbe_gt_status_name(level);
    }
}

static int is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s > 0x7f)
            return 0;
    return 1;
}

/* Link creation as h5py's create_group does it: intermediate groups,
 * UTF-8 names when they are not ASCII.  Not for level datasets: see
 * create_ds. */
static hid_t make_lcpl(const char *name)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0)
        return lcpl;
    H5Pset_create_intermediate_group(lcpl, 1);
    H5Pset_char_encoding(lcpl, is_ascii(name) ? H5T_CSET_ASCII
                                              : H5T_CSET_UTF8);
    return lcpl;
}

static hid_t open_group(hid_t file, const char *key, mbe_err *e)
{
    hid_t g = H5Gopen2(file, key, H5P_DEFAULT);
    if (g < 0)
        h5fail(e, "cannot open group '%s'%s", key, "");
    return g;
}

/* key's ground_truth group: 0 when missing (create: made), -1 on errors. */
static hid_t open_gt(hid_t g, const char *key, int create, mbe_err *e)
{
    htri_t ex = H5Lexists(g, MBE_GROUP_GT, H5P_DEFAULT);
    if (ex > 0) {
        hid_t gt = H5Oopen(g, MBE_GROUP_GT, H5P_DEFAULT);
        if (gt >= 0 && H5Iget_type(gt) == H5I_GROUP)
            return gt;
        if (gt >= 0)
            H5Oclose(gt);
        mbe_fail(e, "'%s/" MBE_GROUP_GT "' is not a group", key);
        return -1;
    }
    if (ex < 0) {
        h5fail(e, "cannot look up '%s/%s'", key, MBE_GROUP_GT);
        return -1;
    }
    if (!create)
        return 0;
    hid_t lcpl = make_lcpl(MBE_GROUP_GT);
    hid_t gt = H5Gcreate2(g, MBE_GROUP_GT, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (gt < 0)
        h5fail(e, "cannot create group '%s/%s'", key, MBE_GROUP_GT);
    return gt;
}

int mbe_gt_is_legacy(const mbe_gt_level *l)
{
    return (l->ds[MBE_GT_ENERGY].exists || l->ds[MBE_GT_FORCES].exists) &&
           !l->ds[MBE_GT_STATUS].exists;
}

int mbe_gt_needs_structure(const mbe_gt_level *l, int forces)
{
    return !l->has_gt || !l->listed || l->old_names ||
           !l->ds[MBE_GT_ENERGY].exists ||
           (forces && !l->ds[MBE_GT_FORCES].exists) ||
           !l->ds[MBE_GT_STATUS].exists;
}

int mbe_gt_dims(hid_t file, const char *key, int64_t *n_frames,
                int64_t *n_atoms, mbe_err *e)
{
    hid_t g = open_group(file, key, e);
    if (g < 0)
        return MBE_EFAIL;
    int rc = mbe_h5_attr_read_i64(g, "n_frames", n_frames) < 0 ||
                     mbe_h5_attr_read_i64(g, "n_atoms", n_atoms) < 0
                 ? mbe_fail(e, "group '%s': attribute n_frames or n_atoms "
                            "missing", key)
                 : 0;
    H5Gclose(g);
    return rc;
}

/* ------------------------------------------------- levels_of_theory */

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_vlen_strings(hid_t a, hsize_t n, mbe_strlist *out,
                             mbe_err *e)
{
    char **buf = calloc(n ? n : 1, sizeof *buf);
    hid_t mt = mbe_h5_vlen_str(), sp = H5Aget_space(a);
    int rc = buf && mt >= 0 && sp >= 0 && H5Aread(a, mt, buf) >= 0
                 ? 0
                 : mbe_fail(e, "cannot read attribute " MBE_ATTR_LEVELS);
    for (hsize_t i = 0; rc == 0 && i < n; i++)
        rc = mbe_strlist_push(out, buf[i] ? buf[i] : "", e);
    if (buf && mt >= 0 && sp >= 0)
        mbe_h5_reclaim(mt, sp, buf);
    free(buf);
    if (sp >= 0)
        H5Sclose(sp);
    if (mt >= 0)
        H5Tclose(mt);
    return rc;
}

static int read_fixed_strings(hid_t a, hid_t t, hsize_t n,
                              mbe_strlist *out, mbe_err *e)
{
    size_t sz = H5Tget_size(t);
    char *buf = calloc(n ? n : 1, sz ? sz : 1);
    int rc = buf && H5Aread(a, t, buf) >= 0
                 ? 0
                 : mbe_fail(e, "cannot read attribute " MBE_ATTR_LEVELS);
    for (hsize_t i = 0; rc == 0 && i < n; i++) {
        char *s = strndup(buf + i * sz, sz);
        rc = s ? mbe_strlist_push(out, s, e) : mbe_fail(e, "out of memory");
        free(s);
    }
    free(buf);
    return rc;
}

/* Every string of levels_of_theory (absent: none), vlen or fixed-length,
 * scalar or 1-D. */
static int read_levels(hid_t gt, mbe_strlist *out, mbe_err *e)
{
    out->v = NULL;
    out->n = 0;
    if (H5Aexists(gt, MBE_ATTR_LEVELS) <= 0)
        return 0;
    hid_t a = H5Aopen(gt, MBE_ATTR_LEVELS, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    int rc;
    if (t < 0 || n < 0)
        rc = mbe_fail(e, "cannot open attribute " MBE_ATTR_LEVELS);
    else if (n == 0)
        /* The package saves the sorted list of levels as it is; h5py
         * stores an empty list as a float64 array of length 0. */
        rc = 0;
    else if (H5Tget_class(t) != H5T_STRING)
        rc = mbe_fail(e, "attribute " MBE_ATTR_LEVELS " holds no strings");
    else if (H5Tis_variable_str(t) > 0)
        rc = read_vlen_strings(a, (hsize_t)n, out, e);
    else
        rc = read_fixed_strings(a, t, (hsize_t)n, out, e);
    if (sp >= 0)
        H5Sclose(sp);
    if (t >= 0)
        H5Tclose(t);
    if (a >= 0)
        H5Aclose(a);
    if (rc < 0)
        mbe_strlist_free(out);
    return rc;
}

static int contains(const mbe_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], s))
            return 1;
    return 0;
}

/* As h5py writes np.array(sorted(levels), dtype=h5py.string_dtype()):
 * 1-D, variable-length UTF-8.  strcmp order is code point order, which
 * is Python's sorted() on str. */
static int write_levels(hid_t gt, mbe_strlist *l, mbe_err *e)
{
    qsort(l->v, l->n, sizeof *l->v, str_cmp);
    if (H5Aexists(gt, MBE_ATTR_LEVELS) > 0 &&
        H5Adelete(gt, MBE_ATTR_LEVELS) < 0)
        return h5fail(e, "cannot replace attribute %s%s", MBE_ATTR_LEVELS,
                      "");
    hsize_t n = l->n;
    hid_t t = mbe_h5_vlen_str(), sp = H5Screate_simple(1, &n, NULL);
    hid_t a = t >= 0 && sp >= 0 ? H5Acreate2(gt, MBE_ATTR_LEVELS, t, sp,
                                             H5P_DEFAULT, H5P_DEFAULT)
                                : -1;
    int rc = a >= 0 && H5Awrite(a, t, l->v) >= 0
                 ? 0
                 : h5fail(e, "cannot write attribute %s%s", MBE_ATTR_LEVELS,
                          "");
    if (a >= 0)
        H5Aclose(a);
    if (sp >= 0)
        H5Sclose(sp);
    if (t >= 0)
        H5Tclose(t);
    return rc;
}

/* ------------------------------------------------------------ inspect */

static void want_dims(int which, int64_t n_frames, int64_t n_atoms,
                      int *rank, hsize_t d[3])
{
    d[0] = (hsize_t)n_frames;
    d[1] = (hsize_t)n_atoms;
    d[2] = 3;
    *rank = which == MBE_GT_FORCES ? 3 : 1;
}

static int check_shape(hid_t ds, int which, int64_t n_frames,
                       int64_t n_atoms, const char *name, mbe_err *e)
{
    hsize_t want[3], got[3] = {0, 0, 0};
    int rank;
    want_dims(which, n_frames, n_atoms, &rank, want);
    hid_t sp = H5Dget_space(ds);
    int rk = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (rk == rank)
        H5Sget_simple_extent_dims(sp, got, NULL);
    if (sp >= 0)
        H5Sclose(sp);
    if (rk == rank && !memcmp(got, want, rank * sizeof *got))
        return 0;
    return mbe_fail(e, "dataset '%s' has %d dimensions (%llu, ...), "
                    "expected %s (%lld%s)", name, rk,
                    (unsigned long long)got[0],
                    rank == 1 ? "(n_frames,)" : "(n_frames, n_atoms, 3)",
                    (long long)n_frames, rank == 1 ? ",)" : ", ...)");
}

static int host_is_le(void)
{
    return H5Tequal(H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE) > 0 &&
           H5Tequal(H5T_NATIVE_INT64, H5T_STD_I64LE) > 0;
}

/* Raw writes are safe only where HDF5 keeps nothing but the bytes: one
 * contiguous, allocated block of exactly the expected type and size. */
static int raw_layout(hid_t ds, int which, size_t bytes, uint64_t *off)
{
    hid_t t = H5Dget_type(ds), dcpl = H5Dget_create_plist(ds);
    hid_t want = which == MBE_GT_STATUS ? H5T_STD_I64LE : H5T_IEEE_F64LE;
    int ok = t >= 0 && dcpl >= 0 && host_is_le() && H5Tequal(t, want) > 0 &&
             H5Pget_layout(dcpl) == H5D_CONTIGUOUS &&
             H5Pget_external_count(dcpl) == 0 && H5Pget_nfilters(dcpl) == 0;
    if (ok) {
        haddr_t a = H5Dget_offset(ds);
        ok = a != HADDR_UNDEF && H5Dget_storage_size(ds) == bytes;
        *off = a;
    }
    if (t >= 0)
        H5Tclose(t);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return ok;
}

static int check_class(hid_t ds, int which, const char *name, mbe_err *e)
{
    hid_t t = H5Dget_type(ds);
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if (t >= 0)
        H5Tclose(t);
    H5T_class_t want = which == MBE_GT_STATUS ? H5T_INTEGER : H5T_FLOAT;
    if (c == want)
        return 0;
    return mbe_fail(e, "dataset '%s' is not of %s type", name,
                    want == H5T_INTEGER ? "an integer" : "a floating-point");
}

static int inspect_ds(hid_t gt, const char *level, int which,
                      int64_t n_frames, int64_t n_atoms, mbe_gt_ds *d,
                      mbe_err *e)
{
    char *name = ds_name(level, which);
    if (!name)
        return mbe_fail(e, "out of memory");
    /* Forces of a 0.2 merge: renamed in place by mbe_gt_ensure, so their
     * rows stay where they are. */
    int sp = 0;
    char *found = mbe_h5_existing_name(gt, name, &sp);
    if (found) {
        free(name);
        name = found;
    }
    int rc = 0;
    htri_t ex = sp < 0 ? -1 : found != NULL;
    hid_t ds = ex > 0 ? H5Dopen2(gt, name, H5P_DEFAULT) : -1;
    if (ex < 0 || (ex > 0 && ds < 0)) {
        rc = h5fail(e, "cannot open dataset '%s'%s", name, "");
    } else if (ds >= 0) {
        d->exists = 1;
        rc = check_class(ds, which, name, e);
        if (rc == 0)
            rc = check_shape(ds, which, n_frames, n_atoms, name, e);
        size_t row = which == MBE_GT_FORCES ? (size_t)n_atoms * 24 : 8;
        if (rc == 0)
            d->raw = raw_layout(ds, which, (size_t)n_frames * row,
                                &d->offset);
    }
    if (ds >= 0)
        H5Dclose(ds);
    free(name);
    return rc;
}

int mbe_gt_inspect(hid_t file, const char *key, const char *level,
                   int64_t n_frames, int64_t n_atoms, mbe_gt_level *out,
                   mbe_err *e)
{
    memset(out, 0, sizeof *out);
    mbe_strlist old = {0};
    if (mbe_names_convert(file, key, 0, 1, &old, e) < 0)
        return MBE_EFAIL;
    out->old_names = old.n > 0;
    mbe_strlist_free(&old);
    hid_t g = open_group(file, key, e);
    if (g < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(g, key, 0, e);
    H5Gclose(g);
    if (gt <= 0)
        return gt < 0 ? MBE_EFAIL : 0;
    out->has_gt = 1;
    mbe_strlist levels;
    int rc = read_levels(gt, &levels, e);
    out->listed = rc == 0 && contains(&levels, level);
    mbe_strlist_free(&levels);
    for (int w = 0; rc == 0 && w < MBE_GT_N; w++)
        rc = inspect_ds(gt, level, w, n_frames, n_atoms, &out->ds[w], e);
    H5Gclose(gt);
    if (rc < 0)
        mbe_err_prefix(e, "group '%s/" MBE_GROUP_GT "'", key);
    return rc;
}

static int to_create(const mbe_gt_level *l, int which, int forces)
{
    return !l->ds[which].exists && (forces || which != MBE_GT_FORCES);
}

int mbe_gt_missing(const mbe_gt_level *l, const char *key, const char *level,
                   int forces, mbe_strlist *names, mbe_err *e)
{
    for (int w = 0; w < MBE_GT_N; w++) {
        if (!to_create(l, w, forces))
            continue;
        char *name = ds_name(level, w);
        char *s = name ? mbe_asprintf("%s: " MBE_GROUP_GT "/%s", key, name)
                       : NULL;
        int rc = s ? mbe_strlist_push(names, s, e)
                   : mbe_fail(e, "out of memory");
        free(s);
        free(name);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------- create */

/* h5py's dataset creation list: only object times are switched off
 * (create_dataset's track_times=False); layout contiguous, allocation
 * LATE, fill IFSET and the default fill value are HDF5's defaults. */
static hid_t make_dcpl(void)
{
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl >= 0 && H5Pset_obj_track_times(dcpl, 0) < 0) {
        H5Pclose(dcpl);
        return -1;
    }
    return dcpl;
}

/* Bytes of the block the initial contents are written from. */
#define INIT_BLOCK ((size_t)1 << 20)

/* Every row of a new dataset set to *value (8 bytes an element), in
 * blocks, so that large datasets cost no large buffer. */
static int fill_rows(hid_t ds, int which, int64_t n_frames, int64_t n_atoms,
                     const void *value)
{
    size_t row = which == MBE_GT_FORCES ? (size_t)n_atoms * 3 : 1;
    size_t per = INIT_BLOCK / (row * 8) ? INIT_BLOCK / (row * 8) : 1;
    size_t n_el = per * row;
    unsigned char *buf = malloc(n_el * 8);
    if (!buf)
        return -1;
    for (size_t i = 0; i < n_el; i++)
        memcpy(buf + 8 * i, value, 8);
    hid_t mt = which == MBE_GT_STATUS ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
    hid_t fs = H5Dget_space(ds);
    int rc = fs >= 0 ? 0 : -1;
    for (int64_t f0 = 0; rc == 0 && f0 < n_frames; f0 += (int64_t)per) {
        hsize_t n = (hsize_t)(n_frames - f0) < per ? (hsize_t)(n_frames - f0)
                                                   : per;
        hsize_t start[3] = {(hsize_t)f0, 0, 0};
        hsize_t count[3] = {n, (hsize_t)n_atoms, 3};
        hsize_t mn = n * row;
        hid_t ms = H5Screate_simple(1, &mn, NULL);
        rc = ms >= 0 &&
                     H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL,
                                         count, NULL) >= 0 &&
                     H5Dwrite(ds, mt, ms, fs, H5P_DEFAULT, buf) >= 0
                 ? 0
                 : -1;
        if (ms >= 0)
            H5Sclose(ms);
    }
    if (fs >= 0)
        H5Sclose(fs);
    free(buf);
    return rc;
}

/* The initial value of a new dataset: what the package's in-memory
 * arrays hold for frames without results. */
static const void *initial_value(const mbe_gt_level *l, int which)
{
    static const double nan_v = NAN;
    static const int64_t undefined = MBE_UNDEFINED, completed = MBE_COMPLETED;
    if (which != MBE_GT_STATUS)
        return &nan_v;
    return mbe_gt_is_legacy(l) ? (const void *)&completed
                               : (const void *)&undefined;
}

static int create_ds(hid_t gt, const char *level, int which,
                     int64_t n_frames, int64_t n_atoms, const void *value,
                     mbe_err *e)
{
    int st = which == MBE_GT_STATUS, rank;
    hsize_t d[3];
    want_dims(which, n_frames, n_atoms, &rank, d);
    char *name = ds_name(level, which);
    if (!name)
        return mbe_fail(e, "out of memory");
    hid_t dcpl = make_dcpl();
    /* h5py's create_dataset links the dataset with the default link
     * creation properties (h5d.create without lcpl), so even the
     * non-ASCII names of level datasets are ASCII-flagged links in files
     * the package wrote; ours must carry the same flag. */
    hid_t sp = H5Screate_simple(rank, d, NULL);
    hid_t ds = dcpl >= 0 && sp >= 0
                   ? H5Dcreate2(gt, name,
                                st ? H5T_STD_I64LE : H5T_IEEE_F64LE, sp,
                                H5P_DEFAULT, dcpl, H5P_DEFAULT)
                   : -1;
    int rc = ds >= 0 && fill_rows(ds, which, n_frames, n_atoms, value) == 0
                 ? 0
                 : h5fail(e, "cannot create dataset '%s'%s", name, "");
    if (ds >= 0)
        H5Dclose(ds);
    if (sp >= 0)
        H5Sclose(sp);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    free(name);
    return rc;
}

static int list_level(hid_t gt, const char *level, mbe_err *e)
{
    mbe_strlist levels;
    if (read_levels(gt, &levels, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    if (!contains(&levels, level))
        rc = mbe_strlist_push(&levels, level, e);
    if (rc == 0)
        rc = write_levels(gt, &levels, e);
    mbe_strlist_free(&levels);
    return rc;
}

int mbe_gt_ensure(hid_t file, const char *key, const char *level,
                  int64_t n_frames, int64_t n_atoms, const mbe_gt_level *l,
                  int forces, mbe_strlist *renamed, mbe_err *e)
{
    if (l->old_names &&
        mbe_names_convert(file, key, INIT_BLOCK, 0, renamed, e) < 0)
        return MBE_EFAIL;
    hid_t g = open_group(file, key, e);
    if (g < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(g, key, 1, e);
    H5Gclose(g);
    if (gt < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (int w = 0; rc == 0 && w < MBE_GT_N; w++)
        if (to_create(l, w, forces))
            rc = create_ds(gt, level, w, n_frames, n_atoms,
                           initial_value(l, w), e);
    if (rc == 0 && !l->listed)
        rc = list_level(gt, level, e);
    H5Gclose(gt);
    if (rc < 0)
        mbe_err_prefix(e, "group '%s/" MBE_GROUP_GT "'", key);
    return rc;
}

hid_t mbe_gt_open(hid_t file, const char *key, const char *level, int which,
                  mbe_err *e)
{
    char *name = ds_name(level, which);
    char *path = name ? mbe_asprintf("%s/" MBE_GROUP_GT "/%s", key, name)
                      : NULL;
    hid_t ds = path ? H5Dopen2(file, path, H5P_DEFAULT) : -1;
    if (!path)
        mbe_fail(e, "out of memory");
    else if (ds < 0)
        h5fail(e, "cannot open dataset '%s'%s", path, "");
    free(path);
    free(name);
    return ds;
}

/* ---------------------------------------------------------- merge log */

static const struct {
    const char *name;
    size_t off;
    int is_str;
} log_fields[] = {
    {"shard_id", offsetof(mbe_gt_logrec, shard_id), 1},
    {"key", offsetof(mbe_gt_logrec, key), 1},
    {"level", offsetof(mbe_gt_logrec, level), 1},
    {"time", offsetof(mbe_gt_logrec, time), 1},
    {"path", offsetof(mbe_gt_logrec, path), 1},
    {"frames", offsetof(mbe_gt_logrec, frames), 0},
    {"completed", offsetof(mbe_gt_logrec, completed), 0},
    {"applied", offsetof(mbe_gt_logrec, applied), 0},
    {"digest", offsetof(mbe_gt_logrec, digest), 1},
    {"frame_set", offsetof(mbe_gt_logrec, frame_set), 1},
    {"frame_digest", offsetof(mbe_gt_logrec, frame_digest), 1},
    {"calculator", offsetof(mbe_gt_logrec, calculator), 1},
    {"calc_settings", offsetof(mbe_gt_logrec, calc_settings), 1},
};
#define N_LOG_FIELDS (sizeof log_fields / sizeof log_fields[0])

/* Whether the file's record type has field f (have < 0: the current type
 * has them all). */
static int has_field(hid_t have, size_t f)
{
    return have < 0 || H5Tget_member_index(have, log_fields[f].name) >= 0;
}

/* The record type: in memory (file 0) the layout of mbe_gt_logrec; in the
 * file packed, with little-endian integers and UTF-8 strings, so that h5py
 * reads it as a structured array.  have >= 0: only the fields of that
 * file type, so that older logs read with the fields they have. */
static hid_t log_type(int file, hid_t have)
{
    hid_t str = mbe_h5_vlen_str();
    size_t total = 0;
    for (size_t i = 0; i < N_LOG_FIELDS; i++)
        total += log_fields[i].is_str ? sizeof(char *) : 8;
    hid_t t = H5Tcreate(H5T_COMPOUND, file ? total : sizeof(mbe_gt_logrec));
    size_t at = 0;
    int ok = str >= 0 && t >= 0;
    for (size_t i = 0; ok && i < N_LOG_FIELDS; i++) {
        int s = log_fields[i].is_str;
        if (!has_field(have, i))
            continue;
        hid_t mt = s ? str : file ? H5T_STD_I64LE : H5T_NATIVE_INT64;
        ok = H5Tinsert(t, log_fields[i].name, file ? at : log_fields[i].off,
                       mt) >= 0;
        at += s ? sizeof(char *) : 8;
    }
    if (str >= 0)
        H5Tclose(str);
    if (!ok && t >= 0) {
        H5Tclose(t);
        t = -1;
    }
    return t;
}

void mbe_gt_log_free(mbe_gt_logrec *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        for (size_t f = 0; f < N_LOG_FIELDS; f++)
            if (log_fields[f].is_str)
                free(*(char **)((char *)&v[i] + log_fields[f].off));
    free(v);
}

/* Replace the strings HDF5 allocated by our own (missing: ""), so that
 * callers free them with free(). */
static int log_own_strings(mbe_gt_logrec *raw, mbe_gt_logrec *out, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        out[i] = raw[i];
        for (size_t f = 0; f < N_LOG_FIELDS; f++) {
            if (!log_fields[f].is_str)
                continue;
            char **src = (char **)((char *)&raw[i] + log_fields[f].off);
            char **dst = (char **)((char *)&out[i] + log_fields[f].off);
            *dst = strdup(*src ? *src : "");
            ok &= *dst != NULL;
        }
    }
    return ok ? 0 : -1;
}

static int log_read_ds(hid_t ds, mbe_gt_logrec **v, size_t *n, mbe_err *e)
{
    hid_t ft = H5Dget_type(ds);
    hid_t sp = H5Dget_space(ds), mt = ft >= 0 ? log_type(0, ft) : -1;
    if (ft >= 0)
        H5Tclose(ft);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    size_t m = np > 0 ? (size_t)np : 0;
    mbe_gt_logrec *raw = calloc(m ? m : 1, sizeof *raw);
    mbe_gt_logrec *out = calloc(m ? m : 1, sizeof *out);
    int rc = sp >= 0 && mt >= 0 && np >= 0 && raw && out &&
                     (!m || H5Dread(ds, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                    raw) >= 0)
                 ? 0
                 : h5fail(e, "cannot read the merge log %s%s", MBE_GT_LOG,
                          "");
    if (rc == 0 && log_own_strings(raw, out, m) < 0)
        rc = mbe_fail(e, "out of memory");
    if (m && sp >= 0 && mt >= 0 && raw)
        mbe_h5_reclaim(mt, sp, raw);
    free(raw);
    if (sp >= 0)
        H5Sclose(sp);
    if (mt >= 0)
        H5Tclose(mt);
    if (rc < 0) {
        mbe_gt_log_free(out, m);
        return rc;
    }
    *v = out;
    *n = m;
    return 0;
}

int mbe_gt_log_read(hid_t file, const char *key, mbe_gt_logrec **v,
                    size_t *n, mbe_err *e)
{
    *v = NULL;
    *n = 0;
    hid_t g = open_group(file, key, e);
    if (g < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(g, key, 0, e);
    H5Gclose(g);
    if (gt <= 0)
        return gt < 0 ? MBE_EFAIL : 0;
    int rc = 0;
    htri_t ex = H5Lexists(gt, MBE_GT_LOG, H5P_DEFAULT);
    if (ex > 0) {
        hid_t ds = H5Dopen2(gt, MBE_GT_LOG, H5P_DEFAULT);
        rc = ds >= 0 ? log_read_ds(ds, v, n, e)
                     : h5fail(e, "cannot open %s%s", MBE_GT_LOG, "");
        if (ds >= 0)
            H5Dclose(ds);
    } else if (ex < 0) {
        rc = h5fail(e, "cannot look up %s%s", MBE_GT_LOG, "");
    }
    H5Gclose(gt);
    if (rc < 0)
        mbe_err_prefix(e, "group '%s/" MBE_GROUP_GT "'", key);
    return rc;
}

static hid_t log_create(hid_t gt)
{
    hsize_t zero = 0, unlim = H5S_UNLIMITED, chunk = LOG_CHUNK;
    hid_t ft = log_type(1, -1), sp = H5Screate_simple(1, &zero, &unlim);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), lcpl = make_lcpl(MBE_GT_LOG);
    hid_t ds = -1;
    if (ft >= 0 && sp >= 0 && dcpl >= 0 && lcpl >= 0 &&
        H5Pset_chunk(dcpl, 1, &chunk) >= 0 &&
        H5Pset_obj_track_times(dcpl, 0) >= 0)
        ds = H5Dcreate2(gt, MBE_GT_LOG, ft, sp, lcpl, dcpl, H5P_DEFAULT);
    if (lcpl >= 0)
        H5Pclose(lcpl);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (sp >= 0)
        H5Sclose(sp);
    if (ft >= 0)
        H5Tclose(ft);
    return ds;
}

static int log_append_ds(hid_t ds, const mbe_gt_logrec *v, size_t n)
{
    hid_t sp = H5Dget_space(ds);
    hssize_t old = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if (sp >= 0)
        H5Sclose(sp);
    if (old < 0)
        return -1;
    hsize_t start = (hsize_t)old, count = n, size = start + count;
    if (H5Dset_extent(ds, &size) < 0)
        return -1;
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(1, &count, NULL);
    hid_t mt = log_type(0, -1);
    int rc = fs >= 0 && ms >= 0 && mt >= 0 &&
                     H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL,
                                         &count, NULL) >= 0 &&
                     H5Dwrite(ds, mt, ms, fs, H5P_DEFAULT, v) >= 0
                 ? 0
                 : -1;
    if (mt >= 0)
        H5Tclose(mt);
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return rc;
}

/* A log of records without the fields added since it was made. */
static int log_is_old(hid_t ds)
{
    hid_t ft = H5Dget_type(ds);
    int old = 0;
    for (size_t f = 0; ft >= 0 && f < N_LOG_FIELDS; f++)
        old |= !has_field(ft, f);
    if (ft >= 0)
        H5Tclose(ft);
    return old;
}

/* The old records again, in a new log of the current type. */
static int log_upgrade(hid_t gt, const char *key, hid_t *out, mbe_err *e)
{
    mbe_gt_logrec *v = NULL;
    size_t n = 0;
    hid_t ds = H5Dopen2(gt, MBE_GT_LOG, H5P_DEFAULT);
    int rc = ds >= 0 ? log_read_ds(ds, &v, &n, e)
                     : h5fail(e, "cannot open %s%s", MBE_GT_LOG, "");
    if (ds >= 0)
        H5Dclose(ds);
    if (rc == 0 && H5Ldelete(gt, MBE_GT_LOG, H5P_DEFAULT) < 0)
        rc = h5fail(e, "cannot replace %s%s", MBE_GT_LOG, "");
    *out = rc == 0 ? log_create(gt) : -1;
    if (rc == 0 && (*out < 0 || (n && log_append_ds(*out, v, n) < 0)))
        rc = h5fail(e, "group '%s/" MBE_GROUP_GT "': cannot rewrite %s", key,
                    MBE_GT_LOG);
    mbe_gt_log_free(v, n);
    return rc;
}

int mbe_gt_log_append(hid_t file, const char *key, const mbe_gt_logrec *v,
                      size_t n, mbe_err *e)
{
    if (!n)
        return 0;
    hid_t g = open_group(file, key, e);
    if (g < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(g, key, 1, e);
    H5Gclose(g);
    if (gt < 0)
        return MBE_EFAIL;
    htri_t ex = H5Lexists(gt, MBE_GT_LOG, H5P_DEFAULT);
    hid_t ds = ex > 0 ? H5Dopen2(gt, MBE_GT_LOG, H5P_DEFAULT)
                      : ex == 0 ? log_create(gt) : -1;
    int rc = ds >= 0 ? 0 : MBE_EFAIL;
    if (rc == 0 && log_is_old(ds)) {
        H5Dclose(ds);
        ds = -1;
        rc = log_upgrade(gt, key, &ds, e);
        if (rc < 0) {
            H5Gclose(gt);
            return rc;
        }
    }
    if (rc < 0 || log_append_ds(ds, v, n) < 0)
        rc = h5fail(e, "group '%s/" MBE_GROUP_GT "': cannot append to %s",
                    key, MBE_GT_LOG);
    if (ds >= 0)
        H5Dclose(ds);
    H5Gclose(gt);
    return rc;
}

/* ------------------------------------------------ public log reading */

void mbe_merge_log_free(mbe_merge_log_entry *v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++) {
        free(v[i].shard_id);
        free(v[i].level);
        free(v[i].time);
        free(v[i].path);
    }
    free(v);
}

static int log_to_entries(const mbe_gt_logrec *r, size_t n,
                          mbe_merge_log_entry **out, mbe_err *e)
{
    mbe_merge_log_entry *v = calloc(n ? n : 1, sizeof *v);
    int ok = v != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        v[i].shard_id = strdup(r[i].shard_id);
        v[i].level = strdup(r[i].level);
        v[i].time = strdup(r[i].time);
        v[i].path = strdup(r[i].path);
        v[i].frames = r[i].frames;
        ok = v[i].shard_id && v[i].level && v[i].time && v[i].path;
    }
    if (ok) {
        *out = v;
        return 0;
    }
    mbe_merge_log_free(v, n);
    return mbe_fail(e, "out of memory");
}

int mbe_master_merge_log(mbe_master *m, mbe_merge_log_entry **out,
                         size_t *n, mbe_err *e)
{
    *out = NULL;
    *n = 0;
    mbe_h5_quiet();
    /* The master holds the file open already (and its lock); HDF5 shares
     * that open file with this second identifier. */
    const char *path = mbe_master_path(m);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return h5fail(e, "%s: cannot open%s", path, "");
    mbe_gt_logrec *r = NULL;
    size_t nr = 0;
    int rc = mbe_gt_log_read(f, mbe_master_key(m), &r, &nr, e);
    if (rc == 0)
        rc = log_to_entries(r, nr, out, e);
    if (rc == 0)
        *n = nr;
    else
        mbe_err_prefix(e, "%s", path);
    mbe_gt_log_free(r, nr);
    H5Fclose(f);
    return rc;
}
