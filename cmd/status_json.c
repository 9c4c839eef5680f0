/* status_json.c - the mbe-status/1 object of a master and of a shard
 * (mbe-status(1) documents its fields), built from the library's counts.
 *
 * The human table is printed from this object (status_print.c), never
 * from the library's structures, so that --json and the table always say
 * the same.  A value that cannot be allocated sets ctx.oom, which
 * report() in mbe-status.c turns into one error line and exit 1. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

/* Forces buffer of the checksum verification of a shard. */
#define VERIFY_BUF ((size_t)32 << 20)

/* ------------------------------------------------------ JSON values */

/* Strings from files and the command line need not be UTF-8, which JSON
 * requires: bytes that are not are shown as '?'. */
json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j || !s)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *jreal(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

void put(struct ctx *c, json_t *obj, const char *k, json_t *v)
{
    if (!v || json_object_set_new(obj, k, v) < 0)
        c->oom = 1;
}

static void append(struct ctx *c, json_t *arr, json_t *v)
{
    if (!v || json_array_append_new(arr, v) < 0)
        c->oom = 1;
}

/* {"COMPLETED": n, "UNDEFINED": n, "SCF_NOT_CONVERGED": n, "FAILED": n} */
static json_t *jcounts(struct ctx *c, const int64_t count[MBE_N_STATUS])
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    for (int s = 0; s < MBE_N_STATUS; s++)
        put(c, o, mbe_status_name(s), json_integer(count[s]));
    return o;
}

/* ---------------------------------------------------------- masters */

static json_t *level_json(struct ctx *c, const mbe_level_summary *s,
                          int listed)
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "level", jstr(s->level));
    put(c, o, "listed", json_boolean(listed));
    put(c, o, "legacy", json_boolean(s->legacy));
    json_t *ds = json_array();
    if (!ds)
        c->oom = 1;
    if (s->has_energies)
        append(c, ds, jstr("energies"));
    if (s->has_forces)
        append(c, ds, jstr("forces"));
    if (s->has_status)
        append(c, ds, jstr("status"));
    put(c, o, "datasets", ds);
    put(c, o, "n_frames", json_integer(s->n_frames));
    put(c, o, "counts", jcounts(c, s->count));
    put(c, o, "energy_min", jreal(s->e_min));
    put(c, o, "energy_max", jreal(s->e_max));
    return o;
}

static int strlist_has(const mbe_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

static int levels_json(struct ctx *c, mbe_master *m, json_t *arr,
                       int *spelling, mbe_err *e)
{
    mbe_strlist levels;
    if (mbe_master_levels(m, &levels, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    /* -l names a level that may be absent: then every frame is UNDEFINED,
     * which is what the user needs to know. */
    size_t n = c->a.level ? 1 : levels.n;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *lv = c->a.level ? c->a.level : levels.v[i];
        mbe_level_summary s;
        rc = mbe_master_summarize(m, lv, &s, e);
        if (rc == 0)
            append(c, arr, level_json(c, &s, strlist_has(&levels, lv)));
        *spelling |= s.forces_spelling;
        mbe_level_summary_free(&s);
    }
    mbe_strlist_free(&levels);
    return rc;
}

static json_t *merge_entry_json(struct ctx *c, const mbe_merge_log_entry *m)
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "shard_id", jstr(m->shard_id));
    put(c, o, "level", jstr(m->level));
    put(c, o, "time", jstr(m->time));
    put(c, o, "path", jstr(m->path));
    put(c, o, "frames", json_integer(m->frames));
    return o;
}

/* A log that cannot be read does not hide what the group holds: its
 * error goes to merge_log_error, with the way out. */
static int merges_json(struct ctx *c, mbe_master *m, json_t *arr, json_t *g)
{
    mbe_merge_log_entry *log = NULL;
    size_t n = 0;
    mbe_err le = {""};
    if (mbe_master_merge_log(m, &log, &n, &le) < 0) {
        char msg[MBE_ERR_LEN + 256];
        snprintf(msg, sizeof msg, "%s (mbe-merge --reset-log %s drops it)",
                 le.msg, mbe_master_path(m));
        put(c, g, "merge_log_error", jstr(msg));
        return 0;
    }
    put(c, g, "merge_log_error", json_null());
    for (size_t i = 0; i < n; i++)
        if (!c->a.level || strcmp(log[i].level, c->a.level) == 0)
            append(c, arr, merge_entry_json(c, &log[i]));
    mbe_merge_log_free(log, n);
    return 0;
}

/* The Angstrom sign in the group's dataset names. */
static const char *spelling_name(int spelling)
{
    switch (spelling) {
    case MBE_SPELL_0_2: return "U+00C5";
    case MBE_SPELL_0_2 | MBE_SPELL_PACKAGE: return "U+212B+U+00C5";
    default: return "U+212B";
    }
}

/* One frame-holding group, opened under the caller's lock, which
 * checked the file (mbe_master_check). */
static int group_json(struct ctx *c, const char *path, const char *key,
                      json_t *groups, mbe_err *e)
{
    mbe_master *m = NULL;
    int rc = mbe_master_open_checked(path, key, 0, &c->lk, &m, e);
    if (rc < 0)
        return rc;
    json_t *g = json_object(), *levels = json_array(), *merges = json_array();
    if (!g || !levels || !merges)
        c->oom = 1;
    int spelling = mbe_master_spelling(m);
    rc = levels_json(c, m, levels, &spelling, e);
    if (rc == 0 && g)
        rc = merges_json(c, m, merges, g);
    if (g) {
        put(c, g, "key", jstr(mbe_master_key(m)));
        put(c, g, "n_frames", json_integer(mbe_master_n_frames(m)));
        put(c, g, "n_atoms", json_integer(mbe_master_n_atoms(m)));
        put(c, g, "periodic", json_boolean(mbe_master_periodic(m)));
        put(c, g, "angstrom", jstr(spelling_name(spelling)));
    }
    put(c, g, "levels", levels);
    put(c, g, "merges", merges);
    append(c, groups, g);
    mbe_err ce;
    if (mbe_master_close(m, &ce) < 0 && rc == 0) {
        *e = ce;
        rc = MBE_EFAIL;
    }
    return rc;
}

static int group_keys(struct ctx *c, const char *path, mbe_strlist *keys,
                      mbe_err *e)
{
    if (c->a.key) {
        keys->v = NULL;
        keys->n = 0;
        return mbe_strlist_push(keys, c->a.key, e);
    }
    int rc = mbe_list_frame_groups(path, &c->lk, keys, e);
    if (rc == 0 && keys->n == 0)
        rc = mbe_fail(e, "neither a shard nor a master: no frame-holding "
                         "group (Structure, Trajectory or FiniteSubsystem)");
    if (rc == 0 && c->a.multi) {
        mbe_strlist all = *keys;
        rc = mbe_keys_select(&all, &c->a.keys, c->a.all_keys, keys, e);
        mbe_strlist_free(&all);
    }
    return rc;
}

/* Every group of a master.  The shared lock is taken once for the whole
 * file, so the groups are one consistent snapshot (mbe_master_open takes
 * its own shared lock too, which a held shared lock never blocks). */
int master_json(struct ctx *c, const char *path, json_t *o, mbe_err *e)
{
    mbe_lock lock;
    int rc = mbe_lock_acquire(path, 0, &c->lk, &lock, e);
    if (rc < 0)
        return rc;
    int recovery = mbe_master_needs_recovery(path);
    put(c, o, "type", jstr("master"));
    put(c, o, "needs_recovery", json_boolean(recovery));
    json_t *groups = json_array();
    if (!groups)
        c->oom = 1;
    mbe_strlist keys = {0};
    /* Checked once under the lock held for every group (group_json): a
     * check per group would walk the whole file once per group.  Listing
     * the groups checks it (mbe_list_frame_groups). */
    rc = c->a.key ? mbe_master_check(path, e) : 0;
    if (rc == 0)
        rc = group_keys(c, path, &keys, e);
    for (size_t i = 0; rc == 0 && i < keys.n; i++)
        rc = group_json(c, path, keys.v[i], groups, e);
    mbe_strlist_free(&keys);
    mbe_lock_release(&lock);
    put(c, o, "groups", groups);
    if (recovery)
        note_code(c, EXIT_ATTENTION);
    /* The likely cause of a master that cannot be read. */
    if (rc < 0 && recovery)
        snprintf(e->msg + strlen(e->msg), sizeof e->msg - strlen(e->msg),
                 "; an interrupted merge awaits recovery: run mbe-merge "
                 "again");
    return rc;
}

/* ----------------------------------------------------------- shards */

static json_t *provenance_json(struct ctx *c, const mbe_shard_reader *r)
{
    const mbe_shard_meta *m = mbe_shard_reader_meta(r);
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "calculator", jstr(m->calculator));
    put(c, o, "calc_settings", jstr(m->calc_settings));
    put(c, o, "tool_version", jstr(m->tool_version));
    put(c, o, "host", jstr(m->host));
    put(c, o, "slurm_job_id", jstr(m->slurm_job_id));
    put(c, o, "slurm_array_job_id", jstr(m->slurm_array_job_id));
    put(c, o, "slurm_array_task_id", jstr(m->slurm_array_task_id));
    put(c, o, "start_time", jstr(m->start_time));
    put(c, o, "end_time", jstr(mbe_shard_reader_end_time(r)));
    put(c, o, "startup_ms", m->startup_ms < 0 ? json_null()
                                              : json_integer(m->startup_ms));
    return o;
}

static void verify_json(struct ctx *c, mbe_shard_reader *r, json_t *o)
{
    if (!c->a.verify) {
        put(c, o, "checksums", jstr("skipped"));
        put(c, o, "checksum_error", json_null());
        return;
    }
    mbe_err ve;
    int ok = mbe_shard_verify(r, VERIFY_BUF, &ve) == 0;
    put(c, o, "checksums", jstr(ok ? "ok" : "bad"));
    put(c, o, "checksum_error", ok ? json_null() : jstr(ve.msg));
    if (!ok)
        note_code(c, EXIT_ATTENTION);
}

/* Whether --master's merge log lists the shard.  A master that cannot be
 * read is reported on its own line; the shard's report still stands. */
static void merged_json(struct ctx *c, const char *path,
                        const mbe_shard_meta *meta, json_t *o)
{
    if (!c->a.master) {
        put(c, o, "merged", json_null());
        return;
    }
    mbe_master *m = NULL;
    mbe_merge_log_entry *log = NULL;
    size_t n = 0;
    mbe_err e;
    int rc = mbe_master_open(c->a.master, meta->key, 0, &c->lk, &m, &e);
    if (rc == 0)
        rc = mbe_master_merge_log(m, &log, &n, &e);
    if (m) {
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0) {
            e = ce;
            rc = MBE_EFAIL;
        }
    }
    if (rc < 0) {
        say_error("%s: --master %s: %s", path, c->a.master,
                  mbe_err_strip_path(e.msg, c->a.master));
        note_code(c, code_of(rc));
        put(c, o, "merged", json_null());
        return;
    }
    const mbe_merge_log_entry *hit = NULL;
    for (size_t i = 0; i < n && !hit; i++)
        if (strcmp(log[i].shard_id, meta->shard_id) == 0)
            hit = &log[i];
    json_t *mj = json_object();
    if (!mj)
        c->oom = 1;
    put(c, mj, "master", jstr(c->a.master));
    put(c, mj, "merged", json_boolean(hit != NULL));
    put(c, mj, "time", hit ? jstr(hit->time) : json_null());
    put(c, o, "merged", mj);
    mbe_merge_log_free(log, n);
}

int shard_json(struct ctx *c, const char *path, mbe_shard_reader *r,
                      json_t *o)
{
    const mbe_shard_meta *m = mbe_shard_reader_meta(r);
    const mbe_frames *f = mbe_shard_reader_frames(r);
    mbe_shard_summary sum;
    mbe_shard_summarize(r, &sum);
    char *spec = mbe_frames_format(f);
    if (!spec)
        c->oom = 1;
    put(c, o, "type", jstr("shard"));
    if (mbe_shard_reader_is_bundle(r)) {
        put(c, o, "member", json_integer((json_int_t)mbe_shard_reader_member(r)));
        put(c, o, "n_members",
            json_integer((json_int_t)mbe_shard_reader_members(r)));
    }
    put(c, o, "finished", json_boolean(mbe_shard_reader_finished(r)));
    put(c, o, "running", json_boolean(mbe_shard_reader_running(r)));
    put(c, o, "has_forces", json_boolean(mbe_shard_reader_has_forces(r)));
    put(c, o, "shard_id", jstr(m->shard_id));
    put(c, o, "master_file", jstr(m->master_file));
    put(c, o, "key", jstr(m->key));
    put(c, o, "level", jstr(m->level));
    put(c, o, "master_n_frames", json_integer(m->n_frames));
    put(c, o, "n_atoms", json_integer(m->n_atoms));
    put(c, o, "selection", jstr(m->selection));
    put(c, o, "frames", jstr(spec ? spec : ""));
    put(c, o, "n_frames", json_integer((json_int_t)f->n));
    put(c, o, "n_done",
        json_integer((json_int_t)f->n - sum.count[MBE_UNDEFINED]));
    put(c, o, "counts", jcounts(c, sum.count));
    put(c, o, "energy_min", jreal(sum.e_min));
    put(c, o, "energy_max", jreal(sum.e_max));
    free(spec);
    verify_json(c, r, o);
    put(c, o, "provenance", provenance_json(c, r));
    merged_json(c, path, m, o);
    return 0;
}
