/* shard_write.c - writing shard files (mbe-shard(5)): what one
 * mbe-compute job has computed, kept in a private file until mbe-merge
 * applies it.  Create, resume, put, finish and close.
 *
 * Crash safety rests on one rule.  HDF5 metadata is not journaled, so a
 * process killed while HDF5 rewrites it can leave a file nothing opens.
 * Therefore every object, attribute and byte of file space is made, written
 * and fsync'ed under a temporary name before the file is renamed to
 * <path>.part; after that only raw data of contiguous, early-allocated
 * datasets is ever overwritten, and the metadata bytes never change.
 *
 * The layout is in shard_format.h, shared with the reader (shard_read.c),
 * which resume uses to read and check the rows it continues. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shard_format.h"

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

/* -------------------------------------------------- meta, crc, layout */

/* Deep copy; NULL strings become "". */
static int sh_meta_copy(mbe_shard_meta *dst, const mbe_shard_meta *src)
{
    memset(dst, 0, sizeof *dst);
    dst->n_frames = src->n_frames;
    dst->n_atoms = src->n_atoms;
    dst->no_forces = src->no_forces;
    dst->startup_ms = src->startup_ms;
    for (size_t i = 0; i < SH_N_META_STRS; i++) {
        const char *v = sh_meta_str_c(src, i);
        if (!(*sh_meta_str(dst, i) = strdup(v ? v : "")))
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
                                        sh_meta_str_c(m, i)) < 0)
            return -1;
    return 0;
}

/* The atoms whose forces a row's crc covers: none without forces. */
static int64_t crc_atoms(const mbe_shard_meta *m)
{
    return m->no_forces ? 0 : m->n_atoms;
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
        return sh_sysfail(e, file, "cannot open");
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
    return sh_sysfail(e, file, "cannot lock");
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
        return sh_h5fail(e, name, "cannot flush");
    if (mbe_h5_fsync(s->file) < 0)
        return sh_sysfail(e, name, "fsync");
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
        return sh_sysfail(e, name, "fsync");
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
        rc = sh_h5fail(e, shown, "cannot close");
    s->file = -1;
    if (rc)
        return rc;
    s->fd = open(name, O_RDWR | O_CLOEXEC);
    if (s->fd < 0)
        return sh_sysfail(e, shown, "cannot open for writing");
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
        sh_keep_why(why);
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
            return sh_h5fail(e, s->path, "cannot lay out the shard");
    }
    size_t n = m->frames.n;
    if (sh_meta_write(m->loc, &m->meta, s->bundle) < 0 ||
        mbe_h5_attr_write_i64(m->loc, SH_ATTR_INDEX_CRC,
                              sh_index_crc(m->frames.idx, geom_crc, n)) < 0)
        return sh_h5fail(e, s->path, "cannot lay out the shard");
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
        return sh_h5fail(e, s->path, "cannot set up file creation");
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
        return sh_h5fail(e, s->path, "cannot lay out the shard");
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
        return sh_sysfail(e, s->part,
                          "cannot rename the new shard into place");
    }
    s->open = s->part;
    if (mbe_fsync_dir_of(s->part) < 0)
        return sh_sysfail(e, s->part, "fsync of the directory");
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
            return sh_h5fail(e, s->open, "cannot open a member");
    }
    for (int d = 0; d < SH_N_DS; d++) {
        if (d == SH_FORCES && m->meta.no_forces)
            continue;
        m->ds[d] = H5Dopen2(m->loc, sh_ds_names[d], H5P_DEFAULT);
        if (m->ds[d] < 0)
            return sh_h5fail(e, s->open, "cannot open a dataset");
    }
    return 0;
}

static int open_for_writing(mbe_shard *s, mbe_err *e)
{
    hid_t fapl = writer_fapl();
    if (fapl < 0)
        return sh_h5fail(e, s->open, "cannot set up file access");
    /* Read-only: HDF5 writes nothing, not even the superblock. */
    s->file = H5Fopen(s->open, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (s->file < 0)
        return sh_h5fail(e, s->open, "cannot open");
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
    s->bundle = mbe_shard_reader_is_bundle(r);
    size_t n = mbe_shard_reader_members(r);
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
        rc = sh_sysfail(e, s->open, "cannot close");
    s->fd = -1;
    return rc;
}

static int publish_final(mbe_shard *s, mbe_err *e)
{
    if (rename_noreplace(s->part, s->path) < 0) {
        if (errno == EEXIST)
            return mbe_fail(e, "%s exists; the finished shard was left at "
                            "%s", s->path, s->part);
        return sh_sysfail(e, s->path, "cannot rename the finished shard "
                          "into place");
    }
    if (mbe_fsync_dir_of(s->path) < 0)
        return sh_sysfail(e, s->path, "fsync of the directory");
    return 0;
}

int mbe_shard_finish(mbe_shard *s, mbe_err *e)
{
    mbe_h5_quiet();
    if (!s)
        return mbe_fail(e, "shard: finish without a shard");
    /* mbe_iso_time fills all 32 bytes: the dataset stores them all. */
    _Static_assert(SH_END_TIME_LEN == 32, "end_time is mbe_iso_time's size");
    char end[SH_END_TIME_LEN];
    signed char yes = 1;
    mbe_iso_time(end);
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
