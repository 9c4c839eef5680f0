/* master.c - reading the master files of mbe_automation (master-format.md):
 * finding the frame-holding group, checking its layout, reading geometry
 * and ground-truth status of selected frames only. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5compat.h"
#include "mbe_internal.h"

#define DATACLASS "dataclass"
#define CLUSTER "cluster_of_molecules"
/* A missing key lists the candidates when there are at most this many. */
#define LIST_MAX 10

struct mbe_master {
    char *path;
    char *key;
    int writable;
    mbe_lock lock;
    hid_t file;
    hid_t group;
    int64_t n_frames;
    int64_t n_atoms;
    int periodic;
    /* Whether each dataset holds one row per frame, or one row for all
     * frames ((n_atoms, 3) positions, 1-D atomic numbers, (3, 3) cell). */
    int pos_per_frame;
    int z_per_frame;
    int mass_per_frame;
    int cell_per_frame;
    /* Names of positions and cell as this file spells them. */
    char *pos_name;
    char *cell_name;
    int spelling;           /* MBE_SPELL_* bits of the two */
};

/* ------------------------------------------------------------ messages */

/* "<file>: key '<key>': <msg>" */
static int fail_key(const mbe_master *m, mbe_err *e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_key(const mbe_master *m, mbe_err *e, const char *fmt, ...)
{
    char msg[MBE_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mbe_fail(e, "%s: key '%s': %s", m->path, m->key, msg);
}

static void h5_desc(char *buf, size_t n)
{
    mbe_h5_errdesc(buf, n);
    if (!buf[0])
        snprintf(buf, n, "HDF5 error");
}

/* numpy style: "(10, 4, 3)", "(4,)", "()". */
static void fmt_shape(char *buf, size_t n, int rank, const hsize_t *d)
{
    size_t used = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < rank && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%llu",
                                 i ? ", " : "", (unsigned long long)d[i]);
    if (used < n)
        snprintf(buf + used, n - used, rank == 1 ? ",)" : ")");
}

static const char *class_name(H5T_class_t c)
{
    switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_ENUM: return "enum";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length";
    case H5T_OPAQUE: return "opaque";
    case H5T_BITFIELD: return "bitfield";
    case H5T_REFERENCE: return "reference";
    case H5T_TIME: return "time";
    default: return "unknown";
    }
}

/* ---------------------------------------------------------- attributes */

static int has_attr(hid_t obj, const char *name)
{
    return H5Aexists(obj, name) > 0;
}

/* A boolean: h5py's numpy-bool enum, or any integer; *v is 0 or 1. */
static int read_flag_attr(hid_t obj, const char *name, int *v)
{
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0)
        return -1;
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    int ok = 0;
    if (s >= 0 && H5Sget_simple_extent_npoints(s) == 1 &&
        (c == H5T_INTEGER || c == H5T_ENUM)) {
        /* HDF5 converts enums only to enums: read the raw value in native
         * byte order; it is zero exactly when all its bytes are. */
        hid_t mt = H5Tget_native_type(t, H5T_DIR_ASCEND);
        size_t sz = mt >= 0 ? H5Tget_size(mt) : 0;
        unsigned char raw[16] = {0};
        if (sz >= 1 && sz <= sizeof raw && H5Aread(a, mt, raw) >= 0) {
            ok = 1;
            *v = 0;
            for (size_t i = 0; i < sz; i++)
                *v |= raw[i] != 0;
        }
        if (mt >= 0)
            H5Tclose(mt);
    }
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    H5Aclose(a);
    return ok ? 0 : -1;
}

static int read_count_attr(const mbe_master *m, const char *name, int64_t *v,
                           mbe_err *e)
{
    if (!has_attr(m->group, name))
        return fail_key(m, e, "missing attribute '%s'", name);
    if (mbe_h5_attr_read_i64(m->group, name, v) < 0)
        return fail_key(m, e, "attribute '%s' is not an integer scalar",
                        name);
    if (*v < 0)
        return fail_key(m, e, "attribute '%s' is negative (%lld)", name,
                        (long long)*v);
    return 0;
}

static int read_periodic(mbe_master *m, mbe_err *e)
{
    if (!has_attr(m->group, "periodic"))
        return fail_key(m, e, "missing attribute 'periodic'");
    if (read_flag_attr(m->group, "periodic", &m->periodic) < 0)
        return fail_key(m, e, "attribute 'periodic' is not a boolean or "
                              "integer scalar");
    return 0;
}

/* Every string of a string attribute (scalar or 1-D, variable or fixed
 * length) appended to out. */
static int read_str_attr_list(hid_t a, mbe_strlist *out, mbe_err *e)
{
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    hssize_t n = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    int rc = -1;
    /* h5py stores an empty list as a float64 array of length 0. */
    if (n == 0) {
        rc = 0;
    } else if (t < 0 || n < 0 || H5Tget_class(t) != H5T_STRING) {
        rc = mbe_fail(e, "not a string attribute");
    } else if (H5Tis_variable_str(t) > 0) {
        char **v = calloc((size_t)n, sizeof *v);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(t));
        if (!v) {
            rc = mbe_fail(e, "out of memory");
        } else if (H5Aread(a, mt, v) < 0) {
            rc = mbe_fail(e, "cannot read it");
        } else {
            rc = 0;
            for (hssize_t i = 0; i < n && rc == 0; i++)
                rc = mbe_strlist_push(out, v[i] ? v[i] : "", e);
            for (hssize_t i = 0; i < n; i++)
                H5free_memory(v[i]);
        }
        H5Tclose(mt);
        free(v);
    } else {
        size_t sz = H5Tget_size(t);
        int space_pad = H5Tget_strpad(t) == H5T_STR_SPACEPAD;
        char *buf = malloc((size_t)n * sz + 1), *one = malloc(sz + 1);
        hid_t mt = H5Tcopy(t);
        if (!buf || !one) {
            rc = mbe_fail(e, "out of memory");
        } else if (H5Aread(a, mt, buf) < 0) {
            rc = mbe_fail(e, "cannot read it");
        } else {
            rc = 0;
            for (hssize_t i = 0; i < n && rc == 0; i++) {
                size_t len = strnlen(buf + (size_t)i * sz, sz);
                memcpy(one, buf + (size_t)i * sz, len);
                while (space_pad && len && one[len - 1] == ' ')
                    len--;
                one[len] = '\0';
                rc = mbe_strlist_push(out, one, e);
            }
        }
        H5Tclose(mt);
        free(buf);
        free(one);
    }
    if (s >= 0)
        H5Sclose(s);
    if (t >= 0)
        H5Tclose(t);
    return rc;
}

/* The dataclass attribute of obj; NULL when it has none. */
static char *dataclass_of(hid_t obj)
{
    char *dc = NULL;
    if (has_attr(obj, DATACLASS) && mbe_h5_attr_read_str(obj, DATACLASS, &dc))
        return NULL;
    return dc;
}

static int holds_frames(const char *dc)
{
    return dc && (!strcmp(dc, "Structure") || !strcmp(dc, "Trajectory"));
}

/* ------------------------------------------------- frame-holding groups */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

struct visit {
    mbe_strlist *keys;
    mbe_err *e;
    int failed;
};

/* Whether the Structure at name is an object of its own rather than a
 * part of another: the package also stores Structures inside
 * MolecularCrystal ("supercell") and ForceConstants ("primitive",
 * "supercell"), which are not frame data.  Of the groups with a dataclass
 * above it, only a FiniteSubsystem directly above its cluster_of_molecules
 * is allowed. */
static int stands_alone(hid_t root, const char *name)
{
    char *buf = mbe_strdup(name);
    int ok = buf != NULL;
    for (char *p = buf ? strchr(buf, '/') : NULL; p && ok;
         p = strchr(p + 1, '/')) {
        *p = '\0';
        hid_t g = H5Gopen2(root, buf, H5P_DEFAULT);
        char *dc = g >= 0 ? dataclass_of(g) : NULL;
        if (g >= 0)
            H5Gclose(g);
        ok = !dc || (!strcmp(dc, "FiniteSubsystem") &&
                     !strcmp(p + 1, CLUSTER));
        free(dc);
        *p = '/';
    }
    free(buf);
    return ok;
}

static herr_t visit_one(hid_t obj, const char *name, int is_group, void *ud)
{
    struct visit *v = ud;
    if (!is_group || !strcmp(name, "."))
        return 0;
    hid_t g = H5Gopen2(obj, name, H5P_DEFAULT);
    if (g < 0)
        return 0; /* unreadable groups are not candidates */
    char *dc = dataclass_of(g);
    H5Gclose(g);
    /* A FiniteSubsystem is found through its cluster_of_molecules, a
     * Structure itself: listing both would count its frames twice. */
    int rc = holds_frames(dc) && stands_alone(obj, name)
                 ? mbe_strlist_push(v->keys, name, v->e)
                 : 0;
    free(dc);
    if (rc < 0) {
        v->failed = 1;
        return -1;
    }
    return 0;
}

static herr_t visit_cb(hid_t obj, const char *name, const mbe_h5_oinfo *info,
                       void *ud)
{
    return visit_one(obj, name, info->type == H5O_TYPE_GROUP, ud);
}

/* Keys of every Structure or Trajectory group in the file, sorted. */
int mbe_h5_frame_groups(hid_t file, const char *path, mbe_strlist *keys,
                        mbe_err *e)
{
    keys->v = NULL;
    keys->n = 0;
    struct visit v = {keys, e, 0};
    if (mbe_h5_visit(file, visit_cb, &v) < 0) {
        if (!v.failed) {
            char d[256];
            h5_desc(d, sizeof d);
            mbe_fail(e, "%s: cannot list its groups: %s", path, d);
        }
        mbe_strlist_free(keys);
        return MBE_EFAIL;
    }
    if (keys->n > 1)
        qsort(keys->v, keys->n, sizeof *keys->v, cmp_str);
    return 0;
}

/* "a, b, c" of at most max keys ("" when there are more). */
static void join_keys(char *buf, size_t n, const mbe_strlist *l, size_t max)
{
    buf[0] = '\0';
    if (l->n > max)
        return;
    size_t used = 0;
    for (size_t i = 0; i < l->n && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? ", " : "",
                                 l->v[i]);
}

/* ---------------------------------------------------- opening the file */

/* 1 when path starts like an HDF5 file, 0 when not, negative on errors. */
static htri_t is_hdf5(const char *path)
{
    return mbe_h5_is_hdf5(path);
}

static int open_file(const char *path, int writable, hid_t *file, mbe_err *e)
{
    *file = H5Fopen(path, writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY,
                    H5P_DEFAULT);
    if (*file >= 0)
        return 0;
    char d[256];
    int err = mbe_h5_errno();
    h5_desc(d, sizeof d);
    if (access(path, writable ? R_OK | W_OK : R_OK) < 0)
        return mbe_fail(e, "%s: %s", path, strerror(errno));
    if (is_hdf5(path) <= 0)
        return mbe_fail(e, "%s: not an HDF5 file", path);
    /* HDF5 (1.10+) flock()s the file itself: EAGAIN means someone holds
     * it open, anything else a file system without locks. */
    if (strstr(d, "cannot lock"))
        return mbe_fail(e, "%s: cannot open the HDF5 file: %s (%s)", path, d,
                        err == EAGAIN
                            ? "another process has it open without taking "
                              "its .lock, e.g. h5py in a notebook"
                            : "on file systems without locking set "
                              "HDF5_USE_FILE_LOCKING=FALSE");
    return mbe_fail(e, "%s: not a readable HDF5 file: %s", path, d);
}

static int check_path(const char *path, mbe_err *e)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return mbe_fail(e, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return mbe_fail(e, "%s: %s", path, strerror(EISDIR));
    return 0;
}

/* Whether every group on the way to key and key itself exist (H5Lexists
 * fails rather than answers when a parent is missing). */
static int key_exists(hid_t file, const char *key)
{
    char *buf = mbe_strdup(key);
    if (!buf)
        return 0;
    int ok = 1;
    for (char *p = strchr(buf + 1, '/'); p && ok; p = strchr(p + 1, '/')) {
        *p = '\0';
        ok = H5Lexists(file, buf, H5P_DEFAULT) > 0;
        *p = '/';
    }
    ok = ok && H5Lexists(file, buf, H5P_DEFAULT) > 0;
    free(buf);
    return ok;
}

static int no_group_error(mbe_master *m, mbe_err *e)
{
    mbe_strlist keys;
    char list[MBE_ERR_LEN / 2];
    if (mbe_h5_frame_groups(m->file, m->path, &keys, e) < 0)
        return mbe_fail(e, "%s: no group '%s'", m->path, m->key);
    join_keys(list, sizeof list, &keys, LIST_MAX);
    if (keys.n == 0)
        mbe_fail(e, "%s: no group '%s' (the file holds no frame-holding "
                    "group)", m->path, m->key);
    else if (list[0])
        mbe_fail(e, "%s: no group '%s'; frame-holding groups: %s", m->path,
                 m->key, list);
    else
        mbe_fail(e, "%s: no group '%s' (the file holds %zu frame-holding "
                    "groups)", m->path, m->key, keys.n);
    mbe_strlist_free(&keys);
    return MBE_EFAIL;
}

static int choose_key(mbe_master *m, mbe_err *e)
{
    mbe_strlist keys;
    char list[MBE_ERR_LEN / 2];
    if (mbe_h5_frame_groups(m->file, m->path, &keys, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    if (keys.n == 0) {
        rc = mbe_fail(e, "no frame-holding group in %s (no Structure, "
                         "Trajectory or FiniteSubsystem)", m->path);
    } else if (keys.n > 1) {
        join_keys(list, sizeof list, &keys, (size_t)-1);
        rc = mbe_fail(e, "several frame-holding groups in %s: %s; choose one "
                         "with --key", m->path, list);
    } else {
        m->key = keys.v[0];
        keys.v[0] = NULL;
        keys.n = 0;
    }
    mbe_strlist_free(&keys);
    return rc;
}

char *mbe_normal_key(const char *key)
{
    while (*key == '/')
        key++;
    size_t n = strlen(key);
    while (n && key[n - 1] == '/')
        n--;
    return n ? strndup(key, n) : mbe_strdup("/");
}

static int open_key(mbe_master *m, mbe_err *e)
{
    if (!key_exists(m->file, m->key))
        return no_group_error(m, e);
    hid_t g = H5Oopen(m->file, m->key, H5P_DEFAULT);
    if (g < 0) {
        char d[256];
        h5_desc(d, sizeof d);
        return mbe_fail(e, "%s: cannot open group '%s': %s", m->path, m->key,
                        d);
    }
    H5I_type_t t = H5Iget_type(g);
    if (t != H5I_GROUP) {
        H5Oclose(g);
        return mbe_fail(e, "%s: '%s' is %s, not a group", m->path, m->key,
                        t == H5I_DATASET ? "a dataset" : "no group");
    }
    m->group = g;
    return 0;
}

/* A FiniteSubsystem's frames are those of its cluster_of_molecules. */
static int enter_cluster(mbe_master *m, mbe_err *e)
{
    if (H5Lexists(m->group, CLUSTER, H5P_DEFAULT) <= 0)
        return fail_key(m, e, "FiniteSubsystem without a '%s' group",
                        CLUSTER);
    char *sub = mbe_asprintf("%s/%s", m->key, CLUSTER);
    if (!sub)
        return mbe_fail(e, "out of memory");
    free(m->key);
    m->key = sub;
    H5Gclose(m->group);
    if ((m->group = H5Gopen2(m->file, m->key, H5P_DEFAULT)) < 0)
        return fail_key(m, e, "cannot open the group");
    return 0;
}

static int open_group(mbe_master *m, mbe_err *e)
{
    if (open_key(m, e) < 0)
        return MBE_EFAIL;
    char *dc = dataclass_of(m->group);
    if (dc && !strcmp(dc, "FiniteSubsystem")) {
        free(dc);
        if (enter_cluster(m, e) < 0)
            return MBE_EFAIL;
        dc = dataclass_of(m->group);
    }
    int rc = 0;
    if (!dc)
        rc = fail_key(m, e, "no '%s' attribute (expected Structure, "
                            "Trajectory or FiniteSubsystem)", DATACLASS);
    else if (!holds_frames(dc))
        rc = fail_key(m, e, "dataclass is %s, which holds no frames "
                            "(expected Structure, Trajectory or "
                            "FiniteSubsystem)", dc);
    free(dc);
    return rc;
}

/* -------------------------------------------------------------- layout */

typedef struct shape {
    int rank;
    hsize_t d[3];
    int per_frame;
} shape;

static hid_t open_dataset(const mbe_master *m, hid_t loc, const char *name,
                          mbe_err *e)
{
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) {
        fail_key(m, e, "missing dataset '%s'", name);
        return -1;
    }
    hid_t o = H5Oopen(loc, name, H5P_DEFAULT);
    if (o >= 0 && H5Iget_type(o) == H5I_DATASET)
        return o;
    if (o >= 0)
        H5Oclose(o);
    fail_key(m, e, "'%s' is not a dataset", name);
    return -1;
}

/* Numbers only: integers always, floats when allow_float. */
static int check_type(const mbe_master *m, hid_t ds, const char *name,
                      int allow_float, mbe_err *e)
{
    hid_t t = H5Dget_type(ds);
    H5T_class_t c = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    size_t sz = t >= 0 ? H5Tget_size(t) : 0;
    if (t >= 0)
        H5Tclose(t);
    if (c == H5T_INTEGER || (allow_float && c == H5T_FLOAT))
        return 0;
    if (c == H5T_NO_CLASS)
        return fail_key(m, e, "cannot read the type of dataset '%s'", name);
    return fail_key(m, e, "dataset '%s' has type %s (%zu bytes), expected "
                          "%s", name, class_name(c), sz,
                    allow_float ? "float64" : "an integer type");
}

static int shape_is(const shape *s, int rank, const hsize_t *d)
{
    if (s->rank != rank)
        return 0;
    for (int i = 0; i < rank; i++)
        if (s->d[i] != d[i])
            return 0;
    return 1;
}

/* Match the dataset's shape against the n_ok accepted ones. */
static int check_shape(const mbe_master *m, hid_t ds, const char *name,
                       const shape *ok, int n_ok, int *per_frame, mbe_err *e)
{
    hsize_t d[H5S_MAX_RANK];
    hid_t s = H5Dget_space(ds);
    int rank = s >= 0 ? H5Sget_simple_extent_dims(s, d, NULL) : -1;
    if (s >= 0)
        H5Sclose(s);
    if (rank < 0)
        return fail_key(m, e, "cannot read the shape of dataset '%s'", name);
    for (int i = 0; i < n_ok; i++) {
        if (shape_is(&ok[i], rank, d)) {
            *per_frame = ok[i].per_frame;
            return 0;
        }
    }
    char found[128], want[128], alt[128] = "";
    fmt_shape(found, sizeof found, rank, d);
    fmt_shape(want, sizeof want, ok[0].rank, ok[0].d);
    if (n_ok > 1) {
        size_t k = (size_t)snprintf(alt, sizeof alt, " or ");
        fmt_shape(alt + k, sizeof alt - k, ok[1].rank, ok[1].d);
    }
    return fail_key(m, e, "dataset '%s' has shape %s, expected %s%s "
                          "(n_frames=%lld, n_atoms=%lld)", name, found, want,
                    alt, (long long)m->n_frames, (long long)m->n_atoms);
}

static int check_dataset(const mbe_master *m, const char *name,
                         int allow_float, const shape *ok, int n_ok,
                         int *per_frame, mbe_err *e)
{
    hid_t ds = open_dataset(m, m->group, name, e);
    if (ds < 0)
        return MBE_EFAIL;
    int rc = check_type(m, ds, name, allow_float, e);
    if (rc == 0)
        rc = check_shape(m, ds, name, ok, n_ok, per_frame, e);
    H5Dclose(ds);
    return rc;
}

/* Which spelling the file uses for name; a missing dataset is reported
 * under the package's name. */
static int resolve_name(mbe_master *m, const char *name, char **out,
                        mbe_err *e)
{
    int sp;
    *out = mbe_h5_existing_name(m->group, name, &sp);
    if (*out) {
        m->spelling |= sp & MBE_SPELL_PACKAGE ? MBE_SPELL_PACKAGE
                                              : MBE_SPELL_0_2;
        return 0;
    }
    return fail_key(m, e, "missing dataset '%s'", name);
}

static int check_layout(mbe_master *m, mbe_err *e)
{
    if (read_count_attr(m, "n_frames", &m->n_frames, e) < 0 ||
        read_count_attr(m, "n_atoms", &m->n_atoms, e) < 0 ||
        read_periodic(m, e) < 0)
        return MBE_EFAIL;
    hsize_t nf = (hsize_t)m->n_frames, na = (hsize_t)m->n_atoms;
    shape pos[] = {{3, {nf, na, 3}, 1}, {2, {na, 3, 0}, 0}};
    shape per_atom[] = {{1, {na, 0, 0}, 0}, {2, {nf, na, 0}, 1}};
    shape cell[] = {{2, {3, 3, 0}, 0}, {3, {nf, 3, 3}, 1}};
    /* (n_atoms, 3) positions are a single frame's. */
    if (resolve_name(m, MBE_DS_POSITIONS, &m->pos_name, e) < 0 ||
        check_dataset(m, m->pos_name, 1, pos, nf == 1 ? 2 : 1,
                      &m->pos_per_frame, e) < 0 ||
        check_dataset(m, MBE_DS_ATOMIC_NUMBERS, 0, per_atom, 2,
                      &m->z_per_frame, e) < 0 ||
        check_dataset(m, MBE_DS_MASSES, 1, per_atom, 2, &m->mass_per_frame,
                      e) < 0)
        return MBE_EFAIL;
    if (!m->periodic)
        return 0;
    if (resolve_name(m, MBE_DS_CELL, &m->cell_name, e) < 0) {
        fail_key(m, e, "periodic is true but dataset '%s' is missing",
                 MBE_DS_CELL);
        return MBE_EFAIL;
    }
    return check_dataset(m, m->cell_name, 1, cell, 2, &m->cell_per_frame, e);
}

/* ------------------------------------------------------- open and close */

static void master_free(mbe_master *m)
{
    if (m->group >= 0)
        H5Gclose(m->group);
    if (m->file >= 0)
        H5Fclose(m->file);
    mbe_lock_release(&m->lock);
    free(m->path);
    free(m->key);
    free(m->pos_name);
    free(m->cell_name);
    free(m);
}

/* lk NULL: the caller holds the lock (mbe-merge, under its exclusive
 * lock): a second flock of the file from this process would wait for the
 * first.  That caller probed the master under its lock (mbe_master_check),
 * once for all the keys it opens. */
static int master_open(const char *path, const char *key, int writable,
                       const mbe_lock_opts *lk, int check, mbe_master **out,
                       mbe_err *e)
{
    *out = NULL;
    mbe_h5_quiet();
    /* Checked before locking, so that a mistyped path leaves no stray
     * "<path>.lock" behind. */
    if (check_path(path, e) < 0)
        return MBE_EFAIL;
    mbe_master *m = calloc(1, sizeof *m);
    if (!m)
        return mbe_fail(e, "out of memory");
    m->file = m->group = -1;
    m->lock.fd = -1;
    m->writable = writable;
    if (!(m->path = mbe_strdup(path)) ||
        (key && *key && !(m->key = mbe_normal_key(key)))) {
        master_free(m);
        return mbe_fail(e, "out of memory");
    }
    int rc = lk ? mbe_lock_acquire(path, writable, lk, &m->lock, e) : 0;
    if (rc == 0 && check)
        rc = mbe_master_check(path, e);
    if (rc == 0)
        rc = open_file(path, writable, &m->file, e);
    if (rc == 0 && !m->key)
        rc = choose_key(m, e);
    if (rc == 0)
        rc = open_group(m, e);
    if (rc == 0)
        rc = check_layout(m, e);
    if (rc < 0) {
        master_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int mbe_master_open(const char *path, const char *key, int writable,
                    const mbe_lock_opts *lk, mbe_master **out, mbe_err *e)
{
    mbe_lock_opts defaults = {MBE_LOCK_TIMEOUT_DEFAULT, NULL, NULL};
    return master_open(path, key, writable, lk ? lk : &defaults, 1, out, e);
}

int mbe_master_open_checked(const char *path, const char *key, int writable,
                            const mbe_lock_opts *lk, mbe_master **out,
                            mbe_err *e)
{
    mbe_lock_opts defaults = {MBE_LOCK_TIMEOUT_DEFAULT, NULL, NULL};
    return master_open(path, key, writable, lk ? lk : &defaults, 0, out, e);
}

int mbe_master_open_held(const char *path, const char *key, mbe_master **out,
                         mbe_err *e)
{
    return master_open(path, key, 0, NULL, 0, out, e);
}

int mbe_master_close(mbe_master *m, mbe_err *e)
{
    if (!m)
        return 0;
    mbe_h5_quiet();
    int rc = 0;
    char d[256];
    if (m->writable && (H5Fflush(m->file, H5F_SCOPE_GLOBAL) < 0 ||
                        mbe_h5_fsync(m->file) < 0)) {
        h5_desc(d, sizeof d);
        rc = mbe_fail(e, "%s: cannot write it to disk: %s", m->path, d);
    }
    if (m->group >= 0)
        H5Gclose(m->group);
    m->group = -1;
    if (H5Fclose(m->file) < 0 && rc == 0) {
        h5_desc(d, sizeof d);
        rc = mbe_fail(e, "%s: cannot close it: %s", m->path, d);
    }
    m->file = -1;
    master_free(m);
    return rc;
}

const char *mbe_master_path(const mbe_master *m) { return m->path; }
const char *mbe_master_key(const mbe_master *m) { return m->key; }
int64_t mbe_master_n_frames(const mbe_master *m) { return m->n_frames; }
int64_t mbe_master_n_atoms(const mbe_master *m) { return m->n_atoms; }
int mbe_master_periodic(const mbe_master *m) { return m->periodic; }
int mbe_master_spelling(const mbe_master *m) { return m->spelling; }

int mbe_master_list_groups(mbe_master *m, mbe_strlist *keys, mbe_err *e)
{
    mbe_h5_quiet();
    return mbe_h5_frame_groups(m->file, m->path, keys, e);
}

int mbe_list_frame_groups(const char *path, const mbe_lock_opts *lk,
                          mbe_strlist *keys, mbe_err *e)
{
    keys->v = NULL;
    keys->n = 0;
    mbe_h5_quiet();
    if (check_path(path, e) < 0)
        return MBE_EFAIL;
    mbe_lock lock;
    int rc = mbe_lock_acquire(path, 0, lk, &lock, e);
    if (rc < 0)
        return rc;
    hid_t file = H5I_INVALID_HID;
    rc = mbe_master_check(path, e);
    if (rc == 0)
        rc = open_file(path, 0, &file, e);
    if (rc == 0) {
        rc = mbe_h5_frame_groups(file, path, keys, e);
        H5Fclose(file);
    }
    mbe_lock_release(&lock);
    return rc;
}

/* ------------------------------------------------------ reading frames */

static int check_sel(const mbe_master *m, const mbe_frames *sel, mbe_err *e)
{
    for (size_t k = 0; k < sel->n; k++) {
        int64_t f = sel->idx[k];
        if (f < 0 || f >= m->n_frames)
            return fail_key(m, e, "frame %lld out of range (n_frames=%lld)",
                            (long long)f, (long long)m->n_frames);
        if (k && f <= sel->idx[k - 1])
            return fail_key(m, e, "frame selection not in ascending order "
                                  "at frame %lld", (long long)f);
    }
    return 0;
}

/* Rows (the first dimension is the frame) of the frames in sel, each
 * row_len values of mtype, into buf.  Runs of consecutive frames are one
 * hyperslab read each: memory and I/O follow the selection, not n_frames;
 * one H5Dread per run avoids HDF5 1.10's slow unions of hyperslabs. */
static int read_rows(hid_t ds, hid_t mtype, size_t row_len,
                     const mbe_frames *sel, void *buf)
{
    hid_t fs = H5Dget_space(ds);
    hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
    int rank = fs >= 0 ? H5Sget_simple_extent_dims(fs, count, NULL) : -1;
    size_t elsize = H5Tget_size(mtype);
    int rc = rank >= 1 ? 0 : -1;
    for (size_t k = 0, end; rc == 0 && k < sel->n && row_len; k = end) {
        for (end = k + 1; end < sel->n && sel->idx[end] == sel->idx[end - 1] + 1;
             end++)
            ;
        start[0] = (hsize_t)sel->idx[k];
        count[0] = end - k;
        hsize_t n_mem = (hsize_t)(end - k) * row_len;
        hid_t ms = H5Screate_simple(1, &n_mem, NULL);
        if (ms < 0 ||
            H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count,
                                NULL) < 0 ||
            H5Dread(ds, mtype, ms, fs, H5P_DEFAULT,
                    (char *)buf + k * row_len * elsize) < 0)
            rc = -1;
        if (ms >= 0)
            H5Sclose(ms);
    }
    if (fs >= 0)
        H5Sclose(fs);
    return rc;
}

/* A dataset shared by all frames, read once and copied to each of the n
 * frames' rows. */
static int read_shared(hid_t ds, hid_t mtype, size_t row_len, size_t n,
                       void *buf)
{
    if (!n || !row_len)
        return 0;
    if (H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        return -1;
    size_t row = row_len * H5Tget_size(mtype);
    for (size_t k = 1; k < n; k++)
        memcpy((char *)buf + k * row, buf, row);
    return 0;
}

static int read_part(const mbe_master *m, const char *name, int per_frame,
                     hid_t mtype, size_t row_len, const mbe_frames *sel,
                     void *buf, mbe_err *e)
{
    hid_t ds = open_dataset(m, m->group, name, e);
    if (ds < 0)
        return MBE_EFAIL;
    int rc = per_frame ? read_rows(ds, mtype, row_len, sel, buf)
                       : read_shared(ds, mtype, row_len, sel->n, buf);
    if (rc < 0) {
        char d[256];
        h5_desc(d, sizeof d);
        fail_key(m, e, "cannot read dataset '%s': %s", name, d);
    }
    H5Dclose(ds);
    return rc < 0 ? MBE_EFAIL : 0;
}

/* malloc of n items that never returns NULL for n == 0, so that NULL
 * always means out of memory. */
static void *alloc_items(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return NULL;
    return malloc(bytes ? bytes : 1);
}

static int alloc_geometry(mbe_geometry *g, size_t n, size_t na, int periodic)
{
    size_t per_frame;
    if (__builtin_mul_overflow(na, (size_t)3, &per_frame))
        return -1;
    g->index = alloc_items(n, sizeof *g->index);
    g->positions = alloc_items(n, per_frame * sizeof *g->positions);
    g->atomic_numbers = alloc_items(n, na * sizeof *g->atomic_numbers);
    g->masses = alloc_items(n, na * sizeof *g->masses);
    if (periodic)
        g->cells = alloc_items(n, 9 * sizeof *g->cells);
    return g->index && g->positions && g->atomic_numbers && g->masses &&
                   (!periodic || g->cells)
               ? 0
               : -1;
}

int mbe_master_read_geometry(mbe_master *m, const mbe_frames *sel,
                             mbe_geometry *g, mbe_err *e)
{
    memset(g, 0, sizeof *g);
    mbe_h5_quiet();
    if (check_sel(m, sel, e) < 0)
        return MBE_EFAIL;
    size_t n = sel->n, na = (size_t)m->n_atoms;
    if (alloc_geometry(g, n, na, m->periodic) < 0) {
        mbe_geometry_free(g);
        return fail_key(m, e, "out of memory for the geometry of %zu frames",
                        n);
    }
    g->n = n;
    g->n_atoms = m->n_atoms;
    g->periodic = m->periodic;
    if (n)
        memcpy(g->index, sel->idx, n * sizeof *g->index);
    int rc = read_part(m, m->pos_name, m->pos_per_frame,
                       H5T_NATIVE_DOUBLE, na * 3, sel, g->positions, e);
    if (rc == 0)
        rc = read_part(m, MBE_DS_ATOMIC_NUMBERS, m->z_per_frame,
                       H5T_NATIVE_INT64, na, sel, g->atomic_numbers, e);
    if (rc == 0)
        rc = read_part(m, MBE_DS_MASSES, m->mass_per_frame, H5T_NATIVE_DOUBLE,
                       na, sel, g->masses, e);
    if (rc == 0 && m->periodic)
        rc = read_part(m, m->cell_name, m->cell_per_frame, H5T_NATIVE_DOUBLE,
                       9, sel, g->cells, e);
    if (rc < 0)
        mbe_geometry_free(g);
    return rc;
}

/* -------------------------------------------------------- ground truth */

/* The ground_truth group, or 0 when there is none (-1 on errors). */
static hid_t open_gt(const mbe_master *m, mbe_err *e)
{
    if (H5Lexists(m->group, MBE_GROUP_GT, H5P_DEFAULT) <= 0)
        return 0;
    hid_t g = H5Oopen(m->group, MBE_GROUP_GT, H5P_DEFAULT);
    if (g >= 0 && H5Iget_type(g) == H5I_GROUP)
        return g;
    if (g >= 0)
        H5Oclose(g);
    fail_key(m, e, "'%s' is not a group", MBE_GROUP_GT);
    return -1;
}

int mbe_master_levels(mbe_master *m, mbe_strlist *levels, mbe_err *e)
{
    levels->v = NULL;
    levels->n = 0;
    mbe_h5_quiet();
    hid_t gt = open_gt(m, e);
    if (gt <= 0)
        return gt < 0 ? MBE_EFAIL : 0;
    int rc = 0;
    if (has_attr(gt, MBE_ATTR_LEVELS)) {
        hid_t a = H5Aopen(gt, MBE_ATTR_LEVELS, H5P_DEFAULT);
        mbe_err why = {"cannot open it"};
        if (a < 0 || read_str_attr_list(a, levels, &why) < 0) {
            rc = fail_key(m, e, "attribute '%s/%s': %s", MBE_GROUP_GT,
                          MBE_ATTR_LEVELS, why.msg);
            mbe_strlist_free(levels);
        }
        if (a >= 0)
            H5Aclose(a);
    }
    H5Gclose(gt);
    if (rc == 0 && levels->n > 1)
        qsort(levels->v, levels->n, sizeof *levels->v, cmp_str);
    return rc;
}

static int gt_has(hid_t gt, const char *name)
{
    return name && H5Lexists(gt, name, H5P_DEFAULT) > 0;
}

/* A per-frame dataset of ground_truth, shape (n_frames,), for the frames
 * in sel: integers always, floats when allow_float. */
static int read_gt_column(const mbe_master *m, hid_t gt, const char *name,
                          int allow_float, hid_t mtype, const mbe_frames *sel,
                          void *buf, mbe_err *e)
{
    char full[512];
    snprintf(full, sizeof full, "%s/%s", MBE_GROUP_GT, name);
    hid_t ds = open_dataset(m, gt, name, e);
    if (ds < 0)
        return MBE_EFAIL;
    int per_frame = 1;
    shape ok[] = {{1, {(hsize_t)m->n_frames, 0, 0}, 1}};
    int rc = check_type(m, ds, full, allow_float, e);
    if (rc == 0)
        rc = check_shape(m, ds, full, ok, 1, &per_frame, e);
    if (rc == 0 && read_rows(ds, mtype, 1, sel, buf) < 0) {
        char d[256];
        h5_desc(d, sizeof d);
        rc = fail_key(m, e, "cannot read dataset '%s': %s", full, d);
    }
    H5Dclose(ds);
    return rc;
}

/* Callers index tables by status: a value outside the enum is refused
 * here rather than trusted. */
static int read_status_ds(const mbe_master *m, hid_t gt, const char *name,
                          const mbe_frames *sel, int64_t *status, mbe_err *e)
{
    if (read_gt_column(m, gt, name, 0, H5T_NATIVE_INT64, sel, status, e) < 0)
        return MBE_EFAIL;
    for (size_t k = 0; k < sel->n; k++)
        if (status[k] < 0 || status[k] >= MBE_N_STATUS)
            return fail_key(m, e, "dataset '%s/%s' holds %lld for frame "
                                  "%lld, not a status code (0-%d)",
                            MBE_GROUP_GT, name, (long long)status[k],
                            (long long)sel->idx[k], MBE_N_STATUS - 1);
    return 0;
}

int mbe_master_read_status(mbe_master *m, const char *level,
                           const mbe_frames *sel, int64_t *status,
                           mbe_err *e)
{
    mbe_h5_quiet();
    if (check_sel(m, sel, e) < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(m, e);
    if (gt < 0)
        return MBE_EFAIL;
    char *sname = mbe_gt_status_name(level);
    char *ename = mbe_gt_energy_name(level);
    char *fname = mbe_gt_forces_name(level);
    int rc = 0;
    if (!sname || !ename || !fname) {
        rc = mbe_fail(e, "out of memory");
    } else if (gt > 0 && gt_has(gt, sname)) {
        rc = read_status_ds(m, gt, sname, sel, status, e);
    } else {
        /* Results without status come from files older than the status
         * datasets: the package treats them as COMPLETED. */
        int legacy = gt > 0 && (gt_has(gt, ename) ||
                                mbe_h5_spellings(gt, fname) > 0);
        for (size_t k = 0; k < sel->n; k++)
            status[k] = legacy ? MBE_COMPLETED : MBE_UNDEFINED;
    }
    free(sname);
    free(ename);
    free(fname);
    if (gt > 0)
        H5Gclose(gt);
    return rc;
}

/* ---------------------------------------- the package's view of a level */

/* The attribute of a frame-holding group naming the model that generated
 * its geometries. */
#define ATTR_GENERATOR "level_of_theory"

/* 1 when level is the group's level_of_theory as the package compares
 * them (==): h5py reads a variable-length string as str, equal by value,
 * and a fixed-length one as bytes, which never equals a str. */
static int is_generator(const mbe_master *m, const char *level, mbe_err *e)
{
    if (!has_attr(m->group, ATTR_GENERATOR))
        return 0;
    hid_t a = H5Aopen(m->group, ATTR_GENERATOR, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    int vlen = t >= 0 && H5Tget_class(t) == H5T_STRING &&
               H5Tis_variable_str(t) > 0;
    if (t >= 0)
        H5Tclose(t);
    if (a >= 0)
        H5Aclose(a);
    if (!vlen)
        return 0;
    char *v = NULL;
    if (mbe_h5_attr_read_str(m->group, ATTR_GENERATOR, &v) < 0)
        return fail_key(m, e, "attribute '%s': cannot read it",
                        ATTR_GENERATOR);
    int same = strcmp(v, level) == 0;
    free(v);
    return same;
}

static int is_listed(mbe_master *m, const char *level, mbe_err *e)
{
    mbe_strlist levels;
    if (mbe_master_levels(m, &levels, e) < 0)
        return MBE_EFAIL;
    int listed = 0;
    for (size_t i = 0; i < levels.n && !listed; i++)
        listed = strcmp(levels.v[i], level) == 0;
    mbe_strlist_free(&levels);
    return listed;
}

/* 1 when ground_truth holds a status, energy or forces dataset of level. */
static int is_stored(const mbe_master *m, const char *level, mbe_err *e)
{
    hid_t gt = open_gt(m, e);
    if (gt <= 0)
        return gt < 0 ? MBE_EFAIL : 0;
    char *names[] = {mbe_gt_status_name(level), mbe_gt_energy_name(level),
                     mbe_gt_forces_name(level)};
    int stored = 0, oom = 0;
    for (int k = 0; k < 3; k++) {
        oom |= !names[k];
        /* Forces may carry the 0.2 spelling. */
        stored |= k == 2 && names[k] ? mbe_h5_spellings(gt, names[k]) > 0
                                     : gt_has(gt, names[k]);
        free(names[k]);
    }
    H5Gclose(gt);
    return oom ? mbe_fail(e, "out of memory") : stored;
}

int mbe_master_level_view(mbe_master *m, const char *level,
                          mbe_level_view *view, mbe_err *e)
{
    mbe_h5_quiet();
    int r = is_generator(m, level, e);
    if (r > 0)
        *view = MBE_LEVEL_GENERATOR;
    else if (r == 0 && (r = is_listed(m, level, e)) > 0)
        *view = MBE_LEVEL_LISTED;
    else if (r == 0 && (r = is_stored(m, level, e)) >= 0)
        *view = r ? MBE_LEVEL_HIDDEN : MBE_LEVEL_ABSENT;
    return r < 0 ? MBE_EFAIL : 0;
}

int mbe_master_read_visible_status(mbe_master *m, const char *level,
                                   const mbe_frames *sel, int64_t *status,
                                   mbe_err *e)
{
    mbe_level_view view;
    if (check_sel(m, sel, e) < 0 ||
        mbe_master_level_view(m, level, &view, e) < 0)
        return MBE_EFAIL;
    if (view == MBE_LEVEL_LISTED)
        return mbe_master_read_status(m, level, sel, status, e);
    for (size_t k = 0; k < sel->n; k++)
        status[k] = view == MBE_LEVEL_GENERATOR ? MBE_COMPLETED
                                                : MBE_UNDEFINED;
    return 0;
}

int mbe_master_read_energies(mbe_master *m, const char *level,
                             const mbe_frames *sel, double *energy,
                             mbe_err *e)
{
    mbe_h5_quiet();
    if (check_sel(m, sel, e) < 0)
        return MBE_EFAIL;
    hid_t gt = open_gt(m, e);
    if (gt < 0)
        return MBE_EFAIL;
    char *ename = mbe_gt_energy_name(level);
    int rc = 0;
    if (!ename) {
        rc = mbe_fail(e, "out of memory");
    } else if (gt > 0 && gt_has(gt, ename)) {
        rc = read_gt_column(m, gt, ename, 1, H5T_NATIVE_DOUBLE, sel, energy,
                            e);
    } else {
        for (size_t k = 0; k < sel->n; k++)
            energy[k] = NAN;
    }
    free(ename);
    if (gt > 0)
        H5Gclose(gt);
    return rc;
}
