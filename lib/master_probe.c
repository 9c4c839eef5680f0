/* master_probe.c - a master libhdf5 cannot check is read first in a child
 * process.
 *
 * The package's masters (h5py's defaults) and those of mbe-import have
 * superblock 0: no checksum covers their object headers, B-trees or heaps,
 * and libhdf5 crashes or loops on some damaged ones (fuzz/README).  The
 * child walks every piece of metadata the programs may later decode in
 * process (links, object headers, attributes, chunk indices) and the
 * variable-length strings in the global heap, but of other raw data only
 * one value per dataset, so that a healthy master costs one fork and a
 * metadata walk (bench/RESULTS.md, "The master check"). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h5compat.h"
#include "mbe_internal.h"

/* Values a probe reads at most at once: a damaged dataspace may claim
 * any number of them. */
#define PROBE_MAX_BYTES ((size_t)256 << 20)

typedef struct walk {
    const char *path;
    mbe_err *e;
    int failed;
    char why[200]; /* libhdf5's words at the failure, before closes */
} walk;

/* Fails the walk with what libhdf5 said about the object name. */
static herr_t damaged(walk *w, const char *name, const char *what)
{
    if (!*w->why)
        mbe_h5_errdesc(w->why, sizeof w->why);
    mbe_fail(w->e, "%s: damaged HDF5 file: cannot read %s '%s'%s%s",
             w->path, what, name, *w->why ? ": " : "", w->why);
    w->failed = 1;
    return -1;
}

/* Whether values of t hold pointers into the global heap (which has no
 * checksum): variable-length strings and sequences, at any depth (the
 * merge log is a compound of such strings). */
static int has_vlen(hid_t t)
{
    H5T_class_t c = H5Tget_class(t);
    if (c == H5T_VLEN || (c == H5T_STRING && H5Tis_variable_str(t) > 0))
        return 1;
    int n = c == H5T_COMPOUND ? H5Tget_nmembers(t) : 0;
    int found = 0;
    for (int i = 0; i < n && !found; i++) {
        hid_t m = H5Tget_member_type(t, (unsigned)i);
        found = m >= 0 && has_vlen(m);
        if (m >= 0)
            H5Tclose(m);
    }
    if (c == H5T_ARRAY) {
        hid_t b = H5Tget_super(t);
        found = b >= 0 && has_vlen(b);
        if (b >= 0)
            H5Tclose(b);
    }
    return found;
}

/* n values through the native type, as the readers convert them (making
 * it has crashed on a damaged enum); what they point to in the global
 * heap is read and freed. */
static int read_values(walk *w, hid_t t, hid_t fs, hid_t ms, size_t n,
                       herr_t (*rd)(hid_t, hid_t, hid_t, hid_t, void *),
                       hid_t obj)
{
    hid_t mt = H5Tget_native_type(t, H5T_DIR_ASCEND);
    size_t sz = mt >= 0 ? H5Tget_size(mt) : 0;
    if (sz && n > PROBE_MAX_BYTES / sz) {
        snprintf(w->why, sizeof w->why, "%zu values of %zu bytes", n, sz);
        H5Tclose(mt);
        return -1;
    }
    void *buf = sz ? calloc(n ? n : 1, sz) : NULL;
    int rc = buf && rd(obj, mt, ms, fs, buf) >= 0 ? 0 : -1;
    if (rc < 0)
        mbe_h5_errdesc(w->why, sizeof w->why);
    else
        mbe_h5_reclaim(mt, ms == H5S_ALL ? fs : ms, buf);
    free(buf);
    if (mt >= 0)
        H5Tclose(mt);
    return rc;
}

static herr_t attr_read(hid_t a, hid_t mt, hid_t ms, hid_t fs, void *buf)
{
    (void)ms;
    (void)fs;
    return H5Aread(a, mt, buf);
}

static herr_t ds_read(hid_t ds, hid_t mt, hid_t ms, hid_t fs, void *buf)
{
    return H5Dread(ds, mt, ms, fs, H5P_DEFAULT, buf);
}

static int read_attr_value(walk *w, hid_t a, hid_t t, hid_t s)
{
    hssize_t n = H5Sget_simple_extent_npoints(s);
    return n < 0 ? -1 : read_values(w, t, s, s, (size_t)n, attr_read, a);
}

static herr_t attr_cb(hid_t obj, const char *name, const H5A_info_t *info,
                      void *ud)
{
    (void)info;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : H5I_INVALID_HID;
    hid_t s = a >= 0 ? H5Aget_space(a) : H5I_INVALID_HID;
    int rc = t >= 0 && s >= 0 ? read_attr_value(ud, a, t, s) : -1;
    /* Said before the closes, which clear libhdf5's error stack. */
    if (rc < 0)
        damaged(ud, name, "attribute");
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    if (a >= 0)
        H5Aclose(a);
    return rc < 0 ? -1 : 0;
}

/* The first value of a dataset, converted as the readers convert them
 * (no more: raw data is not metadata, and may be large), or every value
 * when they point into the global heap. */
static int read_some(walk *w, hid_t ds, hid_t t, hid_t s, hssize_t n)
{
    if (has_vlen(t))
        return read_values(w, t, s, H5S_ALL, (size_t)n, ds_read, ds);
    int rank = H5Sget_simple_extent_ndims(s);
    hsize_t start[H5S_MAX_RANK] = {0}, one[H5S_MAX_RANK];
    for (int i = 0; i < H5S_MAX_RANK; i++)
        one[i] = 1;
    hsize_t n1 = 1;
    hid_t ms = H5Screate_simple(1, &n1, NULL);
    int rc = ms >= 0 && rank >= 0 &&
             (rank == 0 || H5Sselect_hyperslab(s, H5S_SELECT_SET, start,
                                               NULL, one, NULL) >= 0)
                 ? read_values(w, t, s, ms, 1, ds_read, ds)
                 : -1;
    if (ms >= 0)
        H5Sclose(ms);
    return rc;
}

/* Type, shape, layout, every node of a chunk index (counting the chunks
 * visits them all) and some values. */
static int walk_dataset(walk *w, hid_t ds)
{
    hid_t t = H5Dget_type(ds), s = H5Dget_space(ds);
    hid_t p = H5Dget_create_plist(ds);
    int rc = t >= 0 && s >= 0 && p >= 0 ? 0 : -1;
    hsize_t nc = 0;
    hssize_t n = rc == 0 ? H5Sget_simple_extent_npoints(s) : -1;
    if (n > 0 && H5Pget_layout(p) == H5D_CHUNKED &&
        H5Dget_num_chunks(ds, s, &nc) < 0)
        rc = -1;
    if (rc < 0 || n < 0)
        mbe_h5_errdesc(w->why, sizeof w->why);
    else if (n > 0)
        rc = read_some(w, ds, t, s, n);
    if (p >= 0)
        H5Pclose(p);
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    return rc < 0 || n < 0 ? -1 : 0;
}

static herr_t object_cb(hid_t root, const char *name,
                        const mbe_h5_oinfo *info, void *ud)
{
    walk *w = ud;
    hid_t o = H5Oopen(root, name, H5P_DEFAULT);
    if (o < 0)
        return damaged(w, name, "the object header of");
    hsize_t at = 0;
    herr_t rc = H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_NATIVE, &at, attr_cb, w);
    if (rc < 0 && !w->failed)
        damaged(w, name, "the attributes of");
    if (!w->failed && info->type == H5O_TYPE_DATASET && walk_dataset(w, o) < 0)
        damaged(w, name, "dataset");
    H5Oclose(o);
    return w->failed ? -1 : 0;
}

/* In the child.  A file libhdf5 will not open is left to the caller's own
 * open, which says why in its words. */
static int walk_file(void *arg, mbe_err *e)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return 0;
    /* The parent may hold the master open (HDF5's flock) or locked. */
    H5Pset_file_locking(fapl, 0, 1);
    hid_t f = H5Fopen(arg, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0)
        return 0;
    walk w = {arg, e, 0, ""};
    if (mbe_h5_visit(f, object_cb, &w) < 0 && !w.failed)
        damaged(&w, "/", "the groups under");
    H5Fclose(f);
    return w.failed ? MBE_EFAIL : 0;
}

int mbe_master_check(const char *path, mbe_err *e)
{
    mbe_h5_quiet();
    mbe_err ve = {""};
    int sb = mbe_h5_superblock_version(path, &ve);
    /* No signature: the caller's open says so; 2 and above: libhdf5
     * verifies a checksum over each piece of metadata before it decodes
     * it. */
    if (sb < 0 || sb >= 2)
        return 0;
    return mbe_probe_isolated(path, walk_file, (void *)path, e);
}
