/* compute.c - the compute job of mbe-compute(1): selected frames of a
 * master into a private shard.
 *
 * The master is read under the shared lock only while the geometry of the
 * selected frames is read; computing holds no lock.  Every finished frame
 * is stored in the shard <SHARD>.part and made durable (the sync policy in
 * compute_all), so a job killed at any moment loses at most the frame in
 * progress, and running the same job again continues where it stopped. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mbe.h"
#include "mbe_internal.h"

/* State of one job, passed between its steps. */
struct run {
    const mbe_compute_opts *o;
    const char *key;       /* the key being computed */
    const char *output;    /* the shard being written */
    mbe_compute_report *rep;
    mbe_calc *calc;
    mbe_shard *shard;
    mbe_geometry geom;     /* frames still to compute */
    mbe_frames todo_pos;   /* their positions in the shard */
    const mbe_frames *piece; /* several keys: this key's frames of the
                                job's piece of the pool */
    /* Seconds: set-up before any key (calculator, the pool), the start of
     * this key's preparation, its start-up in all, the first frame and
     * every frame computed. */
    double t_ready, t_prep, startup, t_first, t_frames;
    int first_done;        /* t_first is set */
    size_t completed, failed;  /* of this shard (an 0.2 job: this key's) */
};

static int stopped(const struct run *r)
{
    return r->o->stop && *r->o->stop;
}

static void say(const struct run *r, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(const struct run *r, int kind, const char *fmt, ...)
{
    if (!r->o->on_say)
        return;
    char msg[MBE_ERR_LEN + 512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->o->on_say(r->o->ud, kind, msg);
}

#define say_info(r, ...) say(r, MBE_COMPUTE_INFO, __VA_ARGS__)

static void frame_event(const struct run *r, const mbe_compute_frame *f)
{
    if (r->o->on_frame)
        r->o->on_frame(r->o->ud, f);
}

/* The error of a step: its stage in the report, the code returned. */
static int failed_at(struct run *r, int rc, const char *stage)
{
    r->rep->stage = stage;
    return rc < 0 ? rc : MBE_EFAIL;
}

/* The stage of a failure to start: a lock time-out or anything else. */
static int start_failed(struct run *r, int rc)
{
    return failed_at(r, rc == MBE_ETIMEOUT ? MBE_ETIMEOUT : MBE_EFAIL,
                     rc == MBE_ETIMEOUT ? "lock" : "cannot start");
}

/* The job's frames as the package chooses them (_resolve_chunk_indices,
 * _run_model): the pool is --frames in the order given (or every frame),
 * --chunk takes its piece of that order, and only the piece is sorted. */
static int select_frames(const mbe_compute_opts *a, int64_t n_frames,
                         mbe_frames *out, mbe_err *e)
{
    mbe_frame_list pool = {0};
    int rc = a->frames ? mbe_frame_list_parse(a->frames, n_frames, &pool, e)
                       : mbe_frame_list_all(n_frames, &pool, e);
    if (rc < 0) {
        mbe_err_prefix(e, "--frames");
        return rc;
    }
    int64_t i = 1, n = 1;
    if (a->chunk)
        rc = strcmp(a->chunk, "slurm") == 0
                 ? mbe_chunk_from_slurm(&i, &n, e)
                 : mbe_chunk_parse(a->chunk, &i, &n, e);
    if (rc == 0)
        rc = mbe_frame_list_chunk(&pool, i, n, out, e);
    if (rc < 0 && a->chunk)
        mbe_err_prefix(e, "--chunk");
    mbe_frame_list_free(&pool);
    return rc;
}

/* The piece was cut with the group's size read a moment earlier, under
 * another hold of the lock: a writer may have replaced the group since. */
static int piece_frames(const mbe_frames *piece, const mbe_master *m,
                        mbe_frames *sel, mbe_err *e)
{
    if (piece->n && piece->idx[piece->n - 1] >= mbe_master_n_frames(m))
        return mbe_fail(e, "group '%s' changed while the job started (now "
                        "%lld frames); run the job again", mbe_master_key(m),
                        (long long)mbe_master_n_frames(m));
    return mbe_frames_copy(piece, sel, e);
}

static char *env_or_empty(const char *name)
{
    const char *v = getenv(name);
    return strdup(v ? v : "");
}

static int fill_meta(const mbe_compute_opts *a, const mbe_master *m,
                     const mbe_calc *calc, const char *level,
                     const char *selection, double startup,
                     mbe_shard_meta *meta, mbe_err *e)
{
    char host[256] = "";
    char id[33];
    gethostname(host, sizeof host - 1);
    if (mbe_shard_new_id(id, e) < 0)
        return -1;
    char *abs = realpath(a->master, NULL);
    meta->master_file = abs ? abs : strdup(a->master);
    meta->key = strdup(mbe_master_key(m));
    meta->n_frames = mbe_master_n_frames(m);
    meta->n_atoms = mbe_master_n_atoms(m);
    meta->level = strdup(level);
    meta->selection = strdup(selection);
    meta->calculator = strdup(mbe_calc_name(calc));
    meta->calc_settings = mbe_calc_settings(calc);
    meta->tool_version = strdup(MBE_VERSION);
    meta->host = strdup(host);
    meta->slurm_job_id = env_or_empty("SLURM_JOB_ID");
    meta->slurm_array_job_id = env_or_empty("SLURM_ARRAY_JOB_ID");
    meta->slurm_array_task_id = env_or_empty("SLURM_ARRAY_TASK_ID");
    meta->shard_id = strdup(id);
    char now[32];
    mbe_iso_time(now);
    meta->start_time = strdup(now);
    meta->no_forces = a->no_forces;
    meta->startup_ms = (int64_t)(startup * 1e3 + 0.5);
    if (!meta->key || !meta->level || !meta->selection || !meta->calculator ||
        !meta->calc_settings || !meta->tool_version || !meta->host ||
        !meta->slurm_job_id || !meta->slurm_array_job_id ||
        !meta->slurm_array_task_id || !meta->shard_id || !meta->start_time)
        return mbe_fail(e, "out of memory");
    return 0;
}

/* An existing shard may be continued only by the job that made it. */
static int check_resumable(const mbe_shard_meta *sm, const mbe_master *m,
                           const mbe_compute_opts *a,
                           const char *shard_path, const char *level,
                           const char *selection, const mbe_calc *calc,
                           mbe_err *e)
{
    const char *master_path = a->master;
    const char *why = NULL;
    char *settings = mbe_calc_settings(calc);
    if (!settings)
        return mbe_fail(e, "out of memory");
    if (!a->allow_renamed &&
        !mbe_master_name_matches(sm->master_file, master_path)) {
        free(settings);
        return mbe_fail(e, "existing shard %s was computed for master %s, "
                        "not %s (for a copy or a renamed master give "
                        "--allow-renamed; else remove it or choose another "
                        "-o)", shard_path, sm->master_file,
                        mbe_base_name(master_path));
    }
    if (strcmp(sm->key, mbe_master_key(m)) != 0)
        why = "key";
    else if (sm->n_frames != mbe_master_n_frames(m) ||
             sm->n_atoms != mbe_master_n_atoms(m))
        why = "master size";
    else if (strcmp(sm->level, level) != 0)
        why = "level of theory";
    else if (strcmp(sm->selection, selection) != 0)
        why = "frame selection";
    else if (strcmp(sm->calculator, mbe_calc_name(calc)) != 0 ||
             !mbe_calc_same_method(sm->calc_settings, settings))
        why = "calculator or its settings";
    free(settings);
    if (!why && sm->no_forces != a->no_forces)
        return mbe_fail(e, "existing shard %s was computed %s --no-forces; "
                        "give the same, remove it or choose another -o",
                        shard_path, sm->no_forces ? "with" : "without");
    if (!why)
        return 0;
    return mbe_fail(e,
                    "existing shard %s belongs to another job (its %s differs: "
                    "master %s, key '%s', level '%s', frames %s); remove it "
                    "or choose another -o",
                    shard_path, why, mbe_base_name(sm->master_file), sm->key,
                    sm->level, *sm->selection ? sm->selection : "(none)");
}

/* The master must still hold the geometry a shard was made for: compare
 * the fingerprints stored at creation with the frames just read. */
static int check_geometry(struct run *r, mbe_err *e)
{
    const uint32_t *stored = mbe_shard_geom_crc(r->shard);
    size_t bad = 0;
    int64_t first = -1;
    for (size_t k = 0; k < r->geom.n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&r->geom, k, &v);
        if (mbe_frame_fingerprint(&v) != stored[r->todo_pos.idx[k]]) {
            if (!bad++)
                first = v.index;
        }
    }
    if (bad)
        return mbe_fail(e,
                        "the geometry of %zu frames (first: %lld) in the master "
                        "differs from the one %s was started with; remove the "
                        "shard to start again",
                        bad, (long long)first, r->output);
    return 0;
}

static int file_exists(const char *p)
{
    return access(p, F_OK) == 0;
}


/* Why frames count as COMPLETED when the stored status is not the reason,
 * or why stored COMPLETED frames do not count. */
static void say_view(const struct run *r, const mbe_master *m,
                     mbe_level_view view, size_t n)
{
    if (view == MBE_LEVEL_GENERATOR)
        say_info(r,
                 "'%s' is the level_of_theory of '%s' (the model that "
                 "generated its geometries): as in mbe_automation, every "
                 "selected frame (%zu) counts as COMPLETED; nothing to "
                 "compute (--overwrite computes them)",
                 r->o->level, mbe_master_key(m), n);
    else if (view == MBE_LEVEL_HIDDEN)
        say_info(r,
                 "'%s' has datasets in the ground_truth of '%s' but is not "
                 "listed in its levels_of_theory: as in mbe_automation, none "
                 "of its frames counts as COMPLETED",
                 r->o->level, mbe_master_key(m));
}

/* Unless --overwrite, drop the frames the package counts as COMPLETED for
 * the level.  The status is read even with --overwrite, so that a damaged
 * status dataset is refused before hours of computing, not by the merge. */
static int skip_completed(const struct run *r, mbe_master *m,
                          mbe_frames *sel, mbe_err *e)
{
    int64_t *status = malloc((sel->n ? sel->n : 1) * sizeof *status);
    mbe_level_view view;
    if (!status)
        return mbe_fail(e, "out of memory");
    int rc = mbe_master_level_view(m, r->o->level, &view, e);
    if (rc == 0)
        rc = mbe_master_read_visible_status(m, r->o->level, sel, status, e);
    size_t before = sel->n;
    if (rc == 0 && !r->o->overwrite && before) {
        say_view(r, m, view, before);
        mbe_frames_drop_completed(sel, status);
        if (before != sel->n && view != MBE_LEVEL_GENERATOR)
            say_info(r,
                     "%zu of %zu selected frames are already COMPLETED for "
                     "'%s'; skipping them (--overwrite computes them)",
                     before - sel->n, before, r->o->level);
    }
    free(status);
    return rc;
}

/* The geometry fingerprint of every frame of g; NULL when out of memory. */
static uint32_t *fingerprints(const mbe_geometry *g)
{
    uint32_t *crc = malloc((g->n ? g->n : 1) * sizeof *crc);
    for (size_t k = 0; crc && k < g->n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(g, k, &v);
        crc[k] = mbe_frame_fingerprint(&v);
    }
    return crc;
}

/* The master at key, read under the shared lock until it is closed. */
static int open_master(const struct run *r, const char *key, mbe_master **m,
                       mbe_err *e)
{
    int rc = mbe_master_open(r->o->master, key, 0, &r->o->lock, m, e);
    if (rc < 0)
        mbe_err_name_file(e, r->o->master);
    return rc;
}

/* Closes m; its failure replaces a success in rc and e. */
static int close_master(mbe_master *m, int rc, mbe_err *e)
{
    mbe_err ce;
    if (m && mbe_master_close(m, &ce) < 0 && rc == 0) {
        *e = ce;
        return -1;
    }
    return rc;
}

/* Open the master, work out the frames, create or resume the shard, and
 * read the geometry of the frames still to compute.  The lock is held only
 * inside this function. */
static int prepare(struct run *r, mbe_err *e)
{
    mbe_master *m = NULL;
    mbe_frames sel = {0}, todo = {0};
    mbe_shard_meta meta = {0};
    char *selection = NULL;
    int rc = open_master(r, r->key, &m, e);
    if (rc < 0)
        return rc;
    rc = r->piece ? piece_frames(r->piece, m, &sel, e)
                  : select_frames(r->o, mbe_master_n_frames(m), &sel, e);
    if (rc < 0)
        goto out;
    rc = -1;
    if (!(selection = mbe_frames_format(&sel))) {
        mbe_fail(e, "out of memory");
        goto out;
    }
    char *part = mbe_shard_part_path(r->output);
    int resume = part && (file_exists(part) || file_exists(r->output));
    free(part);
    if (resume) {
        if (mbe_shard_resume(r->output, &r->shard, e) < 0)
            goto out;
        const mbe_shard_meta *sm = mbe_shard_meta_of(r->shard);
        if (check_resumable(sm, m, r->o, r->output, r->o->level, selection, r->calc,
                            e) < 0)
            goto out;
        const mbe_frames *sf = mbe_shard_frames(r->shard);
        for (size_t k = 0; k < sf->n; k++)
            if (mbe_shard_status(r->shard, k) == MBE_UNDEFINED &&
                (mbe_frames_push(&todo, sf->idx[k], e) < 0 ||
                 mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0))
                goto out;
        say_info(r, "resuming %s: %zu of %zu frames left",
                 r->output, todo.n, sf->n);
    } else {
        if (skip_completed(r, m, &sel, e) < 0 ||
            mbe_frames_copy(&sel, &todo, e) < 0)
            goto out;
        for (size_t k = 0; k < sel.n; k++)
            if (mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0)
                goto out;
    }
    if (mbe_master_read_geometry(m, &todo, &r->geom, e) < 0) {
        mbe_err_prefix(e, "%s", r->o->master);
        goto out;
    }
    if (resume) {
        if (check_geometry(r, e) < 0)
            goto out;
    } else {
        uint32_t *crc = fingerprints(&r->geom);
        if (!crc) {
            mbe_fail(e, "out of memory");
            goto out;
        }
        int crc_rc = fill_meta(r->o, m, r->calc, r->o->level, selection,
                               r->t_ready + mbe_now() - r->t_prep, &meta,
                               e);
        if (crc_rc == 0)
            crc_rc = mbe_shard_create(r->output, &meta, &todo, crc, &r->shard, e);
        free(crc);
        if (crc_rc < 0)
            goto out;
    }
    rc = 0;
out:
    if (m) {
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0) {
            *e = ce;
            rc = -1;
        }
    }
    mbe_shard_meta_free(&meta);
    mbe_frames_free(&sel);
    mbe_frames_free(&todo);
    free(selection);
    return rc;
}

/* Compute every frame left; stop early on a signal.  Returns 0, or -1 on a
 * storage or calculator error (e filled). */
static int compute_all(struct run *r, mbe_err *e)
{
    int64_t na = r->geom.n_atoms;
    double *forces = r->o->no_forces
                         ? NULL
                         : malloc((size_t)(na > 0 ? na : 1) * 3 *
                                  sizeof *forces);
    if (!forces && !r->o->no_forces)
        return mbe_fail(e, "out of memory");
    frame_event(r, &(mbe_compute_frame){.event = MBE_FRAMES_BEGIN,
                                        .n = r->geom.n});
    double last_sync = mbe_now();
    int rc = 0;
    for (size_t k = 0; k < r->geom.n && !stopped(r); k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&r->geom, k, &v);
        mbe_err ce = {{0}};
        double energy = NAN, t_frame = mbe_now();
        int st = mbe_calc_compute(r->calc, &v, &energy, forces, &ce);
        t_frame = mbe_now() - t_frame;
        r->t_frames += t_frame;
        if (!r->first_done) {
            r->t_first = t_frame;
            r->first_done = 1;
        }
        if (st == MBE_EINTR && stopped(r))
            break; /* abandoned, stays UNDEFINED for the next run */
        if (st < 0) {
            *e = ce;
            mbe_err_prefix(e, "frame %lld", (long long)v.index);
            rc = -1;
            break;
        }
        double e_atom = st == MBE_COMPLETED ? energy / (double)na : NAN;
        if (st == MBE_COMPLETED && !isfinite(e_atom)) {
            snprintf(ce.msg, sizeof ce.msg,
                     "calculator returned a non-finite energy");
            st = MBE_FAILED;
        }
        double t = mbe_now();
        int durable = t - last_sync >= r->o->sync_interval || stopped(r);
        if (mbe_shard_put(r->shard, (size_t)r->todo_pos.idx[k], st, e_atom,
                          st == MBE_COMPLETED ? forces : NULL, durable, e) < 0) {
            rc = -1;
            break;
        }
        if (durable)
            last_sync = mbe_now();
        if (st == MBE_COMPLETED)
            r->completed++;
        else
            r->failed++;
        frame_event(r, &(mbe_compute_frame){
                           .event = MBE_FRAME_DONE, .index = v.index,
                           .status = st, .e_atom = e_atom, .seconds = t_frame,
                           .error = st == MBE_COMPLETED ? NULL : ce.msg});
    }
    frame_event(r, &(mbe_compute_frame){.event = MBE_FRAMES_END});
    free(forces);
    return rc;
}

/* The end of a shard: closed with its .part kept after an error or a
 * stop, else finished.  rc is the job's so far, e its error. */
static int finish(struct run *r, int rc, double t0, mbe_err *e)
{
    if (rc < 0 || stopped(r)) {
        /* Keep <SHARD>.part: every stored frame is in it, durable.  After
         * an error (in e already) a failing close is the same fault
         * again: one line is enough. */
        mbe_err ce;
        if (mbe_shard_close(r->shard, &ce) < 0) {
            if (rc >= 0) {
                *e = ce;
                return failed_at(r, MBE_EFAIL, "closing the shard");
            }
            return MBE_EFAIL;
        }
        if (rc < 0)
            return MBE_EFAIL;
        r->rep->interrupted = 1;
        say(r, MBE_COMPUTE_ALERT, "interrupted by signal %d after %zu frames; %s.part keeps "
            "them; run the same command again to continue",
            (int)*r->o->stop, r->completed + r->failed, r->output);
        return MBE_EINTR;
    }
    if (mbe_shard_finish(r->shard, e) < 0)
        return failed_at(r, MBE_EFAIL, "finishing the shard");
    /* Every piece pays the start-up: it sizes pieces (mbe(7)). */
    say_info(r, "%s: %zu frames computed (%zu COMPLETED, %zu failed) "
             "in %.1f s (start-up %.2f s, frames %.2f s, first frame %.2f s)",
             r->output, r->completed + r->failed, r->completed, r->failed,
             mbe_now() - t0, r->startup, r->t_frames, r->t_first);
    return 0;
}

/* One key's shard: open, create or resume, compute, finish.  When last,
 * the engine is stopped (and reaped) before the shard is finished, so
 * that its end is in the log when we report. */
static int run_key(struct run *r, int last, double t0, mbe_err *e)
{
    r->t_prep = mbe_now();
    r->t_first = r->t_frames = 0;
    r->first_done = 0;
    int rc = prepare(r, e);
    r->startup = r->t_ready + mbe_now() - r->t_prep;
    if (rc < 0) {
        if (r->shard) {
            mbe_err ce;
            mbe_shard_close(r->shard, &ce);
        }
        r->shard = NULL;
        mbe_geometry_free(&r->geom);
        mbe_frames_free(&r->todo_pos);
        memset(&r->geom, 0, sizeof r->geom);
        return start_failed(r, rc);
    }
    if (r->geom.n == 0 && mbe_shard_frames(r->shard)->n == 0)
        say_info(r, "nothing to compute; writing an empty shard");
    else if (r->geom.n == 0)
        say_info(r, "nothing left to compute in %s", r->output);
    else
        say_info(r, "computing %zu frames of %s:%s with %s, level '%s'",
                 r->geom.n, r->o->master, mbe_shard_meta_of(r->shard)->key,
                 mbe_calc_name(r->calc), r->o->level);
    rc = compute_all(r, e);
    if (rc < 0)
        failed_at(r, rc, "computing");
    if (last) {
        mbe_calc_free(r->calc);
        r->calc = NULL;
    }
    int code = finish(r, rc, t0, e);
    r->shard = NULL;
    mbe_geometry_free(&r->geom);
    mbe_frames_free(&r->todo_pos);
    memset(&r->geom, 0, sizeof r->geom);
    return code;
}

/* I and N of --chunk (1/1 without it). */
static int chunk_of(const mbe_compute_opts *a, int64_t *i, int64_t *n, mbe_err *e)
{
    *i = *n = 1;
    if (!a->chunk)
        return 0;
    int rc = strcmp(a->chunk, "slurm") == 0 ? mbe_chunk_from_slurm(i, n, e)
                                            : mbe_chunk_parse(a->chunk, i, n, e);
    if (rc < 0)
        mbe_err_prefix(e, "--chunk");
    return rc;
}

/* ------------------------------------------------- several keys */

/* One key's member of a new shard: its frames to compute, their
 * fingerprints and its provenance. */
typedef struct member_plan {
    mbe_shard_meta meta;
    mbe_frames todo;
    uint32_t *crc;
} member_plan;

static void member_plan_free(member_plan *mp)
{
    mbe_shard_meta_free(&mp->meta);
    mbe_frames_free(&mp->todo);
    free(mp->crc);
}

/* As prepare does for a new shard of one key, for the key's frames of the
 * piece: the frames the package counts as COMPLETED are skipped. */
static int plan_member(struct run *r, const mbe_frames *piece,
                       member_plan *mp, mbe_err *e)
{
    mbe_master *m = NULL;
    mbe_frames sel = {0};
    mbe_geometry g = {0};
    char *selection = NULL;
    int rc = open_master(r, r->key, &m, e);
    if (rc < 0)
        return rc;
    rc = piece_frames(piece, m, &sel, e);
    if (!rc && !(selection = mbe_frames_format(&sel)))
        rc = mbe_fail(e, "out of memory");
    if (!rc)
        rc = skip_completed(r, m, &sel, e);
    if (!rc)
        rc = mbe_frames_copy(&sel, &mp->todo, e);
    if (!rc && mbe_master_read_geometry(m, &mp->todo, &g, e) < 0) {
        mbe_err_prefix(e, "%s", r->o->master);
        rc = -1;
    }
    if (!rc && !(mp->crc = fingerprints(&g)))
        rc = mbe_fail(e, "out of memory");
    if (!rc)
        rc = fill_meta(r->o, m, r->calc, r->o->level, selection,
                       r->t_ready + mbe_now() - r->t_prep, &mp->meta, e);
    mbe_geometry_free(&g);
    mbe_frames_free(&sel);
    free(selection);
    return close_master(m, rc, e);
}

/* A new shard of the job's keys (shard format 4): one member for each key
 * of the piece, in the pool's order. */
static int create_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                         size_t n, mbe_err *e)
{
    member_plan *mp = calloc(n, sizeof *mp);
    mbe_shard_meta *meta = calloc(n, sizeof *meta);
    mbe_frames *frames = calloc(n, sizeof *frames);
    const uint32_t **crc = calloc(n, sizeof *crc);
    int rc = mp && meta && frames && crc ? 0 : mbe_fail(e, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        r->key = p->keys.v[used[i]];
        rc = plan_member(r, &p->pieces[used[i]], &mp[i], e);
        meta[i] = mp[i].meta;
        frames[i] = mp[i].todo;
        crc[i] = mp[i].crc;
    }
    if (!rc)
        rc = mbe_shard_create_bundle(r->output, n, meta, frames, crc,
                                     &r->shard, e);
    for (size_t i = 0; mp && i < n; i++)
        member_plan_free(&mp[i]);
    free(mp);
    free(meta);
    free(frames);
    free(crc);
    return rc;
}

/* An existing shard continues only the job that made it: the same keys in
 * the same order, each checked as a shard of one key is. */
static int resume_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                         size_t n, mbe_err *e)
{
    if (mbe_shard_resume(r->output, &r->shard, e) < 0)
        return -1;
    size_t have = mbe_shard_members(r->shard), left = 0, total = 0;
    if (have != n)
        return mbe_fail(e, "existing shard %s belongs to another job (it "
                        "holds %zu keys, this piece %zu); remove it or "
                        "choose another -o", r->output, have, n);
    for (size_t i = 0; i < n; i++) {
        mbe_master *m = NULL;
        mbe_frames sel = {0};
        char *selection = NULL;
        mbe_shard_select(r->shard, i, e);
        int rc = open_master(r, p->keys.v[used[i]], &m, e);
        if (rc < 0)
            return rc;
        rc = piece_frames(&p->pieces[used[i]], m, &sel, e);
        if (!rc && !(selection = mbe_frames_format(&sel)))
            rc = mbe_fail(e, "out of memory");
        if (!rc)
            rc = check_resumable(mbe_shard_meta_of(r->shard), m, r->o,
                                 r->output, r->o->level, selection, r->calc, e);
        mbe_frames_free(&sel);
        free(selection);
        if ((rc = close_master(m, rc, e)) < 0)
            return rc;
        const mbe_frames *f = mbe_shard_frames(r->shard);
        for (size_t k = 0; k < f->n; k++)
            left += mbe_shard_status(r->shard, k) == MBE_UNDEFINED;
        total += f->n;
    }
    say_info(r, "resuming %s: %zu of %zu frames left", r->output,
             left, total);
    return 0;
}

/* The selected member's frames still UNDEFINED, read from the master and
 * checked against the fingerprints the shard was made with. */
static int load_member(struct run *r, mbe_err *e)
{
    mbe_master *m = NULL;
    mbe_frames todo = {0};
    int rc = open_master(r, r->key, &m, e);
    if (rc < 0)
        return rc;
    const mbe_frames *f = mbe_shard_frames(r->shard);
    for (size_t k = 0; !rc && k < f->n; k++)
        if (mbe_shard_status(r->shard, k) == MBE_UNDEFINED &&
            (mbe_frames_push(&todo, f->idx[k], e) < 0 ||
             mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0))
            rc = -1;
    if (!rc && todo.n &&
        todo.idx[todo.n - 1] >= mbe_master_n_frames(m))
        rc = mbe_fail(e, "group '%s' has %lld frames now, fewer than %s "
                      "was started with; remove the shard to start again",
                      r->key, (long long)mbe_master_n_frames(m),
                      r->output);
    if (!rc && mbe_master_read_geometry(m, &todo, &r->geom, e) < 0) {
        mbe_err_prefix(e, "%s", r->o->master);
        rc = -1;
    }
    if (!rc)
        rc = check_geometry(r, e);
    mbe_frames_free(&todo);
    return close_master(m, rc, e);
}

/* Every member in turn; stops at an error or a signal. */
static int compute_members(struct run *r, const mbe_pool *p,
                           const size_t *used, size_t n, mbe_err *e)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < n && !stopped(r); i++) {
        r->key = p->keys.v[used[i]];
        mbe_shard_select(r->shard, i, e);
        rc = load_member(r, e);
        if (!rc && r->geom.n)
            say_info(r, "computing %zu frames of %s:%s with %s, "
                     "level '%s'", r->geom.n, r->o->master, r->key,
                     mbe_calc_name(r->calc), r->o->level);
        if (!rc)
            rc = compute_all(r, e);
        mbe_geometry_free(&r->geom);
        memset(&r->geom, 0, sizeof r->geom);
        mbe_frames_free(&r->todo_pos);
    }
    return rc;
}

/* The job's piece into one shard holding a member for each of its keys
 * (mbe-shard(5)), created or resumed, with one calculator. */
static int run_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                      size_t n, double t0, mbe_err *e)
{
    char *part = mbe_shard_part_path(r->output);
    int resume = part && (file_exists(part) || file_exists(r->output));
    free(part);
    r->t_prep = mbe_now();
    int rc = resume ? resume_bundle(r, p, used, n, e)
                    : create_bundle(r, p, used, n, e);
    r->startup = r->t_ready + mbe_now() - r->t_prep;
    if (rc < 0) {
        if (r->shard) {
            mbe_err ce;
            mbe_shard_close(r->shard, &ce);
            r->shard = NULL;
        }
        return start_failed(r, rc);
    }
    rc = compute_members(r, p, used, n, e);
    if (rc < 0)
        failed_at(r, rc, rc == MBE_ETIMEOUT ? "lock" : "computing");
    /* The engine's end is in its log before the shard is reported. */
    mbe_calc_free(r->calc);
    r->calc = NULL;
    int code = finish(r, rc, t0, e);
    if (rc == MBE_ETIMEOUT && code == MBE_EFAIL)
        code = MBE_ETIMEOUT;
    r->shard = NULL;
    return code;
}

/* Shards of one key each, as mbe-shard 0.2 wrote for a job over several
 * keys (mbe_key_shard_path): whether this job left any. */
static int left_key_shards(const struct run *r, const mbe_pool *p)
{
    int found = 0;
    for (size_t k = 0; k < p->keys.n && !found; k++) {
        char *path = p->pieces[k].n ? mbe_key_shard_path(r->output, k)
                                    : NULL;
        char *part = path ? mbe_shard_part_path(path) : NULL;
        found = part && (file_exists(path) || file_exists(part));
        free(path);
        free(part);
    }
    return found;
}

/* Such a job is continued as it began, one shard per key, so that no
 * computed frame is computed again. */
static int run_key_shards(struct run *r, const mbe_pool *p, size_t last,
                          double t0, mbe_err *e)
{
    const char *output = r->output;
    double frames_time = 0;
    size_t used = 0, completed = 0, failed = 0;
    int code = 0;
    say_info(r, "continuing the shards of one key each that an "
             "earlier mbe-shard began for %s (%s.k0000.h5, ...)", output,
             output);
    for (size_t k = 0; k < p->keys.n && !stopped(r); k++) {
        if (!p->pieces[k].n)
            continue;
        char *path = mbe_key_shard_path(output, k);
        if (!path) {
            code = mbe_fail(e, "out of memory");
            break;
        }
        used++;
        r->key = p->keys.v[k];
        r->output = path;
        r->piece = &p->pieces[k];
        r->completed = r->failed = 0;
        code = run_key(r, k == last, mbe_now(), e);
        completed += r->completed;
        failed += r->failed;
        frames_time += r->t_frames;
        r->output = output;
        free(path);
        if (code < 0)
            break;
    }
    r->piece = NULL;
    r->completed = completed;
    r->failed = failed;
    r->t_frames = frames_time;
    if (code == 0)
        say_info(r, "%zu keys: %zu frames computed (%zu COMPLETED, "
                 "%zu failed) in %.1f s (start-up %.2f s, frames %.2f s)",
                 used, completed + failed, completed, failed,
                 mbe_now() - t0, r->t_ready, frames_time);
    return code;
}

/* Several keys: the job's piece of the (key, frame) pool into one shard,
 * with one calculator. */
static int run_keys(struct run *r, double t0, mbe_err *e)
{
    mbe_pool p;
    int64_t i = 1, n = 1;
    int rc = chunk_of(r->o, &i, &n, e);
    if (rc == 0)
        rc = mbe_pool_plan(r->o->master, r->o->keys, r->o->all_keys,
                           r->o->frames, i, n, &r->o->lock, &p, e);
    if (rc < 0)
        return start_failed(r, rc);
    r->t_ready = mbe_now() - t0;
    size_t *used = malloc((p.keys.n ? p.keys.n : 1) * sizeof *used);
    size_t n_used = 0, frames = 0;
    if (!used) {
        mbe_pool_free(&p);
        return mbe_fail(e, "out of memory");
    }
    for (size_t k = 0; k < p.keys.n; k++)
        if (p.pieces[k].n) {
            used[n_used++] = k;
            frames += p.pieces[k].n;
        }
    say_info(r, "%zu of %zu keys in piece %lld/%lld (%zu frames)",
             n_used, p.keys.n, (long long)i, (long long)n, frames);
    int code = 0;
    r->rep->output = n_used ? r->o->output : NULL;
    if (!n_used)
        say_info(r, "no frame of any key in this piece; no shard "
                 "written");
    else if (left_key_shards(r, &p))
        code = run_key_shards(r, &p, used[n_used - 1], t0, e);
    else
        code = run_bundle(r, &p, used, n_used, t0, e);
    r->key = NULL;
    free(used);
    mbe_pool_free(&p);
    return code;
}


int mbe_compute(const mbe_compute_opts *o, mbe_calc *calc,
                mbe_compute_report *report, mbe_err *e)
{
    double t0 = o->t_start > 0 ? o->t_start : mbe_now();
    struct run r;
    memset(&r, 0, sizeof r);
    memset(report, 0, sizeof *report);
    r.o = o;
    r.key = o->key;
    r.output = o->output;
    r.rep = report;
    r.calc = calc;
    r.t_ready = mbe_now() - t0;
    report->output = o->output;
    int rc = o->keys ? run_keys(&r, t0, e) : run_key(&r, 1, t0, e);
    mbe_calc_free(r.calc);
    report->completed = r.completed;
    report->failed = r.failed;
    report->startup_s = r.startup;
    report->frames_s = r.t_frames;
    report->first_frame_s = r.t_first;
    return rc;
}
