/* h5util.c - small HDF5 helpers: quiet errors, h5py-compatible types and
 * scalar attributes, durability. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mbe_internal.h"

void mbe_h5_quiet(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

struct errwalk {
    char *buf;
    size_t n;
    int err;  /* the first errno a description reports */
    int lock; /* that description is of a failed lock */
};

static herr_t walk_cb(unsigned k, const H5E_error2_t *err, void *ud)
{
    struct errwalk *w = ud;
    /* The stack is walked from the innermost error outwards with
     * H5E_WALK_UPWARD; the first description is the most specific. */
    if (k == 0 && err->desc && w->buf)
        snprintf(w->buf, w->n, "%s", err->desc);
    /* The file drivers say "..., errno = 28, error message = '...', ...",
     * with the file name, a time stamp and byte counts: the errno is all
     * a user needs of it. */
    const char *p = err->desc ? strstr(err->desc, "errno = ") : NULL;
    if (p && !w->err) {
        w->err = atoi(p + 8);
        w->lock = strstr(err->desc, "lock") != NULL;
    }
    return 0;
}

void mbe_init(void)
{
    /* Fails harmlessly when called twice or after HDF5 started. */
    (void)H5dont_atexit();
}

/* The one place where what libhdf5 says of a failed system call becomes
 * our words: strerror's, as every other message of lib/ has them. */
void mbe_h5_errdesc(char *buf, size_t n)
{
    if (!n)
        return;
    buf[0] = '\0';
    struct errwalk w = {buf, n, 0, 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &w);
    if (w.err > 0)
        snprintf(buf, n, "%s%s", w.lock ? "cannot lock the file: " : "",
                 strerror(w.err));
}

int mbe_h5_errno(void)
{
    struct errwalk w = {NULL, 0, 0, 0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &w);
    return w.err > 0 ? w.err : 0;
}

hid_t mbe_h5_vlen_str(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return t;
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    return t;
}

hid_t mbe_h5_bool_enum(void)
{
    hid_t t = H5Tenum_create(H5T_STD_I8LE);
    if (t < 0)
        return t;
    signed char f = 0, tr = 1;
    H5Tenum_insert(t, "FALSE", &f);
    H5Tenum_insert(t, "TRUE", &tr);
    return t;
}

int mbe_h5_attr_read_i64(hid_t obj, const char *name, int64_t *v)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return -1;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    int ok = t >= 0 && s >= 0 && H5Tget_class(t) == H5T_INTEGER &&
             H5Sget_simple_extent_npoints(s) == 1 &&
             H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    H5Aclose(a);
    return ok ? 0 : -1;
}

/* vlen 0: a variable-length string is not read (its value lives in the
 * global heap, which has no checksum) and -2 is returned. */
static int attr_read_str(hid_t obj, const char *name, char **v, int vlen)
{
    *v = NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return -1;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    int ok = 0;
    if (t >= 0 && s >= 0 && H5Tget_class(t) == H5T_STRING &&
        H5Sget_simple_extent_npoints(s) == 1) {
        if (H5Tis_variable_str(t) > 0 && !vlen) {
            ok = -2;
        } else if (H5Tis_variable_str(t) > 0) {
            hid_t mt = mbe_h5_vlen_str();
            char *p = NULL;
            if (H5Aread(a, mt, &p) >= 0) {
                *v = strdup(p ? p : "");
                ok = *v != NULL;
                H5free_memory(p);
            }
            H5Tclose(mt);
        } else {
            size_t sz = H5Tget_size(t);
            char *p = calloc(sz + 1, 1);
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, sz + 1);
            H5Tset_strpad(mt, H5T_STR_NULLTERM);
            /* HDF5 converts no string between character sets. */
            H5Tset_cset(mt, H5Tget_cset(t));
            if (p && H5Aread(a, mt, p) >= 0) {
                *v = p;
                ok = 1;
            } else {
                free(p);
            }
            H5Tclose(mt);
        }
    }
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    H5Aclose(a);
    return ok == -2 ? -2 : ok ? 0 : -1;
}

int mbe_h5_attr_read_str(hid_t obj, const char *name, char **v)
{
    return attr_read_str(obj, name, v, 1);
}

int mbe_h5_attr_read_fixed_str(hid_t obj, const char *name, char **v)
{
    return attr_read_str(obj, name, v, 0);
}

static int attr_write(hid_t obj, const char *name, hid_t ftype, hid_t mtype,
                      const void *buf)
{
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0)
        return -1;
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT);
    int rc = a >= 0 && H5Awrite(a, mtype, buf) >= 0 ? 0 : -1;
    if (a >= 0)
        H5Aclose(a);
    H5Sclose(s);
    return rc;
}

int mbe_h5_attr_write_i64(hid_t obj, const char *name, int64_t v)
{
    return attr_write(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

int mbe_h5_attr_write_str(hid_t obj, const char *name, const char *v)
{
    hid_t t = mbe_h5_vlen_str();
    int rc = attr_write(obj, name, t, t, &v);
    H5Tclose(t);
    return rc;
}

/* Exactly the string's bytes and a NUL, so no global heap is involved. */
int mbe_h5_attr_write_fixed_str(hid_t obj, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return -1;
    int rc = -1;
    if (H5Tset_size(t, strlen(v) + 1) >= 0 &&
        H5Tset_cset(t, H5T_CSET_UTF8) >= 0 &&
        H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0)
        rc = attr_write(obj, name, t, t, v);
    H5Tclose(t);
    return rc;
}

int mbe_h5_attr_write_bool(hid_t obj, const char *name, int v)
{
    hid_t t = mbe_h5_bool_enum();
    signed char b = v ? 1 : 0;
    int rc = attr_write(obj, name, t, t, &b);
    H5Tclose(t);
    return rc;
}

int mbe_h5_fsync(hid_t file)
{
    int *fdp = NULL;
    hid_t fapl = H5Fget_access_plist(file);
    if (fapl < 0)
        return -1;
    hid_t drv = H5Pget_driver(fapl);
    H5Pclose(fapl);
    if (drv != H5FD_SEC2)
        return 0; /* only the default POSIX driver has a descriptor */
    if (H5Fget_vfd_handle(file, H5P_DEFAULT, (void **)&fdp) < 0 || !fdp)
        return -1;
    return fsync(*fdp);
}

int mbe_fsync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    /* Some file systems refuse fsync on directories; that is not a loss. */
    if (rc < 0 && (errno == EINVAL || errno == EBADF))
        rc = 0;
    close(fd);
    return rc;
}

int mbe_h5_superblock_version(const char *path, mbe_err *e)
{
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F',
                                         '\r', '\n', 0x1a, '\n'};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mbe_fail(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int found = 0;
    unsigned char b[9];
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return mbe_fail(e, "%s: cannot stat: %s", path, strerror(err));
    }
    /* The superblock sits at 0, 512, 1024, 2048, ...; its version byte
     * follows the signature. */
    for (off_t at = 0; !found && at + 9 <= st.st_size;
         at = at ? 2 * at : 512)
        found = pread(fd, b, 9, at) == 9 && !memcmp(b, sig, 8);
    close(fd);
    return found ? b[8] : mbe_fail(e, "%s: not an HDF5 file", path);
}
