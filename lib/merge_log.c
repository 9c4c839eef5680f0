/* merge_log.c - what mbe_merge reads from and writes to the master's merge
 * logs (ground_truth/mbe_merge_log, see ground_truth.h).
 *
 * A record per shard and merge says which shard (id, content digest) was
 * applied, which of its frames that merge took (frame_set: a frame spec,
 * short for the contiguous pieces of job arrays) with a digest of their
 * rows' crcs, and the shard's calculator and settings.  From these:
 *   - a shard merged again unchanged is not applied again;
 *   - a later stage of a shard (its .part merged while its job ran, then
 *     the finished file) applies only the frames new or changed since:
 *     the frames a record holds are skipped while the digest of their
 *     rows is the one recorded, so that results merged meanwhile from
 *     other shards (a recomputation with --overwrite) are not overwritten
 *     by the old ones;
 *   - a level is computed with one method: the shards of a level must
 *     agree on calculator and settings (mbe_calc_same_method), with each
 *     other and with the shards merged into the level before.
 * What the log keeps is per shard and merge, never per frame forever. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge_impl.h"

/* ------------------------------------------------------------ helpers */

static const mbe_shard_meta *meta(const ctx *c, size_t i)
{
    return mbe_shard_reader_meta(c->sh[i].r);
}

static int live(const ctx *c, size_t i)
{
    return c->sh[i].state == SH_APPLY;
}

const int64_t *mg_status(const ctx *c, size_t i)
{
    return c->sh[i].eff ? c->sh[i].eff : mbe_shard_reader_status(c->sh[i].r);
}

int mg_has_work(const ctx *c, size_t i)
{
    const int64_t *st = mg_status(c, i);
    size_t n = mbe_shard_reader_frames(c->sh[i].r)->n;
    for (size_t k = 0; k < n; k++)
        if (st[k] != MBE_UNDEFINED)
            return 1;
    return 0;
}

/* crc32 of the (frame index, row crc) pairs, little-endian, of the
 * shard's positions in sel (ascending), as 8 hex digits. */
static void rows_digest(const mbe_shard_reader *r, const size_t *pos,
                        size_t n, char out[9])
{
    const int64_t *idx = mbe_shard_reader_frames(r)->idx;
    const uint32_t *crc = mbe_shard_reader_crc(r);
    uint32_t d = 0;
    for (size_t q = 0; q < n; q++) {
        d = mbe_crc32_le(d, &idx[pos[q]], 1, 8);
        d = mbe_crc32_le(d, &crc[pos[q]], 1, 4);
    }
    snprintf(out, 9, "%08x", (unsigned)d);
}

/* ------------------------------------------------------------- reading */

static const mg_log *log_of_key(const ctx *c, const char *key)
{
    for (size_t k = 0; k < c->n_logs; k++)
        if (!strcmp(c->logs[k].key, key))
            return &c->logs[k];
    return NULL;
}

/* The positions of shard i holding the frames of spec, or -1 when one of
 * them is not in the shard (then the record says nothing about it). */
static int positions(const ctx *c, size_t i, const char *spec, size_t **pos,
                     size_t *n)
{
    const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
    mbe_frames set = {0};
    mbe_err ignored;
    *pos = NULL;
    *n = 0;
    if (!*spec ||
        mbe_frames_parse(spec, meta(c, i)->n_frames, &set, &ignored) < 0)
        return -1;
    size_t *p = malloc((set.n ? set.n : 1) * sizeof *p);
    int rc = p ? 0 : -1;
    for (size_t q = 0; rc == 0 && q < set.n; q++) {
        ptrdiff_t k = mbe_frames_find(f, set.idx[q]);
        if (k < 0)
            rc = -1;
        else
            p[q] = (size_t)k;
    }
    if (rc == 0) {
        *pos = p;
        *n = set.n;
    } else {
        free(p);
    }
    mbe_frames_free(&set);
    return rc;
}

/* Frames of an earlier stage of shard i whose rows are unchanged become
 * UNDEFINED in its effective status: they are not applied again. */
static int skip_earlier(ctx *c, size_t i, const mbe_gt_logrec *r,
                        mbe_err *e)
{
    size_t *pos, n;
    char d[9];
    if (positions(c, i, r->frame_set, &pos, &n) < 0)
        return 0;
    rows_digest(c->sh[i].r, pos, n, d);
    int rc = 0;
    if (!strcmp(d, r->frame_digest)) {
        size_t nf = mbe_shard_reader_frames(c->sh[i].r)->n;
        if (!c->sh[i].eff &&
            (c->sh[i].eff = malloc((nf ? nf : 1) * sizeof(int64_t))))
            memcpy(c->sh[i].eff, mbe_shard_reader_status(c->sh[i].r),
                   nf * sizeof(int64_t));
        if (!c->sh[i].eff)
            rc = mbe_fail(e, "out of memory");
        for (size_t q = 0; rc == 0 && q < n; q++) {
            c->r->shards[i].earlier +=
                c->sh[i].eff[pos[q]] != MBE_UNDEFINED;
            c->sh[i].eff[pos[q]] = MBE_UNDEFINED;
        }
    }
    free(pos);
    return rc;
}

/* Shard i against the records of its key: applied before unchanged
 * (SH_ALREADY), or a later stage of a shard applied before. */
static int against_log(ctx *c, size_t i, const mg_log *l, mbe_err *e)
{
    char d[9];
    snprintf(d, sizeof d, "%08x", (unsigned)c->sh[i].digest);
    const char *id = meta(c, i)->shard_id;
    for (size_t k = 0; k < l->n; k++)
        if (!strcmp(l->v[k].shard_id, id) && !strcmp(l->v[k].digest, d)) {
            c->sh[i].state = SH_ALREADY;
            c->r->shards[i].already_applied = 1;
            return 0;
        }
    for (size_t k = 0; k < l->n; k++)
        if (!strcmp(l->v[k].shard_id, id) &&
            skip_earlier(c, i, &l->v[k], e) < 0)
            return MBE_EFAIL;
    return 0;
}

static int read_key(ctx *c, hid_t f, const char *key, mbe_err *e)
{
    mg_log *nl = realloc(c->logs, (c->n_logs + 1) * sizeof *nl);
    if (!nl)
        return mbe_fail(e, "out of memory");
    c->logs = nl;
    mg_log *l = &c->logs[c->n_logs];
    memset(l, 0, sizeof *l);
    if (mbe_gt_log_read(f, key, &l->v, &l->n, e) < 0) {
        mbe_err_prefix(e, "%s", c->master);
        return mg_log_damaged(c, key, e);
    }
    l->key = key;
    c->n_logs++;
    for (size_t i = 0; i < c->n; i++)
        if (live(c, i) && !strcmp(c->sh[i].key, key) &&
            against_log(c, i, l, e) < 0)
            return MBE_EFAIL;
    return 0;
}

void mg_logs_free(ctx *c)
{
    for (size_t k = 0; k < c->n_logs; k++)
        mbe_gt_log_free(c->logs[k].v, c->logs[k].n);
    free(c->logs);
    c->logs = NULL;
    c->n_logs = 0;
    for (size_t i = 0; c->sh && i < c->n; i++) {
        free(c->sh[i].eff);
        c->sh[i].eff = NULL;
    }
}

int mg_read_logs(ctx *c, hid_t f, mbe_err *e)
{
    mg_logs_free(c);
    for (size_t i = 0; i < c->n; i++)
        c->r->shards[i].earlier = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (!live(c, i) || log_of_key(c, c->sh[i].key))
            continue;
        if (read_key(c, f, c->sh[i].key, e) < 0)
            return MBE_EFAIL;
    }
    return 0;
}

int mg_log_damaged(const ctx *c, const char *key, mbe_err *e)
{
    char why[MBE_ERR_LEN];
    snprintf(why, sizeof why, "%s", e->msg);
    return mbe_fail(e, "%.700s; mbe-merge --reset-log %s drops the merge "
                    "logs (a log is rebuilt as shards are applied again, "
                    "which the update rule makes safe); group '%s'", why,
                    c->master, key);
}

/* ------------------------------------------------------ one method */

static int same_method(const mbe_shard_meta *a, const char *calc,
                       const char *settings)
{
    return !strcmp(a->calculator, calc) &&
           mbe_calc_same_method(a->calc_settings, settings);
}

static int mixed(const target *t, const char *what_a,
                 const char *set_a, const char *what_b, const char *set_b,
                 mbe_err *e)
{
    char *ma = mbe_calc_method(set_a), *mb = mbe_calc_method(set_b);
    mbe_fail(e, "level '%s' of '%s' would mix methods: %.300s (%.200s) and "
             "%.300s (%.200s); a level holds the results of one method "
             "(--allow-mixed-settings merges them anyway); nothing was "
             "written", t->level, t->key, what_a, ma ? ma : "?", what_b,
             mb ? mb : "?");
    free(ma);
    free(mb);
    return MBE_EFAIL;
}

/* The first record of the target's level that names its method. */
static const mbe_gt_logrec *level_method(const ctx *c, const target *t)
{
    const mg_log *l = log_of_key(c, t->key);
    for (size_t k = 0; l && k < l->n; k++)
        if (!strcmp(l->v[k].level, t->level) && *l->v[k].calc_settings)
            return &l->v[k];
    return NULL;
}

static int check_target(const ctx *c, const target *t, mbe_err *e)
{
    const mbe_shard_meta *first = meta(c, t->member[0]);
    const char *first_path = c->r->shards[t->member[0]].name;
    for (size_t j = 1; j < t->n_member; j++) {
        const mbe_shard_meta *m = meta(c, t->member[j]);
        if (!same_method(m, first->calculator, first->calc_settings))
            return mixed(t, first_path, first->calc_settings,
                         c->r->shards[t->member[j]].name, m->calc_settings,
                         e);
    }
    const mbe_gt_logrec *r = level_method(c, t);
    if (!r || same_method(first, r->calculator, r->calc_settings))
        return 0;
    char was[700];
    snprintf(was, sizeof was, "the master's results, merged from %.300s",
             r->path);
    return mixed(t, was, r->calc_settings, first_path,
                 first->calc_settings, e);
}

int mg_check_methods(const ctx *c, mbe_err *e)
{
    if (c->o.allow_mixed)
        return 0;
    for (size_t k = 0; k < c->nt; k++)
        if (c->t[k].n_member && check_target(c, &c->t[k], e) < 0)
            return MBE_EFAIL;
    return 0;
}

/* ------------------------------------------------------------ writing */

/* The record of shard i in this merge; its strings live in s. */
typedef struct rec_strings {
    char digest[9], frame_digest[9];
    char *frame_set;
} rec_strings;

static int make_record(const ctx *c, size_t i, mbe_gt_logrec *rec,
                       rec_strings *s, mbe_err *e)
{
    const mbe_merge_shard *ms = &c->r->shards[i];
    const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
    const int64_t *st = mg_status(c, i);
    mbe_frames taken = {0};
    size_t *pos = malloc((f->n ? f->n : 1) * sizeof *pos), n = 0;
    int rc = pos ? 0 : mbe_fail(e, "out of memory");
    for (size_t k = 0; rc == 0 && k < f->n; k++)
        if (st[k] != MBE_UNDEFINED) {
            pos[n++] = k;
            rc = mbe_frames_push(&taken, f->idx[k], e);
        }
    if (rc == 0 && !(s->frame_set = mbe_frames_format(&taken)))
        rc = mbe_fail(e, "out of memory");
    if (rc == 0)
        rows_digest(c->sh[i].r, pos, n, s->frame_digest);
    snprintf(s->digest, sizeof s->digest, "%08x", (unsigned)c->sh[i].digest);
    const mbe_shard_meta *m = meta(c, i);
    *rec = (mbe_gt_logrec){
        .shard_id = ms->shard_id, .key = ms->key, .level = ms->level,
        .time = (char *)c->now, .path = ms->name, .digest = s->digest,
        .frames = (int64_t)ms->frames, .completed = (int64_t)ms->completed,
        .applied = (int64_t)ms->applied, .frame_set = s->frame_set,
        .frame_digest = s->frame_digest, .calculator = m->calculator,
        .calc_settings = m->calc_settings};
    mbe_frames_free(&taken);
    free(pos);
    return rc;
}

/* Records go to the log this many at a time: HDF5's conversion of the
 * variable-length strings of 10^4 records at once took 14 MB of its free
 * lists, a third of the merge's peak memory. */
#define LOG_BATCH 256

/* The records of key's shards applied in this merge. */
static int append_key(const ctx *c, hid_t f, const char *key, mbe_err *e)
{
    mbe_gt_logrec *v = calloc(LOG_BATCH, sizeof *v);
    rec_strings *s = calloc(LOG_BATCH, sizeof *s);
    int rc = v && s ? 0 : mbe_fail(e, "out of memory");
    for (size_t i = 0; rc == 0 && i < c->n;) {
        size_t n = 0;
        for (; rc == 0 && i < c->n && n < LOG_BATCH; i++)
            if (live(c, i) && mg_has_work(c, i) && !strcmp(c->sh[i].key, key))
                rc = make_record(c, i, &v[n], &s[n], e), n++;
        if (rc == 0 && n && mbe_gt_log_append(f, key, v, n, e) < 0)
            rc = MBE_EFAIL;
        for (size_t k = 0; k < n; k++) {
            free(s[k].frame_set);
            s[k].frame_set = NULL;
        }
    }
    free(v);
    free(s);
    return rc;
}

int mg_append_logs(const ctx *c, hid_t f, mbe_err *e)
{
    for (size_t k = 0; k < c->n_logs; k++)
        if (append_key(c, f, c->logs[k].key, e) < 0)
            return MBE_EFAIL;
    return 0;
}
