/* shard_common.c - what the shard writer (shard_write.c) and reader
 * (shard_read.c) share besides the layout of shard_format.h: the meta's
 * strings, the crcs of the rows and of the index, HDF5 rows and errors,
 * and the test for a live writer. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "shard_format.h"

/* =============================================================== meta */

char **sh_meta_str(mbe_shard_meta *m, size_t i)
{
    return (char **)((char *)m + sh_meta_strs[i].off);
}

const char *sh_meta_str_c(const mbe_shard_meta *m, size_t i)
{
    return *(char *const *)((const char *)m + sh_meta_strs[i].off);
}

void mbe_shard_meta_free(mbe_shard_meta *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < SH_N_META_STRS; i++)
        free(*sh_meta_str(m, i));
    memset(m, 0, sizeof *m);
}

/* ================================================================ crc */

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
int64_t sh_index_crc(const int64_t *frames, const uint32_t *geom, size_t n)
{
    uint32_t c = mbe_crc32_le(0, frames, n, 8);
    return (int64_t)mbe_crc32_le(c, geom, n, 4);
}

/* ====================================================== ids and names */

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

/* ======================================================= HDF5 helpers */

h5desc_t sh_h5desc(void)
{
    h5desc_t d;
    mbe_h5_errdesc(d.s, sizeof d.s);
    if (!*d.s)
        snprintf(d.s, sizeof d.s, "HDF5 error");
    return d;
}

int sh_h5fail(mbe_err *e, const char *path, const char *what)
{
    return mbe_fail(e, "%s: %s: %s", path, what, sh_h5desc().s);
}

int sh_sysfail(mbe_err *e, const char *path, const char *what)
{
    return mbe_fail(e, "%s: %s: %s", path, what, strerror(errno));
}

/* The clean-up calls after a failed call clear HDF5's error stack: why,
 * when not NULL, keeps the failure's description. */
void sh_keep_why(h5desc_t *why)
{
    if (why)
        *why = sh_h5desc();
}

int sh_rows_io(hid_t ds, hid_t mtype, size_t k0, size_t count, void *buf,
               int write, h5desc_t *why)
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
        sh_keep_why(why);
    if (ms >= 0)
        H5Sclose(ms);
    H5Sclose(fs);
    return rc < 0 ? -1 : 0;
}

/* end_time: fixed 32 bytes, zero-padded ASCII ("" until finished). */
hid_t sh_end_time_type(void)
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

/* Whether the dataset's data is found without an index: contiguous, or
 * compact (inside its object header). */
int sh_raw_in_place(hid_t ds)
{
    hid_t dcpl = H5Dget_create_plist(ds);
    if (dcpl < 0)
        return 0;
    H5D_layout_t l = H5Pget_layout(dcpl);
    H5Pclose(dcpl);
    return l == H5D_CONTIGUOUS || l == H5D_COMPACT;
}

/* ======================================================== writer lock */

/* Whether a live mbe-compute holds the writer's lock (writer_lock). */
int sh_writer_running(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct flock l = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
    int busy = fcntl(fd, F_OFD_GETLK, &l) == 0 && l.l_type != F_UNLCK;
    close(fd);
    return busy;
}
