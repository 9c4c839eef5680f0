/* master_probe.c - a master libhdf5 cannot check is read first in a child
 * process.
 *
 * The package's masters (h5py's defaults) and those of mbe-import have
 * superblock 0: no checksum covers their object headers, B-trees or heaps,
 * and libhdf5 crashes or loops on some damaged ones (fuzz/README).  The
 * child walks every piece of metadata the programs may later decode in
 * process (links, object headers, attributes with their global heap
 * strings, chunk indices), but no raw data, so that a healthy master
 * costs one fork and a metadata walk (README, "Damaged masters"). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "h5compat.h"
#include "mbe_internal.h"

typedef struct walk {
    const char *path;
    mbe_err *e;
    int failed;
} walk;

/* Fails the walk with what libhdf5 said about obj's name. */
static herr_t damaged(walk *w, const char *name, const char *what)
{
    char d[200];
    mbe_h5_errdesc(d, sizeof d);
    mbe_fail(w->e, "%s: damaged HDF5 file: cannot read %s of '%s'%s%s",
             w->path, what, name, *d ? ": " : "", d);
    w->failed = 1;
    return -1;
}

/* The attribute's value in its own type: a variable-length string comes
 * from the global heap, which is what can crash. */
static int read_attr_value(hid_t a, hid_t t, hid_t s)
{
    hssize_t n = H5Sget_simple_extent_npoints(s);
    size_t sz = H5Tget_size(t);
    if (n < 0 || sz == 0)
        return -1;
    int vstr = H5Tis_variable_str(t) > 0;
    /* Other variable-length members are not in masters; their layout in
     * memory is not worth decoding here. */
    if (!vstr && H5Tdetect_class(t, H5T_VLEN) > 0)
        return 0;
    hid_t mt = vstr ? mbe_h5_vlen_str() : H5Tcopy(t);
    void *buf = mt >= 0 ? calloc(n ? (size_t)n : 1, vstr ? sizeof(char *) : sz)
                        : NULL;
    int rc = buf && H5Aread(a, mt, buf) >= 0 ? 0 : -1;
    if (rc == 0 && vstr)
        mbe_h5_reclaim(mt, s, buf);
    free(buf);
    if (mt >= 0)
        H5Tclose(mt);
    return rc;
}

static herr_t attr_cb(hid_t obj, const char *name, const H5A_info_t *info,
                      void *ud)
{
    (void)info;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : H5I_INVALID_HID;
    hid_t s = a >= 0 ? H5Aget_space(a) : H5I_INVALID_HID;
    int rc = t >= 0 && s >= 0 ? read_attr_value(a, t, s) : -1;
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    if (a >= 0)
        H5Aclose(a);
    return rc < 0 ? damaged(ud, name, "attribute") : 0;
}

/* Type, shape and layout, and every node of a chunk index (counting the
 * chunks visits them all). */
static int walk_dataset(hid_t ds)
{
    hid_t t = H5Dget_type(ds), s = H5Dget_space(ds);
    hid_t p = H5Dget_create_plist(ds);
    int rc = t >= 0 && s >= 0 && p >= 0 ? 0 : -1;
    hsize_t n = 0;
    if (rc == 0 && H5Pget_layout(p) == H5D_CHUNKED &&
        H5Sget_simple_extent_npoints(s) > 0)
        rc = H5Dget_num_chunks(ds, H5S_ALL, &n) < 0 ? -1 : 0;
    if (p >= 0)
        H5Pclose(p);
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    return rc;
}

static herr_t object_cb(hid_t root, const char *name,
                        const mbe_h5_oinfo *info, void *ud)
{
    walk *w = ud;
    hid_t o = H5Oopen(root, name, H5P_DEFAULT);
    if (o < 0)
        return damaged(w, name, "the object header");
    hsize_t at = 0;
    herr_t rc = H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_NATIVE, &at, attr_cb, w);
    if (rc < 0 && !w->failed)
        damaged(w, name, "the attributes");
    if (!w->failed && info->type == H5O_TYPE_DATASET && walk_dataset(o) < 0)
        damaged(w, name, "the dataset");
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
    walk w = {arg, e, 0};
    if (mbe_h5_visit(f, object_cb, &w) < 0 && !w.failed)
        damaged(&w, "/", "the groups");
    H5Fclose(f);
    return w.failed ? MBE_EFAIL : 0;
}

int mbe_master_probe(const char *path, mbe_err *e)
{
    mbe_err ve = {""};
    int sb = mbe_h5_superblock_version(path, &ve);
    /* No signature: the caller's open says so; 2 and above: libhdf5
     * verifies a checksum over each piece of metadata before it decodes
     * it. */
    if (sb < 0 || sb >= 2)
        return 0;
    return mbe_probe_isolated(path, walk_file, e);
}
