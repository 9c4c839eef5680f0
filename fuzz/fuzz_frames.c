/* fuzz_frames.c - libFuzzer target for frame specs and chunk specs
 * (lib/frames.c: mbe_frames_parse, mbe_frame_list_parse,
 * mbe_frames_format, mbe_chunk_parse, mbe_frame_list_chunk).
 *
 * Besides "no crash, no sanitizer report" it checks what mbe.h promises:
 * a parsed selection is sorted, without repeats and inside the bound; it
 * formats back to a spec that parses to the same set; a syntax-only check
 * (out NULL, no bound) accepts whatever the bounded parse accepts; the
 * ordered parse accepts and refuses exactly the same specs and holds the
 * same frames; the pieces of a chunked pool are its consecutive slices,
 * sorted; every failure leaves a non-empty one-line message and an empty
 * out. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe.h"

/* Bound of the parse that allocates: selections are 8 bytes a frame, so a
 * valid "0-2147483646" would take 16 GiB; the fuzzer's malloc limit is 2. */
#define BOUND ((int64_t)1 << 20)

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_frames: check failed: %s (line %d)\n",  \
                    #c, __LINE__);                                        \
            abort();                                                      \
        }                                                                 \
    } while (0)

static void check_msg(const mbe_err *e)
{
    size_t n = strnlen(e->msg, sizeof e->msg);
    CHECK(n > 0 && n < sizeof e->msg);
    CHECK(!strchr(e->msg, '\n'));
}

static void check_set(const mbe_frames *f, int64_t bound)
{
    for (size_t k = 0; k < f->n; k++) {
        CHECK(f->idx[k] >= 0 && f->idx[k] < bound);
        CHECK(k == 0 || f->idx[k] > f->idx[k - 1]);
    }
}

static int same(const mbe_frames *a, const mbe_frames *b)
{
    return a->n == b->n &&
           (a->n == 0 || !memcmp(a->idx, b->idx, a->n * sizeof *a->idx));
}

/* Frame v is somewhere in l->idx[from, to). */
static int in_slice(const mbe_frame_list *l, size_t from, size_t to,
                    int64_t v)
{
    for (size_t k = from; k < to; k++)
        if (l->idx[k] == v)
            return 1;
    return 0;
}

/* The ordered parse of an accepted spec: the same frames as the set f;
 * split into 3, each piece is sorted and holds the frames of its slice. */
static void fuzz_list(const char *s, const mbe_frames *f)
{
    mbe_err e = {{0}};
    mbe_frame_list l = {0};
    CHECK(mbe_frame_list_parse(s, BOUND, &l, &e) == 0);
    CHECK(l.n == f->n);
    for (size_t k = 0; k < l.n && k < 64; k++)
        CHECK(mbe_frames_find(f, l.idx[k]) >= 0);
    size_t covered = 0;
    for (int64_t i = 1; i <= 3; i++) {
        mbe_frames g = {0};
        CHECK(mbe_frame_list_chunk(&l, i, 3, &g, &e) == 0);
        check_set(&g, BOUND);
        CHECK(covered + g.n <= l.n);
        for (size_t k = 0; k < g.n && k < 64; k++)
            CHECK(in_slice(&l, covered, covered + g.n, g.idx[k]));
        covered += g.n;
        mbe_frames_free(&g);
    }
    CHECK(covered == l.n);
    mbe_frame_list_free(&l);
}

static void fuzz_spec(const char *s)
{
    mbe_err e = {{0}};
    mbe_frames f = {0}, g = {0};
    int syntax_ok = mbe_frames_parse(s, -1, NULL, &e) == 0;
    if (!syntax_ok)
        check_msg(&e);
    e.msg[0] = '\0';
    if (mbe_frames_parse(s, BOUND, &f, &e) < 0) {
        check_msg(&e);
        CHECK(f.n == 0 && f.idx == NULL);
        mbe_frame_list l = {0};
        mbe_err le = {{0}};
        CHECK(mbe_frame_list_parse(s, BOUND, &l, &le) < 0);
        CHECK(l.n == 0 && l.idx == NULL && !strcmp(le.msg, e.msg));
        return;
    }
    CHECK(syntax_ok);
    CHECK(f.n > 0);
    check_set(&f, BOUND);

    char *fmt = mbe_frames_format(&f);
    CHECK(fmt);
    CHECK(mbe_frames_parse(fmt, BOUND, &g, &e) == 0);
    CHECK(same(&f, &g));
    mbe_frames_free(&g);
    /* The formatted spec is the compact one: formatting is idempotent. */
    CHECK(mbe_frames_parse(fmt, f.idx[f.n - 1] + 1, &g, &e) == 0);
    char *fmt2 = mbe_frames_format(&g);
    CHECK(fmt2 && !strcmp(fmt, fmt2));
    free(fmt2);
    mbe_frames_free(&g);
    /* One past the largest index is the tightest bound that accepts it. */
    if (f.idx[f.n - 1] > 0) {
        CHECK(mbe_frames_parse(fmt, f.idx[f.n - 1], NULL, &e) < 0);
        check_msg(&e);
    }
    free(fmt);

    for (size_t k = 0; k < f.n && k < 64; k++)
        CHECK(mbe_frames_find(&f, f.idx[k]) == (ptrdiff_t)k);
    CHECK(mbe_frames_find(&f, -1) == -1);

    CHECK(mbe_frames_copy(&f, &g, &e) == 0 && same(&f, &g));
    mbe_frames_free(&g);

    fuzz_list(s, &f);
    mbe_frames_free(&f);
}

static void fuzz_chunk(const char *s, const mbe_frame_list *pool)
{
    mbe_err e = {{0}};
    int64_t i = 0, n = 0;
    if (mbe_chunk_parse(s, &i, &n, &e) < 0) {
        check_msg(&e);
        return;
    }
    CHECK(i >= 1 && i <= n);
    mbe_frames g = {0};
    CHECK(mbe_frame_list_chunk(pool, i, n, &g, &e) == 0);
    CHECK(g.n <= pool->n);
    check_set(&g, INT64_MAX);
    mbe_frames_free(&g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    fuzz_spec(s);

    /* 999 down to 0: every piece has to be sorted. */
    static mbe_frame_list pool;
    mbe_err e;
    if (!pool.n) {
        if (mbe_frame_list_all(1000, &pool, &e) < 0)
            abort();
        for (size_t k = 0; k < pool.n; k++)
            pool.idx[k] = (int64_t)(pool.n - 1 - k);
    }
    fuzz_chunk(s, &pool);
    free(s);
    return 0;
}
