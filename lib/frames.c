/* frames.c - frame selections ("0-99,120"), chunks of them, SLURM arrays. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

/* A selection is held as 8 bytes a frame; beyond this it is surely a typo,
 * and refusing is kinder than swapping the node to death. */
#define FRAMES_MAX ((int64_t)1 << 31)

/* Quoted excerpts of user input are cut so a huge spec cannot drown the
 * message (or the error buffer), and control bytes and non-ASCII are
 * escaped so the message stays one readable line. */
#define QUOTE_MAX 60

typedef struct quoted {
    char s[QUOTE_MAX + 8];
} quoted;

static int is_plain(unsigned char c)
{
    return c >= 0x20 && c < 0x7f;
}

static quoted quote(const char *s, size_t len)
{
    quoted q;
    size_t o = 0;
    q.s[o++] = '\'';
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)s[k];
        size_t need = is_plain(c) ? 1 : 4;
        if (o + need > QUOTE_MAX) {
            memcpy(q.s + o, "...", 3);
            o += 3;
            break;
        }
        if (is_plain(c))
            q.s[o++] = (char)c;
        else
            o += (size_t)snprintf(q.s + o, 5, "\\x%02x", c);
    }
    q.s[o++] = '\'';
    q.s[o] = '\0';
    return q;
}

typedef struct charname {
    char s[8];
} charname;

static charname char_name(unsigned char c)
{
    charname n;
    if (is_plain(c))
        snprintf(n.s, sizeof n.s, "'%c'", c);
    else
        snprintf(n.s, sizeof n.s, "'\\x%02x'", c);
    return n;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* ------------------------------------------------------------ the set */

void mbe_frames_free(mbe_frames *f)
{
    if (!f)
        return;
    free(f->idx);
    f->idx = NULL;
    f->n = 0;
    f->cap = 0;
}

static int frames_alloc(size_t n, mbe_frames *out, mbe_err *e)
{
    out->idx = NULL;
    out->n = 0;
    out->cap = 0;
    if (n == 0)
        return 0;
    if (!(out->idx = malloc(n * sizeof *out->idx)))
        return mbe_fail(e, "out of memory for %zu frame indices", n);
    out->n = n;
    out->cap = n;
    return 0;
}

int mbe_frames_all(int64_t n, mbe_frames *out, mbe_err *e)
{
    if (n < 0)
        return mbe_fail(e, "negative number of frames %lld", (long long)n);
    if (n > FRAMES_MAX)
        return mbe_fail(e, "%lld frames are more than the supported %lld",
                        (long long)n, (long long)FRAMES_MAX);
    if (frames_alloc((size_t)n, out, e))
        return MBE_EFAIL;
    for (int64_t k = 0; k < n; k++)
        out->idx[k] = k;
    return 0;
}

int mbe_frames_copy(const mbe_frames *src, mbe_frames *out, mbe_err *e)
{
    mbe_frames tmp;
    if (frames_alloc(src->n, &tmp, e))
        return MBE_EFAIL;
    if (tmp.n)
        memcpy(tmp.idx, src->idx, tmp.n * sizeof *tmp.idx);
    *out = tmp;
    return 0;
}

int mbe_frames_push(mbe_frames *f, int64_t idx, mbe_err *e)
{
    if (idx < 0)
        return mbe_fail(e, "negative frame index %lld", (long long)idx);
    if (f->n && idx <= f->idx[f->n - 1])
        return mbe_fail(e, "frame %lld added after frame %lld: frames must "
                        "be added in increasing order", (long long)idx,
                        (long long)f->idx[f->n - 1]);
    if ((int64_t)f->n >= FRAMES_MAX)
        return mbe_fail(e, "more than %lld frames are not supported",
                        (long long)FRAMES_MAX);
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 16;
        int64_t *v = realloc(f->idx, cap * sizeof *v);
        if (!v)
            return mbe_fail(e, "out of memory for %zu frame indices", cap);
        f->idx = v;
        f->cap = cap;
    }
    f->idx[f->n++] = idx;
    return 0;
}

ptrdiff_t mbe_frames_find(const mbe_frames *f, int64_t idx)
{
    if (!f)
        return -1;
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->idx[mid] < idx)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < f->n && f->idx[lo] == idx ? (ptrdiff_t)lo : -1;
}

void mbe_frames_drop_completed(mbe_frames *f, const int64_t *status)
{
    if (!f || !status)
        return;
    size_t kept = 0;
    for (size_t k = 0; k < f->n; k++)
        if (status[k] != MBE_COMPLETED)
            f->idx[kept++] = f->idx[k];
    f->n = kept;
}

/* ---------------------------------------------------------- formatting */

/* Decimal digits of v written at dst (when not NULL); returns their count.
 * Lets format size its buffer exactly in a first pass. */
static size_t put_i64(char *dst, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    if (dst)
        memcpy(dst, tmp, (size_t)n);
    return (size_t)n;
}

/* Writes the spec at dst (when not NULL); returns its length. */
static size_t format_into(const mbe_frames *f, char *dst)
{
    size_t len = 0;
    for (size_t k = 0; k < f->n;) {
        size_t j = k;
        /* Indices are sorted and non-negative: the difference can't
         * overflow where idx+1 could. */
        while (j + 1 < f->n && f->idx[j + 1] - f->idx[j] == 1)
            j++;
        if (k > 0) {
            if (dst)
                dst[len] = ',';
            len++;
        }
        len += put_i64(dst ? dst + len : NULL, f->idx[k]);
        if (j > k) {
            if (dst)
                dst[len] = '-';
            len++;
            len += put_i64(dst ? dst + len : NULL, f->idx[j]);
        }
        k = j + 1;
    }
    return len;
}

char *mbe_frames_format(const mbe_frames *f)
{
    static const mbe_frames empty = {NULL, 0, 0};
    if (!f)
        f = &empty;
    size_t len = format_into(f, NULL);
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    format_into(f, s);
    s[len] = '\0';
    return s;
}

/* ------------------------------------------------------------- parsing */

/* One comma-separated element of a spec, lo..hi, with where it stood so
 * that overlap messages can name both offenders. */
typedef struct span {
    int64_t lo, hi;
    size_t off, len;
} span;

typedef struct spec_ctx {
    const char *s;
    size_t len;
    mbe_err *e;
} spec_ctx;

static int spec_fail(const spec_ctx *c, const char *what)
{
    return mbe_fail(c->e, "frame selection %s: %s",
                    quote(c->s, c->len).s, what);
}

static int spec_unexpected(const spec_ctx *c, size_t pos)
{
    char what[96];
    snprintf(what, sizeof what, "unexpected character %s at position %zu",
             char_name((unsigned char)c->s[pos]).s, pos + 1);
    return spec_fail(c, what);
}

/* Reads the digits at *pos (before end) into *v. */
static int spec_number(const spec_ctx *c, size_t *pos, size_t end,
                       const span *el, int64_t *v)
{
    size_t p = *pos;
    char what[MBE_ERR_LEN / 2];
    if (c->s[p] == '-' && p + 1 < end && is_digit(c->s[p + 1])) {
        snprintf(what, sizeof what, "negative frame number in %s at "
                 "position %zu (frames are numbered from 0)",
                 quote(c->s + el->off, el->len).s, p + 1);
        return spec_fail(c, what);
    }
    if (!is_digit(c->s[p]))
        return spec_unexpected(c, p);
    int64_t x = 0;
    size_t start = p;
    int overflow = 0;
    for (; p < end && is_digit(c->s[p]); p++) {
        int d = c->s[p] - '0';
        if (x > (INT64_MAX - d) / 10)
            overflow = 1;
        else
            x = 10 * x + d;
    }
    if (overflow) {
        snprintf(what, sizeof what, "number %s at position %zu is too large",
                 quote(c->s + start, p - start).s, start + 1);
        return spec_fail(c, what);
    }
    *v = x;
    *pos = p;
    return 0;
}

static int spec_check_bound(const spec_ctx *c, const span *el,
                            int64_t n_frames)
{
    if (n_frames < 0 || el->hi < n_frames)
        return 0;
    char what[MBE_ERR_LEN / 2];
    if (n_frames == 0)
        snprintf(what, sizeof what, "frame %lld in %s is out of range: the "
                 "master has 0 frames", (long long)el->hi,
                 quote(c->s + el->off, el->len).s);
    else
        snprintf(what, sizeof what, "frame %lld in %s is out of range: the "
                 "master has %lld frames, valid 0..%lld", (long long)el->hi,
                 quote(c->s + el->off, el->len).s, (long long)n_frames,
                 (long long)(n_frames - 1));
    return spec_fail(c, what);
}

/* Parses the element that starts at el->off and is el->len long. */
static int spec_element(const spec_ctx *c, span *el, int64_t n_frames)
{
    size_t p = el->off, end = el->off + el->len;
    char what[MBE_ERR_LEN / 2];
    if (spec_number(c, &p, end, el, &el->lo))
        return MBE_EFAIL;
    el->hi = el->lo;
    if (p < end && c->s[p] == '-') {
        if (++p == end) {
            snprintf(what, sizeof what, "range %s has no end",
                     quote(c->s + el->off, el->len).s);
            return spec_fail(c, what);
        }
        if (spec_number(c, &p, end, el, &el->hi))
            return MBE_EFAIL;
    }
    if (p < end)
        return spec_unexpected(c, p);
    if (el->hi < el->lo) {
        snprintf(what, sizeof what, "reversed range %s (start is greater "
                 "than end)", quote(c->s + el->off, el->len).s);
        return spec_fail(c, what);
    }
    return spec_check_bound(c, el, n_frames);
}

static int spec_empty_element(const spec_ctx *c, size_t off)
{
    const char *why = off == 0 ? "leading comma"
                      : off == c->len ? "trailing comma"
                                      : "two commas in a row";
    char what[96];
    snprintf(what, sizeof what, "empty element at position %zu (%s)",
             off + 1, why);
    return spec_fail(c, what);
}

/* Splits at commas and parses every element into spans (n_spans out). */
static int spec_split(const spec_ctx *c, int64_t n_frames, span *spans,
                      size_t *n_spans)
{
    size_t n = 0, off = 0;
    for (;;) {
        const char *comma = memchr(c->s + off, ',', c->len - off);
        size_t end = comma ? (size_t)(comma - c->s) : c->len;
        if (end == off)
            return spec_empty_element(c, off);
        spans[n] = (span){.off = off, .len = end - off};
        if (spec_element(c, &spans[n], n_frames))
            return MBE_EFAIL;
        n++;
        if (!comma)
            break;
        off = end + 1;
    }
    *n_spans = n;
    return 0;
}

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Spans must be sorted.  Returns the total number of frames. */
static int spec_check_disjoint(const spec_ctx *c, const span *spans,
                               size_t n, int64_t *total)
{
    int64_t sum = 0;
    for (size_t k = 0; k < n; k++) {
        /* Earlier spans are disjoint and sorted, so the previous one has
         * the largest end: comparing with it alone finds any overlap. */
        if (k > 0 && spans[k].lo <= spans[k - 1].hi) {
            const span *a = &spans[k - 1], *b = &spans[k];
            if (a->off > b->off) {
                const span *t = a;
                a = b;
                b = t;
            }
            char what[MBE_ERR_LEN / 2];
            snprintf(what, sizeof what, "frame %lld is selected twice: by "
                     "%s at position %zu and by %s at position %zu",
                     (long long)spans[k].lo,
                     quote(c->s + a->off, a->len).s, a->off + 1,
                     quote(c->s + b->off, b->len).s, b->off + 1);
            return spec_fail(c, what);
        }
        /* Each term is bounded before adding, so sum cannot overflow. */
        int64_t width = spans[k].hi - spans[k].lo;
        if (width >= FRAMES_MAX || (sum += width + 1) > FRAMES_MAX) {
            char what[128];
            snprintf(what, sizeof what, "selects more than %lld frames, "
                     "which is not supported", (long long)FRAMES_MAX);
            return spec_fail(c, what);
        }
    }
    *total = sum;
    return 0;
}

/* Writes the frames of the spans, in the order of the spans, at dst. */
static void spec_expand(const span *spans, size_t n, int64_t *dst)
{
    size_t j = 0;
    for (size_t k = 0; k < n; k++)
        for (int64_t v = spans[k].lo;; v++) {
            dst[j++] = v;
            if (v == spans[k].hi)
                break;
        }
}

/* Parses spec into its spans and checks them (syntax, bound, no frame
 * twice, size).  *out holds the spans sorted by start when sorted, else in
 * the order written; *total is their number of frames. */
static int spec_spans(const char *spec, int64_t n_frames, int sorted,
                      span **out, size_t *n_out, int64_t *total, mbe_err *e)
{
    *out = NULL;
    *n_out = 0;
    if (!spec || !*spec)
        return mbe_fail(e, "empty frame selection (expected e.g. 0-99,120)");
    spec_ctx c = {spec, strlen(spec), e};
    size_t max_spans = 1;
    for (size_t k = 0; k < c.len; k++)
        max_spans += spec[k] == ',';
    span *written = malloc(max_spans * sizeof *written);
    span *by_start = malloc(max_spans * sizeof *by_start);
    size_t n = 0;
    int rc = written && by_start
                 ? spec_split(&c, n_frames, written, &n)
                 : mbe_fail(e, "out of memory parsing a frame selection");
    if (!rc) {
        /* Overlaps are found in start order, whatever order was written. */
        memcpy(by_start, written, n * sizeof *written);
        qsort(by_start, n, sizeof *by_start, span_cmp);
        rc = spec_check_disjoint(&c, by_start, n, total);
    }
    span *keep = rc ? NULL : sorted ? by_start : written;
    if (written != keep)
        free(written);
    if (by_start != keep)
        free(by_start);
    *out = keep;
    *n_out = keep ? n : 0;
    return rc;
}

int mbe_frames_parse(const char *spec, int64_t n_frames, mbe_frames *out,
                     mbe_err *e)
{
    if (out) {
        out->idx = NULL;
        out->n = 0;
        out->cap = 0;
    }
    span *spans;
    size_t n;
    int64_t total = 0;
    int rc = spec_spans(spec, n_frames, 1, &spans, &n, &total, e);
    /* Without out, only the syntax and the bound are checked: nothing as
     * large as the selection is allocated. */
    if (!rc && out && !(rc = frames_alloc((size_t)total, out, e)))
        spec_expand(spans, n, out->idx);
    free(spans);
    return rc;
}

/* ---------------------------------------------------------- the list */

void mbe_frame_list_free(mbe_frame_list *l)
{
    if (!l)
        return;
    free(l->idx);
    l->idx = NULL;
    l->n = 0;
}

int mbe_frame_list_parse(const char *spec, int64_t n_frames,
                         mbe_frame_list *out, mbe_err *e)
{
    out->idx = NULL;
    out->n = 0;
    span *spans;
    size_t n;
    int64_t total = 0;
    mbe_frames tmp;
    int rc = spec_spans(spec, n_frames, 0, &spans, &n, &total, e);
    if (!rc && !(rc = frames_alloc((size_t)total, &tmp, e))) {
        spec_expand(spans, n, tmp.idx);
        out->idx = tmp.idx;
        out->n = tmp.n;
    }
    free(spans);
    return rc;
}

int mbe_frame_list_all(int64_t n, mbe_frame_list *out, mbe_err *e)
{
    mbe_frames all;
    out->idx = NULL;
    out->n = 0;
    if (mbe_frames_all(n, &all, e) < 0)
        return MBE_EFAIL;
    out->idx = all.idx;
    out->n = all.n;
    return 0;
}

/* -------------------------------------------------------------- chunks */

/* Strict non-negative decimal: digits only, no sign, no blanks.  Returns
 * the number of characters used (0 when none), -1 on overflow. */
static ptrdiff_t read_u63(const char *s, int64_t *v)
{
    int64_t x = 0;
    ptrdiff_t k = 0;
    for (; is_digit(s[k]); k++) {
        int d = s[k] - '0';
        if (x > (INT64_MAX - d) / 10)
            return -1;
        x = 10 * x + d;
    }
    *v = x;
    return k;
}

static int chunk_bad(const char *s, size_t pos, const char *what,
                     mbe_err *e)
{
    size_t len = strlen(s);
    if (pos < len && !*what)
        return mbe_fail(e, "chunk %s: unexpected character %s at position "
                        "%zu; expected I/N with 1 <= I <= N, e.g. 2/4",
                        quote(s, len).s, char_name((unsigned char)s[pos]).s,
                        pos + 1);
    return mbe_fail(e, "chunk %s: %s; expected I/N with 1 <= I <= N, "
                    "e.g. 2/4", quote(s, len).s, what);
}

int mbe_chunk_parse(const char *s, int64_t *i, int64_t *n, mbe_err *e)
{
    if (!s || !*s)
        return chunk_bad("", 0, "empty", e);
    int64_t a, b;
    ptrdiff_t ka = read_u63(s, &a);
    if (ka < 0)
        return chunk_bad(s, 0, "I is too large", e);
    if (ka == 0)
        return chunk_bad(s, 0, s[0] == '/' ? "missing I before '/'" : "", e);
    if (s[ka] != '/')
        return chunk_bad(s, (size_t)ka, s[ka] ? "" : "missing '/N'", e);
    const char *t = s + ka + 1;
    ptrdiff_t kb = read_u63(t, &b);
    if (kb < 0)
        return chunk_bad(s, 0, "N is too large", e);
    if (kb == 0 || t[kb])
        return chunk_bad(s, (size_t)(t - s + kb),
                         kb == 0 && !*t ? "missing N after '/'" : "", e);
    if (b == 0)
        return chunk_bad(s, 0, "N must be at least 1", e);
    if (a < 1 || a > b)
        return mbe_fail(e, "chunk %s: I must be between 1 and N=%lld",
                        quote(s, strlen(s)).s, (long long)b);
    *i = a;
    *n = b;
    return 0;
}

/* Start and size of piece i (1-based) of n of a pool of len frames, as
 * numpy.array_split cuts it: the first len % n pieces get one extra
 * frame. */
static int piece_bounds(size_t len, int64_t i, int64_t n, size_t *start,
                        size_t *size, mbe_err *e)
{
    if (n < 1)
        return mbe_fail(e, "chunk %lld/%lld: N must be at least 1",
                        (long long)i, (long long)n);
    if (i < 1 || i > n)
        return mbe_fail(e, "chunk %lld/%lld: I must be between 1 and %lld",
                        (long long)i, (long long)n, (long long)n);
    uint64_t q = len / (uint64_t)n, r = len % (uint64_t)n;
    uint64_t k = (uint64_t)(i - 1);
    *start = (size_t)(k * q + (k < r ? k : r));
    *size = (size_t)(q + (k < r));
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts a job's piece into a set.  A parsed pool never repeats a frame;
 * one built by hand might, and the package refuses a repeat within a
 * job's frames. */
static int piece_to_set(mbe_frames *f, int64_t i, int64_t n, mbe_err *e)
{
    int sorted = 1;
    for (size_t k = 1; k < f->n && sorted; k++)
        sorted = f->idx[k - 1] < f->idx[k];
    if (!sorted)
        qsort(f->idx, f->n, sizeof *f->idx, cmp_i64);
    for (size_t k = 0; k < f->n; k++) {
        if (f->idx[k] < 0)
            return mbe_fail(e, "chunk %lld/%lld: negative frame index %lld",
                            (long long)i, (long long)n,
                            (long long)f->idx[k]);
        if (k > 0 && f->idx[k] == f->idx[k - 1])
            return mbe_fail(e, "chunk %lld/%lld: frame %lld is in the piece "
                            "twice", (long long)i, (long long)n,
                            (long long)f->idx[k]);
    }
    return 0;
}

int mbe_frame_list_chunk(const mbe_frame_list *pool, int64_t i, int64_t n,
                         mbe_frames *out, mbe_err *e)
{
    out->idx = NULL;
    out->n = 0;
    out->cap = 0;
    size_t start = 0, size = 0;
    mbe_frames tmp;
    if (piece_bounds(pool->n, i, n, &start, &size, e) < 0 ||
        frames_alloc(size, &tmp, e) < 0)
        return MBE_EFAIL;
    if (size)
        memcpy(tmp.idx, pool->idx + start, size * sizeof *tmp.idx);
    if (piece_to_set(&tmp, i, n, e) < 0) {
        mbe_frames_free(&tmp);
        return MBE_EFAIL;
    }
    *out = tmp;
    return 0;
}

/* ------------------------------------------------------- SLURM arrays */

enum { SL_ID, SL_MIN, SL_MAX, SL_STEP, SL_COUNT, SL_N };

static const char *const slurm_var[SL_N] = {
    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT"};

/* v[k] = value of slurm_var[k]; have[k] = 0 when unset. */
static int slurm_read(int64_t v[SL_N], int have[SL_N], mbe_err *e)
{
    char missing[256] = "";
    for (int k = 0; k < SL_N; k++) {
        const char *s = getenv(slurm_var[k]);
        have[k] = s != NULL;
        if (!s) {
            if (k != SL_STEP)
                snprintf(missing + strlen(missing),
                         sizeof missing - strlen(missing), "%s%s",
                         *missing ? ", " : "", slurm_var[k]);
            continue;
        }
        ptrdiff_t used = read_u63(s, &v[k]);
        if (used <= 0 || s[used])
            return mbe_fail(e, "%s=%s is not a non-negative integer",
                            slurm_var[k], quote(s, strlen(s)).s);
    }
    if (*missing)
        return mbe_fail(e, "not running as a task of a SLURM job array: %s "
                        "not set (submit with sbatch --array=0-N, or give "
                        "--chunk I/N)", missing);
    return 0;
}

/* The array must be an arithmetic progression for a task to know its
 * position from the environment alone. */
static int slurm_check_range(const int64_t v[SL_N], int have_step,
                             mbe_err *e)
{
    if (v[SL_COUNT] <= 0)
        return mbe_fail(e, "SLURM_ARRAY_TASK_COUNT=%lld: must be at least 1",
                        (long long)v[SL_COUNT]);
    if (v[SL_STEP] <= 0)
        return mbe_fail(e, "SLURM_ARRAY_TASK_STEP=%lld: must be at least 1",
                        (long long)v[SL_STEP]);
    if (v[SL_MIN] > v[SL_MAX])
        return mbe_fail(e, "inconsistent SLURM job array: "
                        "SLURM_ARRAY_TASK_MIN=%lld > SLURM_ARRAY_TASK_MAX=%lld",
                        (long long)v[SL_MIN], (long long)v[SL_MAX]);
    if ((v[SL_MAX] - v[SL_MIN]) / v[SL_STEP] == v[SL_COUNT] - 1)
        return 0;
    return mbe_fail(e, "cannot tell this task's chunk: the SLURM job array "
                    "has %lld tasks between %lld and %lld%s, so it is not a "
                    "range; submit with --array=0-N (optionally with :step) "
                    "or give --chunk I/N explicitly",
                    (long long)v[SL_COUNT], (long long)v[SL_MIN],
                    (long long)v[SL_MAX],
                    have_step ? "" : " and SLURM_ARRAY_TASK_STEP is not set");
}

int mbe_chunk_from_slurm(int64_t *i, int64_t *n, mbe_err *e)
{
    int64_t v[SL_N];
    int have[SL_N];
    if (slurm_read(v, have, e))
        return MBE_EFAIL;
    if (!have[SL_STEP])
        v[SL_STEP] = 1;
    if (slurm_check_range(v, have[SL_STEP], e))
        return MBE_EFAIL;
    if (v[SL_ID] < v[SL_MIN] || v[SL_ID] > v[SL_MAX])
        return mbe_fail(e, "inconsistent SLURM job array: "
                        "SLURM_ARRAY_TASK_ID=%lld is outside "
                        "SLURM_ARRAY_TASK_MIN..MAX = %lld..%lld",
                        (long long)v[SL_ID], (long long)v[SL_MIN],
                        (long long)v[SL_MAX]);
    if ((v[SL_ID] - v[SL_MIN]) % v[SL_STEP])
        return mbe_fail(e, "inconsistent SLURM job array: "
                        "SLURM_ARRAY_TASK_ID=%lld is not MIN=%lld plus a "
                        "multiple of STEP=%lld",
                        (long long)v[SL_ID], (long long)v[SL_MIN],
                        (long long)v[SL_STEP]);
    *i = (v[SL_ID] - v[SL_MIN]) / v[SL_STEP] + 1;
    *n = v[SL_COUNT];
    return 0;
}
