/* shard_write.c - shard files (mbe-shard(5)): what one mbe-compute job has
 * computed, kept in a private file until mbe-merge applies it.
 *
 * Crash safety rests on one rule.  HDF5 metadata is not journaled, so a
 * process killed while HDF5 rewrites it can leave a file nothing opens.
 * Therefore every object, attribute and byte of file space is made, written
 * and fsync'ed under a temporary name before the file is renamed to
 * <path>.part; after that only raw data of contiguous, early-allocated
 * datasets is ever overwritten, and the metadata bytes never change.
 *
 * Writer and reader share one file because they share the layout tables. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <libgen.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mbe_internal.h"

/* ============================================================= layout */

#define SH_ATTR_FORMAT "mbe_shard_format"
#define SH_FORMAT_NAME "mbe-shard"
#define SH_ATTR_VERSION "mbe_shard_format_version"
/* Version 2: superblock 2, fixed-length strings (see sh_create_plists);
 * version 1 files, written by mbe-shard 0.1.0, are still read.  Version
 * 3 adds the root attribute has_forces; with has_forces 0 there is no
 * forces dataset.  Shards with forces are written as version 2, which
 * mbe-shard 0.2 reads; energies-only ones as version 3, which it refuses
 * in one line rather than misreading them. */
#define SH_FORMAT_VERSION 3
#define SH_FORMAT_FORCES 2
#define SH_FORMAT_OLDEST 1
/* Version 4, a bundle (jobs over several keys): one group per key, "0",
 * "1", ..., each holding what the root of a version 2 or 3 shard holds
 * except the two format attributes, and has_forces always; the root holds
 * the format attributes and n_members.  Every member is a shard of its
 * own to readers: its own shard_id, key, frames and finished flag. */
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
/* Bad frames named in a failed verify's message. */
#define SH_BAD_SHOWN 5

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

static char **meta_str(mbe_shard_meta *m, size_t i)
{
    return (char **)((char *)m + sh_meta_strs[i].off);
}

static const char *meta_str_c(const mbe_shard_meta *m, size_t i)
{
    return *(char *const *)((const char *)m + sh_meta_strs[i].off);
}

/* The innermost HDF5 error, by value so it can sit in an argument list. */
typedef struct h5desc_t {
    char s[300];
} h5desc_t;

static h5desc_t sh_h5desc(void)
{
    h5desc_t d;
    mbe_h5_errdesc(d.s, sizeof d.s);
    if (!*d.s)
        snprintf(d.s, sizeof d.s, "HDF5 error");
    return d;
}

static int h5fail(mbe_err *e, const char *path, const char *what)
{
    return mbe_fail(e, "%s: %s: %s", path, what, sh_h5desc().s);
}

static int sysfail(mbe_err *e, const char *path, const char *what)
{
    return mbe_fail(e, "%s: %s: %s", path, what, strerror(errno));
}

/* =============================================================== meta */

void mbe_shard_meta_free(mbe_shard_meta *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < SH_N_META_STRS; i++)
        free(*meta_str(m, i));
    memset(m, 0, sizeof *m);
}

/* Deep copy; NULL strings become "". */
static int sh_meta_copy(mbe_shard_meta *dst, const mbe_shard_meta *src)
{
    memset(dst, 0, sizeof *dst);
    dst->n_frames = src->n_frames;
    dst->n_atoms = src->n_atoms;
    dst->no_forces = src->no_forces;
    dst->startup_ms = src->startup_ms;
    for (size_t i = 0; i < SH_N_META_STRS; i++) {
        const char *v = meta_str_c(src, i);
        if (!(*meta_str(dst, i) = strdup(v ? v : "")))
            return -1;
    }
    return 0;
}

/* At the root of a single shard, with the format attributes; in the group
 * of a bundle's member, which always says whether it has forces. */
static int sh_meta_write(hid_t file, const mbe_shard_meta *m, int member)
{
    int64_t version = m->no_forces ? SH_FORMAT_VERSION : SH_FORMAT_FORCES;
    if ((!member &&
         (mbe_h5_attr_write_fixed_str(file, SH_ATTR_FORMAT,
                                      SH_FORMAT_NAME) < 0 ||
          mbe_h5_attr_write_i64(file, SH_ATTR_VERSION, version) < 0)) ||
        mbe_h5_attr_write_i64(file, "n_frames", m->n_frames) < 0 ||
        mbe_h5_attr_write_i64(file, "n_atoms", m->n_atoms) < 0 ||
        ((m->no_forces || member) &&
         mbe_h5_attr_write_i64(file, SH_ATTR_HAS_FORCES,
                               !m->no_forces) < 0) ||
        (m->startup_ms >= 0 &&
         mbe_h5_attr_write_i64(file, SH_ATTR_STARTUP, m->startup_ms) < 0))
        return -1;
    for (size_t i = 0; i < SH_N_META_STRS; i++)
        if (mbe_h5_attr_write_fixed_str(file, sh_meta_strs[i].name,
                                        meta_str_c(m, i)) < 0)
            return -1;
    return 0;
}

/* ================================================================ crc */

/* The atoms whose forces a row's crc covers: none without forces. */
static int64_t crc_atoms(const mbe_shard_meta *m)
{
    return m->no_forces ? 0 : m->n_atoms;
}

/* forces NULL stands for n_atoms*3 NaN (the row of a frame without
 * results). */
uint32_t mbe_result_crc(int64_t status, double energy_per_atom,
                        const double *forces, int64_t n_atoms)
{
    uint32_t c = mbe_crc32_le(0, &status, 1, 8);
    c = mbe_crc32_le(c, &energy_per_atom, 1, 8);
    size_t row = n_atoms > 0 ? (size_t)n_atoms * 3 : 0;
    if (forces)
        return mbe_crc32_le(c, forces, row, 8);
    double nan[96];
    for (size_t i = 0; i < 96; i++)
        nan[i] = NAN;
    for (size_t i = 0; i < row; i += 96)
        c = mbe_crc32_le(c, nan, row - i < 96 ? row - i : 96, 8);
    return c;
}

/* Guards the two arrays that never change after create and that the
 * per-frame crcs do not cover. */
static int64_t sh_index_crc(const int64_t *frames, const uint32_t *geom,
                            size_t n)
{
    uint32_t c = mbe_crc32_le(0, frames, n, 8);
    return (int64_t)mbe_crc32_le(c, geom, n, 4);
}

int mbe_shard_new_id(char out[33], mbe_err *e)
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return mbe_fail(e, "getrandom: %s", strerror(errno));
        got += (size_t)r;
    }
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

char *mbe_shard_part_path(const char *path)
{
    return path ? mbe_asprintf("%s.part", path) : NULL;
}

/* ======================================================== HDF5 helpers */

/* Rows [k0, k0+count) of a dataset whose first dimension is the frame,
 * every other dimension whole. */
/* The clean-up calls after a failed call clear HDF5's error stack: why,
 * when not NULL, keeps the failure's description. */
static void keep_why(h5desc_t *why)
{
    if (why)
        *why = sh_h5desc();
}

static int sh_rows_io(hid_t ds, hid_t mtype, size_t k0, size_t count,
                      void *buf, int write, h5desc_t *why)
{
    if (!count)
        return 0;
    hsize_t start[3] = {0, 0, 0}, cnt[3], dims[3];
    hid_t fs = H5Dget_space(ds), ms = -1;
    if (fs < 0)
        return -1;
    int rank = H5Sget_simple_extent_ndims(fs), rc = -1;
    if (rank >= 1 && rank <= 3 &&
        H5Sget_simple_extent_dims(fs, dims, NULL) >= 0) {
        memcpy(cnt, dims, sizeof cnt);
        start[0] = k0;
        cnt[0] = count;
        if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt,
                                NULL) >= 0 &&
            (ms = H5Screate_simple(rank, cnt, NULL)) >= 0)
            rc = write ? H5Dwrite(ds, mtype, ms, fs, H5P_DEFAULT, buf)
                       : H5Dread(ds, mtype, ms, fs, H5P_DEFAULT, buf);
    }
    if (rc < 0)
        keep_why(why);
    if (ms >= 0)
        H5Sclose(ms);
    H5Sclose(fs);
    return rc < 0 ? -1 : 0;
}

/* end_time: fixed 32 bytes, zero-padded ASCII ("" until finished). */
static hid_t sh_end_time_type(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0)
        return t;
    if (H5Tset_size(t, SH_END_TIME_LEN) < 0 ||
        H5Tset_strpad(t, H5T_STR_NULLPAD) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Whether writing the dataset's raw data leaves every metadata byte as it
 * is: contiguous layout with its space already allocated. */
static int sh_is_preallocated(hid_t ds)
{
    hid_t dcpl = H5Dget_create_plist(ds), sp = H5Dget_space(ds);
    H5D_space_status_t st = H5D_SPACE_STATUS_ERROR;
    int ok = dcpl >= 0 && sp >= 0 &&
             H5Pget_layout(dcpl) == H5D_CONTIGUOUS &&
             H5Dget_space_status(ds, &st) >= 0 &&
             (st == H5D_SPACE_STATUS_ALLOCATED ||
              H5Sget_simple_extent_npoints(sp) == 0);
    if (sp >= 0)
        H5Sclose(sp);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    return ok;
}

/* Whether the dataset's data is found without an index: contiguous, or
 * compact (inside its object header). */
static int sh_raw_in_place(hid_t ds)
{
    hid_t dcpl = H5Dget_create_plist(ds);
    if (dcpl < 0)
        return 0;
    H5D_layout_t l = H5Pget_layout(dcpl);
    H5Pclose(dcpl);
    return l == H5D_CONTIGUOUS || l == H5D_COMPACT;
}

/* ============================================================= reader */

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

/* Whether a live mbe-compute holds the writer's lock (writer_lock). */
static int sh_writer_running(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct flock l = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    int busy = fcntl(fd, F_OFD_GETLK, &l) == 0 && l.l_type != F_UNLCK;
    close(fd);
    return busy;
}

static int reader_open_file(mbe_shard_reader *r, mbe_err *e)
{
    struct stat st;
    if (stat(r->path, &st) < 0)
        return sysfail(e, r->name, "cannot open");
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
        return h5fail(e, r->name, "cannot set up file access");
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
        if (reader_str(r, r->loc, sh_meta_strs[i].name, meta_str(m, i)) < 0)
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
        return h5fail(e, r->name, "string type");
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
        sysfail(e, r->name, "cannot open again");
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
        return sysfail(e, r->name, "cannot read forces");
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
static int sh_crc_scan(mbe_shard_reader *r, size_t buf_bytes, int all,
                       size_t *bad, size_t max_bad, size_t *n_bad,
                       size_t *nonfinite, mbe_err *e)
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

/* ============================================================= writer */

/* One key's results: the root of a version 1-3 shard, one group of a
 * bundle. */
typedef struct sh_member {
    hid_t loc;        /* while the file is built: the root or the group */
    hid_t ds[SH_N_DS];
    uint64_t off[SH_N_DS]; /* where each dataset's raw data starts */
    mbe_shard_meta meta;
    mbe_frames frames;
    int64_t *status;
    uint32_t *geom;   /* the geometry fingerprints, as stored */
    double *nan_row;  /* n_atoms*3 NaN: forces of a frame without results */
} sh_member;

struct mbe_shard {
    char *path;       /* final name */
    char *part;       /* <path>.part */
    const char *open; /* the name the file is open under: part or path */
    hid_t file;       /* while the file is built; -1 after */
    int fd;           /* raw writes once built; -1: none */
    int created;      /* this call made the file under its temporary name */
    int lock_fd;      /* holds the writer's OFD lock; -1: none */
    int bundle;       /* format 4: members in groups */
    sh_member *mem;
    size_t n_mem;
    size_t cur;       /* the member calls act on (mbe_shard_select) */
};

static sh_member *cur(const mbe_shard *s)
{
    return &s->mem[s->cur];
}

/* ------------------------------------------------------------ helpers */

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* rename() that never replaces an existing target: a finished shard must
 * not silently eat another one.  Falls back to link()+unlink(), and on file
 * systems without either to a check followed by rename() (a small race,
 * only with a second job writing the very same name). */
static int rename_noreplace(const char *from, const char *to)
{
#ifdef RENAME_NOREPLACE
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return -1;
#endif
    if (link(from, to) == 0) {
        unlink(from); /* a left-over second name is harmless */
        return 0;
    }
    if (errno != EPERM && errno != ENOTSUP && errno != ENOSYS)
        return -1;
    if (exists(to)) {
        errno = EEXIST;
        return -1;
    }
    return rename(from, to);
}

/* HDF5's own flock would keep every reader out for the days a job runs;
 * since the writer only overwrites preallocated raw rows, each guarded by
 * its crc, readers (mbe-status, mbe-merge of a live .part) may look while
 * it writes.  Two writers are kept apart by writer_lock instead. */
static hid_t writer_fapl(void)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0)
        return fapl;
    H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    H5Pset_file_locking(fapl, 0, 1);
    /* Without a sieve buffer every put reaches the kernel before it
     * returns, so a killed process (not a crashed machine) keeps even the
     * puts that were not durable. */
    H5Pset_sieve_buf_size(fapl, 0);
    return fapl;
}

/* Format version 2: libhdf5 verifies the checksum of every piece of
 * metadata of a version 2 superblock and version 2 object headers before
 * it decodes it, so a damaged shard is refused, where the older format
 * made libhdf5 crash or loop (fuzz/README).  The strings are fixed-length,
 * because the global heap of variable-length ones has no checksum; every
 * attribute and link stays in the root's object header (no fractal heap
 * or B-tree).  Readable by HDF5 1.8 and later. */
static int sh_create_plists(hid_t *fcpl, hid_t *fapl, size_t links)
{
    *fcpl = H5Pcreate(H5P_FILE_CREATE);
    *fapl = writer_fapl();
    unsigned compact = links > 64 ? (unsigned)links : 64;
    if (*fcpl >= 0 && *fapl >= 0 &&
        H5Pset_libver_bounds(*fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) >= 0 &&
        H5Pset_attr_phase_change(*fcpl, 64, 48) >= 0 &&
        H5Pset_link_phase_change(*fcpl, compact, 48) >= 0 &&
        H5Pset_obj_track_times(*fcpl, 0) >= 0)
        return 0;
    if (*fcpl >= 0)
        H5Pclose(*fcpl);
    if (*fapl >= 0)
        H5Pclose(*fapl);
    return -1;
}

/* A member's group: as the root of a single shard, every link and
 * attribute in its object header. */
static hid_t sh_member_gcpl(void)
{
    hid_t g = H5Pcreate(H5P_GROUP_CREATE);
    if (g >= 0 && H5Pset_attr_phase_change(g, 64, 48) >= 0 &&
        H5Pset_link_phase_change(g, 64, 48) >= 0 &&
        H5Pset_obj_track_times(g, 0) >= 0)
        return g;
    if (g >= 0)
        H5Pclose(g);
    return -1;
}

/* An open-file-description lock, not flock: HDF5 readers take a shared
 * flock on the file, which a write lock of this kind does not exclude
 * (on local file systems).  It follows the inode through the renames
 * to .part and to the final name, and dies with the process. */
static int writer_lock(mbe_shard *s, const char *file, mbe_err *e)
{
    int fd = open(file, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return sysfail(e, file, "cannot open");
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_OFD_SETLK, &l) == 0) {
        s->lock_fd = fd;
        return 0;
    }
    int err = errno;
    close(fd);
    if (err == EAGAIN || err == EACCES)
        return mbe_fail(e, "%s: another running mbe-compute is writing this "
                        "shard (two jobs given the same -o?)", file);
    /* No locks on this file system: as HDF5's BEST_EFFORT, go on. */
    if (err == ENOLCK || err == EINVAL || err == ENOSYS || err == ENOTSUP)
        return 0;
    errno = err;
    return sysfail(e, file, "cannot lock");
}

static void now_iso(char out[SH_END_TIME_LEN])
{
    time_t t = time(NULL);
    struct tm tm;
    memset(out, 0, SH_END_TIME_LEN);
    if (gmtime_r(&t, &tm))
        strftime(out, SH_END_TIME_LEN, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* --------------------------------------------------------- the handle */

static void member_free(sh_member *m, hid_t file)
{
    for (int i = 0; i < SH_N_DS; i++)
        if (m->ds[i] >= 0)
            H5Dclose(m->ds[i]);
    if (m->loc >= 0 && m->loc != file)
        H5Gclose(m->loc);
    mbe_shard_meta_free(&m->meta);
    mbe_frames_free(&m->frames);
    free(m->status);
    free(m->geom);
    free(m->nan_row);
}

static void shard_free(mbe_shard *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->mem && i < s->n_mem; i++)
        member_free(&s->mem[i], s->file);
    free(s->mem);
    if (s->file >= 0)
        H5Fclose(s->file);
    if (s->fd >= 0)
        close(s->fd);
    free(s->path);
    free(s->part);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s);
}

static mbe_shard *shard_new(const char *path, mbe_err *e)
{
    mbe_shard *s = calloc(1, sizeof *s);
    if (!s) {
        mbe_fail(e, "%s: out of memory", path);
        return NULL;
    }
    s->file = -1;
    s->fd = -1;
    s->lock_fd = -1;
    s->path = strdup(path);
    s->part = mbe_shard_part_path(path);
    if (!s->path || !s->part) {
        shard_free(s);
        mbe_fail(e, "%s: out of memory", path);
        return NULL;
    }
    return s;
}

static int shard_members(mbe_shard *s, size_t n, mbe_err *e)
{
    if (!(s->mem = calloc(n ? n : 1, sizeof *s->mem)))
        return mbe_fail(e, "%s: out of memory", s->path);
    s->n_mem = n;
    for (size_t i = 0; i < n; i++) {
        s->mem[i].loc = -1;
        for (int d = 0; d < SH_N_DS; d++)
            s->mem[i].ds[d] = -1;
    }
    return 0;
}

/* Everything but the file: meta, frames, a status array (UNDEFINED when
 * status is NULL) and the NaN row. */
static int member_fill(const mbe_shard *s, sh_member *m,
                       const mbe_shard_meta *meta, const mbe_frames *frames,
                       const int64_t *status, const uint32_t *geom,
                       mbe_err *e)
{
    size_t n = frames->n, row = (size_t)meta->n_atoms * 3;
    if (sh_meta_copy(&m->meta, meta) < 0 ||
        mbe_frames_copy(frames, &m->frames, e) < 0 ||
        !(m->status = malloc((n ? n : 1) * sizeof *m->status)) ||
        !(m->geom = malloc((n ? n : 1) * sizeof *m->geom)) ||
        !(m->nan_row = malloc(row * sizeof *m->nan_row)))
        return mbe_fail(e, "%s: out of memory", s->path);
    for (size_t k = 0; k < n; k++)
        m->status[k] = status ? status[k] : MBE_UNDEFINED;
    if (n)
        memcpy(m->geom, geom, n * sizeof *m->geom);
    for (size_t i = 0; i < row; i++)
        m->nan_row[i] = NAN;
    return 0;
}

/* ------------------------------------------------------- raw-data I/O */

/* While the file is built, through HDF5. */
static int sync_file(mbe_shard *s, const char *name, mbe_err *e)
{
    if (H5Fflush(s->file, H5F_SCOPE_LOCAL) < 0)
        return h5fail(e, name, "cannot flush");
    if (mbe_h5_fsync(s->file) < 0)
        return sysfail(e, name, "fsync");
    return 0;
}

/* Once built, HDF5 never opens the file for writing again: it would
 * rewrite the superblock (its flags, and with version 2 its checksum) on
 * every open and close, and a torn or failed write of it leaves a file no
 * HDF5 opens, every frame in it lost.  Rows go to the raw data of the
 * preallocated datasets, at the offsets HDF5 gave. */
/* n values of sz bytes at byte at of dataset d, stored little-endian. */
static int write_le(const mbe_shard *s, const sh_member *m, int d,
                    uint64_t at, const void *v, size_t n, size_t sz,
                    mbe_err *e)
{
    int rc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    rc = mbe_pwrite_full(s->fd, v, n * sz, m->off[d] + at);
#else
    unsigned char *b = malloc(n * sz > 0 ? n * sz : 1);
    if (!b)
        return mbe_fail(e, "%s: out of memory", s->open);
    mbe_to_le(b, v, n, sz);
    rc = mbe_pwrite_full(s->fd, b, n * sz, m->off[d] + at);
    free(b);
#endif
    if (rc < 0)
        return mbe_fail(e, "%s: cannot write dataset '%s': %s", s->open,
                        sh_ds_names[d], strerror(errno));
    return 0;
}

static int write_row(const mbe_shard *s, const sh_member *m, int d,
                     size_t k, const void *buf, size_t n, size_t sz,
                     mbe_err *e)
{
    return write_le(s, m, d, (uint64_t)k * n * sz, buf, n, sz, e);
}

static int sync_raw(mbe_shard *s, const char *name, mbe_err *e)
{
    if (fsync(s->fd) < 0)
        return sysfail(e, name, "fsync");
    return 0;
}

/* The file types raw writes assume, per dataset (0: a string). */
static hid_t sh_ds_type(int d)
{
    switch (d) {
    case SH_FRAMES: case SH_STATUS: return H5T_STD_I64LE;
    case SH_ENERGY: case SH_FORCES: return H5T_IEEE_F64LE;
    case SH_CRC: case SH_GEOM: return H5T_STD_U32LE;
    case SH_FINISHED: return H5T_STD_I8LE;
    default: return 0;
    }
}

/* Whether dataset d can take raw writes: preallocated, contiguous, of
 * the type they assume. */
static int sh_writable(hid_t ds, int d)
{
    hid_t t = H5Dget_type(ds);
    if (t < 0)
        return 0;
    int ok = sh_ds_type(d)
                 ? H5Tequal(t, sh_ds_type(d)) > 0
                 : H5Tget_class(t) == H5T_STRING &&
                       H5Tis_variable_str(t) == 0 &&
                       H5Tget_size(t) == SH_END_TIME_LEN;
    H5Tclose(t);
    return ok && sh_is_preallocated(ds);
}

/* HDF5's part ends: each dataset's offset is kept, the file closed and
 * reopened for raw writes only. */
static int member_go_raw(const mbe_shard *s, sh_member *m, int rc,
                         mbe_err *e)
{
    /* A new shard is still under its temporary name: not the user's. */
    const char *shown = s->open ? s->open : s->path;
    for (int i = 0; i < SH_N_DS; i++) {
        if (i == SH_FORCES && m->meta.no_forces)
            continue;
        hid_t sp = H5Dget_space(m->ds[i]);
        hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
        haddr_t at = H5Dget_offset(m->ds[i]);
        if (sp >= 0)
            H5Sclose(sp);
        if (!rc && (np < 0 || (np > 0 && at == HADDR_UNDEF) ||
                    !sh_writable(m->ds[i], i)))
            rc = mbe_fail(e, "%s: dataset '%s' is not contiguous, "
                          "allocated and of its type as mbe-compute writes "
                          "it; refusing to write into it", shown,
                          sh_ds_names[i]);
        m->off[i] = np > 0 ? (uint64_t)at : 0;
        H5Dclose(m->ds[i]);
        m->ds[i] = -1;
    }
    if (m->loc >= 0 && m->loc != s->file)
        H5Gclose(m->loc);
    m->loc = -1;
    return rc;
}

static int go_raw(mbe_shard *s, const char *name, mbe_err *e)
{
    const char *shown = s->open ? s->open : s->path;
    int rc = 0;
    for (size_t i = 0; i < s->n_mem; i++)
        rc = member_go_raw(s, &s->mem[i], rc, e);
    /* Never closed twice: HDF5 1.10 crashes on a retried close. */
    if (H5Fclose(s->file) < 0 && !rc)
        rc = h5fail(e, shown, "cannot close");
    s->file = -1;
    if (rc)
        return rc;
    s->fd = open(name, O_RDWR | O_CLOEXEC);
    if (s->fd < 0)
        return sysfail(e, shown, "cannot open for writing");
    return 0;
}

/* ------------------------------------------------------------ create */

static int check_frames(const char *path, const mbe_shard_meta *meta,
                        const mbe_frames *f, mbe_err *e)
{
    for (size_t k = 0; k < f->n; k++) {
        if (f->idx[k] < 0 || f->idx[k] >= meta->n_frames)
            return mbe_fail(e, "%s: frame %lld is outside 0..%lld", path,
                            (long long)f->idx[k],
                            (long long)meta->n_frames - 1);
        if (k && f->idx[k] <= f->idx[k - 1])
            return mbe_fail(e, "%s: frames not strictly ascending at %lld",
                            path, (long long)f->idx[k]);
    }
    return 0;
}

static int check_create_args(const char *path, const mbe_shard_meta *meta,
                             const mbe_frames *frames,
                             const uint32_t *geom_crc, mbe_err *e)
{
    if (!path || !*path)
        return mbe_fail(e, "shard: empty file name");
    if (!meta || !frames)
        return mbe_fail(e, "%s: no provenance or no frames given", path);
    if (meta->n_atoms < 1 || meta->n_atoms > SH_MAX_ATOMS)
        return mbe_fail(e, "%s: invalid number of atoms %lld", path,
                        (long long)meta->n_atoms);
    if (meta->n_frames < 0)
        return mbe_fail(e, "%s: invalid number of frames %lld", path,
                        (long long)meta->n_frames);
    if (frames->n && !geom_crc)
        return mbe_fail(e, "%s: no geometry fingerprints given", path);
    return check_frames(path, meta, frames, e);
}

/* A job killed while it built its shard leaves "<part>.new-<id>": a
 * full-size file that nothing else would remove.  Those of live writers
 * carry the writer's lock and stay. */
static void remove_stale_tmp(const mbe_shard *s)
{
    const char *slash = strrchr(s->part, '/');
    char *dir = slash ? strndup(s->part, (size_t)(slash - s->part + 1))
                      : strdup("./");
    char *prefix = mbe_asprintf("%s.new-", slash ? slash + 1 : s->part);
    DIR *d = dir && prefix ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t n = strlen(prefix);
        if (strncmp(de->d_name, prefix, n) != 0 || strlen(de->d_name) != n + 12)
            continue;
        char *path = mbe_asprintf("%s%s", dir, de->d_name);
        if (path && !sh_writer_running(path))
            unlink(path);
        free(path);
    }
    if (d)
        closedir(d);
    free(dir);
    free(prefix);
}

static int refuse_existing(const mbe_shard *s, mbe_err *e)
{
    if (exists(s->path))
        return mbe_fail(e, "%s exists (a finished shard); remove it or "
                        "choose another -o", s->path);
    if (exists(s->part))
        return mbe_fail(e, "%s exists (an unfinished shard); resume it or "
                        "remove it", s->part);
    return 0;
}

static hid_t make_ds(hid_t file, const char *name, hid_t type, int rank,
                     const hsize_t *dims, hid_t fill_type, const void *fill,
                     h5desc_t *why)
{
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL)
                       : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), ds = -1;
    /* Contiguous and allocated now: later writes then touch raw data only,
     * never the chunk index or the allocation metadata. */
    if (space >= 0 && dcpl >= 0 &&
        H5Pset_layout(dcpl, H5D_CONTIGUOUS) >= 0 &&
        H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) >= 0 &&
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_ALLOC) >= 0 &&
        (!fill || H5Pset_fill_value(dcpl, fill_type, fill) >= 0) &&
        H5Pset_obj_track_times(dcpl, 0) >= 0)
        ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl,
                        H5P_DEFAULT);
    if (ds < 0)
        keep_why(why);
    if (dcpl >= 0)
        H5Pclose(dcpl);
    if (space >= 0)
        H5Sclose(space);
    return ds;
}

static int make_datasets(sh_member *s, h5desc_t *why)
{
    hsize_t n = s->frames.n, na = (hsize_t)s->meta.n_atoms;
    hsize_t d1[1] = {n}, d3[3] = {n, na, 3};
    int64_t undef = MBE_UNDEFINED, zero = 0;
    double nan = NAN;
    uint32_t crc_undef = mbe_result_crc(MBE_UNDEFINED, NAN, NULL,
                                        crc_atoms(&s->meta));
    uint32_t crc0 = 0;
    signed char no = 0;
    hid_t str = sh_end_time_type();
    if (str < 0)
        return -1;
    s->ds[SH_FRAMES] = make_ds(s->loc, SH_DS_FRAMES, H5T_STD_I64LE, 1, d1,
                               H5T_NATIVE_INT64, &zero, why);
    s->ds[SH_STATUS] = make_ds(s->loc, SH_DS_STATUS, H5T_STD_I64LE, 1, d1,
                               H5T_NATIVE_INT64, &undef, why);
    s->ds[SH_ENERGY] = make_ds(s->loc, SH_DS_ENERGY, H5T_IEEE_F64LE, 1, d1,
                               H5T_NATIVE_DOUBLE, &nan, why);
    if (!s->meta.no_forces)
        s->ds[SH_FORCES] = make_ds(s->loc, SH_DS_FORCES, H5T_IEEE_F64LE, 3,
                                   d3, H5T_NATIVE_DOUBLE, &nan, why);
    /* The fill of crc32 is the crc of the fill of the other datasets, so
     * a fresh file already verifies. */
    s->ds[SH_CRC] = make_ds(s->loc, SH_DS_CRC, H5T_STD_U32LE, 1, d1,
                            H5T_NATIVE_UINT32, &crc_undef, why);
    s->ds[SH_GEOM] = make_ds(s->loc, SH_DS_GEOM, H5T_STD_U32LE, 1, d1,
                             H5T_NATIVE_UINT32, &crc0, why);
    s->ds[SH_END] = make_ds(s->loc, SH_DS_END, str, 0, NULL, -1, NULL, why);
    s->ds[SH_FINISHED] = make_ds(s->loc, SH_DS_FINISHED, H5T_STD_I8LE, 0,
                                 NULL, H5T_NATIVE_SCHAR, &no, why);
    H5Tclose(str);
    for (int i = 0; i < SH_N_DS; i++)
        if (s->ds[i] < 0 && !(i == SH_FORCES && s->meta.no_forces))
            return -1;
    if (mbe_h5_attr_write_fixed_str(s->ds[SH_ENERGY], "units",
                                    "eV/atom") < 0 ||
        (!s->meta.no_forces &&
         mbe_h5_attr_write_fixed_str(s->ds[SH_FORCES], "units",
                                     "eV/" MBE_ANGSTROM) < 0))
        return -1;
    return 0;
}

/* Every object and every initial byte, then durable; the file is still
 * under its temporary name, so a kill in here leaves no .part. */
/* A member's attributes, datasets and the rows that never change. */
static int build_member(mbe_shard *s, size_t i, const uint32_t *geom_crc,
                        mbe_err *e)
{
    sh_member *m = &s->mem[i];
    h5desc_t why = {""};
    m->loc = s->file;
    if (s->bundle) {
        char name[24];
        hid_t gcpl = sh_member_gcpl();
        snprintf(name, sizeof name, "%zu", i);
        m->loc = gcpl < 0 ? -1 : H5Gcreate2(s->file, name, H5P_DEFAULT,
                                              gcpl, H5P_DEFAULT);
        if (gcpl >= 0)
            H5Pclose(gcpl);
        if (m->loc < 0)
            return h5fail(e, s->path, "cannot lay out the shard");
    }
    size_t n = m->frames.n;
    if (sh_meta_write(m->loc, &m->meta, s->bundle) < 0 ||
        mbe_h5_attr_write_i64(m->loc, SH_ATTR_INDEX_CRC,
                              sh_index_crc(m->frames.idx, geom_crc, n)) < 0)
        return h5fail(e, s->path, "cannot lay out the shard");
    if (make_datasets(m, &why) < 0)
        return mbe_fail(e, "%s: cannot lay out the shard: %s", s->path,
                        why.s);
    if (n && (sh_rows_io(m->ds[SH_FRAMES], H5T_NATIVE_INT64, 0, n,
                         m->frames.idx, 1, &why) < 0 ||
              sh_rows_io(m->ds[SH_GEOM], H5T_NATIVE_UINT32, 0, n,
                         (void *)geom_crc, 1, &why) < 0))
        return mbe_fail(e, "%s: cannot write frame indices: %s", s->path,
                        why.s);
    return 0;
}

/* Every object and every initial byte, then durable; the file is still
 * under its temporary name, so a kill in here leaves no .part. */
static int build(mbe_shard *s, const char *tmp,
                 const uint32_t *const *geom_crc, mbe_err *e)
{
    hid_t fcpl, fapl;
    if (sh_create_plists(&fcpl, &fapl, s->bundle ? s->n_mem : 0) < 0)
        return h5fail(e, s->path, "cannot set up file creation");
    s->file = H5Fcreate(tmp, H5F_ACC_EXCL, fcpl, fapl);
    h5desc_t why = sh_h5desc();
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (s->file < 0)
        return mbe_fail(e, "%s: cannot create: %s", s->path, why.s);
    s->created = 1;
    /* At once, so that remove_stale_tmp of another job leaves it alone. */
    if (writer_lock(s, tmp, e) < 0)
        return MBE_EFAIL;
    if (s->bundle &&
        (mbe_h5_attr_write_fixed_str(s->file, SH_ATTR_FORMAT,
                                     SH_FORMAT_NAME) < 0 ||
         mbe_h5_attr_write_i64(s->file, SH_ATTR_VERSION,
                               SH_FORMAT_BUNDLE) < 0 ||
         mbe_h5_attr_write_i64(s->file, SH_ATTR_MEMBERS,
                               (int64_t)s->n_mem) < 0))
        return h5fail(e, s->path, "cannot lay out the shard");
    for (size_t i = 0; i < s->n_mem; i++)
        if (build_member(s, i, geom_crc[i], e) < 0)
            return MBE_EFAIL;
    if (sync_file(s, s->path, e) < 0 || go_raw(s, tmp, e) < 0)
        return MBE_EFAIL;
    /* Whatever the close wrote (the superblock) is durable before the
     * file becomes the .part. */
    return sync_raw(s, s->path, e);
}

/* The temporary name: unique, so that two jobs racing for one shard name
 * do not share a half-built file. */
static char *tmp_name(const mbe_shard *s, mbe_err *e)
{
    char id[33];
    if (mbe_shard_new_id(id, e) < 0)
        return NULL;
    char *t = mbe_asprintf("%s.new-%.12s", s->part, id);
    if (!t)
        mbe_fail(e, "%s: out of memory", s->path);
    return t;
}

static int publish_part(mbe_shard *s, const char *tmp, mbe_err *e)
{
    if (rename_noreplace(tmp, s->part) < 0) {
        if (errno == EEXIST)
            return mbe_fail(e, "%s appeared while the shard was being "
                            "created (another job?)", s->part);
        return sysfail(e, s->part, "cannot rename the new shard into place");
    }
    s->open = s->part;
    if (mbe_fsync_dir_of(s->part) < 0)
        return sysfail(e, s->part, "fsync of the directory");
    return 0;
}

static int fresh_id(mbe_shard *s, sh_member *m, mbe_err *e)
{
    char id[33];
    if (*m->meta.shard_id)
        return 0;
    if (mbe_shard_new_id(id, e) < 0)
        return -1;
    free(m->meta.shard_id);
    if (!(m->meta.shard_id = strdup(id)))
        return mbe_fail(e, "%s: out of memory", s->path);
    return 0;
}

/* libhdf5 says only that it cannot open a file in a directory that is
 * not there. */
static int check_dir(const char *path, mbe_err *e)
{
    char *copy = strdup(path);
    if (!copy)
        return mbe_fail(e, "%s: out of memory", path);
    const char *dir = dirname(copy);
    struct stat st;
    int rc = 0;
    /* Other failures are H5Fcreate's to report (mbe_h5_errdesc). */
    if (stat(dir, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            rc = mbe_fail(e, "%s: cannot create: directory %s does not "
                          "exist", path, dir);
    } else if (!S_ISDIR(st.st_mode)) {
        rc = mbe_fail(e, "%s: cannot create: %s is not a directory", path,
                      dir);
    }
    free(copy);
    return rc;
}

/* Room and provenance of every member. */
static int create_members(mbe_shard *s, size_t n, const mbe_shard_meta *meta,
                          const mbe_frames *frames,
                          const uint32_t *const *geom_crc, mbe_err *e)
{
    if (shard_members(s, n, e) < 0)
        return MBE_EFAIL;
    for (size_t i = 0; i < n; i++)
        if (member_fill(s, &s->mem[i], &meta[i], &frames[i], NULL,
                        geom_crc[i], e) < 0 ||
            fresh_id(s, &s->mem[i], e) < 0)
            return MBE_EFAIL;
    return 0;
}

static int create(const char *path, int bundle, size_t n,
                  const mbe_shard_meta *meta, const mbe_frames *frames,
                  const uint32_t *const *geom_crc, mbe_shard **out,
                  mbe_err *e)
{
    mbe_h5_quiet();
    *out = NULL;
    if (!path || !*path)
        return mbe_fail(e, "shard: empty file name");
    if (!meta || !frames || !geom_crc)
        return mbe_fail(e, "%s: no provenance or no frames given", path);
    if (bundle && (n < 1 || n > SH_MAX_MEMBERS))
        return mbe_fail(e, "%s: a shard holds 1 to %d keys, not %zu", path,
                        SH_MAX_MEMBERS, n);
    for (size_t i = 0; i < n; i++)
        if (check_create_args(path, &meta[i], &frames[i], geom_crc[i], e) < 0)
            return MBE_EFAIL;
    if (check_dir(path, e) < 0)
        return MBE_EFAIL;
    mbe_shard *s = shard_new(path, e);
    if (!s)
        return MBE_EFAIL;
    s->bundle = bundle;
    char *tmp = NULL;
    int rc = refuse_existing(s, e);
    if (!rc)
        rc = create_members(s, n, meta, frames, geom_crc, e);
    if (!rc && !(tmp = tmp_name(s, e)))
        rc = MBE_EFAIL;
    if (!rc)
        remove_stale_tmp(s);
    if (!rc)
        rc = build(s, tmp, geom_crc, e);
    if (!rc)
        rc = publish_part(s, tmp, e);
    if (rc < 0) {
        if (tmp && !s->open && s->created)
            unlink(tmp); /* only a file this call created */
        shard_free(s);
        free(tmp);
        return MBE_EFAIL;
    }
    free(tmp);
    *out = s;
    return 0;
}

int mbe_shard_create(const char *path, const mbe_shard_meta *meta,
                     const mbe_frames *frames, const uint32_t *geom_crc,
                     mbe_shard **out, mbe_err *e)
{
    return create(path, 0, 1, meta, frames, &geom_crc, out, e);
}

int mbe_shard_create_bundle(const char *path, size_t n,
                            const mbe_shard_meta *meta,
                            const mbe_frames *frames,
                            const uint32_t *const *geom_crc,
                            mbe_shard **out, mbe_err *e)
{
    return create(path, 1, n, meta, frames, geom_crc, out, e);
}

/* ------------------------------------------------------------ resume */

/* Opens the datasets for raw writes.  Resuming a file whose layout was
 * changed (say, rewritten by h5py with chunks) would make writes touch
 * metadata again, so that is refused. */
static int open_member(mbe_shard *s, size_t i, mbe_err *e)
{
    sh_member *m = &s->mem[i];
    m->loc = s->file;
    if (s->bundle) {
        char name[24];
        snprintf(name, sizeof name, "%zu", i);
        m->loc = H5Gopen2(s->file, name, H5P_DEFAULT);
        if (m->loc < 0)
            return h5fail(e, s->open, "cannot open a member");
    }
    for (int d = 0; d < SH_N_DS; d++) {
        if (d == SH_FORCES && m->meta.no_forces)
            continue;
        m->ds[d] = H5Dopen2(m->loc, sh_ds_names[d], H5P_DEFAULT);
        if (m->ds[d] < 0)
            return h5fail(e, s->open, "cannot open a dataset");
    }
    return 0;
}

static int open_for_writing(mbe_shard *s, mbe_err *e)
{
    hid_t fapl = writer_fapl();
    if (fapl < 0)
        return h5fail(e, s->open, "cannot set up file access");
    /* Read-only: HDF5 writes nothing, not even the superblock. */
    s->file = H5Fopen(s->open, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (s->file < 0)
        return h5fail(e, s->open, "cannot open");
    for (size_t i = 0; i < s->n_mem; i++)
        if (open_member(s, i, e) < 0)
            return MBE_EFAIL;
    return go_raw(s, s->open, e);
}

/* Puts that a kill or a crash interrupted fail their crc; they are made
 * UNDEFINED again, with the NaN row, so that they are computed anew. */
/* Rows of a member whose crc failed at resume. */
typedef struct sh_torn {
    size_t *bad;
    size_t n;
} sh_torn;

static int reset_torn(mbe_shard *s, const sh_torn *torn, mbe_err *e)
{
    size_t any = 0;
    for (size_t i = 0; i < s->n_mem; i++) {
        s->cur = i;
        for (size_t k = 0; k < torn[i].n; k++)
            if (mbe_shard_put(s, torn[i].bad[k], MBE_UNDEFINED, NAN, NULL, 0,
                              e) < 0)
                return MBE_EFAIL;
        any += torn[i].n;
    }
    s->cur = 0;
    return any ? sync_raw(s, s->open, e) : 0;
}

static int adopt(mbe_shard *s, sh_member *m, mbe_shard_reader *r,
                 sh_torn *torn, mbe_err *e)
{
    const mbe_frames *f = mbe_shard_reader_frames(r);
    if (member_fill(s, m, mbe_shard_reader_meta(r), f,
                    mbe_shard_reader_status(r), mbe_shard_reader_geom_crc(r),
                    e) < 0)
        return MBE_EFAIL;
    if (!(torn->bad = malloc((f->n ? f->n : 1) * sizeof *torn->bad)))
        return mbe_fail(e, "%s: out of memory", s->open);
    return sh_crc_scan(r, SH_SCAN_BUF, 1, torn->bad, f->n, &torn->n, NULL,
                       e);
}

/* Every member's rows, read and checked as the reader sees them. */
static int adopt_all(mbe_shard *s, sh_torn **torn, mbe_err *e)
{
    mbe_shard_reader *r = NULL;
    if (mbe_shard_open(s->open, &r, e) < 0)
        return MBE_EFAIL;
    s->bundle = r->bundle;
    size_t n = r->n_members;
    int rc = shard_members(s, n, e);
    if (!rc && !(*torn = calloc(n, sizeof **torn)))
        rc = mbe_fail(e, "%s: out of memory", s->open);
    for (size_t i = 0; !rc && i < n; i++) {
        if (i && (rc = mbe_shard_open_member(s->open, i, &r, e)) < 0)
            break;
        rc = adopt(s, &s->mem[i], r, &(*torn)[i], e);
        mbe_shard_reader_close(r);
        r = NULL;
    }
    mbe_shard_reader_close(r);
    return rc;
}

int mbe_shard_resume(const char *path, mbe_shard **out, mbe_err *e)
{
    mbe_h5_quiet();
    *out = NULL;
    if (!path || !*path)
        return mbe_fail(e, "shard: empty file name");
    mbe_shard *s = shard_new(path, e);
    if (!s)
        return MBE_EFAIL;
    s->open = exists(s->part) ? s->part : s->path;
    sh_torn *torn = NULL;
    int rc;
    if (!exists(s->open))
        rc = mbe_fail(e, "%s: cannot resume: neither it nor %s exists",
                      s->path, s->part);
    else
        rc = writer_lock(s, s->open, e);
    if (!rc)
        rc = adopt_all(s, &torn, e);
    if (!rc)
        rc = open_for_writing(s, e);
    if (!rc)
        rc = reset_torn(s, torn, e);
    for (size_t i = 0; torn && i < s->n_mem; i++)
        free(torn[i].bad);
    free(torn);
    if (rc < 0) {
        shard_free(s);
        return MBE_EFAIL;
    }
    *out = s;
    return 0;
}

/* ---------------------------------------------------------- accessors */

size_t mbe_shard_members(const mbe_shard *s)
{
    return s->n_mem;
}

int mbe_shard_select(mbe_shard *s, size_t member, mbe_err *e)
{
    if (member >= s->n_mem)
        return mbe_fail(e, "%s: no member %zu (the shard has %zu)", s->path,
                        member, s->n_mem);
    s->cur = member;
    return 0;
}

const mbe_shard_meta *mbe_shard_meta_of(const mbe_shard *s)
{
    return &cur(s)->meta;
}

const mbe_frames *mbe_shard_frames(const mbe_shard *s)
{
    return &cur(s)->frames;
}

const uint32_t *mbe_shard_geom_crc(const mbe_shard *s)
{
    return cur(s)->geom;
}

int64_t mbe_shard_status(const mbe_shard *s, size_t k)
{
    const sh_member *m = cur(s);
    return k < m->frames.n ? m->status[k] : -1;
}

/* ---------------------------------------------------------------- put */

static int check_result(const mbe_shard *s, size_t k, double energy,
                        const double *forces, mbe_err *e)
{
    const sh_member *m = cur(s);
    long long idx = (long long)m->frames.idx[k];
    if (!isfinite(energy))
        return mbe_fail(e, "%s: frame %lld: COMPLETED with a non-finite "
                        "energy", s->open, idx);
    if (m->meta.no_forces)
        return 0;
    if (!forces)
        return mbe_fail(e, "%s: frame %lld: COMPLETED without forces",
                        s->open, idx);
    size_t row = (size_t)m->meta.n_atoms * 3;
    for (size_t i = 0; i < row; i++)
        if (!isfinite(forces[i]))
            return mbe_fail(e, "%s: frame %lld: COMPLETED with a "
                            "non-finite force on atom %zu", s->open, idx,
                            i / 3);
    return 0;
}

int mbe_shard_put(mbe_shard *s, size_t k, int64_t status,
                  double energy_per_atom, const double *forces, int durable,
                  mbe_err *e)
{
    mbe_h5_quiet();
    sh_member *m = cur(s);
    if (k >= m->frames.n)
        return mbe_fail(e, "%s: no frame at position %zu (the shard holds "
                        "%zu)", s->open, k, m->frames.n);
    if (status < 0 || status >= MBE_N_STATUS)
        return mbe_fail(e, "%s: frame %lld: invalid status %lld", s->open,
                        (long long)m->frames.idx[k], (long long)status);
    if (status == MBE_COMPLETED) {
        if (check_result(s, k, energy_per_atom, forces, e) < 0)
            return MBE_EFAIL;
    } else {
        energy_per_atom = NAN;
        forces = m->nan_row;
    }
    if (m->meta.no_forces)
        forces = NULL;
    uint32_t crc = mbe_result_crc(status, energy_per_atom, forces,
                                  crc_atoms(&m->meta));
    /* Status last, and UNDEFINED first when the frame has results: an
     * interrupted put leaves an UNDEFINED frame (which readers ignore),
     * never an old status over half-new values. */
    int64_t undef = MBE_UNDEFINED;
    size_t row = (size_t)m->meta.n_atoms * 3;
    if (m->status[k] != MBE_UNDEFINED) {
        if (write_row(s, m, SH_STATUS, k, &undef, 1, 8, e) < 0)
            return MBE_EFAIL;
        m->status[k] = MBE_UNDEFINED;
    }
    if ((forces && write_row(s, m, SH_FORCES, k, forces, row, 8, e) < 0) ||
        write_row(s, m, SH_ENERGY, k, &energy_per_atom, 1, 8, e) < 0 ||
        write_row(s, m, SH_CRC, k, &crc, 1, 4, e) < 0 ||
        write_row(s, m, SH_STATUS, k, &status, 1, 8, e) < 0)
        return MBE_EFAIL;
    m->status[k] = status;
    return durable ? sync_raw(s, s->open, e) : 0;
}

int mbe_shard_sync(mbe_shard *s, mbe_err *e)
{
    return sync_raw(s, s->open, e);
}

/* ------------------------------------------------------ finish, close */

static int close_durably(mbe_shard *s, mbe_err *e)
{
    if (s->fd < 0)
        return 0;
    int rc = sync_raw(s, s->open, e);
    if (close(s->fd) < 0 && !rc)
        rc = sysfail(e, s->open, "cannot close");
    s->fd = -1;
    return rc;
}

static int publish_final(mbe_shard *s, mbe_err *e)
{
    if (rename_noreplace(s->part, s->path) < 0) {
        if (errno == EEXIST)
            return mbe_fail(e, "%s exists; the finished shard was left at "
                            "%s", s->path, s->part);
        return sysfail(e, s->path, "cannot rename the finished shard into "
                       "place");
    }
    if (mbe_fsync_dir_of(s->path) < 0)
        return sysfail(e, s->path, "fsync of the directory");
    return 0;
}

int mbe_shard_finish(mbe_shard *s, mbe_err *e)
{
    mbe_h5_quiet();
    if (!s)
        return mbe_fail(e, "shard: finish without a shard");
    char end[SH_END_TIME_LEN];
    signed char yes = 1;
    now_iso(end);
    int rc = 0;
    for (size_t i = 0; !rc && i < s->n_mem; i++) {
        rc = write_le(s, &s->mem[i], SH_END, 0, end, SH_END_TIME_LEN, 1, e);
        if (!rc)
            rc = write_le(s, &s->mem[i], SH_FINISHED, 0, &yes, 1, 1, e);
    }
    if (!rc)
        rc = close_durably(s, e);
    /* A finished shard that was resumed stays where it is. */
    if (!rc && s->open == s->part)
        rc = publish_final(s, e);
    shard_free(s);
    return rc;
}

int mbe_shard_close(mbe_shard *s, mbe_err *e)
{
    mbe_h5_quiet();
    if (!s)
        return 0;
    int rc = close_durably(s, e);
    shard_free(s);
    return rc;
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
