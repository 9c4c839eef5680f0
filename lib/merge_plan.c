/* merge_plan.c - see merge_plan.h.
 *
 * Why the plan can be applied partially and simply run again
 * (idempotency, the property mbe-merge's restart rests on):
 *
 * For one frame, let the shards' statuses in order be t1..tm, the stored
 * status s0, and the rule step f_t(s) = (t != UNDEFINED && s != COMPLETED)
 * ? t : s.  The merge writes
 *   - energy and forces: the chosen COMPLETED shard's values, which depend
 *     on the shards only, never on the master; so writing them again gives
 *     the same bytes;
 *   - status: F(s0) = f_tm(...f_t1(s0)), where this writes anything.
 * A killed merge leaves each frame's status either s0 (not yet written)
 * or F(s0) (written; status goes last, so energy and forces are then in
 * place).  Re-running computes F(current).  F(s0) is the uninterrupted
 * result; it remains to show F(F(s0)) = F(s0):
 *   - F(s0) = COMPLETED: f_t(COMPLETED) = COMPLETED for every t.
 *   - F(s0) != COMPLETED: once s is COMPLETED it stays so, hence s0 was
 *     not COMPLETED and no ti is COMPLETED (a COMPLETED ti would have made
 *     s COMPLETED).  From a non-COMPLETED start the fold then yields the
 *     last ti that is not UNDEFINED, or the start when all are UNDEFINED.
 *     From s0 that is F(s0); from F(s0) it is the same last ti, or F(s0)
 *     itself when all are UNDEFINED.
 * Frames are independent, so any mix of written and unwritten frames
 * converges to the uninterrupted result in one more run.
 */
#include "merge_plan.h"

#include <stdlib.h>
#include <string.h>

static int entry_cmp(const void *a, const void *b)
{
    const mp_entry *x = a, *y = b;
    if (x->frame != y->frame)
        return x->frame < y->frame ? -1 : 1;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return 0;
}

void mp_index_free(mp_index *ix)
{
    if (!ix)
        return;
    free(ix->ent);
    free(ix->frame);
    free(ix->first);
    memset(ix, 0, sizeof *ix);
}

static int index_alloc(mp_index *ix, size_t n, mbe_err *e)
{
    size_t m = n ? n : 1;
    ix->ent = malloc(m * sizeof *ix->ent);
    ix->frame = malloc(m * sizeof *ix->frame);
    ix->first = malloc((m + 1) * sizeof *ix->first);
    if (ix->ent && ix->frame && ix->first)
        return 0;
    mp_index_free(ix);
    return mbe_fail(e, "out of memory for the merge plan (%zu frames)", n);
}

/* Distinct frames and where each one's entries start. */
static void index_group(mp_index *ix)
{
    size_t u = 0;
    for (size_t i = 0; i < ix->n_ent; i++) {
        if (i && ix->ent[i].frame == ix->ent[i - 1].frame)
            continue;
        ix->frame[u] = ix->ent[i].frame;
        ix->first[u++] = i;
    }
    ix->first[u] = ix->n_ent;
    ix->n_frames = u;
}

int mp_index_build(const mp_shard *s, size_t n_shards, mp_index *ix,
                   mbe_err *e)
{
    memset(ix, 0, sizeof *ix);
    if (n_shards > UINT32_MAX)
        return mbe_fail(e, "too many shards (%zu)", n_shards);
    size_t n = 0;
    for (size_t j = 0; j < n_shards; j++)
        n += s[j].n;
    if (index_alloc(ix, n, e) < 0)
        return MBE_EFAIL;
    size_t at = 0;
    for (size_t j = 0; j < n_shards; j++)
        for (size_t k = 0; k < s[j].n; k++)
            ix->ent[at++] = (mp_entry){s[j].frame[k], (uint32_t)j, k};
    ix->n_ent = n;
    /* (frame, shard) is unique: a shard holds a frame at most once.
     * Shards of consecutive chunks come sorted already. */
    size_t k = 1;
    while (k < n && entry_cmp(&ix->ent[k - 1], &ix->ent[k]) < 0)
        k++;
    if (k < n)
        qsort(ix->ent, n, sizeof *ix->ent, entry_cmp);
    index_group(ix);
    return 0;
}

static int same_result(const mp_shard *s, const mp_entry *a,
                       const mp_entry *b)
{
    /* Bits, not values: NaN == NaN here, and -0.0 differs from 0.0.  An
     * energies-only shard agrees with any shard of the same energy: its
     * crc covers no forces to compare. */
    return !memcmp(&s[a->shard].energy[a->k], &s[b->shard].energy[b->k],
                   sizeof(double)) &&
           (s[a->shard].no_forces || s[b->shard].no_forces ||
            s[a->shard].crc[a->k] == s[b->shard].crc[b->k]);
}

/* Of frame u's COMPLETED entries, the first one differing from the
 * first COMPLETED one; NULL when they all agree. */
static const mp_entry *frame_conflict(const mp_index *ix, const mp_shard *s,
                                      size_t u, const mp_entry **ref)
{
    *ref = NULL;
    for (size_t i = ix->first[u]; i < ix->first[u + 1]; i++) {
        const mp_entry *x = &ix->ent[i];
        if (s[x->shard].status[x->k] != MBE_COMPLETED)
            continue;
        if (!*ref)
            *ref = x;
        else if (!same_result(s, *ref, x))
            return x;
    }
    return NULL;
}

void mp_find_conflicts(const mp_index *ix, const mp_shard *s,
                       mp_conflicts *c)
{
    memset(c, 0, sizeof *c);
    for (size_t u = 0; u < ix->n_frames; u++) {
        const mp_entry *ref, *x = frame_conflict(ix, s, u, &ref);
        if (!x)
            continue;
        if (!c->count) {
            c->shard_a = ref->shard;
            c->shard_b = x->shard;
        }
        if (c->n_first < MP_CONFLICTS_SHOWN)
            c->first[c->n_first++] = ix->frame[u];
        c->count++;
    }
}

int64_t mp_rule_status(int64_t stored, int64_t t)
{
    return t != MBE_UNDEFINED && stored != MBE_COMPLETED ? t : stored;
}

void mp_plan_free(mp_plan *p)
{
    if (!p)
        return;
    free(p->src);
    free(p->fsrc);
    free(p->status);
    free(p->write_status);
    if (p->is_src)
        for (size_t j = 0; j < p->n_shards; j++)
            free(p->is_src[j]);
    free(p->is_src);
    free(p->applied);
    free(p->kept);
    memset(p, 0, sizeof *p);
}

static int plan_alloc(mp_plan *p, const mp_shard *s, size_t n_shards,
                      size_t n, mbe_err *e)
{
    size_t m = n ? n : 1, ms = n_shards ? n_shards : 1;
    memset(p, 0, sizeof *p);
    p->n_frames = n;
    p->n_shards = n_shards;
    p->src = malloc(m * sizeof *p->src);
    p->fsrc = malloc(m * sizeof *p->fsrc);
    p->status = malloc(m * sizeof *p->status);
    p->write_status = calloc(m, 1);
    p->is_src = calloc(ms, sizeof *p->is_src);
    p->applied = calloc(ms, sizeof *p->applied);
    p->kept = calloc(ms, sizeof *p->kept);
    int ok = p->src && p->fsrc && p->status && p->write_status && p->is_src &&
             p->applied && p->kept;
    for (size_t j = 0; ok && j < n_shards; j++)
        ok = (p->is_src[j] = calloc(s[j].n ? s[j].n : 1, 1)) != NULL;
    if (ok)
        return 0;
    mp_plan_free(p);
    return mbe_fail(e, "out of memory for the merge plan (%zu frames)", n);
}

/* Frame u applied in order: the final status and the entry that wrote it
 * last (MP_NONE when nothing would be written); the entries whose energy
 * and whose forces win. */
static void plan_frame(const mp_index *ix, const mp_shard *s, size_t u,
                       int prefer, int64_t stored, int64_t *final,
                       size_t *status_writer, size_t *src, size_t *fsrc)
{
    int64_t st = stored;
    *status_writer = *src = *fsrc = MP_NONE;
    for (size_t i = ix->first[u]; i < ix->first[u + 1]; i++) {
        const mp_entry *x = &ix->ent[i];
        int64_t t = s[x->shard].status[x->k];
        if (t != MBE_UNDEFINED && st != MBE_COMPLETED) {
            st = t;
            *status_writer = i;
        }
        if (t != MBE_COMPLETED)
            continue;
        if (*src == MP_NONE || prefer != MBE_PREFER_FIRST)
            *src = i;
        if (!s[x->shard].no_forces &&
            (*fsrc == MP_NONE || prefer != MBE_PREFER_FIRST))
            *fsrc = i;
    }
    *final = st;
}

/* Credit the shards: the ones whose energy, forces or status are
 * written are applied; any other result or status is kept. */
static void plan_count(const mp_index *ix, const mp_shard *s, size_t u,
                       size_t status_writer, size_t src, size_t fsrc,
                       mp_plan *p)
{
    for (size_t i = ix->first[u]; i < ix->first[u + 1]; i++) {
        const mp_entry *x = &ix->ent[i];
        if (s[x->shard].status[x->k] == MBE_UNDEFINED)
            continue;
        if (i == src || i == fsrc || i == status_writer)
            p->applied[x->shard]++;
        else
            p->kept[x->shard]++;
    }
}

int mp_plan_build(const mp_index *ix, const mp_shard *s, size_t n_shards,
                  int prefer, const int64_t *stored, int has_status,
                  mp_plan *p, mbe_err *e)
{
    if (plan_alloc(p, s, n_shards, ix->n_frames, e) < 0)
        return MBE_EFAIL;
    for (size_t u = 0; u < ix->n_frames; u++) {
        size_t writer, src, fsrc;
        plan_frame(ix, s, u, prefer, stored[u], &p->status[u], &writer,
                   &src, &fsrc);
        if (!has_status)
            writer = MP_NONE;
        /* A COMPLETED status is the same value whichever COMPLETED shard
         * wrote it: credit the shard whose results are written. */
        if (writer != MP_NONE && src != MP_NONE &&
            p->status[u] == MBE_COMPLETED)
            writer = src;
        p->src[u] = src;
        p->fsrc[u] = fsrc;
        p->write_status[u] = writer != MP_NONE;
        if (fsrc != MP_NONE)
            p->is_src[ix->ent[fsrc].shard][ix->ent[fsrc].k] = 1;
        plan_count(ix, s, u, writer, src, fsrc, p);
        p->ef_frames += src != MP_NONE;
        p->f_frames += fsrc != MP_NONE;
        p->status_frames += writer != MP_NONE;
        p->frames_written += src != MP_NONE || writer != MP_NONE;
    }
    return 0;
}

int mp_next_run(const int64_t *frame, const unsigned char *mask, size_t n,
                size_t *pos, size_t max_len, size_t *start, size_t *len)
{
    size_t i = *pos;
    while (i < n && mask && !mask[i])
        i++;
    if (i >= n) {
        *pos = n;
        return 0;
    }
    size_t j = i + 1;
    while (j < n && (!mask || mask[j]) && frame[j] == frame[j - 1] + 1 &&
           (!max_len || j - i < max_len))
        j++;
    *start = i;
    *len = j - i;
    *pos = j;
    return 1;
}
