/* merge_check.c - the checks of mbe_merge before anything is written (see
 * merge_impl.h): what becomes of each shard given.
 *
 * Every shard is opened and verified, copies of one shard are found, and
 * the shards are checked against the master read-only (identity, geometry
 * fingerprints).  A shard that fails is refused with its reason
 * (SH_INVALID), an identical copy is noted (SH_DUPLICATE); the others are
 * left to apply.  What is done with those (targets, conflicts between
 * them, the plan, the writes) is merge.c's. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge_impl.h"

/* ============================================= shards, before the lock */

static uint32_t shard_digest(const mbe_shard_reader *r)
{
    const mbe_frames *f = mbe_shard_reader_frames(r);
    uint32_t d = mbe_crc32(0, f->idx, f->n * 8);
    d = mbe_crc32(d, mbe_shard_reader_status(r), f->n * 8);
    d = mbe_crc32(d, mbe_shard_reader_energy(r), f->n * 8);
    return mbe_crc32(d, mbe_shard_reader_crc(r), f->n * 4);
}

static void report_counts(ctx *c, size_t i)
{
    mbe_merge_shard *s = &c->r->shards[i];
    const mbe_shard_meta *m = mg_meta(c, i);
    const int64_t *st = mbe_shard_reader_status(c->sh[i].r);
    s->shard_id = strdup(m->shard_id);
    s->key = strdup(c->sh[i].key);
    s->level = strdup(m->level);
    s->frames = mg_shard_n(c, i);
    for (size_t k = 0; k < s->frames; k++) {
        s->completed += st[k] == MBE_COMPLETED;
        s->scf_not_converged += st[k] == MBE_SCF_NOT_CONVERGED;
        s->failed += st[k] == MBE_FAILED;
        s->undefined += st[k] == MBE_UNDEFINED;
    }
}

static int is_hex_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!strchr("0123456789abcdef", s[n]))
            return 0;
    return n == 32;
}

static int check_meta(ctx *c, size_t i)
{
    const mbe_shard_meta *m = mg_meta(c, i);
    if (!*m->level)
        mg_refusef(c, i, "the shard names no level of theory");
    else if (!is_hex_id(m->shard_id))
        mg_refusef(c, i,
                   "damaged shard: shard id '%.40s' is not 32 hex digits",
                   m->shard_id);
    else if (!*m->key)
        mg_refusef(c, i, "the shard names no key of the master");
    return mg_live(c, i) ? 0 : -1;
}

/* ------------------------------------------------- reading the shards
 *
 * Each shard is read once, for the merge only: its small arrays (frames,
 * status, energies, crcs, fingerprints) when it is opened, its forces
 * under the lock as they are written.  What can be checked without the
 * forces is checked here (every row without results, every row of a
 * shard without forces); a COMPLETED row with forces is checked against
 * its crc when its forces are read, before they are written, so only
 * verified results reach the master, whatever happened to the file in
 * between. */

static int open_shard(ctx *c, size_t i)
{
    mbe_err why = {""};
    mbe_merge_shard *rs = &c->r->shards[i];
    if (mbe_shard_open_member(rs->path, rs->member, &c->sh[i].r, &why) < 0) {
        mg_refuse(c, i, why.msg);
        return 0;
    }
    char *name = strdup(mbe_shard_reader_name(c->sh[i].r));
    if (!name)
        return MBE_EFAIL;
    free(rs->name);
    rs->name = name;
    if (!(c->sh[i].key = mbe_normal_key(mg_meta(c, i)->key)))
        return MBE_EFAIL;
    report_counts(c, i);
    if (check_meta(c, i) < 0)
        return 0;
    if (mbe_shard_check_rows(c->sh[i].r, &why) < 0) {
        mg_refuse(c, i, why.msg);
        return 0;
    }
    c->sh[i].digest = shard_digest(c->sh[i].r);
    if (mbe_shard_reader_detach(c->sh[i].r)) {
        if (c->kept_fds < KEPT_FDS)
            c->kept_fds++;
        else
            mbe_shard_reader_release_fd(c->sh[i].r);
    }
    c->r->shards[i].valid = 1;
    return 0;
}

/* A new entry for member m of the file of entry i (a shard of several
 * keys), right after the entries so far. */
static int add_entry(ctx *c, size_t *cap, const char *path, size_t m)
{
    if (c->n == *cap) {
        size_t nc = *cap * 2;
        shard_in *sh = realloc(c->sh, nc * sizeof *sh);
        if (sh)
            c->sh = sh;
        mbe_merge_shard *rs = realloc(c->r->shards, nc * sizeof *rs);
        if (rs)
            c->r->shards = rs;
        if (!sh || !rs)
            return MBE_EFAIL;
        *cap = nc;
    }
    size_t j = c->n;
    memset(&c->sh[j], 0, sizeof c->sh[j]);
    memset(&c->r->shards[j], 0, sizeof c->r->shards[j]);
    mbe_merge_shard *rs = &c->r->shards[j];
    rs->member = m;
    /* Until the member is opened, which names it as the reader does. */
    if (!(rs->path = strdup(path)) ||
        !(rs->name = m ? mbe_asprintf("%s:/%zu", path, m) : strdup(path)))
        return MBE_EFAIL;
    c->n = c->r->n_shards = j + 1;
    return open_shard(c, j);
}

/* Each file given, and each further member of the files that hold several
 * keys, in the order given: the entries grow as members are found. */
int mg_open_shards(ctx *c, mbe_err *e)
{
    size_t files = c->n, cap = c->n ? c->n : 1;
    /* The given files move to the end of the arrays, out of the way of
     * the entries that are made in front of them. */
    shard_in *sh = calloc(cap, sizeof *sh);
    mbe_merge_shard *given = c->r->shards;
    c->r->shards = calloc(cap, sizeof *c->r->shards);
    if (!sh || !c->r->shards) {
        free(sh);
        free(c->r->shards);
        c->r->shards = given;
        return mbe_fail(e, "out of memory");
    }
    free(c->sh);
    c->sh = sh;
    c->n = c->r->n_shards = 0;
    int rc = 0;
    size_t f = 0;
    for (; f < files && !rc; f++) {
        mg_step(c, "reading shards", f, files);
        size_t j = c->n;
        rc = add_entry(c, &cap, given[f].path, 0);
        size_t n = !rc && c->sh[j].r ? mbe_shard_reader_members(c->sh[j].r)
                                     : 1;
        for (size_t m = 1; !rc && m < n; m++)
            rc = add_entry(c, &cap, given[f].path, m);
    }
    for (size_t i = 0; i < files; i++)
        mg_report_free_shard(&given[i]);
    free(given);
    if (rc < 0)
        return mbe_fail(e, "out of memory");
    mg_step(c, "reading shards", files, files);
    return 0;
}

/* ------------------------------------------------ against the master */

static int check_identity(ctx *c, size_t i, mbe_master *m)
{
    const mbe_shard_meta *s = mg_meta(c, i);
    if (s->n_frames != mbe_master_n_frames(m) ||
        s->n_atoms != mbe_master_n_atoms(m)) {
        mg_refusef(c, i, "computed for %lld frames of %lld atoms, but group "
                   "'%s' of %s has %lld frames of %lld atoms",
                   (long long)s->n_frames, (long long)s->n_atoms,
                   mbe_master_key(m), c->master,
                   (long long)mbe_master_n_frames(m),
                   (long long)mbe_master_n_atoms(m));
        return -1;
    }
    /* Another name is another file, unless the user says it is a copy or
     * a renamed master: then the geometry checks that follow decide. */
    if (mbe_master_name_matches(s->master_file, c->master))
        return 0;
    if (!c->o.allow_renamed) {
        mg_refusef(c, i, "computed for master '%s', not '%s' (a moved "
                   "master keeps its file name; for a copy or a renamed "
                   "master give --allow-renamed)", s->master_file,
                   mbe_base_name(c->master));
        return -1;
    }
    /* For the report only: without memory it just says nothing. */
    mbe_merge_shard *rs = &c->r->shards[i];
    free(rs->master_file);
    rs->master_file = strdup(s->master_file);
    return 0;
}

/* Bytes of one frame's geometry in mbe_geometry. */
static size_t geom_frame_bytes(const mbe_master *m)
{
    size_t na = (size_t)mbe_master_n_atoms(m);
    return na * (3 * 8 + 8 + 8) + 9 * 8 + 8;
}

typedef struct geom_bad {
    size_t count;
    int64_t first[SHOWN];
} geom_bad;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int of_key(const ctx *c, size_t i, const char *key)
{
    return mg_live(c, i) && !strcmp(c->sh[i].key, key);
}

/* The distinct frames of the key's shards, ascending. */
static int key_frames(const ctx *c, const char *key, mbe_frames *u,
                      mbe_err *e)
{
    size_t n = 0, at = 0;
    for (size_t i = 0; i < c->n; i++)
        n += of_key(c, i, key) ? mg_shard_n(c, i) : 0;
    if (!(u->idx = malloc((n ? n : 1) * sizeof *u->idx)))
        return mbe_fail(e, "out of memory");
    for (size_t i = 0; i < c->n; i++)
        if (of_key(c, i, key)) {
            const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
            memcpy(u->idx + at, f->idx, f->n * sizeof *f->idx);
            at += f->n;
        }
    size_t k = 1;
    while (k < n && u->idx[k] > u->idx[k - 1])
        k++;
    if (k < n) {
        qsort(u->idx, n, sizeof *u->idx, cmp_i64);
        for (k = n ? 1 : 0, at = k; k < n; k++)
            if (u->idx[k] != u->idx[at - 1])
                u->idx[at++] = u->idx[k];
        n = at;
    }
    u->n = u->cap = n;
    return 0;
}

/* The master's geometry of frames idx[0..cnt), fingerprinted into fp. */
static int fingerprints(mbe_master *m, const int64_t *idx, size_t cnt,
                        uint32_t *fp, mbe_err *e)
{
    mbe_frames sel = {(int64_t *)idx, cnt, cnt};
    mbe_geometry g;
    if (mbe_master_read_geometry(m, &sel, &g, e) < 0)
        return MBE_EFAIL;
    for (size_t k = 0; k < cnt; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        fp[k] = mbe_frame_fingerprint(&v);
    }
    mbe_geometry_free(&g);
    return 0;
}

/* Shard i's frames within the block ub[0..cnt), from its position *pos
 * on, against the block's fingerprints. */
static void compare_block(const ctx *c, size_t i, const int64_t *ub,
                          size_t cnt, const uint32_t *fp, size_t *pos,
                          geom_bad *bad)
{
    const mbe_frames *f = mbe_shard_reader_frames(c->sh[i].r);
    const uint32_t *want = mbe_shard_reader_geom_crc(c->sh[i].r);
    size_t q = 0, k = *pos;
    for (; k < f->n && f->idx[k] <= ub[cnt - 1]; k++) {
        size_t hi = cnt; /* ub[q..hi): the first >= f->idx[k] */
        while (q < hi) {
            size_t mid = q + (hi - q) / 2;
            if (ub[mid] < f->idx[k])
                q = mid + 1;
            else
                hi = mid;
        }
        if (fp[q] == want[k])
            continue;
        if (bad->count < SHOWN)
            bad->first[bad->count] = f->idx[k];
        bad->count++;
    }
    *pos = k;
}

static void refuse_geometry(ctx *c, size_t i, const geom_bad *bad)
{
    char list[160];
    mg_frame_list(list, sizeof list, bad->first,
                  bad->count < SHOWN ? bad->count : SHOWN, bad->count);
    mg_refusef(c, i, "the geometry of %zu of %zu frames differs from the "
               "master's (frame%s %s): computed from another master, or its "
               "frames changed since", bad->count, mg_shard_n(c, i),
               bad->count > 1 ? "s" : "", list);
}

/* The master's geometry of the frames of the key's shards, read once per
 * frame in master order (in blocks of at most buf_bytes, so that frames
 * interleaved between shards are read in long runs), against the
 * fingerprints each shard was computed with. */
static int check_geometry(ctx *c, const char *key, mbe_master *m,
                          mbe_err *e)
{
    mbe_frames u = {0};
    if (key_frames(c, key, &u, e) < 0)
        return MBE_EFAIL;
    size_t block = c->o.buf_bytes / (geom_frame_bytes(m) + 4);
    if (block < 1)
        block = 1;
    uint32_t *fp = malloc((u.n < block ? (u.n ? u.n : 1) : block) *
                          sizeof *fp);
    size_t *pos = calloc(c->n, sizeof *pos);
    geom_bad *bad = calloc(c->n, sizeof *bad);
    int rc = fp && pos && bad ? 0 : mbe_fail(e, "out of memory");
    for (size_t k0 = 0; rc == 0 && k0 < u.n; k0 += block) {
        size_t cnt = u.n - k0 < block ? u.n - k0 : block;
        mg_step(c, "checking geometry", k0, u.n);
        rc = fingerprints(m, u.idx + k0, cnt, fp, e);
        for (size_t i = 0; rc == 0 && i < c->n; i++)
            if (of_key(c, i, key))
                compare_block(c, i, u.idx + k0, cnt, fp, &pos[i], &bad[i]);
    }
    for (size_t i = 0; rc == 0 && i < c->n; i++)
        if (of_key(c, i, key) && bad[i].count)
            refuse_geometry(c, i, &bad[i]);
    free(u.idx);
    free(fp);
    free(pos);
    free(bad);
    return rc;
}

static int check_key_shards(ctx *c, const char *key, mbe_master *m,
                            mbe_err *e)
{
    for (size_t i = 0; i < c->n; i++) {
        if (!mg_live(c, i) || strcmp(c->sh[i].key, key))
            continue;
        c->sh[i].checked = 1;
        check_identity(c, i, m);
    }
    return check_geometry(c, key, m, e);
}

static void refuse_key(ctx *c, const char *key, const char *msg)
{
    for (size_t i = 0; i < c->n; i++)
        if (mg_live(c, i) && !strcmp(c->sh[i].key, key))
            mg_refuse(c, i, msg);
}

/* A master that cannot be read at all is no fault of the shards: that
 * ends the merge, also under skip_invalid.  Asked only once a key failed
 * to open, so that a good merge opens the master once per key. */
static int master_readable(ctx *c, mbe_err *e)
{
    hid_t f = H5Fopen(c->master, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char d[300];
        mbe_h5_errdesc(d, sizeof d);
        return mbe_fail(e, "%s: cannot open the master: %s", c->master,
                        *d ? d : "not a readable HDF5 file");
    }
    mbe_strlist keys = {0};
    int rc = mbe_h5_frame_groups(f, c->master, &keys, e);
    mbe_strlist_free(&keys);
    H5Fclose(f);
    return rc;
}

/* Under the merge's lock (exclusive, or shared for a dry run), so that
 * the geometry the shards were computed for is the geometry the rows go
 * to: a writer that replaced a group while this merge waited for the lock
 * gets no results of other frames.  Each key: the master opened once, the
 * geometry of the shards' frames read once, in master order. */
int mg_check_against_master(ctx *c, mbe_err *e)
{
    if (mbe_master_check(c->master, e) < 0)
        return MBE_EFAIL;
    for (size_t i = 0; i < c->n; i++) {
        if (!mg_live(c, i) || c->sh[i].checked)
            continue;
        const char *key = c->sh[i].key;
        mbe_master *m;
        mbe_err why = {""};
        if (mbe_master_open_held(c->master, key, &m, &why) < 0) {
            if (master_readable(c, e) < 0)
                return MBE_EFAIL;
            refuse_key(c, key, why.msg);
            continue;
        }
        int rc = check_key_shards(c, key, m, e);
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0)
            rc = mbe_fail(e, "%s", ce.msg);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Shards that read and verified (whatever else became of them). */
static int readable(const ctx *c, size_t i)
{
    return c->sh[i].r && c->sh[i].state != SH_INVALID;
}

/* Shards by id, then by command-line position. */
typedef struct by_id {
    const char *id;
    size_t i;
} by_id;

static int cmp_by_id(const void *a, const void *b)
{
    const by_id *x = a, *y = b;
    int d = strcmp(x->id, y->id);
    return d ? d : (x->i > y->i) - (x->i < y->i);
}

/* Shard i against the earlier shards of its id, g[0..k). */
static void compare_copies(ctx *c, const by_id *g, size_t k, size_t i)
{
    for (size_t q = 0; q < k; q++) {
        size_t j = g[q].i;
        if (!readable(c, j) || c->sh[j].state == SH_DUPLICATE)
            continue;
        const char *other = c->r->shards[j].name;
        char msg[MBE_ERR_LEN];
        if (c->sh[i].digest == c->sh[j].digest) {
            snprintf(msg, sizeof msg, "a copy of %s (same shard id); "
                     "applied once", other);
            c->sh[i].state = SH_DUPLICATE;
            set_note(c, i, msg);
        } else {
            mg_refusef(c, i, "same shard id as %s but other results (one "
                       "shard at two stages?); give only the newer copy",
                       other);
        }
        return;
    }
}

/* Copies of one shard: the first is applied, identical copies are noted,
 * copies with other content (one shard at two stages) are refused.  By
 * sorting, since comparing every pair of 10^5 shards would not end. */
int mg_find_duplicates(ctx *c, mbe_err *e)
{
    by_id *v = malloc((c->n ? c->n : 1) * sizeof *v);
    if (!v)
        return mbe_fail(e, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        if (readable(c, i))
            v[n++] = (by_id){mg_meta(c, i)->shard_id, i};
    qsort(v, n, sizeof *v, cmp_by_id);
    for (size_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && !strcmp(v[b].id, v[a].id); b++)
            compare_copies(c, v + a, b - a, v[b].i);
    }
    free(v);
    return 0;
}

/* ================================================ validation, overall */

int mg_refuse_invalid(ctx *c, mbe_err *e)
{
    size_t bad = mg_count_state(c, SH_INVALID);
    if (!bad || c->o.skip_invalid)
        return 0;
    return mbe_failc(e, MBE_EINVALID,
                     "%zu of %zu shard%s %s invalid; nothing was written",
                     bad, c->n, c->n > 1 ? "s" : "", bad > 1 ? "are" : "is");
}

