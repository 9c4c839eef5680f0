/* merge.c - mbe_merge: apply shards to a master (mbe-merge(1)).
 *
 * Before the lock: every shard is opened and verified, and checked against
 * the master read-only (identity, geometry fingerprints); duplicates and
 * conflicts are found (the checks of each shard: merge_check.c).  Any
 * problem stops here and the master is never opened for writing.
 *
 * Under the exclusive lock, taken once:
 *   0. an interrupted earlier merge is rolled back (journal), the master's
 *      identity and merge log are read again;
 *   A. structure (missing ground_truth datasets, levels_of_theory) is
 *      created through the undo journal and committed;
 *   B. rows are written in place: with pwrite at the dataset's file offset
 *      for contiguous datasets (linear in the frames applied; h5py's
 *      point selections are quadratic), through HDF5 hyperslabs for
 *      chunked or otherwise unusual ones (inside the journal, since HDF5
 *      may allocate chunks).  Raw rows are written under HDF5's own lock
 *      on the .h5, so a program holding the file open stops the merge.
 *      Forces, then energies, are made durable before any status is
 *      written, so a kill never leaves a COMPLETED status beside stale
 *      results; merge_plan.c shows why re-running the same merge then
 *      gives the uninterrupted result (merge_write.c);
 *   C. the applied shards are appended to the merge log (journal again),
 *      only after B is durable, so a logged shard is fully applied.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ground_truth.h"
#include "mbe_internal.h"
#include "merge_plan.h"

#include "merge_impl.h"

/* ============================================================ helpers */

void mg_step(const ctx *c, const char *what, size_t done, size_t total)
{
    if (c->o.on_step)
        c->o.on_step(c->o.ud, what, done, total);
}

const mbe_shard_meta *mg_meta(const ctx *c, size_t i)
{
    return mbe_shard_reader_meta(c->sh[i].r);
}

size_t mg_shard_n(const ctx *c, size_t i)
{
    return mbe_shard_reader_frames(c->sh[i].r)->n;
}

/* "2, 5, 9, ..." of up to SHOWN frames. */
void mg_frame_list(char *buf, size_t len, const int64_t *f, size_t shown,
                   size_t total)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < shown && at < len; i++)
        at += snprintf(buf + at, len - at, "%s%lld", i ? ", " : "",
                       (long long)f[i]);
    if (total > shown && at < len)
        snprintf(buf + at, len - at, ", ...");
}

/* ===================================================== report, states */

void mg_report_free_shard(mbe_merge_shard *s)
{
    free(s->path);
    free(s->name);
    free(s->shard_id);
    free(s->key);
    free(s->level);
    free(s->error);
    free(s->master_file);
}

void mbe_merge_report_free(mbe_merge_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->shards && i < r->n_shards; i++)
        mg_report_free_shard(&r->shards[i]);
    free(r->shards);
    mbe_strlist_free(&r->new_datasets);
    mbe_strlist_free(&r->renamed);
    memset(r, 0, sizeof *r);
}

/* The reason without a leading "<name>: " or "<path>: " (the report
 * names the shard). */
void set_note(ctx *c, size_t i, const char *msg)
{
    mbe_merge_shard *s = &c->r->shards[i];
    free(s->error);
    s->error = strdup(
        mbe_err_strip_path(mbe_err_strip_path(msg, s->name), s->path));
}

/* A refused shard always carries its reason: mbe-merge tells refused
 * shards (valid 0, error set) from those a failed merge never checked
 * (valid 0, no error). */
void mg_refuse(ctx *c, size_t i, const char *msg)
{
    c->sh[i].state = SH_INVALID;
    c->r->shards[i].valid = 0;
    set_note(c, i, msg);
}

void mg_refusef(ctx *c, size_t i, const char *fmt, ...)
{
    char msg[MBE_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mg_refuse(c, i, msg);
}

int mg_live(const ctx *c, size_t i)
{
    return c->sh[i].state == SH_APPLY;
}

size_t mg_count_state(const ctx *c, int state)
{
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++)
        k += c->sh[i].state == state;
    return k;
}

/* ============================================================ targets */

static void free_targets(ctx *c)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        free(t->member);
        free(t->view);
        mp_index_free(&t->ix);
        mp_plan_free(&t->plan);
        free(t->stored);
    }
    free(c->t);
    c->t = NULL;
    c->nt = 0;
}

static size_t find_target(const ctx *c, const char *key, const char *level)
{
    for (size_t k = 0; k < c->nt; k++)
        if (!strcmp(c->t[k].key, key) && !strcmp(c->t[k].level, level))
            return k;
    return c->nt;
}

static int add_member(target *t, const ctx *c, size_t i)
{
    size_t *mem = realloc(t->member, (t->n_member + 1) * sizeof *mem);
    if (!mem)
        return -1;
    t->member = mem;
    mp_shard *v = realloc(t->view, (t->n_member + 1) * sizeof *v);
    if (!v)
        return -1;
    t->view = v;
    const mbe_shard_reader *r = c->sh[i].r;
    t->view[t->n_member] = (mp_shard){
        mbe_shard_reader_frames(r)->idx, mg_status(c, i),
        mbe_shard_reader_energy(r), mbe_shard_reader_crc(r), mg_shard_n(c, i),
        !mbe_shard_reader_has_forces(r)};
    t->forces |= mbe_shard_reader_has_forces(r);
    t->member[t->n_member++] = i;
    return 0;
}

/* Group the shards to apply by (key, level), keeping command-line order,
 * and index each group's frames. */
/* Shards whose every frame is UNDEFINED (a job that computed nothing
 * yet, or a level equal to the group's level_of_theory, whose frames
 * count as done) are left out: they create no level, as the package
 * stores nothing when it computed nothing. */
static int build_targets(ctx *c, mbe_err *e)
{
    free_targets(c);
    c->t = calloc(c->n ? c->n : 1, sizeof *c->t);
    if (!c->t)
        return mbe_fail(e, "out of memory");
    for (size_t i = 0; i < c->n; i++) {
        if (!mg_live(c, i) || !mg_has_work(c, i))
            continue;
        const mbe_shard_meta *m = mg_meta(c, i);
        size_t k = find_target(c, c->sh[i].key, m->level);
        if (k == c->nt) {
            c->t[k] = (target){.key = c->sh[i].key, .level = m->level,
                               .n_frames = m->n_frames,
                               .n_atoms = m->n_atoms};
            c->nt++;
        }
        c->sh[i].target = k;
        if (add_member(&c->t[k], c, i) < 0)
            return mbe_fail(e, "out of memory");
    }
    for (size_t k = 0; k < c->nt; k++)
        if (mp_index_build(c->t[k].view, c->t[k].n_member, &c->t[k].ix, e) <
            0)
            return MBE_EFAIL;
    return 0;
}

static int conflict_error(ctx *c, const target *t, const mp_conflicts *cf,
                          mbe_err *e)
{
    const char *a = c->r->shards[t->member[cf->shard_a]].name;
    const char *b = c->r->shards[t->member[cf->shard_b]].name;
    char list[160], note[MBE_ERR_LEN];
    mg_frame_list(list, sizeof list, cf->first, cf->n_first, cf->count);
    snprintf(note, sizeof note, "conflicts with %s", b);
    set_note(c, t->member[cf->shard_a], note);
    snprintf(note, sizeof note, "conflicts with %s", a);
    set_note(c, t->member[cf->shard_b], note);
    return mbe_fail(e, "%zu frame%s of level '%s' (%s) %s COMPLETED with "
                    "different results in %s and %s; nothing was written "
                    "(use --prefer first|last to choose)",
                    cf->count, cf->count > 1 ? "s" : "", t->level, list,
                    cf->count > 1 ? "are" : "is", a, b);
}

static int check_conflicts(ctx *c, mbe_err *e)
{
    if (c->o.prefer != MBE_PREFER_NONE)
        return 0;
    for (size_t k = 0; k < c->nt; k++) {
        mp_conflicts cf;
        mp_find_conflicts(&c->t[k].ix, c->t[k].view, &cf);
        if (cf.count)
            return conflict_error(c, &c->t[k], &cf, e);
    }
    return 0;
}

/* ================================================ validation, overall */

static int validate(ctx *c, mbe_err *e)
{
    struct stat st;
    if (stat(c->master, &st) < 0)
        return mbe_fail(e, "%s: %s", c->master, strerror(errno));
    int rc = mg_open_shards(c, e);
    if (rc < 0)
        return rc;
    if (mg_find_duplicates(c, e) < 0)
        return MBE_EFAIL;
    if (!mg_count_state(c, SH_INVALID) || c->o.skip_invalid)
        return 0;
    /* The merge will not happen: the others are checked against the
     * master too (under a shared lock), so that one run names every bad
     * shard. */
    mbe_lock lk;
    mbe_err le;
    if (mbe_lock_acquire(c->master, 0, &c->o.lock, &lk, &le) == 0) {
        rc = mg_check_against_master(c, e);
        mbe_lock_release(&lk);
        if (rc < 0)
            return rc;
    }
    return mg_refuse_invalid(c, e);
}

/* ===================================================== under the lock */

static int inspect_targets(ctx *c, hid_t f, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        if (mbe_gt_inspect(f, t->key, t->level, t->n_frames, t->n_atoms,
                           &t->gl, e) < 0) {
            mbe_err_prefix(e, "%s", c->master);
            return MBE_EFAIL;
        }
    }
    return 0;
}

static hid_t open_ro(const ctx *c, mbe_err *e)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* Strong close: no identifier left open can keep the file open while
     * rows are written around HDF5. */
    if (fapl >= 0)
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    hid_t f = fapl >= 0 ? H5Fopen(c->master, H5F_ACC_RDONLY, fapl) : -1;
    if (fapl >= 0)
        H5Pclose(fapl);
    if (f < 0) {
        char d[300];
        mbe_h5_errdesc(d, sizeof d);
        mbe_fail(e, "%s: cannot open the master: %s", c->master, d);
    }
    return f;
}

static int first_target_of_key(const ctx *c, size_t k)
{
    for (size_t j = 0; j < k; j++)
        if (!strcmp(c->t[j].key, c->t[k].key))
            return 0;
    return 1;
}

/* What phase A will create and rename. */
static int list_new_datasets(ctx *c, hid_t f, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        const target *t = &c->t[k];
        if (mbe_gt_missing(&t->gl, t->key, t->level, t->forces,
                           &c->r->new_datasets, e) < 0)
            return MBE_EFAIL;
        if (t->gl.old_names && first_target_of_key(c, k) &&
            mbe_names_convert(f, t->key, 0, 1, &c->r->renamed, e) < 0)
            return MBE_EFAIL;
    }
    return 0;
}

static int survey(ctx *c, mbe_err *e)
{
    hid_t f = open_ro(c, e);
    if (f < 0)
        return MBE_EFAIL;
    int rc = mg_read_logs(c, f, e);
    if (rc == 0)
        rc = build_targets(c, e);
    if (rc == 0)
        rc = mg_check_methods(c, e);
    if (rc == 0)
        rc = check_conflicts(c, e);
    if (rc == 0)
        rc = inspect_targets(c, f, e);
    if (rc == 0)
        rc = list_new_datasets(c, f, e);
    H5Fclose(f);
    return rc;
}

/* ---------------------------------------------------- Phase A: structure */

int mg_journal_end(hid_t f, mbe_journal *j, int rc, mbe_err *e)
{
    if (rc == 0)
        return mbe_journal_commit(f, j, e);
    mbe_err ae;
    if (mbe_journal_abort(f, j, &ae) < 0) {
        char old[MBE_ERR_LEN];
        memcpy(old, e->msg, sizeof old);
        snprintf(e->msg, sizeof e->msg, "%.500s (and the roll-back failed: "
                 "%.300s; running mbe-merge again rolls back)", old, ae.msg);
    }
    return rc;
}

static int phase_a(ctx *c, mbe_err *e)
{
    int any = 0;
    for (size_t k = 0; k < c->nt; k++)
        any |= mbe_gt_needs_structure(&c->t[k].gl, c->t[k].forces);
    if (!any)
        return 0;
    mg_step(c, "creating datasets", 0, 1);
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < c->nt; k++) {
        target *t = &c->t[k];
        if (mbe_gt_needs_structure(&t->gl, t->forces))
            rc = mbe_gt_ensure(f, t->key, t->level, t->n_frames, t->n_atoms,
                               &t->gl, t->forces, NULL, e);
    }
    if ((rc = mg_journal_end(f, j, rc, e)) < 0)
        return rc;
    mg_step(c, "creating datasets", 1, 1);
    /* Where the new datasets' rows lie. */
    if ((f = open_ro(c, e)) < 0)
        return MBE_EFAIL;
    rc = inspect_targets(c, f, e);
    H5Fclose(f);
    return rc;
}

/* ----------------------------------------------------- stored status */

static int read_stored_raw(ctx *c, target *t, mbe_err *e)
{
    size_t pos = 0, start, len, max = mg_rows_per_block(c, 8);
    uint64_t off = t->gl.ds[MBE_GT_STATUS].offset;
    while (mp_next_run(t->ix.frame, NULL, t->ix.n_frames, &pos, max, &start,
                       &len))
        if (mbe_pread_full(c->fd, t->stored + start, len * 8,
                       off + (uint64_t)t->ix.frame[start] * 8) < 0)
            return mbe_fail(e, "%s: cannot read the status of level '%s': "
                            "%s", c->master, t->level, strerror(errno));
    return 0;
}

static int read_stored_h5(ctx *c, target *t, mbe_err *e)
{
    hid_t f = open_ro(c, e);
    if (f < 0)
        return MBE_EFAIL;
    hid_t ds = mbe_gt_open(f, t->key, t->level, MBE_GT_STATUS, e);
    int rc = ds >= 0 ? 0 : MBE_EFAIL;
    size_t pos = 0, start, len, max = mg_rows_per_block(c, 8);
    while (rc == 0 && mp_next_run(t->ix.frame, NULL, t->ix.n_frames, &pos,
                                  max, &start, &len))
        if (mg_h5_rows(ds, MBE_GT_STATUS, t->ix.frame[start], len,
                    t->stored + start, 0) < 0)
            rc = mbe_fail(e, "%s: cannot read the status of level '%s'",
                          c->master, t->level);
    if (ds >= 0)
        H5Dclose(ds);
    H5Fclose(f);
    return rc;
}

/* The master's status of the target's frames only; a level without a
 * status dataset reads as COMPLETED (legacy) or, when it does not exist
 * yet (dry run), UNDEFINED. */
static int read_stored(ctx *c, target *t, mbe_err *e)
{
    size_t n = t->ix.n_frames;
    if (!(t->stored = malloc((n ? n : 1) * sizeof *t->stored)))
        return mbe_fail(e, "out of memory");
    const mbe_gt_ds *d = &t->gl.ds[MBE_GT_STATUS];
    if (d->exists)
        return d->raw ? read_stored_raw(c, t, e) : read_stored_h5(c, t, e);
    int64_t v = mbe_gt_is_legacy(&t->gl) ? MBE_COMPLETED : MBE_UNDEFINED;
    for (size_t u = 0; u < n; u++)
        t->stored[u] = v;
    return 0;
}

static void credit_shards(ctx *c, const target *t)
{
    for (size_t j = 0; j < t->n_member; j++) {
        mbe_merge_shard *s = &c->r->shards[t->member[j]];
        s->applied = t->plan.applied[j];
        s->kept = t->plan.kept[j];
    }
    c->r->frames_written += t->plan.frames_written;
}

static int plan_all(ctx *c, mbe_err *e)
{
    for (size_t k = 0; k < c->nt; k++) {
        target *t = &c->t[k];
        int has_status = !mbe_gt_is_legacy(&t->gl);
        if (read_stored(c, t, e) < 0 ||
            mp_plan_build(&t->ix, t->view, t->n_member, c->o.prefer,
                          t->stored, has_status, &t->plan, e) < 0)
            return MBE_EFAIL;
        credit_shards(c, t);
    }
    return 0;
}

/* ------------------------------------------------------ Phase B: rows */

static int phase_b(ctx *c, mbe_err *e)
{
    if (c->fd < 0 && (c->fd = open(c->master, O_RDWR | O_CLOEXEC)) < 0)
        return mbe_fail(e, "%s: cannot open for writing: %s", c->master,
                        strerror(errno));
    if (plan_all(c, e) < 0)
        return MBE_EFAIL;
    return mg_write_rows(c, e);
}

/* ---------------------------------------------------- Phase C: the log */

/* Only after B is durable, so that a logged shard is fully applied. */
static int phase_c(ctx *c, mbe_err *e)
{
    if (!mg_count_state(c, SH_APPLY))
        return 0;
    /* HDF5 keeps what the shards' and the master's reads freed on its free
     * lists; give it back before the log is written. */
    H5garbage_collect();
    mbe_journal *j;
    hid_t f = mbe_journal_open(c->master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    return mg_journal_end(f, j, mg_append_logs(c, f, e), e);
}

/* ------------------------------------------------------------ the lock */

static int recover(ctx *c, mbe_err *e)
{
    int rolled = 0;
    if (mbe_journal_recover(c->master, &rolled, e) < 0)
        return MBE_EFAIL;
    c->r->recovered |= rolled;
    return 0;
}

/* The checks against the master, then what is to be done. */
static int checks_locked(ctx *c, mbe_err *e)
{
    int rc = mg_check_against_master(c, e);
    if (rc == 0)
        rc = mg_refuse_invalid(c, e);
    if (rc < 0)
        return rc;
    if (!mg_count_state(c, SH_APPLY))
        return 0;
    return survey(c, e);
}

static int dry_run_locked(ctx *c, mbe_err *e)
{
    int rc = checks_locked(c, e);
    if (rc < 0)
        return rc;
    if (!c->nt)
        return 0;
    if ((c->fd = open(c->master, O_RDONLY | O_CLOEXEC)) < 0)
        return mbe_fail(e, "%s: %s", c->master, strerror(errno));
    return plan_all(c, e);
}

/* A shard whose row fails its crc while the rows are written: with
 * skip_invalid it is refused and the merge planned and written again
 * without it (rows written so far are verified results of the shards); else
 * the merge ends there, before any status is written. */
static int bad_row(ctx *c, mbe_err *e)
{
    char why[MBE_ERR_LEN];
    if (c->o.skip_invalid) {
        mg_refuse(c, c->bad, e->msg);
        c->r->frames_written = 0;
        return 0;
    }
    snprintf(why, sizeof why, "%.700s; results written so far are verified "
             "ones and no status was written: run mbe-merge again without "
             "it, or with --skip-invalid", e->msg);
    mg_refuse(c, c->bad, why);
    c->r->stopped = 1;
    return mbe_failc(e, MBE_EINVALID, "%s", why);
}

static int merge_locked(ctx *c, mbe_err *e)
{
    int rc = recover(c, e);
    if (rc == 0)
        rc = checks_locked(c, e);
    if (rc < 0)
        return rc;
    for (;;) {
        if (!c->nt)
            return 0;
        rc = phase_a(c, e);
        if (rc == 0)
            rc = phase_b(c, e);
        if (rc == 0)
            break;
        if (rc != MBE_EINVALID)
            return rc;
        if ((rc = bad_row(c, e)) < 0)
            return rc;
        if (survey(c, e) < 0)
            return MBE_EFAIL;
    }
    if (phase_c(c, e) < 0)
        return MBE_EFAIL;
    if (fsync(c->fd) < 0)
        return mbe_fail(e, "%s: fsync: %s", c->master, strerror(errno));
    return 0;
}

static int with_lock(ctx *c, mbe_err *e)
{
    mbe_lock lk;
    int rc = mbe_lock_acquire(c->master, !c->o.dry_run, &c->o.lock, &lk, e);
    if (rc < 0)
        return rc;
    double t0 = mbe_now();
    rc = c->o.dry_run ? dry_run_locked(c, e) : merge_locked(c, e);
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    mbe_lock_release(&lk);
    c->r->lock_held_s = mbe_now() - t0;
    return rc;
}

/* A merge killed while changing structure left the master half-changed;
 * roll it back before reading the master at all. */
static int recover_first(ctx *c, mbe_err *e)
{
    if (!mbe_master_needs_recovery(c->master))
        return 0;
    if (c->o.dry_run)
        return mbe_fail(e, "%s: an interrupted merge awaits roll-back; run "
                        "mbe-merge without --dry-run", c->master);
    mbe_lock lk;
    int rc = mbe_lock_acquire(c->master, 1, &c->o.lock, &lk, e);
    if (rc < 0)
        return rc;
    rc = recover(c, e);
    mbe_lock_release(&lk);
    return rc;
}

/* ====================================== whole-master maintenance */

/* One change to every frame-holding group: the 0.2 names renamed, or the
 * merge log dropped. */
typedef int (*group_fn)(hid_t f, const char *key, const mbe_merge_opts *o,
                        mbe_strlist *done, mbe_err *e);

static int convert_group(hid_t f, const char *key, const mbe_merge_opts *o,
                         mbe_strlist *done, mbe_err *e)
{
    size_t buf = o->buf_bytes ? o->buf_bytes : MBE_MERGE_BUF_DEFAULT;
    return mbe_names_convert(f, key, buf, o->dry_run, done, e);
}

static int reset_group(hid_t f, const char *key, const mbe_merge_opts *o,
                       mbe_strlist *done, mbe_err *e)
{
    char *path = mbe_asprintf("%s/" MBE_GROUP_GT "/" MBE_GT_LOG, key);
    char *gt = mbe_asprintf("%s/" MBE_GROUP_GT, key);
    if (!path || !gt) {
        free(path);
        free(gt);
        return mbe_fail(e, "out of memory");
    }
    /* The group first: H5Lexists fails on a path through a missing one. */
    int rc = 0;
    if (H5Lexists(f, gt, H5P_DEFAULT) > 0 &&
        H5Lexists(f, path, H5P_DEFAULT) > 0) {
        if (!o->dry_run && H5Ldelete(f, path, H5P_DEFAULT) < 0)
            rc = mbe_fail(e, "cannot delete %s", path);
        else
            rc = mbe_strlist_push(done, path, e);
    }
    free(path);
    free(gt);
    return rc;
}

static int every_group(hid_t f, const char *master, group_fn fn,
                       const mbe_merge_opts *o, mbe_strlist *done,
                       mbe_err *e)
{
    mbe_strlist keys;
    if (mbe_h5_frame_groups(f, master, &keys, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < keys.n; i++)
        rc = fn(f, keys.v[i], o, done, e);
    if (rc < 0)
        mbe_err_prefix(e, "%s", master);
    mbe_strlist_free(&keys);
    return rc;
}

static int maintain_locked(const char *master, group_fn fn,
                           const mbe_merge_opts *o, mbe_strlist *done,
                           mbe_err *e)
{
    int rolled;
    if (!o->dry_run && mbe_journal_recover(master, &rolled, e) < 0)
        return MBE_EFAIL;
    if (mbe_master_check(master, e) < 0)
        return MBE_EFAIL;
    if (o->dry_run) {
        hid_t f = H5Fopen(master, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0)
            return mbe_fail(e, "%s: cannot open the master", master);
        int rc = every_group(f, master, fn, o, done, e);
        H5Fclose(f);
        return rc;
    }
    mbe_journal *j;
    hid_t f = mbe_journal_open(master, &j, e);
    if (f < 0)
        return MBE_EFAIL;
    return mg_journal_end(f, j, every_group(f, master, fn, o, done, e), e);
}

static int maintain(const char *master, group_fn fn, const mbe_merge_opts *o,
                    mbe_strlist *done, mbe_err *e)
{
    mbe_h5_quiet();
    struct stat st;
    if (stat(master, &st) < 0)
        return mbe_fail(e, "%s: %s", master, strerror(errno));
    if (o->dry_run && mbe_master_needs_recovery(master))
        return mbe_fail(e, "%s: an interrupted merge awaits roll-back; run "
                        "mbe-merge without --dry-run", master);
    mbe_lock lk;
    int rc = mbe_lock_acquire(master, !o->dry_run, &o->lock, &lk, e);
    if (rc < 0)
        return rc;
    rc = maintain_locked(master, fn, o, done, e);
    mbe_lock_release(&lk);
    return rc;
}

int mbe_merge_convert_names(const char *master, const mbe_merge_opts *o,
                            mbe_strlist *renamed, mbe_err *e)
{
    return maintain(master, convert_group, o, renamed, e);
}

int mbe_merge_reset_log(const char *master, const mbe_merge_opts *o,
                        mbe_strlist *dropped, mbe_err *e)
{
    return maintain(master, reset_group, o, dropped, e);
}

/* ============================================================= public */

int mbe_master_needs_recovery(const char *path)
{
    return mbe_journal_pending(path);
}

static int init(ctx *c, const char *master, char *const *shards, size_t n,
                const mbe_merge_opts *o, mbe_merge_report *r, mbe_err *e)
{
    memset(c, 0, sizeof *c);
    memset(r, 0, sizeof *r);
    c->master = master;
    c->r = r;
    c->n = n;
    c->fd = -1;
    if (o)
        c->o = *o;
    else
        c->o.lock.timeout = MBE_LOCK_TIMEOUT_DEFAULT;
    if (!c->o.buf_bytes)
        c->o.buf_bytes = MBE_MERGE_BUF_DEFAULT;
    mbe_iso_time(c->now);
    c->sh = calloc(n ? n : 1, sizeof *c->sh);
    r->shards = calloc(n ? n : 1, sizeof *r->shards);
    if (!c->sh || !r->shards)
        return mbe_fail(e, "out of memory");
    r->n_shards = n;
    for (size_t i = 0; i < n; i++)
        if (!(r->shards[i].path = strdup(shards[i])) ||
            !(r->shards[i].name = strdup(shards[i])))
            return mbe_fail(e, "out of memory");
    return 0;
}

static void ctx_free(ctx *c)
{
    free_targets(c);
    mg_logs_free(c);
    for (size_t i = 0; c->sh && i < c->n; i++) {
        mbe_shard_reader_close(c->sh[i].r);
        free(c->sh[i].key);
    }
    free(c->sh);
}

int mbe_merge(const char *master, char *const *shards, size_t n_shards,
              const mbe_merge_opts *o, mbe_merge_report *r, mbe_err *e)
{
    mbe_h5_quiet();
    mbe_err local;
    mbe_merge_report local_r;
    if (!e)
        e = &local;
    if (!r)
        r = &local_r;
    memset(r, 0, sizeof *r);
    if (!master || !*master || !n_shards || !shards) {
        mbe_fail(e, "no %s given", n_shards ? "master file" : "shards");
        return MBE_EFAIL;
    }
    ctx c;
    int rc = init(&c, master, shards, n_shards, o, r, e);
    if (rc == 0)
        rc = recover_first(&c, e);
    if (rc == 0)
        rc = validate(&c, e);
    if (rc == 0 && mg_count_state(&c, SH_APPLY))
        rc = with_lock(&c, e);
    ctx_free(&c);
    if (r == &local_r)
        mbe_merge_report_free(r);
    return rc;
}
