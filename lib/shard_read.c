/* shard_read.c - the validating reader of shard files (mbe-shard(5)):
 * opens a shard or one member of a bundle, checks its layout, meta and
 * index before anything is used, and reads and verifies its rows.
 *
 * A file whose metadata libhdf5 checksums (superblock 2, fixed-length
 * strings, contiguous or compact datasets: what mbe-compute writes) is
 * opened directly; any other (version 1 shards, files rewritten by h5py)
 * is opened in a child process first, because libhdf5 crashes or loops on
 * some damaged ones (fuzz/README).  The layout is in shard_format.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shard_format.h"

/* Bad frames named in a failed verify's message. */
#define SH_BAD_SHOWN 5

struct mbe_shard_reader {
    char *path;       /* the file */
    char *name;       /* in messages: the path, "<path>:/<i>" for member i
                         of a bundle */
    hid_t file;
    hid_t loc;        /* the member: the root, or group <i> of a bundle */
    size_t member, n_members;
    int bundle;
    hid_t forces;
    mbe_shard_meta meta;
    mbe_frames frames;
    int64_t *status;
    double *energy;
    uint32_t *crc;
    uint32_t *geom;
    int64_t index_crc;
    /* After mbe_shard_reader_detach: forces read with pread at this offset
     * of a file opened for each read. */
    int detached;
    uint64_t forces_off;
    int fd;           /* the file, kept open after detach; -1: reopened by
                         path for each read, and checked to be the same */
    dev_t dev;
    ino_t ino;
    off_t size;       /* of the file when opened */
    int finished;
    int running;
    /* Trusted: only metadata that libhdf5 checksums before it decodes it
     * is read (superblock 2+, fixed-length strings, contiguous or compact
     * datasets); anything else sets isolate and fails (mbe_shard_open). */
    int trusted;
    int isolate;
    char end_time[SH_END_TIME_LEN + 1];
};

static int reader_open_file(mbe_shard_reader *r, mbe_err *e)
{
    struct stat st;
    if (stat(r->path, &st) < 0)
        return sh_sysfail(e, r->name, "cannot open");
    if (!S_ISREG(st.st_mode))
        return mbe_fail(e, "%s: not a regular file", r->name);
    r->size = st.st_size;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    int sb = mbe_h5_superblock_version(r->path, e);
    if (sb < 0)
        return MBE_EFAIL;
    if (r->trusted && sb < 2) {
        r->isolate = 1; /* no checksums below version 2 */
        return mbe_fail(e, "%s: superblock version %d", r->name, sb);
    }
    r->running = sh_writer_running(r->path);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return sh_h5fail(e, r->name, "cannot set up file access");
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    /* As the writer's (writer_fapl): HDF5 refuses a second open of a file
     * with other locking settings, and a live writer holds no flock. */
    H5Pset_file_locking(fapl, 0, 1);
    r->file = H5Fopen(r->path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (r->file >= 0)
        return 0;
    h5desc_t d = sh_h5desc();
    if (strstr(d.s, "lock"))
        return mbe_failc(e, MBE_EBUSY, "%s: cannot open (is a job still "
                         "writing it?): %s", r->name, d.s);
    return mbe_fail(e, "%s: truncated or damaged HDF5 file: %s", r->name,
                    d.s);
}

/* Strings of the meta: fixed-length ones only when trusted. */
static int reader_str(mbe_shard_reader *r, hid_t loc, const char *name,
                      char **v)
{
    if (!r->trusted)
        return mbe_h5_attr_read_str(loc, name, v);
    int rc = mbe_h5_attr_read_fixed_str(loc, name, v);
    if (rc == -2)
        r->isolate = 1;
    return rc;
}

/* Why libhdf5 cannot read the variable-length string attribute name of
 * a file: the innermost error of a read of it ("" when it reads, or is
 * no such string).  libhdf5 1.14 detects the damaged global heap that
 * holds the string, where 1.10 may crash (h5compat.h); the error of the
 * first read is gone with the calls that closed its objects. */
static h5desc_t sh_vlen_str_unreadable(hid_t obj, const char *name)
{
    h5desc_t d = {""};
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : H5I_INVALID_HID;
    hid_t sp = a >= 0 ? H5Aget_space(a) : H5I_INVALID_HID;
    /* One string only: a damaged file may make it an array of them, which
     * would be read past p (found by fuzz_shard_layout). */
    if (t >= 0 && sp >= 0 && H5Sget_simple_extent_npoints(sp) == 1 &&
        H5Tis_variable_str(t) > 0) {
        hid_t mt = mbe_h5_vlen_str();
        char *p = NULL;
        if (H5Aread(a, mt, &p) < 0)
            d = sh_h5desc();
        else
            H5free_memory(p);
        H5Tclose(mt);
    }
    if (sp >= 0)
        H5Sclose(sp);
    if (t >= 0)
        H5Tclose(t);
    if (a >= 0)
        H5Aclose(a);
    return d;
}

/* A bundle (format 4): the count of its members, and the group of the
 * one asked for. */
static int reader_member(mbe_shard_reader *r, mbe_err *e)
{
    int64_t n;
    r->bundle = 1;
    if (mbe_h5_attr_read_i64(r->file, SH_ATTR_MEMBERS, &n) < 0 || n < 1 ||
        n > SH_MAX_MEMBERS)
        return mbe_fail(e, "%s: damaged shard: attribute " SH_ATTR_MEMBERS
                        " missing or not 1..%d", r->path, SH_MAX_MEMBERS);
    r->n_members = (size_t)n;
    if (r->member >= r->n_members)
        return mbe_fail(e, "%s: the shard has %zu members, no member %zu",
                        r->path, r->n_members, r->member);
    char group[24];
    snprintf(group, sizeof group, "%zu", r->member);
    free(r->name);
    if (!(r->name = mbe_asprintf("%s:/%s", r->path, group)))
        return mbe_fail(e, "%s: out of memory", r->path);
    r->loc = H5Gopen2(r->file, group, H5P_DEFAULT);
    if (r->loc < 0)
        return mbe_fail(e, "%s: damaged shard: group %s missing", r->path,
                        group);
    return 0;
}

static int reader_check_format(mbe_shard_reader *r, mbe_err *e)
{
    char *fmt = NULL;
    int64_t version;
    if (H5Aexists(r->file, SH_ATTR_FORMAT) <= 0)
        return mbe_failc(e, MBE_ENOTSHARD, "%s: not a shard file (no "
                         SH_ATTR_FORMAT " attribute)", r->name);
    int rc = reader_str(r, r->file, SH_ATTR_FORMAT, &fmt);
    if (r->isolate)
        return mbe_fail(e, "%s: variable-length string", r->name);
    if (rc < 0) {
        h5desc_t why = sh_vlen_str_unreadable(r->file, SH_ATTR_FORMAT);
        if (*why.s)
            return mbe_fail(e, "%s: damaged HDF5 file: cannot read "
                            "attribute " SH_ATTR_FORMAT ": %s", r->name,
                            why.s);
    }
    if (rc < 0 || strcmp(fmt, SH_FORMAT_NAME)) {
        mbe_fail(e, "%s: not a shard file (" SH_ATTR_FORMAT " is '%.60s')",
                 r->name, fmt ? fmt : "?");
        free(fmt);
        return MBE_EFAIL;
    }
    free(fmt);
    if (mbe_h5_attr_read_i64(r->file, SH_ATTR_VERSION, &version) < 0)
        return mbe_fail(e, "%s: damaged shard: attribute " SH_ATTR_VERSION
                        " missing", r->name);
    if (version < SH_FORMAT_OLDEST || version > SH_FORMAT_BUNDLE)
        return mbe_fail(e, "%s: shard format version %lld; this mbe-shard "
                        "reads versions %d to %d", r->name,
                        (long long)version, SH_FORMAT_OLDEST,
                        SH_FORMAT_BUNDLE);
    if (version == SH_FORMAT_BUNDLE && reader_member(r, e) < 0)
        return MBE_EFAIL;
    if (version < SH_FORMAT_BUNDLE && r->member)
        return mbe_fail(e, "%s: the shard has 1 member, no member %zu",
                        r->path, r->member);
    int64_t has = 1;
    if (version >= 3 &&
        (mbe_h5_attr_read_i64(r->loc, SH_ATTR_HAS_FORCES, &has) < 0 ||
         (has != 0 && has != 1)))
        return mbe_fail(e, "%s: damaged shard: attribute " SH_ATTR_HAS_FORCES
                        " missing or not 0 or 1", r->name);
    r->meta.no_forces = !has;
    return 0;
}

static int reader_meta(mbe_shard_reader *r, mbe_err *e)
{
    mbe_shard_meta *m = &r->meta;
    if (mbe_h5_attr_read_i64(r->loc, "n_frames", &m->n_frames) < 0 ||
        mbe_h5_attr_read_i64(r->loc, "n_atoms", &m->n_atoms) < 0 ||
        mbe_h5_attr_read_i64(r->loc, SH_ATTR_INDEX_CRC, &r->index_crc) < 0)
        return mbe_fail(e, "%s: damaged shard: attribute n_frames, n_atoms "
                        "or " SH_ATTR_INDEX_CRC " missing", r->name);
    m->startup_ms = -1;
    if (H5Aexists(r->loc, SH_ATTR_STARTUP) > 0 &&
        (mbe_h5_attr_read_i64(r->loc, SH_ATTR_STARTUP, &m->startup_ms) < 0 ||
         m->startup_ms < 0))
        return mbe_fail(e, "%s: damaged shard: attribute " SH_ATTR_STARTUP
                        " not a non-negative integer", r->name);
    if (m->n_atoms < 1 || m->n_atoms > SH_MAX_ATOMS || m->n_frames < 0)
        return mbe_fail(e, "%s: damaged shard: n_frames %lld, n_atoms %lld",
                        r->name, (long long)m->n_frames,
                        (long long)m->n_atoms);
    for (size_t i = 0; i < SH_N_META_STRS; i++)
        if (reader_str(r, r->loc, sh_meta_strs[i].name, sh_meta_str(m, i)) < 0)
            return mbe_fail(e, "%s: damaged shard: attribute '%s' missing "
                            "or not a string", r->name, sh_meta_strs[i].name);
    return 0;
}

static void shape_str(char *buf, size_t len, int rank, const hsize_t *d)
{
    int at = snprintf(buf, len, "(");
    for (int i = 0; i < rank && at > 0 && (size_t)at < len; i++)
        at += snprintf(buf + at, len - at, "%s%llu", i ? ", " : "",
                       (unsigned long long)d[i]);
    if (at > 0 && (size_t)at < len)
        snprintf(buf + at, len - at, rank == 1 ? ",)" : ")");
}

/* Opens a dataset and checks its type class and shape (want NULL: any
 * length along a single dimension). */
static hid_t reader_ds(mbe_shard_reader *r, const char *name,
                       H5T_class_t cls, int rank, const hsize_t *want,
                       hsize_t *got, mbe_err *e)
{
    hid_t ds = H5Dopen2(r->loc, name, H5P_DEFAULT);
    if (ds < 0) {
        mbe_fail(e, "%s: damaged shard: dataset '%s' missing", r->name, name);
        return -1;
    }
    if (r->trusted && !sh_raw_in_place(ds)) {
        /* A chunk index (B-tree version 1 here) has no checksum. */
        r->isolate = 1;
        mbe_fail(e, "%s: dataset '%s' is chunked", r->name, name);
        H5Dclose(ds);
        return -1;
    }
    hid_t t = H5Dget_type(ds), sp = H5Dget_space(ds);
    hsize_t d[3] = {0, 0, 0};
    int rk = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    int cls_ok = t >= 0 && H5Tget_class(t) == cls;
    if (rk >= 0 && rk <= 3)
        H5Sget_simple_extent_dims(sp, d, NULL);
    if (t >= 0)
        H5Tclose(t);
    if (sp >= 0)
        H5Sclose(sp);
    char have[96], need[96];
    if (!cls_ok)
        mbe_fail(e, "%s: damaged shard: dataset '%s' has the wrong type",
                 r->name, name);
    else if (rk != rank || (want && memcmp(d, want, rank * sizeof *d))) {
        shape_str(have, sizeof have, rk > 3 ? 3 : rk, d);
        shape_str(need, sizeof need, rank, want ? want : d);
        mbe_fail(e, "%s: damaged shard: dataset '%s' has shape %s, "
                 "expected %s", r->name, name, have, want ? need : "1-D");
    } else {
        if (got)
            memcpy(got, d, sizeof d);
        return ds;
    }
    H5Dclose(ds);
    return -1;
}

/* Reads a whole 1-D dataset of n values after checking it. */
static int reader_array(mbe_shard_reader *r, const char *name,
                        H5T_class_t cls, hsize_t n, hid_t mtype, void *buf,
                        mbe_err *e)
{
    hid_t ds = reader_ds(r, name, cls, 1, &n, NULL, e);
    if (ds < 0)
        return MBE_EFAIL;
    int rc = sh_rows_io(ds, mtype, 0, n, buf, 0, NULL);
    H5Dclose(ds);
    if (rc < 0)
        return mbe_fail(e, "%s: cannot read dataset '%s': %s", r->name,
                        name, sh_h5desc().s);
    return 0;
}

static int reader_alloc(mbe_shard_reader *r, size_t n, mbe_err *e)
{
    size_t m = n ? n : 1;
    r->frames.idx = malloc(m * sizeof *r->frames.idx);
    r->frames.n = r->frames.cap = n;
    r->status = malloc(m * sizeof *r->status);
    r->energy = malloc(m * sizeof *r->energy);
    r->crc = malloc(m * sizeof *r->crc);
    r->geom = malloc(m * sizeof *r->geom);
    if (!r->frames.idx || !r->status || !r->energy || !r->crc || !r->geom)
        return mbe_fail(e, "%s: out of memory for %zu frames", r->name, n);
    return 0;
}

/* A contiguous dataset (mbe-compute writes every one so) of count values
 * of elem bytes lies inside the file: a damaged shape is refused before
 * room for it is allocated (found by fuzzing).  Chunked ones (a shard
 * rewritten with compression) are bounded by the frame count alone. */
static int reader_fits(const mbe_shard_reader *r, hid_t ds, const char *name,
                       hsize_t count, hsize_t elem, mbe_err *e)
{
    hid_t dcpl = H5Dget_create_plist(ds);
    int contiguous = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS;
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (!contiguous)
        return 0;
    hsize_t size = r->size > 0 ? (hsize_t)r->size : 0;
    haddr_t at = H5Dget_offset(ds);
    if (count > size / elem ||
        (at != HADDR_UNDEF && (at > size || count * elem > size - at)))
        return mbe_fail(e, "%s: damaged shard: dataset '%s' (%llu values) "
                        "does not fit in the file (%llu bytes)", r->name,
                        name, (unsigned long long)count,
                        (unsigned long long)size);
    return 0;
}

static int reader_arrays(mbe_shard_reader *r, mbe_err *e)
{
    hsize_t d[3];
    hid_t ds = reader_ds(r, SH_DS_FRAMES, H5T_INTEGER, 1, NULL, d, e);
    if (ds < 0)
        return MBE_EFAIL;
    hsize_t n = d[0];
    /* Distinct indices below n_frames: no more than n_frames of them. */
    int rc = n > (hsize_t)r->meta.n_frames
                 ? mbe_fail(e, "%s: damaged shard: dataset '" SH_DS_FRAMES
                            "' holds %llu frames, the master's group %lld",
                            r->name, (unsigned long long)n,
                            (long long)r->meta.n_frames)
                 : reader_fits(r, ds, SH_DS_FRAMES, n, 8, e);
    H5Dclose(ds);
    if (rc < 0 || reader_alloc(r, n, e) < 0 ||
        reader_array(r, SH_DS_FRAMES, H5T_INTEGER, n, H5T_NATIVE_INT64,
                     r->frames.idx, e) < 0 ||
        reader_array(r, SH_DS_STATUS, H5T_INTEGER, n, H5T_NATIVE_INT64,
                     r->status, e) < 0 ||
        reader_array(r, SH_DS_ENERGY, H5T_FLOAT, n, H5T_NATIVE_DOUBLE,
                     r->energy, e) < 0 ||
        reader_array(r, SH_DS_CRC, H5T_INTEGER, n, H5T_NATIVE_UINT32,
                     r->crc, e) < 0 ||
        reader_array(r, SH_DS_GEOM, H5T_INTEGER, n, H5T_NATIVE_UINT32,
                     r->geom, e) < 0)
        return MBE_EFAIL;
    if (r->meta.no_forces)
        return 0;
    hsize_t f[3] = {n, (hsize_t)r->meta.n_atoms, 3};
    r->forces = reader_ds(r, SH_DS_FORCES, H5T_FLOAT, 3, f, NULL, e);
    if (r->forces < 0)
        return MBE_EFAIL;
    /* n * n_atoms * 3 values, without overflowing */
    hsize_t row = (hsize_t)r->meta.n_atoms * 3;
    hsize_t limit = r->size > 0 ? (hsize_t)r->size / 8 : 0;
    return reader_fits(r, r->forces, SH_DS_FORCES,
                       n && row > limit / n ? limit + 1 : n * row, 8, e);
}

static int reader_check_values(mbe_shard_reader *r, mbe_err *e)
{
    const int64_t *f = r->frames.idx;
    for (size_t k = 0; k < r->frames.n; k++) {
        if (f[k] < 0 || f[k] >= r->meta.n_frames)
            return mbe_fail(e, "%s: damaged shard: frame %lld outside "
                            "0..%lld", r->name, (long long)f[k],
                            (long long)r->meta.n_frames - 1);
        if (k && f[k] <= f[k - 1])
            return mbe_fail(e, "%s: damaged shard: frames not strictly "
                            "ascending at position %zu", r->name, k);
        if (r->status[k] < 0 || r->status[k] >= MBE_N_STATUS)
            return mbe_fail(e, "%s: damaged shard: frame %lld has invalid "
                            "status %lld", r->name, (long long)f[k],
                            (long long)r->status[k]);
    }
    if (sh_index_crc(f, r->geom, r->frames.n) != r->index_crc)
        return mbe_fail(e, "%s: damaged shard: datasets '" SH_DS_FRAMES
                        "' and '" SH_DS_GEOM "' do not match attribute "
                        SH_ATTR_INDEX_CRC, r->name);
    return 0;
}

static int reader_scalar(mbe_shard_reader *r, const char *name,
                         H5T_class_t cls, hid_t mtype, void *buf, mbe_err *e)
{
    hid_t ds = reader_ds(r, name, cls, 0, NULL, NULL, e);
    if (ds < 0)
        return MBE_EFAIL;
    int rc = H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    H5Dclose(ds);
    if (rc < 0)
        return mbe_fail(e, "%s: cannot read dataset '%s': %s", r->name,
                        name, sh_h5desc().s);
    return 0;
}

static int reader_end(mbe_shard_reader *r, mbe_err *e)
{
    signed char fin = 0;
    hid_t str = sh_end_time_type();
    if (str < 0)
        return sh_h5fail(e, r->name, "string type");
    int rc = reader_scalar(r, SH_DS_END, H5T_STRING, str, r->end_time, e);
    H5Tclose(str);
    if (rc < 0 || reader_scalar(r, SH_DS_FINISHED, H5T_INTEGER,
                                H5T_NATIVE_SCHAR, &fin, e) < 0)
        return MBE_EFAIL;
    r->end_time[SH_END_TIME_LEN] = '\0';
    r->finished = fin != 0;
    return 0;
}

void mbe_shard_reader_close(mbe_shard_reader *r)
{
    if (!r)
        return;
    if (r->forces >= 0)
        H5Dclose(r->forces);
    if (r->loc >= 0 && r->loc != r->file)
        H5Gclose(r->loc);
    if (r->file >= 0)
        H5Fclose(r->file);
    if (r->fd >= 0)
        close(r->fd);
    free(r->path);
    free(r->name);
    mbe_shard_meta_free(&r->meta);
    mbe_frames_free(&r->frames);
    free(r->status);
    free(r->energy);
    free(r->crc);
    free(r->geom);
    free(r);
}

/* *isolate tells a trusted open that stopped at metadata it does not
 * trust from any other failure. */
static int reader_open(const char *path, size_t member, int trusted,
                       mbe_shard_reader **out, int *isolate, mbe_err *e)
{
    *out = NULL;
    *isolate = 0;
    mbe_shard_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path)) || !(r->name = strdup(path))) {
        if (r)
            free(r->path);
        free(r);
        return mbe_fail(e, "%s: out of memory", path);
    }
    r->file = r->loc = r->forces = -1;
    r->member = member;
    r->n_members = 1;
    r->fd = -1;
    r->trusted = trusted;
    int rc = reader_open_file(r, e);
    r->loc = r->file;
    if (!rc)
        rc = reader_check_format(r, e);
    if (!rc && (reader_meta(r, e) < 0 || reader_arrays(r, e) < 0 ||
                reader_check_values(r, e) < 0 || reader_end(r, e) < 0))
        rc = MBE_EFAIL;
    if (rc < 0) {
        *isolate = r->isolate;
        mbe_shard_reader_close(r);
        return rc;
    }
    *out = r;
    return 0;
}

const mbe_shard_meta *mbe_shard_reader_meta(const mbe_shard_reader *r)
{
    return &r->meta;
}

int mbe_shard_reader_has_forces(const mbe_shard_reader *r)
{
    return !r->meta.no_forces;
}

int mbe_shard_reader_finished(const mbe_shard_reader *r)
{
    return r->finished;
}

int mbe_shard_reader_running(const mbe_shard_reader *r)
{
    return r->running;
}

const char *mbe_shard_reader_end_time(const mbe_shard_reader *r)
{
    return r->end_time;
}

const mbe_frames *mbe_shard_reader_frames(const mbe_shard_reader *r)
{
    return &r->frames;
}

const int64_t *mbe_shard_reader_status(const mbe_shard_reader *r)
{
    return r->status;
}

const double *mbe_shard_reader_energy(const mbe_shard_reader *r)
{
    return r->energy;
}

const uint32_t *mbe_shard_reader_crc(const mbe_shard_reader *r)
{
    return r->crc;
}

const uint32_t *mbe_shard_reader_geom_crc(const mbe_shard_reader *r)
{
    return r->geom;
}

static int read_forces_raw(const mbe_shard_reader *r, size_t k0,
                           size_t count, double *buf, mbe_err *e);

int mbe_shard_read_forces(mbe_shard_reader *r, size_t k0, size_t count,
                          double *buf, mbe_err *e)
{
    mbe_h5_quiet();
    if (r->meta.no_forces)
        return mbe_fail(e, "%s: the shard holds no forces (computed with "
                        "--no-forces)", r->name);
    if (k0 > r->frames.n || count > r->frames.n - k0)
        return mbe_fail(e, "%s: frames %zu..%zu+%zu out of range (the "
                        "shard holds %zu)", r->name, k0, k0, count,
                        r->frames.n);
    if (r->detached)
        return read_forces_raw(r, k0, count, buf, e);
    if (sh_rows_io(r->forces, H5T_NATIVE_DOUBLE, k0, count, buf, 0, NULL) < 0)
        return mbe_fail(e, "%s: cannot read forces of frames %zu..%zu: %s",
                        r->name, k0, k0 + count - 1, sh_h5desc().s);
    return 0;
}

/* The shard file as it was opened, or -1 with e filled: a file renamed
 * over it since is another shard. */
static int open_same(const mbe_shard_reader *r, mbe_err *e)
{
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        sh_sysfail(e, r->name, "cannot open again");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_dev == r->dev && st.st_ino == r->ino)
        return fd;
    close(fd);
    mbe_fail(e, "%s: replaced by another file after it was opened",
             r->name);
    return -1;
}

static int read_forces_raw(const mbe_shard_reader *r, size_t k0,
                           size_t count, double *buf, mbe_err *e)
{
    size_t row = (size_t)r->meta.n_atoms * 3 * 8;
    int fd = r->fd >= 0 ? r->fd : open_same(r, e);
    if (fd < 0)
        return MBE_EFAIL;
    int rc = mbe_pread_full(fd, buf, count * row, r->forces_off + k0 * row);
    int err = errno;
    if (fd != r->fd)
        close(fd);
    if (rc < 0) {
        errno = err;
        return sh_sysfail(e, r->name, "cannot read forces");
    }
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    mbe_to_le(buf, buf, count * (size_t)r->meta.n_atoms * 3, 8);
#endif
    return 0;
}

/* Whether the forces are one contiguous block of little-endian doubles of
 * the expected size at a known offset, which pread can read. */
static int forces_raw_at(const mbe_shard_reader *r, uint64_t *off)
{
    hid_t t = H5Dget_type(r->forces);
    int ok = t >= 0 && H5Tequal(t, H5T_IEEE_F64LE) > 0 &&
             sh_raw_in_place(r->forces);
    if (t >= 0)
        H5Tclose(t);
    hid_t dcpl = ok ? H5Dget_create_plist(r->forces) : -1;
    ok = ok && dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS &&
         H5Pget_nfilters(dcpl) == 0 && H5Pget_external_count(dcpl) == 0;
    if (dcpl >= 0)
        H5Pclose(dcpl);
    haddr_t a = ok ? H5Dget_offset(r->forces) : HADDR_UNDEF;
    size_t bytes = r->frames.n * (size_t)r->meta.n_atoms * 3 * 8;
    ok = ok && (a != HADDR_UNDEF || !bytes) &&
         H5Dget_storage_size(r->forces) == bytes;
    *off = a == HADDR_UNDEF ? 0 : (uint64_t)a;
    return ok;
}

int mbe_shard_reader_detach(mbe_shard_reader *r)
{
    uint64_t off = 0;
    if (r->detached || (r->forces >= 0 && !forces_raw_at(r, &off)))
        return r->detached;
    mbe_err ignored;
    int fd = open_same(r, &ignored);
    if (fd < 0)
        return 0;
    if (r->forces >= 0)
        H5Dclose(r->forces);
    if (r->loc != r->file)
        H5Gclose(r->loc);
    H5Fclose(r->file);
    r->forces = r->file = r->loc = -1;
    r->forces_off = off;
    r->fd = fd;
    r->detached = 1;
    return 1;
}

void mbe_shard_reader_release_fd(mbe_shard_reader *r)
{
    if (r->detached && r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
}

/* Positions of frames whose stored crc32 does not match what is stored:
 * the first max_bad of them into bad, their count into n_bad.  UNDEFINED
 * frames only when all: a put killed before its last write (the status)
 * leaves exactly such a frame, and no reader uses its values. */
static int all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

/* Rows whose crc does not match go to bad; with nonfinite, the position
 * of the first COMPLETED row holding a NaN or infinity (a shard that did
 * not come from mbe-compute, whose put refuses them) or SIZE_MAX. */
/* One row against its crc; forces NULL for a shard without forces. */
static void scan_row(const mbe_shard_reader *r, size_t k, const double *f,
                     int all, size_t *bad, size_t max_bad, size_t *n_bad,
                     size_t *nonfinite)
{
    size_t row = f ? (size_t)r->meta.n_atoms * 3 : 0;
    if (nonfinite && *nonfinite == SIZE_MAX &&
        r->status[k] == MBE_COMPLETED &&
        (!isfinite(r->energy[k]) || !all_finite(f, row)))
        *nonfinite = k;
    if ((!all && r->status[k] == MBE_UNDEFINED) ||
        mbe_result_crc(r->status[k], r->energy[k], f,
                       f ? r->meta.n_atoms : 0) == r->crc[k])
        return;
    if (*n_bad < max_bad)
        bad[*n_bad] = k;
    ++*n_bad;
}

/* Rows whose crc does not match go to bad; with nonfinite, the position
 * of the first COMPLETED row holding a NaN or infinity (a shard that did
 * not come from mbe-compute, whose put refuses them) or SIZE_MAX. */
int sh_crc_scan(mbe_shard_reader *r, size_t buf_bytes, int all, size_t *bad,
                size_t max_bad, size_t *n_bad, size_t *nonfinite,
                mbe_err *e)
{
    size_t n = r->frames.n, row = (size_t)r->meta.n_atoms * 3;
    *n_bad = 0;
    if (nonfinite)
        *nonfinite = SIZE_MAX;
    if (r->meta.no_forces) {
        for (size_t k = 0; k < n; k++)
            scan_row(r, k, NULL, all, bad, max_bad, n_bad, nonfinite);
        return 0;
    }
    if (!n) /* nothing to check: no forces buffer of n_atoms either */
        return 0;
    size_t block = buf_bytes / (row * sizeof(double));
    if (block < 1)
        block = 1;
    if (block > n)
        block = n ? n : 1;
    double *buf = malloc(block * row * sizeof *buf);
    if (!buf)
        return mbe_fail(e, "%s: out of memory for a forces buffer", r->name);
    for (size_t k0 = 0; k0 < n; k0 += block) {
        size_t cnt = n - k0 < block ? n - k0 : block;
        if (mbe_shard_read_forces(r, k0, cnt, buf, e) < 0) {
            free(buf);
            return MBE_EFAIL;
        }
        for (size_t i = 0; i < cnt; i++)
            scan_row(r, k0 + i, buf + i * row, all, bad, max_bad, n_bad,
                     nonfinite);
    }
    free(buf);
    return 0;
}

/* "1 of 6 frames fail their crc32 (frame 13): the file is damaged". */
static int bad_rows_error(const mbe_shard_reader *r, const size_t *bad,
                          size_t n_bad, mbe_err *e)
{
    char list[SH_BAD_SHOWN * 24] = "";
    size_t at = 0, shown = n_bad < SH_BAD_SHOWN ? n_bad : SH_BAD_SHOWN;
    for (size_t i = 0; i < shown; i++)
        at += snprintf(list + at, sizeof list - at, "%s%lld", i ? ", " : "",
                       (long long)r->frames.idx[bad[i]]);
    return mbe_fail(e, "%s: %zu of %zu frames fail their crc32 (frame%s "
                    "%s%s): the file is damaged", r->name, n_bad,
                    r->frames.n, n_bad > 1 ? "s" : "", list,
                    n_bad > shown ? ", ..." : "");
}

int mbe_shard_check_rows(const mbe_shard_reader *r, mbe_err *e)
{
    size_t bad[SH_BAD_SHOWN], n_bad = 0;
    int64_t na = r->meta.no_forces ? 0 : r->meta.n_atoms;
    for (size_t k = 0; k < r->frames.n; k++) {
        int64_t st = r->status[k];
        if (st == MBE_COMPLETED && !isfinite(r->energy[k]))
            return mbe_fail(e, "%s: frame %lld is COMPLETED but holds a "
                            "non-finite energy: the file is damaged",
                            r->name, (long long)r->frames.idx[k]);
        if (st == MBE_UNDEFINED || (st == MBE_COMPLETED && na))
            continue;
        /* Rows without results hold NaN forces (mbe_shard_put). */
        if (mbe_result_crc(st, r->energy[k], NULL, na) == r->crc[k])
            continue;
        if (n_bad < SH_BAD_SHOWN)
            bad[n_bad] = k;
        n_bad++;
    }
    return n_bad ? bad_rows_error(r, bad, n_bad, e) : 0;
}

int mbe_shard_check_row(const mbe_shard_reader *r, size_t k,
                        const double *forces)
{
    size_t row = (size_t)r->meta.n_atoms * 3;
    if (r->status[k] != MBE_COMPLETED ||
        mbe_result_crc(r->status[k], r->energy[k], forces,
                       r->meta.n_atoms) != r->crc[k])
        return -1;
    return all_finite(forces, row) ? 0 : -2;
}

int mbe_shard_verify(mbe_shard_reader *r, size_t buf_bytes, mbe_err *e)
{
    mbe_h5_quiet();
    size_t bad[SH_BAD_SHOWN], n_bad, nonfinite;
    if (sh_crc_scan(r, buf_bytes, 0, bad, SH_BAD_SHOWN, &n_bad, &nonfinite,
                    e) < 0)
        return MBE_EFAIL;
    if (!n_bad && nonfinite != SIZE_MAX)
        return mbe_fail(e, "%s: frame %lld is COMPLETED but holds a NaN or "
                        "infinite energy or force: the file is damaged",
                        r->name, (long long)r->frames.idx[nonfinite]);
    return n_bad ? bad_rows_error(r, bad, n_bad, e) : 0;
}

/* ------------------------------------------------------------ opening */

typedef struct probe_arg {
    const char *path;
    size_t member;
} probe_arg;

/* In the child: everything of the file libhdf5 will be asked to decode
 * later, so that the parent's own open meets nothing new.  Verification
 * reads the forces through their chunk index when they have one. */
static int probe(void *arg, mbe_err *e)
{
    const probe_arg *a = arg;
    mbe_shard_reader *r;
    int isolate;
    int rc = reader_open(a->path, a->member, 0, &r, &isolate, e);
    if (rc < 0)
        return rc;
    mbe_err ignored;
    if (r->forces >= 0 && !sh_raw_in_place(r->forces))
        (void)mbe_shard_verify(r, SH_SCAN_BUF, &ignored);
    mbe_shard_reader_close(r);
    return 0;
}

/* libhdf5 checks none of the metadata of a file with an older superblock
 * (version 1 shards, files written by h5py) before it decodes it, and
 * crashes or loops on some damaged ones (fuzz/README): such a file is
 * opened in a child process first. */
static int open_isolated(const char *path, size_t member,
                         mbe_shard_reader **out, mbe_err *e)
{
    int isolate;
    probe_arg a = {path, member};
    int rc = mbe_probe_isolated(path, probe, &a, e);
    if (rc < 0)
        return rc;
    return reader_open(path, member, 0, out, &isolate, e);
}

int mbe_shard_open_member(const char *path, size_t member,
                          mbe_shard_reader **out, mbe_err *e)
{
    mbe_h5_quiet();
    *out = NULL;
    if (!path || !*path)
        return mbe_fail(e, "shard: empty file name");
    int isolate;
    int rc = reader_open(path, member, 1, out, &isolate, e);
    if (rc == 0 || !isolate)
        return rc;
    return open_isolated(path, member, out, e);
}

int mbe_shard_open(const char *path, mbe_shard_reader **out, mbe_err *e)
{
    return mbe_shard_open_member(path, 0, out, e);
}

size_t mbe_shard_reader_members(const mbe_shard_reader *r)
{
    return r->n_members;
}

size_t mbe_shard_reader_member(const mbe_shard_reader *r)
{
    return r->member;
}

int mbe_shard_reader_is_bundle(const mbe_shard_reader *r)
{
    return r->bundle;
}

const char *mbe_shard_reader_name(const mbe_shard_reader *r)
{
    return r->name;
}
