/* pool.c - one job over many keys: the keys that -k patterns and
 * --all-keys select, the (key, frame) pool that --chunk splits, the keyed
 * frame spec that mbe-status --missing prints and mbe-compute -f reads
 * back, and the names of the shards of such a job. */
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

int mbe_key_is_pattern(const char *key)
{
    return strpbrk(key, "*?[") != NULL;
}

static int listed(const mbe_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], s))
            return 1;
    return 0;
}

/* Push s unless already there: a key matched by two options is computed
 * once, where it first came. */
static int push_new(mbe_strlist *out, const char *s, mbe_err *e)
{
    return listed(out, s) ? 0 : mbe_strlist_push(out, s, e);
}

/* '*' matches '/' too (no FNM_PATHNAME), so that training/<star> takes
 * every key below training, however deep. */
static int add_matches(const mbe_strlist *groups, const char *pat,
                       mbe_strlist *out, mbe_err *e)
{
    size_t found = 0;
    for (size_t g = 0; g < groups->n; g++) {
        if (fnmatch(pat, groups->v[g], 0) != 0)
            continue;
        found++;
        if (push_new(out, groups->v[g], e) < 0)
            return MBE_EFAIL;
    }
    if (!found)
        return mbe_fail(e, "-k '%s' matches no frame-holding group", pat);
    return 0;
}

int mbe_keys_select(const mbe_strlist *groups, const mbe_strlist *opts,
                    int all, mbe_strlist *out, mbe_err *e)
{
    out->v = NULL;
    out->n = 0;
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < opts->n; k++)
        rc = mbe_key_is_pattern(opts->v[k])
                 ? add_matches(groups, opts->v[k], out, e)
                 : push_new(out, opts->v[k], e);
    for (size_t g = 0; rc == 0 && all && g < groups->n; g++)
        rc = push_new(out, groups->v[g], e);
    if (rc == 0 && out->n == 0)
        rc = mbe_fail(e, "no frame-holding group selected");
    if (rc < 0)
        mbe_strlist_free(out);
    return rc;
}

/* ------------------------------------------------------------- specs */

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Append line [s, end) to the spec being built at o: blanks around ','
 * and '-' and at the ends dropped, one trailing ',' allowed (the line
 * continues on the next). */
static size_t append_line(char *o, size_t used, const char *s,
                          const char *end)
{
    while (s < end && is_blank(*s))
        s++;
    while (end > s && is_blank(end[-1]))
        end--;
    if (end > s && end[-1] == ',')
        end--;
    if (s == end)
        return used;
    if (used)
        o[used++] = ',';
    for (const char *p = s; p < end; p++) {
        if (is_blank(*p)) {
            const char *q = p;
            while (q < end && is_blank(*q))
                q++;
            char before = used ? o[used - 1] : ',';
            if (before == ',' || before == '-' || *q == ',' || *q == '-') {
                p = q - 1;
                continue;
            }
        }
        o[used++] = *p;
    }
    return used;
}

char *mbe_spec_normalize(const char *text)
{
    size_t len = strlen(text);
    char *o = malloc(len + 1);
    if (!o)
        return NULL;
    size_t used = 0;
    for (const char *s = text; *s;) {
        const char *nl = strchr(s, '\n');
        const char *end = nl ? nl : s + strlen(s);
        used = append_line(o, used, s, end);
        s = nl ? nl + 1 : end;
    }
    o[used] = '\0';
    return o;
}

int mbe_spec_is_keyed(const char *text)
{
    return strchr(text, ':') != NULL;
}

static ptrdiff_t key_pos(const mbe_strlist *keys, const char *k, size_t n)
{
    for (size_t i = 0; i < keys->n; i++)
        if (strlen(keys->v[i]) == n && !strncmp(keys->v[i], k, n))
            return (ptrdiff_t)i;
    return -1;
}

/* Position in keys of the key of line [s, end), which holds a ':'.  The
 * spec holds no ':', so the last one ends the key, which may hold any
 * character. */
static ptrdiff_t line_key(const char *s, const char *end,
                          const mbe_strlist *keys, const char **spec,
                          mbe_err *e)
{
    const char *colon = end;
    while (colon[-1] != ':')
        colon--;
    const char *k = s, *kend = colon - 1;
    while (k < kend && is_blank(*k))
        k++;
    *spec = colon;
    ptrdiff_t pos = key_pos(keys, k, (size_t)(kend - k));
    if (pos < 0)
        mbe_fail(e, "key '%.*s' is not one of the selected keys",
                 (int)(kend - k > 200 ? 200 : kend - k), k);
    return pos;
}

/* Append [s, end) and a line break to specs->v[pos]. */
static int add_text(mbe_strlist *specs, ptrdiff_t pos, const char *s,
                    const char *end, mbe_err *e)
{
    size_t old = strlen(specs->v[pos]), n = (size_t)(end - s);
    char *t = realloc(specs->v[pos], old + n + 2);
    if (!t)
        return mbe_fail(e, "out of memory");
    memcpy(t + old, s, n);
    t[old + n] = '\n';
    t[old + n + 1] = '\0';
    specs->v[pos] = t;
    return 0;
}

/* "KEY: SPEC" lines; a line without ':' continues the spec above it. */
static int keyed_lines(const char *text, const mbe_strlist *keys,
                       mbe_strlist *specs, mbe_err *e)
{
    char *named = calloc(keys->n ? keys->n : 1, 1);
    ptrdiff_t cur = -1;
    int rc = named ? 0 : mbe_fail(e, "out of memory");
    for (const char *s = text; rc == 0 && *s;) {
        const char *nl = strchr(s, '\n');
        const char *end = nl ? nl : s + strlen(s), *spec = s;
        const char *p = s;
        while (p < end && (is_blank(*p) || *p == ','))
            p++;
        if (memchr(s, ':', (size_t)(end - s))) {
            cur = line_key(s, end, keys, &spec, e);
            if (cur >= 0 && named[cur]++)
                rc = mbe_fail(e, "key '%s' is given twice", keys->v[cur]);
            if (cur < 0)
                rc = MBE_EFAIL;
        } else if (p < end && cur < 0) {
            rc = mbe_fail(e, "frames '%.*s' before any KEY: line",
                          (int)(end - s > 60 ? 60 : end - s), s);
        }
        if (rc == 0 && cur >= 0)
            rc = add_text(specs, cur, spec, end, e);
        s = nl ? nl + 1 : end;
    }
    for (size_t i = 0; rc == 0 && i < keys->n; i++) {
        char *n = mbe_spec_normalize(specs->v[i]);
        if (!n)
            rc = mbe_fail(e, "out of memory");
        else if (named[i] && !*n)
            rc = mbe_fail(e, "key '%s': empty frame spec", keys->v[i]);
        free(specs->v[i]);
        specs->v[i] = n;
    }
    free(named);
    return rc;
}

static int fill_specs(mbe_strlist *specs, size_t n, const char *with,
                      mbe_err *e)
{
    for (size_t i = 0; i < n; i++)
        if (mbe_strlist_push(specs, with, e) < 0)
            return MBE_EFAIL;
    return 0;
}

int mbe_keyed_spec_split(const char *text, const mbe_strlist *keys,
                         mbe_strlist *specs, mbe_err *e)
{
    specs->v = NULL;
    specs->n = 0;
    int rc = 0;
    if (!mbe_spec_is_keyed(text)) {
        char *spec = mbe_spec_normalize(text);
        rc = spec ? fill_specs(specs, keys->n, spec, e)
                  : mbe_fail(e, "out of memory");
        free(spec);
    } else {
        rc = fill_specs(specs, keys->n, "", e);
        if (rc == 0)
            rc = keyed_lines(text, keys, specs, e);
    }
    if (rc < 0)
        mbe_strlist_free(specs);
    return rc;
}

/* -------------------------------------------------------------- pool */

int mbe_pool_chunk(const mbe_frame_list *lists, size_t n_keys, int64_t i,
                   int64_t n, mbe_frames *out, mbe_err *e)
{
    uint64_t total = 0;
    for (size_t k = 0; k < n_keys; k++) {
        out[k].idx = NULL;
        out[k].n = out[k].cap = 0;
        total += lists[k].n;
    }
    if (n < 1 || i < 1 || i > n)
        return mbe_fail(e, "chunk %lld/%lld: need 1 <= I <= N",
                        (long long)i, (long long)n);
    /* numpy.array_split: the first total % n pieces one longer. */
    uint64_t q = total / (uint64_t)n, r = total % (uint64_t)n;
    uint64_t before = (uint64_t)(i - 1);
    uint64_t start = before * q + (before < r ? before : r);
    uint64_t stop = start + q + (before < r);
    uint64_t base = 0;
    for (size_t k = 0; k < n_keys; k++) {
        uint64_t len = lists[k].n;
        uint64_t lo = start > base ? start : base;
        uint64_t hi = stop < base + len ? stop : base + len;
        uint64_t a = lo - base, b = hi - base;
        base += len;
        if (lo >= hi)
            continue;
        /* This key's part of the piece is a piece of its own list: the
         * single-key chunker sorts it and refuses repeats. */
        mbe_frame_list part = {lists[k].idx + a, (size_t)(b - a)};
        if (mbe_frame_list_chunk(&part, 1, 1, &out[k], e) < 0) {
            for (size_t j = 0; j < n_keys; j++)
                mbe_frames_free(&out[j]);
            return MBE_EFAIL;
        }
    }
    return 0;
}

char *mbe_key_shard_path(const char *shard, size_t i)
{
    size_t n = strlen(shard);
    int h5 = n > 3 && !strcmp(shard + n - 3, ".h5");
    size_t stem = h5 ? n - 3 : n;
    size_t cap = n + 32;
    char *p = malloc(cap);
    if (p)
        snprintf(p, cap, "%.*s.k%04zu%s", (int)stem, shard, i,
                 h5 ? ".h5" : "");
    return p;
}

/* -------------------------------------------------- a job's keys */

void mbe_pool_free(mbe_pool *p)
{
    for (size_t k = 0; p->pieces && k < p->keys.n; k++)
        mbe_frames_free(&p->pieces[k]);
    mbe_strlist_free(&p->keys);
    free(p->n_frames);
    free(p->pieces);
    memset(p, 0, sizeof *p);
}

/* The group's own name (a FiniteSubsystem's ends in /cluster_of_molecules)
 * and size, as a job will open it. */
static int add_group(mbe_pool *p, const char *master, const char *key,
                     const mbe_lock_opts *lk, mbe_err *e)
{
    mbe_master *m = NULL;
    int rc = mbe_master_open_checked(master, key, 0, lk, &m, e);
    if (rc < 0)
        return rc;
    const char *name = mbe_master_key(m);
    int64_t n = mbe_master_n_frames(m);
    if (listed(&p->keys, name))
        rc = mbe_fail(e, "%s: group '%s' selected twice (as '%s')", master,
                      name, key);
    else if (mbe_strlist_push(&p->keys, name, e) < 0)
        rc = MBE_EFAIL;
    else
        p->n_frames[p->keys.n - 1] = n;
    mbe_err ce;
    if (mbe_master_close(m, &ce) < 0 && rc == 0) {
        *e = ce;
        rc = MBE_EFAIL;
    }
    return rc;
}

int mbe_pool_keys(const char *master, const mbe_strlist *opts, int all,
                  const mbe_lock_opts *lk, mbe_pool *out, mbe_err *e)
{
    memset(out, 0, sizeof *out);
    mbe_strlist groups = {0}, sel = {0};
    int need_list = all;
    for (size_t k = 0; k < opts->n; k++)
        need_list |= mbe_key_is_pattern(opts->v[k]);
    /* One shared lock and one check of the file (mbe_master_check, a walk
     * of its whole metadata for h5py's files) for every group opened:
     * listing the groups checks it. */
    mbe_lock lock;
    int rc = mbe_lock_acquire(master, 0, lk, &lock, e);
    if (rc < 0)
        return rc;
    rc = need_list ? mbe_list_frame_groups(master, lk, &groups, e)
                   : mbe_master_check(master, e);
    if (rc == 0)
        rc = mbe_keys_select(&groups, opts, all, &sel, e);
    if (rc == 0 && !(out->n_frames = calloc(sel.n, sizeof *out->n_frames)))
        rc = mbe_fail(e, "out of memory");
    for (size_t k = 0; rc == 0 && k < sel.n; k++)
        rc = add_group(out, master, sel.v[k], lk, e);
    mbe_lock_release(&lock);
    mbe_strlist_free(&groups);
    mbe_strlist_free(&sel);
    if (rc < 0)
        mbe_pool_free(out);
    return rc;
}

/* Each key's frames in the order of its spec (every frame without one). */
static int pool_lists(const mbe_pool *p, const char *frames,
                      mbe_frame_list *lists, mbe_err *e)
{
    mbe_strlist specs = {0};
    if (frames && mbe_keyed_spec_split(frames, &p->keys, &specs, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    for (size_t k = 0; rc == 0 && k < p->keys.n; k++) {
        if (!frames)
            rc = mbe_frame_list_all(p->n_frames[k], &lists[k], e);
        else if (*specs.v[k])
            rc = mbe_frame_list_parse(specs.v[k], p->n_frames[k], &lists[k],
                                      e);
        if (rc < 0)
            mbe_err_prefix(e, "key '%s'", p->keys.v[k]);
    }
    mbe_strlist_free(&specs);
    return rc;
}

int mbe_pool_plan(const char *master, const mbe_strlist *opts, int all,
                  const char *frames, int64_t i, int64_t n,
                  const mbe_lock_opts *lk, mbe_pool *out, mbe_err *e)
{
    int rc = mbe_pool_keys(master, opts, all, lk, out, e);
    if (rc < 0)
        return rc;
    size_t nk = out->keys.n;
    mbe_frame_list *lists = calloc(nk, sizeof *lists);
    out->pieces = calloc(nk, sizeof *out->pieces);
    if (!lists || !out->pieces)
        rc = mbe_fail(e, "out of memory");
    if (rc == 0 && (rc = pool_lists(out, frames, lists, e)) < 0)
        mbe_err_prefix(e, "--frames");
    if (rc == 0 && (rc = mbe_pool_chunk(lists, nk, i, n, out->pieces, e)) < 0)
        mbe_err_prefix(e, "--chunk");
    for (size_t k = 0; lists && k < nk; k++)
        mbe_frame_list_free(&lists[k]);
    free(lists);
    if (rc < 0)
        mbe_pool_free(out);
    return rc;
}
