/* missing.c - the frames of a level that a job has still to compute (or
 * that failed), as a spec for mbe-compute --frames: mbe-status --missing
 * and --failed.
 *
 * A key is read under the shared lock, taken here and held from the check
 * for an interrupted merge to the last frame read, so that no merge
 * changes the master in between. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

/* Frames whose visible status the options select, from the open master. */
static int collect(mbe_master *m, const mbe_missing_opts *o, mbe_frames *f,
                   mbe_err *e)
{
    int want[MBE_N_STATUS] = {0};
    want[MBE_SCF_NOT_CONVERGED] = want[MBE_FAILED] = 1;
    if (o->undefined)
        want[MBE_UNDEFINED] = 1;
    mbe_level_view view = MBE_LEVEL_LISTED;
    if (mbe_master_level_view(m, o->level, &view, e) < 0)
        return MBE_EFAIL;
    if (o->on_view)
        o->on_view(o->ud, mbe_master_key(m), view);
    return mbe_master_frames_with_status(m, o->level, want, f, e);
}

/* The frames, under the lock the caller holds. */
static int locked_frames(const char *path, const char *key,
                         const mbe_missing_opts *o, mbe_frames *f,
                         mbe_err *e)
{
    /* Half-applied results would hide frames that the recovery will
     * bring back to missing: no spec until mbe-merge has recovered. */
    if (mbe_master_needs_recovery(path))
        return mbe_failc(e, MBE_ERECOVERY, "%s: an interrupted merge "
                         "awaits recovery: run mbe-merge again first", path);
    mbe_master *m = NULL;
    int rc = mbe_master_open(path, key, 0, &o->lock, &m, e);
    if (rc == 0)
        rc = collect(m, o, f, e);
    if (m) {
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0) {
            *e = ce;
            rc = MBE_EFAIL;
        }
    }
    return rc;
}

int mbe_master_missing(const char *path, const char *key,
                       const mbe_missing_opts *o, char **spec, mbe_err *e)
{
    *spec = NULL;
    mbe_lock lock;
    int rc = mbe_lock_acquire(path, 0, &o->lock, &lock, e);
    if (rc < 0)
        return rc;
    mbe_frames f = {0};
    rc = locked_frames(path, key, o, &f, e);
    mbe_lock_release(&lock);
    if (rc == 0 && !(*spec = mbe_frames_format(&f)))
        rc = mbe_fail(e, "out of memory");
    mbe_frames_free(&f);
    return rc;
}

/* Append "KEY: SPEC" to out (of length *len) unless spec is empty. */
static int append_line(char **out, size_t *len, const char *key,
                       const char *spec, mbe_err *e)
{
    if (!*spec)
        return 0;
    char *t = realloc(*out, *len + strlen(key) + strlen(spec) + 4);
    if (!t)
        return mbe_fail(e, "out of memory");
    *out = t;
    *len += (size_t)sprintf(t + *len, "%s%s: %s", *len ? "\n" : "", key,
                            spec);
    return 0;
}

int mbe_master_missing_keyed(const char *path, const mbe_strlist *keys,
                             int all, const mbe_missing_opts *o,
                             char **spec, mbe_err *e)
{
    *spec = NULL;
    mbe_pool p;
    int rc = mbe_pool_keys(path, keys, all, &o->lock, &p, e);
    if (rc < 0)
        return rc;
    size_t len = 0;
    for (size_t k = 0; rc == 0 && k < p.keys.n; k++) {
        char *one = NULL;
        rc = mbe_master_missing(path, p.keys.v[k], o, &one, e);
        if (rc == 0)
            rc = append_line(spec, &len, p.keys.v[k], one, e);
        free(one);
    }
    /* No key with frames: "" rather than NULL. */
    if (rc == 0 && !*spec && !(*spec = strdup("")))
        rc = mbe_fail(e, "out of memory");
    mbe_pool_free(&p);
    if (rc != 0) {
        free(*spec);
        *spec = NULL;
    }
    return rc;
}
