/* names.c - the names of the master layout and their two spellings.
 *
 * The package spells Å as U+212B ANGSTROM SIGN; mbe-shard 0.2 and older
 * spelt it U+00C5, so masters they wrote hold datasets the package cannot
 * see.  The defines in mbe_internal.h are the package's bytes; this file
 * builds the level names, finds whichever spelling a file holds, and
 * renames the 0.2 ones. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

#define FORCES_PREFIX "forces_"
#define FORCES_SUFFIX " (eV" MBE_DIVSLASH MBE_ANGSTROM ")"

/* ------------------------------------------------------------ building */

static char *gt_name(const char *prefix, const char *level, const char *suffix)
{
    size_t slashes = 0, len = strlen(level);
    for (size_t i = 0; i < len; i++)
        slashes += level[i] == '/';
    size_t total = strlen(prefix) + len + 2 * slashes + strlen(suffix) + 1;
    char *out = malloc(total), *p = out;
    if (!out)
        return NULL;
    p = stpcpy(p, prefix);
    for (size_t i = 0; i < len; i++) {
        if (level[i] == '/')
            p = stpcpy(p, MBE_DIVSLASH);
        else
            *p++ = level[i];
    }
    strcpy(p, suffix);
    return out;
}

char *mbe_gt_energy_name(const char *level)
{
    return gt_name("E_", level, " (eV" MBE_DIVSLASH "atom)");
}

char *mbe_gt_forces_name(const char *level)
{
    return gt_name(FORCES_PREFIX, level, FORCES_SUFFIX);
}

char *mbe_gt_status_name(const char *level)
{
    return gt_name("status_", level, "");
}

/* s with every `from` replaced by `to`. */
static char *replace_all(const char *s, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to), hits = 0;
    for (const char *p = strstr(s, from); p; p = strstr(p + fl, from))
        hits++;
    char *out = malloc(strlen(s) + hits * (tl > fl ? tl - fl : 0) + 1);
    char *p = out;
    if (!out)
        return NULL;
    while (*s) {
        if (!strncmp(s, from, fl)) {
            memcpy(p, to, tl);
            p += tl;
            s += fl;
        } else {
            *p++ = *s++;
        }
    }
    *p = '\0';
    return out;
}

char *mbe_name_0_2(const char *name)
{
    return replace_all(name, MBE_ANGSTROM, MBE_ANGSTROM_0_2);
}

/* ------------------------------------------------------------- finding */

int mbe_h5_spellings(hid_t loc, const char *name)
{
    char *old = mbe_name_0_2(name);
    if (!old)
        return -1;
    htri_t a = H5Lexists(loc, name, H5P_DEFAULT);
    /* A name without Å has one spelling only. */
    htri_t b = strcmp(old, name) ? H5Lexists(loc, old, H5P_DEFAULT) : 0;
    free(old);
    if (a < 0 || b < 0)
        return -1;
    return (a > 0 ? MBE_SPELL_PACKAGE : 0) | (b > 0 ? MBE_SPELL_0_2 : 0);
}

char *mbe_h5_existing_name(hid_t loc, const char *name, int *spell)
{
    int sp = mbe_h5_spellings(loc, name);
    if (spell)
        *spell = sp < 0 ? MBE_SPELL_NONE : sp;
    if (sp <= 0)
        return NULL;
    return sp & MBE_SPELL_PACKAGE ? mbe_strdup(name) : mbe_name_0_2(name);
}

/* ---------------------------------------------------------- converting */

static int h5fail(mbe_err *e, const char *what, const char *key,
                  const char *name)
{
    char d[300];
    mbe_h5_errdesc(d, sizeof d);
    return mbe_fail(e, "group '%s': cannot %s '%s': %s", key, what, name,
                    *d ? d : "HDF5 error");
}

static int note(mbe_strlist *done, const char *key, const char *sub,
                const char *name, mbe_err *e)
{
    if (!done)
        return 0;
    char *s = mbe_asprintf("%s: %s%s", key, sub, name);
    int rc = s ? mbe_strlist_push(done, s, e) : mbe_fail(e, "out of memory");
    free(s);
    return rc;
}

/* Rename loc's 0.2 spelling of name, when only that one exists.  h5py
 * links datasets with the default link properties, and so does this. */
static int rename_one(hid_t loc, const char *key, const char *sub,
                      const char *name, int dry, mbe_strlist *done,
                      mbe_err *e)
{
    int sp = mbe_h5_spellings(loc, name);
    if (sp < 0)
        return h5fail(e, "look up", key, name);
    if (sp != MBE_SPELL_0_2)
        return 0;
    if (dry)
        return note(done, key, sub, name, e);
    char *old = mbe_name_0_2(name);
    if (!old)
        return mbe_fail(e, "out of memory");
    int rc = H5Lmove(loc, old, loc, name, H5P_DEFAULT, H5P_DEFAULT) < 0
                 ? h5fail(e, "rename", key, old)
                 : note(done, key, sub, name, e);
    free(old);
    return rc;
}

static int row_is_nan(const double *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isnan(r[i]))
            return 0;
    return 1;
}

/* Rows [r0, r0+n) of a (frames, ...) float dataset; write 0 reads. */
static int rows_io(hid_t ds, hsize_t r0, hsize_t n, size_t row, double *buf,
                   int write)
{
    hid_t fs = H5Dget_space(ds);
    hsize_t d[H5S_MAX_RANK], start[H5S_MAX_RANK] = {0};
    int rank = fs >= 0 ? H5Sget_simple_extent_dims(fs, d, NULL) : -1;
    hsize_t mn = n * row;
    hid_t ms = H5Screate_simple(1, &mn, NULL);
    int rc = -1;
    if (rank >= 1 && ms >= 0) {
        start[0] = r0;
        d[0] = n;
        if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, d, NULL) >=
            0)
            rc = write ? H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT,
                                  buf)
                       : H5Dread(ds, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT,
                                 buf);
    }
    if (ms >= 0)
        H5Sclose(ms);
    if (fs >= 0)
        H5Sclose(fs);
    return rc < 0 ? -1 : 0;
}

static int dims_of(hid_t ds, hsize_t *frames, size_t *row)
{
    hid_t s = H5Dget_space(ds);
    hsize_t d[H5S_MAX_RANK];
    int rank = s >= 0 ? H5Sget_simple_extent_dims(s, d, NULL) : -1;
    if (s >= 0)
        H5Sclose(s);
    if (rank < 1)
        return -1;
    *frames = d[0];
    *row = 1;
    for (int i = 1; i < rank; i++)
        *row *= (size_t)d[i];
    return 0;
}

/* Rows the package's dataset lacks (all NaN) are taken from the 0.2 one,
 * in blocks of at most buf_bytes; frames both computed keep the
 * package's values, the later computation. */
static int fill_from_old(hid_t nds, hid_t ods, size_t buf_bytes,
                         const char *key, const char *name, mbe_err *e)
{
    hsize_t nf, of;
    size_t row, orow;
    if (dims_of(nds, &nf, &row) < 0 || dims_of(ods, &of, &orow) < 0 ||
        nf != of || row != orow || !row)
        return mbe_fail(e, "group '%s': '%s' exists in both spellings with "
                        "different shapes", key, name);
    size_t per = buf_bytes / (2 * row * sizeof(double));
    per = per ? per : 1;
    double *a = malloc(per * row * sizeof *a), *b = malloc(per * row * sizeof *b);
    int rc = a && b ? 0 : mbe_fail(e, "out of memory");
    for (hsize_t r0 = 0; rc == 0 && r0 < nf; r0 += per) {
        hsize_t n = nf - r0 < per ? nf - r0 : per;
        if (rows_io(nds, r0, n, row, a, 0) < 0 ||
            rows_io(ods, r0, n, row, b, 0) < 0) {
            rc = h5fail(e, "read", key, name);
            break;
        }
        int changed = 0;
        for (hsize_t k = 0; k < n; k++) {
            if (!row_is_nan(a + k * row, row) || row_is_nan(b + k * row, row))
                continue;
            memcpy(a + k * row, b + k * row, row * sizeof *a);
            changed = 1;
        }
        if (changed && rows_io(nds, r0, n, row, a, 1) < 0)
            rc = h5fail(e, "write", key, name);
    }
    free(a);
    free(b);
    return rc;
}

/* Both spellings of a level's forces: one dataset, the package's. */
static int join_forces(hid_t gt, const char *key, const char *old,
                       const char *name, size_t buf_bytes, int dry,
                       mbe_strlist *done, mbe_err *e)
{
    if (dry)
        return note(done, key, MBE_GROUP_GT "/", name, e);
    hid_t nds = H5Dopen2(gt, name, H5P_DEFAULT);
    hid_t ods = H5Dopen2(gt, old, H5P_DEFAULT);
    int rc = nds >= 0 && ods >= 0
                 ? fill_from_old(nds, ods, buf_bytes, key, name, e)
                 : h5fail(e, "open", key, nds < 0 ? name : old);
    if (nds >= 0)
        H5Dclose(nds);
    if (ods >= 0)
        H5Dclose(ods);
    if (rc == 0 && H5Ldelete(gt, old, H5P_DEFAULT) < 0)
        rc = h5fail(e, "delete", key, old);
    if (rc == 0)
        rc = note(done, key, MBE_GROUP_GT "/", name, e);
    return rc;
}

/* "forces_<level> (eV∕Å)" in the 0.2 spelling. */
static int is_old_forces(const char *s)
{
    static const char suffix[] = " (eV" MBE_DIVSLASH MBE_ANGSTROM_0_2 ")";
    size_t n = strlen(s), k = sizeof suffix - 1;
    return n > k && !strncmp(s, FORCES_PREFIX, sizeof FORCES_PREFIX - 1) &&
           !strcmp(s + n - k, suffix);
}

/* Names are collected first: renaming while iterating by index would
 * shift the index. */
static int old_forces_names(hid_t gt, mbe_strlist *out, mbe_err *e)
{
    H5G_info_t info;
    if (H5Gget_info(gt, &info) < 0)
        return mbe_fail(e, "cannot list '" MBE_GROUP_GT "'");
    for (hsize_t i = 0; i < info.nlinks; i++) {
        char buf[1024];
        ssize_t n = H5Lget_name_by_idx(gt, ".", H5_INDEX_NAME, H5_ITER_INC,
                                       i, buf, sizeof buf, H5P_DEFAULT);
        if (n < 0)
            return mbe_fail(e, "cannot list '" MBE_GROUP_GT "'");
        if ((size_t)n < sizeof buf && is_old_forces(buf) &&
            mbe_strlist_push(out, buf, e) < 0)
            return MBE_EFAIL;
    }
    return 0;
}

static int convert_gt(hid_t g, const char *key, size_t buf_bytes, int dry,
                      mbe_strlist *done, mbe_err *e)
{
    if (H5Lexists(g, MBE_GROUP_GT, H5P_DEFAULT) <= 0)
        return 0;
    hid_t gt = H5Gopen2(g, MBE_GROUP_GT, H5P_DEFAULT);
    if (gt < 0)
        return h5fail(e, "open", key, MBE_GROUP_GT);
    mbe_strlist old = {0};
    int rc = old_forces_names(gt, &old, e);
    for (size_t i = 0; rc == 0 && i < old.n; i++) {
        char *name = replace_all(old.v[i], MBE_ANGSTROM_0_2, MBE_ANGSTROM);
        htri_t both = name ? H5Lexists(gt, name, H5P_DEFAULT) : -1;
        if (!name)
            rc = mbe_fail(e, "out of memory");
        else if (both < 0)
            rc = h5fail(e, "look up", key, name);
        else if (both)
            rc = join_forces(gt, key, old.v[i], name, buf_bytes, dry, done,
                             e);
        else
            rc = rename_one(gt, key, MBE_GROUP_GT "/", name, dry, done, e);
        free(name);
    }
    mbe_strlist_free(&old);
    H5Gclose(gt);
    return rc;
}

int mbe_names_convert(hid_t file, const char *key, size_t buf_bytes,
                      int dry, mbe_strlist *done, mbe_err *e)
{
    static const char *const structure[] = {MBE_DS_POSITIONS, MBE_DS_CELL,
                                            MBE_DS_FORCES,
                                            MBE_DS_VELOCITIES};
    hid_t g = H5Gopen2(file, key, H5P_DEFAULT);
    if (g < 0)
        return h5fail(e, "open", key, key);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof structure / sizeof *structure;
         i++)
        rc = rename_one(g, key, "", structure[i], dry, done, e);
    if (rc == 0)
        rc = convert_gt(g, key, buf_bytes, dry, done, e);
    H5Gclose(g);
    return rc;
}
