/* test_frames.c - frame selections, chunks and SLURM array positions. */
#include <check.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe.h"

/* ------------------------------------------------------------ helpers */

/* Parses spec and checks format() of the result gives want. */
static void parse_ok(const char *spec, int64_t n_frames, const char *want)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    int rc = mbe_frames_parse(spec, n_frames, &f, &e);
    ck_assert_msg(rc == 0, "parse '%s' failed: %s", spec, e.msg);
    char *s = mbe_frames_format(&f);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(strcmp(s, want) == 0, "parse '%s' gave '%s', want '%s'",
                  spec, s, want);
    for (size_t k = 1; k < f.n; k++)
        ck_assert(f.idx[k - 1] < f.idx[k]);
    /* The ordered parse holds the same frames. */
    mbe_frame_list l = {0};
    ck_assert_msg(mbe_frame_list_parse(spec, n_frames, &l, &e) == 0,
                  "list parse '%s' failed: %s", spec, e.msg);
    ck_assert_uint_eq(l.n, f.n);
    for (size_t k = 0; k < l.n; k++)
        ck_assert(mbe_frames_find(&f, l.idx[k]) >= 0);
    mbe_frame_list_free(&l);
    free(s);
    mbe_frames_free(&f);
}

/* Parse must fail, leave out empty, and the message must hold every
 * NULL-terminated fragment. */
static void parse_bad(const char *spec, int64_t n_frames, ...)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    int rc = mbe_frames_parse(spec, n_frames, &f, &e);
    ck_assert_msg(rc < 0, "parse '%s' should have failed", spec);
    ck_assert_msg(f.n == 0 && f.idx == NULL, "output not empty on failure");
    ck_assert_msg(strchr(e.msg, '\n') == NULL, "multi-line message");
    va_list ap;
    va_start(ap, n_frames);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        ck_assert_msg(strstr(e.msg, frag), "parse '%s': message '%s' lacks "
                      "'%s'", spec, e.msg, frag);
    va_end(ap);
    /* The ordered parse refuses the same specs with the same words. */
    mbe_frame_list l = {0};
    mbe_err le = {{0}};
    ck_assert_msg(mbe_frame_list_parse(spec, n_frames, &l, &le) < 0,
                  "list parse '%s' should have failed", spec);
    ck_assert_msg(l.n == 0 && l.idx == NULL, "list not empty on failure");
    ck_assert_str_eq(le.msg, e.msg);
}

/* The ordered parse of spec must give exactly want[0..n). */
static void list_ok(const char *spec, int64_t n_frames, const int64_t *want,
                    size_t n)
{
    mbe_frame_list l = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_frame_list_parse(spec, n_frames, &l, &e) == 0,
                  "list parse '%s': %s", spec, e.msg);
    ck_assert_msg(l.n == n, "list parse '%s': %zu frames, want %zu", spec,
                  l.n, n);
    for (size_t k = 0; k < n; k++)
        ck_assert_msg(l.idx[k] == want[k], "list parse '%s': [%zu] = %lld, "
                      "want %lld", spec, k, (long long)l.idx[k],
                      (long long)want[k]);
    mbe_frame_list_free(&l);
    ck_assert_ptr_null(l.idx);
}

/* A set's buffer seen as a list (no copy): a sorted pool. */
static mbe_frame_list as_list(const mbe_frames *f)
{
    return (mbe_frame_list){f->idx, f->n};
}

/* Piece i of n of pool must format as want. */
static void piece_is(const mbe_frame_list *pool, int64_t i, int64_t n,
                     const char *want)
{
    mbe_frames piece = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_frame_list_chunk(pool, i, n, &piece, &e) == 0,
                  "chunk %lld/%lld: %s", (long long)i, (long long)n, e.msg);
    char *s = mbe_frames_format(&piece);
    ck_assert_msg(strcmp(s, want) == 0, "chunk %lld/%lld gave '%s', want "
                  "'%s'", (long long)i, (long long)n, s, want);
    free(s);
    mbe_frames_free(&piece);
}

static void chunk_ok(const char *s, int64_t wi, int64_t wn)
{
    int64_t i = -7, n = -7;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_chunk_parse(s, &i, &n, &e) == 0, "chunk '%s': %s", s,
                  e.msg);
    ck_assert_int_eq(i, wi);
    ck_assert_int_eq(n, wn);
}

static void chunk_bad(const char *s, const char *frag)
{
    int64_t i = -7, n = -7;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_chunk_parse(s, &i, &n, &e) < 0, "chunk '%s' accepted",
                  s);
    ck_assert_msg(strstr(e.msg, frag), "chunk '%s': message '%s' lacks '%s'",
                  s, e.msg, frag);
    ck_assert_msg(i == -7 && n == -7, "outputs written on failure");
}

/* Set the five SLURM variables; NULL unsets. */
static void slurm_env(const char *id, const char *min, const char *max,
                      const char *step, const char *count)
{
    const char *names[] = {"SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN",
                           "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP",
                           "SLURM_ARRAY_TASK_COUNT"};
    const char *vals[] = {id, min, max, step, count};
    for (int k = 0; k < 5; k++) {
        if (vals[k])
            ck_assert_int_eq(setenv(names[k], vals[k], 1), 0);
        else
            ck_assert_int_eq(unsetenv(names[k]), 0);
    }
}

static void slurm_ok(int64_t wi, int64_t wn)
{
    int64_t i = -7, n = -7;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_chunk_from_slurm(&i, &n, &e) == 0, "slurm: %s", e.msg);
    ck_assert_int_eq(i, wi);
    ck_assert_int_eq(n, wn);
}

static void slurm_bad(const char *frag)
{
    int64_t i = -7, n = -7;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_chunk_from_slurm(&i, &n, &e) < 0, "slurm accepted");
    ck_assert_msg(strstr(e.msg, frag), "slurm message '%s' lacks '%s'", e.msg,
                  frag);
    ck_assert_msg(i == -7 && n == -7, "outputs written on failure");
}

/* Every task of an --array given as ids, in order, gets pieces 1..N. */
static void slurm_array(const int *ids, int count, int step, int max)
{
    char id[32], mn[32], mx[32], st[32], ct[32];
    snprintf(mn, sizeof mn, "%d", ids[0]);
    snprintf(mx, sizeof mx, "%d", max);
    snprintf(st, sizeof st, "%d", step);
    snprintf(ct, sizeof ct, "%d", count);
    for (int k = 0; k < count; k++) {
        snprintf(id, sizeof id, "%d", ids[k]);
        slurm_env(id, mn, mx, st, ct);
        slurm_ok(k + 1, count);
    }
}

static mbe_frames from_list(const int64_t *v, size_t n)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    for (size_t k = 0; k < n; k++)
        ck_assert_msg(mbe_frames_push(&f, v[k], &e) == 0, "%s", e.msg);
    return f;
}

/* Deterministic, so a failure reproduces. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ------------------------------------------------------ parse: accept */

START_TEST(parse_single_and_ranges)
{
    parse_ok("0", 10, "0");
    parse_ok("9", 10, "9");
    parse_ok("0-99", 100, "0-99");
    parse_ok("0-99,120,200-210", 211, "0-99,120,200-210");
    parse_ok("3-3", 10, "3");
    parse_ok("0-0", 1, "0");
    parse_ok("007", 10, "7");
}
END_TEST

START_TEST(parse_any_order_sorted)
{
    parse_ok("5,0-3", 10, "0-3,5");
    parse_ok("200-210,120,0-99", -1, "0-99,120,200-210");
    parse_ok("9,7,8", 10, "7-9");
    parse_ok("4-6,0-3", 10, "0-6");
}
END_TEST

START_TEST(parse_contents)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_parse("8,2-4", 10, &f, &e), 0);
    ck_assert_uint_eq(f.n, 4);
    ck_assert_int_eq(f.idx[0], 2);
    ck_assert_int_eq(f.idx[1], 3);
    ck_assert_int_eq(f.idx[2], 4);
    ck_assert_int_eq(f.idx[3], 8);
    mbe_frames_free(&f);
    ck_assert_ptr_null(f.idx);
    ck_assert_uint_eq(f.n, 0);
}
END_TEST

START_TEST(parse_unbounded)
{
    parse_ok("123456789012", -1, "123456789012");
    parse_ok("9223372036854775807", -1, "9223372036854775807");
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_parse("0-999999", -1, &f, &e), 0);
    ck_assert_uint_eq(f.n, 1000000);
    ck_assert_int_eq(f.idx[999999], 999999);
    mbe_frames_free(&f);
}
END_TEST

START_TEST(parse_last_frame_in_bound)
{
    parse_ok("99", 100, "99");
    parse_ok("0-99", 100, "0-99");
}
END_TEST

/* ------------------------------------------------------ parse: refuse */

START_TEST(parse_refuse_empty)
{
    parse_bad("", 10, "empty", NULL);
    parse_bad(NULL, 10, "empty", NULL);
    parse_bad("1,,2", 10, "empty element", "position 3", "'1,,2'", NULL);
    parse_bad("1,", 10, "empty element", "trailing comma", NULL);
    parse_bad(",1", 10, "empty element", "leading comma", NULL);
    parse_bad(",", 10, "empty element", NULL);
}
END_TEST

START_TEST(parse_refuse_negative)
{
    parse_bad("-5", 10, "negative", "'-5'", NULL);
    parse_bad("1,-5", 10, "negative", "'-5'", NULL);
    parse_bad("1--3", 10, "negative", "'1--3'", NULL);
}
END_TEST

START_TEST(parse_refuse_reversed)
{
    parse_bad("5-3", 10, "reversed range '5-3'", NULL);
    parse_bad("0-1,9-8", 10, "reversed range '9-8'", NULL);
}
END_TEST

START_TEST(parse_refuse_overlap)
{
    parse_bad("0-5,3", 10, "frame 3", "twice", "'0-5'", "'3'", NULL);
    parse_bad("2,2", 10, "frame 2", "twice", "position 1", "position 3",
              NULL);
    parse_bad("3,0-5", 10, "frame 3", "twice", "'0-5'", NULL);
    parse_bad("0-4,4-8", 10, "frame 4", "twice", NULL);
    /* The middle span is disjoint from its neighbour but not from the
     * first one. */
    parse_bad("0-10,20,5", 30, "frame 5", "'0-10'", NULL);
}
END_TEST

START_TEST(parse_refuse_out_of_range)
{
    parse_bad("100", 100, "frame 100", "master has 100 frames",
              "valid 0..99", NULL);
    parse_bad("0-100", 100, "frame 100", "'0-100'", "valid 0..99", NULL);
    parse_bad("5,200-210", 100, "frame 210", "'200-210'", NULL);
    parse_bad("0", 0, "master has 0 frames", NULL);
}
END_TEST

START_TEST(parse_refuse_overflow)
{
    parse_bad("99999999999999999999", -1, "too large",
              "'99999999999999999999'", NULL);
    parse_bad("9223372036854775808", -1, "too large", NULL);
    parse_bad("0-99999999999999999999", -1, "too large", "position 3", NULL);
}
END_TEST

START_TEST(parse_refuse_too_many)
{
    parse_bad("0-2147483648", -1, "more than 2147483648 frames", NULL);
    parse_bad("0-9223372036854775807", -1, "more than 2147483648", NULL);
    /* Each part alone fits; together they don't. */
    parse_bad("0-2147483647,3000000000", -1, "more than 2147483648", NULL);
}
END_TEST

START_TEST(parse_refuse_stray)
{
    parse_bad(" 0-3", 10, "unexpected character ' ' at position 1", NULL);
    parse_bad("0-3 ", 10, "unexpected character ' ' at position 4", NULL);
    parse_bad("0, 1", 10, "unexpected character ' ' at position 3", NULL);
    parse_bad("0 -3", 10, "unexpected character ' ' at position 2", NULL);
    parse_bad("0-3\n", 10, "unexpected character '\\x0a' at position 4",
              NULL);
    parse_bad("+5", 10, "unexpected character '+' at position 1", NULL);
    parse_bad("0x10", -1, "unexpected character 'x' at position 2", NULL);
    parse_bad("1-2-3", 10, "unexpected character '-' at position 4", NULL);
    parse_bad("a", 10, "unexpected character 'a' at position 1", NULL);
    parse_bad("1;2", 10, "unexpected character ';' at position 2", NULL);
    parse_bad("-", 10, "unexpected character '-' at position 1", NULL);
    parse_bad("1.5", 10, "unexpected character '.'", NULL);
    parse_bad("5-", 10, "range '5-' has no end", NULL);
    /* An en dash pasted from a document. */
    parse_bad("0\xe2\x80\x93" "3", 10, "unexpected character '\\xe2' at "
              "position 2", "'0\\xe2\\x80\\x933'", NULL);
}
END_TEST

START_TEST(parse_long_spec_message_bounded)
{
    /* A huge spec must not overflow or flood the message. */
    size_t n = 100000;
    char *s = malloc(n + 2);
    memset(s, '1', n);
    s[n] = 'x';
    s[n + 1] = '\0';
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_frames_parse(s, -1, &f, &e), 0);
    ck_assert(strlen(e.msg) < 300);
    ck_assert(strstr(e.msg, "too large"));
    free(s);
}
END_TEST

/* ------------------------------------------------------------- format */

START_TEST(format_compact)
{
    int64_t a[] = {0, 1, 2, 5, 7, 8, 10};
    mbe_frames f = from_list(a, 7);
    char *s = mbe_frames_format(&f);
    ck_assert_str_eq(s, "0-2,5,7-8,10");
    free(s);
    mbe_frames_free(&f);

    mbe_frames empty = {0};
    s = mbe_frames_format(&empty);
    ck_assert_str_eq(s, "");
    free(s);

    int64_t b[] = {3, 4};
    f = from_list(b, 2);
    s = mbe_frames_format(&f);
    ck_assert_str_eq(s, "3-4");
    free(s);
    mbe_frames_free(&f);

    int64_t c[] = {INT64_MAX - 1, INT64_MAX};
    f = from_list(c, 2);
    s = mbe_frames_format(&f);
    ck_assert_str_eq(s, "9223372036854775806-9223372036854775807");
    free(s);
    mbe_frames_free(&f);
}
END_TEST

START_TEST(format_parse_round_trip_random)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (int trial = 0; trial < 500; trial++) {
        mbe_frames f = {0};
        mbe_err e = {{0}};
        int64_t n_frames = 1 + (int64_t)(rng_next(&seed) % 400);
        /* Vary density so both long runs and singletons occur. */
        uint64_t keep = 1 + rng_next(&seed) % 8;
        for (int64_t k = 0; k < n_frames; k++)
            if (rng_next(&seed) % 8 < keep)
                ck_assert_int_eq(mbe_frames_push(&f, k, &e), 0);
        char *s = mbe_frames_format(&f);
        ck_assert_ptr_nonnull(s);
        if (f.n == 0) {
            ck_assert_str_eq(s, "");
            free(s);
            continue;
        }
        mbe_frames g = {0};
        ck_assert_msg(mbe_frames_parse(s, n_frames, &g, &e) == 0,
                      "'%s': %s", s, e.msg);
        ck_assert_uint_eq(g.n, f.n);
        ck_assert(memcmp(g.idx, f.idx, f.n * sizeof *f.idx) == 0);
        char *t = mbe_frames_format(&g);
        ck_assert_str_eq(s, t);
        free(t);
        free(s);
        mbe_frames_free(&g);
        mbe_frames_free(&f);
    }
}
END_TEST

/* -------------------------------------------- all, copy, push, find */

START_TEST(frames_all)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_all(5, &f, &e), 0);
    char *s = mbe_frames_format(&f);
    ck_assert_str_eq(s, "0-4");
    free(s);
    mbe_frames_free(&f);
    ck_assert_int_eq(mbe_frames_all(0, &f, &e), 0);
    ck_assert_uint_eq(f.n, 0);
    mbe_frames_free(&f);
    ck_assert_int_lt(mbe_frames_all(-1, &f, &e), 0);
    ck_assert(strstr(e.msg, "negative"));
}
END_TEST

START_TEST(frames_copy)
{
    int64_t a[] = {1, 4, 9};
    mbe_frames f = from_list(a, 3), g = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_copy(&f, &g, &e), 0);
    ck_assert_uint_eq(g.n, 3);
    ck_assert_ptr_ne(g.idx, f.idx);
    ck_assert(memcmp(g.idx, a, sizeof a) == 0);
    mbe_frames_free(&f);
    mbe_frames_free(&g);
    mbe_frames empty = {0};
    ck_assert_int_eq(mbe_frames_copy(&empty, &g, &e), 0);
    ck_assert_uint_eq(g.n, 0);
    mbe_frames_free(&g);
}
END_TEST

START_TEST(frames_push_order)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_push(&f, 3, &e), 0);
    ck_assert_int_lt(mbe_frames_push(&f, 3, &e), 0);
    ck_assert(strstr(e.msg, "increasing"));
    ck_assert_int_lt(mbe_frames_push(&f, 1, &e), 0);
    ck_assert_int_eq(mbe_frames_push(&f, 4, &e), 0);
    ck_assert_uint_eq(f.n, 2);
    mbe_frames_free(&f);
    ck_assert_int_lt(mbe_frames_push(&f, -1, &e), 0);
    ck_assert(strstr(e.msg, "negative"));
    for (int64_t k = 0; k < 1000; k++)
        ck_assert_int_eq(mbe_frames_push(&f, 2 * k, &e), 0);
    ck_assert_uint_eq(f.n, 1000);
    ck_assert_int_eq(f.idx[999], 1998);
    mbe_frames_free(&f);
}
END_TEST

START_TEST(frames_find)
{
    int64_t a[] = {0, 2, 3, 10, 50};
    mbe_frames f = from_list(a, 5);
    for (int k = 0; k < 5; k++)
        ck_assert_int_eq(mbe_frames_find(&f, a[k]), k);
    ck_assert_int_eq(mbe_frames_find(&f, -1), -1);
    ck_assert_int_eq(mbe_frames_find(&f, 1), -1);
    ck_assert_int_eq(mbe_frames_find(&f, 4), -1);
    ck_assert_int_eq(mbe_frames_find(&f, 51), -1);
    mbe_frames_free(&f);
    mbe_frames empty = {0};
    ck_assert_int_eq(mbe_frames_find(&empty, 0), -1);
    ck_assert_int_eq(mbe_frames_find(NULL, 0), -1);
}
END_TEST

START_TEST(frames_find_random)
{
    uint64_t seed = 12345;
    mbe_frames f = {0};
    mbe_err e = {{0}};
    for (int64_t k = 0; k < 3000; k++)
        if (rng_next(&seed) % 3 == 0)
            ck_assert_int_eq(mbe_frames_push(&f, k, &e), 0);
    size_t pos = 0;
    for (int64_t k = 0; k < 3000; k++) {
        ptrdiff_t want = pos < f.n && f.idx[pos] == k ? (ptrdiff_t)pos++ : -1;
        ck_assert_int_eq(mbe_frames_find(&f, k), want);
    }
    mbe_frames_free(&f);
}
END_TEST

START_TEST(frames_drop_completed)
{
    int64_t a[] = {1, 2, 5, 6, 9};
    int64_t st[] = {MBE_COMPLETED, MBE_FAILED, MBE_COMPLETED, MBE_UNDEFINED,
                    MBE_SCF_NOT_CONVERGED};
    mbe_frames f = from_list(a, 5);
    mbe_frames_drop_completed(&f, st);
    char *s = mbe_frames_format(&f);
    ck_assert_str_eq(s, "2,6,9");
    free(s);
    int64_t all_done[] = {0, 0, 0};
    mbe_frames_drop_completed(&f, all_done);
    ck_assert_uint_eq(f.n, 0);
    mbe_frames_free(&f);
    mbe_frames empty = {0};
    mbe_frames_drop_completed(&empty, st);
    ck_assert_uint_eq(empty.n, 0);
}
END_TEST

/* ------------------------------------------------------ chunk parsing */

START_TEST(chunk_parse_accept)
{
    chunk_ok("2/4", 2, 4);
    chunk_ok("1/1", 1, 1);
    chunk_ok("4/4", 4, 4);
    chunk_ok("1000/1000000", 1000, 1000000);
}
END_TEST

START_TEST(chunk_parse_refuse)
{
    chunk_bad("0/4", "between 1 and N=4");
    chunk_bad("5/4", "between 1 and N=4");
    chunk_bad("a/b", "unexpected character 'a' at position 1");
    chunk_bad("2/", "missing N");
    chunk_bad("/4", "missing I");
    chunk_bad("2/4x", "unexpected character 'x' at position 4");
    chunk_bad("2", "missing '/N'");
    chunk_bad("", "empty");
    chunk_bad(NULL, "empty");
    chunk_bad("2/0", "N must be at least 1");
    chunk_bad("0/0", "N must be at least 1");
    chunk_bad("99999999999999999999/4", "I is too large");
    chunk_bad("1/99999999999999999999", "N is too large");
    chunk_bad(" 2/4", "unexpected character ' '");
    chunk_bad("2 /4", "unexpected character ' ' at position 2");
    chunk_bad("-1/4", "unexpected character '-'");
    chunk_bad("+1/4", "unexpected character '+'");
    chunk_bad("2//4", "unexpected character '/' at position 3");
}
END_TEST

/* ------------------------------------------------------ chunk splitting */

/* Sizes of all n pieces of a pool 0..len-1 must equal want. */
static void chunk_sizes(int64_t len, int64_t n, const size_t *want)
{
    mbe_frames pool = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_all(len, &pool, &e), 0);
    for (int64_t i = 1; i <= n; i++) {
        mbe_frames piece = {0};
        mbe_frame_list l = as_list(&pool);
        ck_assert_int_eq(mbe_frame_list_chunk(&l, i, n, &piece, &e), 0);
        ck_assert_msg(piece.n == want[i - 1], "len %lld n %lld piece %lld: "
                      "%zu frames, want %zu", (long long)len, (long long)n,
                      (long long)i, piece.n, want[i - 1]);
        mbe_frames_free(&piece);
    }
    mbe_frames_free(&pool);
}

START_TEST(chunk_like_numpy)
{
    /* Hand-computed numpy.array_split(np.arange(len), n) sizes. */
    chunk_sizes(10, 3, (size_t[]){4, 3, 3});
    chunk_sizes(2, 4, (size_t[]){1, 1, 0, 0});
    chunk_sizes(0, 3, (size_t[]){0, 0, 0});
    chunk_sizes(11, 4, (size_t[]){3, 3, 3, 2});
    chunk_sizes(12, 4, (size_t[]){3, 3, 3, 3});
    chunk_sizes(7, 7, (size_t[]){1, 1, 1, 1, 1, 1, 1});
    chunk_sizes(5, 1, (size_t[]){5});
    chunk_sizes(1, 2, (size_t[]){1, 0});
    chunk_sizes(100, 7, (size_t[]){15, 15, 14, 14, 14, 14, 14});
}
END_TEST

START_TEST(chunk_contents)
{
    /* array_split(np.array([1,3,4,8,9,20,21]), 3) ->
     * [1,3,4], [8,9], [20,21] */
    int64_t a[] = {1, 3, 4, 8, 9, 20, 21};
    mbe_frames pool = from_list(a, 7), piece = {0};
    mbe_err e = {{0}};
    const char *want[] = {"1,3-4", "8-9", "20-21"};
    mbe_frame_list l = as_list(&pool);
    for (int i = 1; i <= 3; i++) {
        ck_assert_int_eq(mbe_frame_list_chunk(&l, i, 3, &piece, &e), 0);
        char *s = mbe_frames_format(&piece);
        ck_assert_str_eq(s, want[i - 1]);
        free(s);
        mbe_frames_free(&piece);
    }
    mbe_frames_free(&pool);
}
END_TEST

START_TEST(chunk_concatenation_is_pool)
{
    uint64_t seed = 777;
    mbe_err e = {{0}};
    for (int64_t len = 0; len <= 40; len++) {
        mbe_frames pool = {0};
        int64_t v = 0;
        for (int64_t k = 0; k < len; k++) {
            v += 1 + (int64_t)(rng_next(&seed) % 5);
            ck_assert_int_eq(mbe_frames_push(&pool, v, &e), 0);
        }
        for (int64_t n = 1; n <= 45; n++) {
            size_t at = 0, prev = SIZE_MAX;
            mbe_frame_list l = as_list(&pool);
            for (int64_t i = 1; i <= n; i++) {
                mbe_frames piece = {0};
                ck_assert_int_eq(mbe_frame_list_chunk(&l, i, n, &piece, &e),
                                 0);
                /* Sizes never grow from one piece to the next. */
                ck_assert(piece.n <= prev);
                prev = piece.n;
                ck_assert(at + piece.n <= pool.n);
                if (piece.n)
                    ck_assert(memcmp(piece.idx, pool.idx + at,
                                     piece.n * sizeof *piece.idx) == 0);
                at += piece.n;
                mbe_frames_free(&piece);
            }
            ck_assert_uint_eq(at, pool.n);
        }
        mbe_frames_free(&pool);
    }
}
END_TEST

START_TEST(chunk_refuse)
{
    mbe_frames pool = {0}, piece = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frames_all(10, &pool, &e), 0);
    mbe_frame_list l = as_list(&pool);
    ck_assert_int_lt(mbe_frame_list_chunk(&l, 0, 4, &piece, &e), 0);
    ck_assert(strstr(e.msg, "between 1 and 4"));
    ck_assert_int_lt(mbe_frame_list_chunk(&l, 5, 4, &piece, &e), 0);
    ck_assert_int_lt(mbe_frame_list_chunk(&l, 1, 0, &piece, &e), 0);
    ck_assert(strstr(e.msg, "at least 1"));
    ck_assert_int_lt(mbe_frame_list_chunk(&l, 1, -3, &piece, &e), 0);
    ck_assert(piece.n == 0 && piece.idx == NULL);
    mbe_frames_free(&pool);
}
END_TEST

/* ------------------------------------------ the ordered pool (list) */

START_TEST(list_parse_keeps_order)
{
    list_ok("2,1", 10, (int64_t[]){2, 1}, 2);
    list_ok("5-7,0", 10, (int64_t[]){5, 6, 7, 0}, 4);
    list_ok("12,0,5-7,3,1", 13, (int64_t[]){12, 0, 5, 6, 7, 3, 1}, 7);
    list_ok("0-3", 4, (int64_t[]){0, 1, 2, 3}, 4);
    list_ok("9", -1, (int64_t[]){9}, 1);
}
END_TEST

START_TEST(list_parse_refuses_repeats_anywhere)
{
    /* The package refuses a repeat only within one job's piece; a repeat
     * in different pieces would compute a frame twice, so the whole spec
     * is refused. */
    parse_bad("1,2,1", 10, "frame 1", "twice", NULL);
    parse_bad("0-4,9,3", 10, "frame 3", "twice", "'0-4'", NULL);
    parse_bad("7,0-9", 10, "frame 7", "twice", NULL);
}
END_TEST

START_TEST(list_all)
{
    mbe_frame_list l = {0};
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_frame_list_all(4, &l, &e), 0);
    ck_assert_uint_eq(l.n, 4);
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(l.idx[k], k);
    mbe_frame_list_free(&l);
    ck_assert_int_eq(mbe_frame_list_all(0, &l, &e), 0);
    ck_assert_uint_eq(l.n, 0);
    ck_assert_int_lt(mbe_frame_list_all(-2, &l, &e), 0);
    ck_assert(strstr(e.msg, "negative"));
    ck_assert(l.n == 0 && l.idx == NULL);
    mbe_frame_list_free(NULL);
}
END_TEST

START_TEST(list_chunk_splits_the_order_given)
{
    mbe_frame_list l = {0};
    mbe_err e = {{0}};
    /* -f 2,1 --chunk 1/2 is frame 2, as in the package (sorting first
     * would give frame 1). */
    ck_assert_int_eq(mbe_frame_list_parse("2,1", 10, &l, &e), 0);
    piece_is(&l, 1, 2, "2");
    piece_is(&l, 2, 2, "1");
    piece_is(&l, 1, 1, "1-2");
    mbe_frame_list_free(&l);
    /* array_split([9,0,1,2,3,7], 3) = [9,0], [1,2], [3,7], each sorted. */
    ck_assert_int_eq(mbe_frame_list_parse("9,0-3,7", 10, &l, &e), 0);
    piece_is(&l, 1, 3, "0,9");
    piece_is(&l, 2, 3, "1-2");
    piece_is(&l, 3, 3, "3,7");
    /* 6 frames in 4: [9,0], [1,2], [3], [7]. */
    piece_is(&l, 1, 4, "0,9");
    piece_is(&l, 4, 4, "7");
    /* More pieces than frames: the last ones are empty. */
    piece_is(&l, 6, 8, "7");
    piece_is(&l, 7, 8, "");
    piece_is(&l, 100, 100, "");
    mbe_frame_list_free(&l);
}
END_TEST

/* Fisher-Yates with the test's generator. */
static void shuffle(int64_t *v, size_t n, uint64_t *seed)
{
    for (size_t k = n; k > 1; k--) {
        size_t j = (size_t)(rng_next(seed) % k);
        int64_t t = v[k - 1];
        v[k - 1] = v[j];
        v[j] = t;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Every piece of a shuffled pool is its slice of array_split, sorted. */
START_TEST(list_chunk_random_pools)
{
    uint64_t seed = 4242;
    mbe_err e = {{0}};
    int64_t v[60], want[60];
    for (size_t len = 0; len <= 60; len += 3) {
        for (size_t k = 0; k < len; k++)
            v[k] = (int64_t)(3 * k + rng_next(&seed) % 3);
        shuffle(v, len, &seed);
        mbe_frame_list pool = {v, len};
        for (int64_t n = 1; n <= 70; n += 7) {
            size_t at = 0;
            for (int64_t i = 1; i <= n; i++) {
                size_t q = len / (size_t)n, r = len % (size_t)n;
                size_t size = q + ((size_t)(i - 1) < r);
                memcpy(want, v + at, size * sizeof *v);
                qsort(want, size, sizeof *want, cmp_i64);
                at += size;
                mbe_frames piece = {0};
                ck_assert_int_eq(mbe_frame_list_chunk(&pool, i, n, &piece,
                                                      &e), 0);
                ck_assert_uint_eq(piece.n, size);
                for (size_t k = 0; k < size; k++)
                    ck_assert_int_eq(piece.idx[k], want[k]);
                mbe_frames_free(&piece);
            }
            ck_assert_uint_eq(at, len);
        }
    }
}
END_TEST

START_TEST(list_chunk_refuses_repeat_in_piece)
{
    mbe_err e = {{0}};
    mbe_frames piece = {0};
    /* Built by hand: a parsed list never repeats a frame. */
    int64_t v[] = {4, 1, 4, 2};
    mbe_frame_list pool = {v, 4};
    ck_assert_int_lt(mbe_frame_list_chunk(&pool, 1, 1, &piece, &e), 0);
    ck_assert_msg(strstr(e.msg, "frame 4 is in the piece twice"), "%s",
                  e.msg);
    ck_assert(piece.n == 0 && piece.idx == NULL);
    /* As in the package, a repeat in another job's piece is not this
     * job's concern: [4,1] and [4,2]. */
    piece_is(&pool, 1, 2, "1,4");
    piece_is(&pool, 2, 2, "2,4");
    int64_t neg[] = {3, -1};
    pool = (mbe_frame_list){neg, 2};
    ck_assert_int_lt(mbe_frame_list_chunk(&pool, 1, 1, &piece, &e), 0);
    ck_assert(strstr(e.msg, "negative frame index -1"));
    /* The pool itself is left as it was. */
    ck_assert_int_eq(v[0], 4);
    ck_assert_int_eq(v[2], 4);
}
END_TEST

/* -------------------------------------------------------------- SLURM */

START_TEST(slurm_array_0_3)
{
    slurm_array((int[]){0, 1, 2, 3}, 4, 1, 3);
}
END_TEST

START_TEST(slurm_array_1_4)
{
    slurm_array((int[]){1, 2, 3, 4}, 4, 1, 4);
}
END_TEST

START_TEST(slurm_array_step)
{
    /* --array=0-15:4: SLURM reports the highest task id as MAX... */
    slurm_array((int[]){0, 4, 8, 12}, 4, 4, 12);
    /* ...but the nominal end of the range is harmless too. */
    slurm_array((int[]){0, 4, 8, 12}, 4, 4, 15);
    /* --array=1-7:2 */
    slurm_array((int[]){1, 3, 5, 7}, 4, 2, 7);
}
END_TEST

START_TEST(slurm_array_single)
{
    slurm_env("5", "5", "5", "1", "1");
    slurm_ok(1, 1);
}
END_TEST

START_TEST(slurm_array_list)
{
    /* --array=3,7,9 */
    slurm_env("7", "3", "9", "1", "3");
    slurm_bad("--array=0-N");
    slurm_bad("--chunk I/N");
    /* A list that happens to be a range, --array=3,4,5, is fine. */
    slurm_env("4", "3", "5", "1", "3");
    slurm_ok(2, 3);
}
END_TEST

START_TEST(slurm_missing)
{
    slurm_env(NULL, NULL, NULL, NULL, NULL);
    slurm_bad("SLURM_ARRAY_TASK_ID");
    slurm_bad("not set");
    slurm_env("1", "0", "3", "1", NULL);
    slurm_bad("SLURM_ARRAY_TASK_COUNT not set");
    slurm_env(NULL, "0", "3", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_ID not set");
    slurm_env("1", NULL, "3", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_MIN not set");
    slurm_env("1", "0", NULL, "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_MAX not set");
}
END_TEST

START_TEST(slurm_missing_step)
{
    slurm_env("2", "0", "3", NULL, "4");
    slurm_ok(3, 4);
    /* Without STEP, 0,4,8,12 can't be told from a list. */
    slurm_env("4", "0", "12", NULL, "4");
    slurm_bad("SLURM_ARRAY_TASK_STEP is not set");
}
END_TEST

START_TEST(slurm_non_numeric)
{
    slurm_env("x", "0", "3", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_ID='x' is not a non-negative integer");
    slurm_env("1", "0", "3", "1", "");
    slurm_bad("SLURM_ARRAY_TASK_COUNT='' is not");
    slurm_env("1", "-1", "3", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_MIN='-1'");
    slurm_env("1", "0", "3 ", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_MAX='3 '");
    slurm_env("1", "0", "3", "1", "99999999999999999999");
    slurm_bad("SLURM_ARRAY_TASK_COUNT=");
}
END_TEST

START_TEST(slurm_inconsistent)
{
    slurm_env("9", "0", "3", "1", "4");
    slurm_bad("outside");
    slurm_env("2", "4", "7", "1", "4");
    slurm_bad("outside");
    slurm_env("2", "0", "12", "4", "4");
    slurm_bad("multiple of STEP=4");
    slurm_env("2", "0", "3", "1", "0");
    slurm_bad("SLURM_ARRAY_TASK_COUNT=0");
    slurm_env("2", "0", "3", "0", "4");
    slurm_bad("SLURM_ARRAY_TASK_STEP=0");
    slurm_env("2", "5", "3", "1", "4");
    slurm_bad("SLURM_ARRAY_TASK_MIN=5 > SLURM_ARRAY_TASK_MAX=3");
    slurm_env("2", "0", "9223372036854775807", "1", "4");
    slurm_bad("not a range");
}
END_TEST

/* --------------------------------------------------------------- main */

static Suite *frames_suite(void)
{
    Suite *s = suite_create("frames");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, parse_single_and_ranges);
    tcase_add_test(tc, parse_any_order_sorted);
    tcase_add_test(tc, parse_contents);
    tcase_add_test(tc, parse_unbounded);
    tcase_add_test(tc, parse_last_frame_in_bound);
    tcase_add_test(tc, parse_refuse_empty);
    tcase_add_test(tc, parse_refuse_negative);
    tcase_add_test(tc, parse_refuse_reversed);
    tcase_add_test(tc, parse_refuse_overlap);
    tcase_add_test(tc, parse_refuse_out_of_range);
    tcase_add_test(tc, parse_refuse_overflow);
    tcase_add_test(tc, parse_refuse_too_many);
    tcase_add_test(tc, parse_refuse_stray);
    tcase_add_test(tc, parse_long_spec_message_bounded);
    suite_add_tcase(s, tc);

    tc = tcase_create("set");
    tcase_add_test(tc, format_compact);
    tcase_add_test(tc, format_parse_round_trip_random);
    tcase_add_test(tc, frames_all);
    tcase_add_test(tc, frames_copy);
    tcase_add_test(tc, frames_push_order);
    tcase_add_test(tc, frames_find);
    tcase_add_test(tc, frames_find_random);
    tcase_add_test(tc, frames_drop_completed);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunk");
    tcase_add_test(tc, chunk_parse_accept);
    tcase_add_test(tc, chunk_parse_refuse);
    tcase_add_test(tc, chunk_like_numpy);
    tcase_add_test(tc, chunk_contents);
    tcase_add_test(tc, chunk_concatenation_is_pool);
    tcase_add_test(tc, chunk_refuse);
    suite_add_tcase(s, tc);

    tc = tcase_create("list");
    tcase_add_test(tc, list_parse_keeps_order);
    tcase_add_test(tc, list_parse_refuses_repeats_anywhere);
    tcase_add_test(tc, list_all);
    tcase_add_test(tc, list_chunk_splits_the_order_given);
    tcase_add_test(tc, list_chunk_random_pools);
    tcase_add_test(tc, list_chunk_refuses_repeat_in_piece);
    suite_add_tcase(s, tc);

    tc = tcase_create("slurm");
    tcase_add_test(tc, slurm_array_0_3);
    tcase_add_test(tc, slurm_array_1_4);
    tcase_add_test(tc, slurm_array_step);
    tcase_add_test(tc, slurm_array_single);
    tcase_add_test(tc, slurm_array_list);
    tcase_add_test(tc, slurm_missing);
    tcase_add_test(tc, slurm_missing_step);
    tcase_add_test(tc, slurm_non_numeric);
    tcase_add_test(tc, slurm_inconsistent);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(frames_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
