/* test_pool.c - many keys in one job: key selection, the (key, frame)
 * pool and its chunks, keyed frame specs, per-key shard names. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbe.h"

/* ------------------------------------------------------------ helpers */

static mbe_strlist strlist(const char *const *v)
{
    mbe_strlist l = {0};
    mbe_err e;
    for (; *v; v++)
        ck_assert(mbe_strlist_push(&l, *v, &e) == 0);
    return l;
}

/* "a,b,c" of a list. */
static char *joined(const mbe_strlist *l)
{
    size_t n = 1;
    for (size_t i = 0; i < l->n; i++)
        n += strlen(l->v[i]) + 1;
    char *s = calloc(n, 1);
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            strcat(s, ",");
        strcat(s, l->v[i]);
    }
    return s;
}

static const char *const groups_v[] = {
    "md/300K", "md/600K", "sub/cluster_of_molecules", "training/a/x",
    "training/b", "water", NULL};

static void select_ok(const char *const *opts, int all, const char *want)
{
    mbe_strlist g = strlist(groups_v), o = strlist(opts), out = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_keys_select(&g, &o, all, &out, &e) == 0, "%s", e.msg);
    char *s = joined(&out);
    ck_assert_str_eq(s, want);
    free(s);
    mbe_strlist_free(&out);
    mbe_strlist_free(&o);
    mbe_strlist_free(&g);
}

/* Pool of lists given as specs (order kept), chunk i/n, per-key specs of
 * the piece joined with '|'. */
static char *chunk_of(const char *const *specs, int64_t i, int64_t n)
{
    size_t nk = 0;
    while (specs[nk])
        nk++;
    mbe_frame_list lists[8] = {{0}};
    mbe_frames out[8];
    mbe_err e = {{0}};
    for (size_t k = 0; k < nk; k++)
        if (*specs[k])
            ck_assert_msg(mbe_frame_list_parse(specs[k], -1, &lists[k], &e)
                          == 0, "%s", e.msg);
    ck_assert_msg(mbe_pool_chunk(lists, nk, i, n, out, &e) == 0, "%s", e.msg);
    char *res = calloc(4096, 1);
    for (size_t k = 0; k < nk; k++) {
        char *f = mbe_frames_format(&out[k]);
        if (k)
            strcat(res, "|");
        strcat(res, f);
        free(f);
        mbe_frames_free(&out[k]);
        mbe_frame_list_free(&lists[k]);
    }
    return res;
}

static void chunk_is(const char *const *specs, int64_t i, int64_t n,
                     const char *want)
{
    char *got = chunk_of(specs, i, n);
    ck_assert_msg(!strcmp(got, want), "chunk %lld/%lld: '%s', want '%s'",
                  (long long)i, (long long)n, got, want);
    free(got);
}

/* -------------------------------------------------------------- keys */

START_TEST(select_literal_keys_in_order)
{
    const char *o[] = {"water", "md/300K", NULL};
    select_ok(o, 0, "water,md/300K");
}
END_TEST

START_TEST(select_patterns_cross_slashes)
{
    const char *o[] = {"training/*", NULL};
    select_ok(o, 0, "training/a/x,training/b");
    const char *o2[] = {"md/?00K", "w*", NULL};
    select_ok(o2, 0, "md/300K,md/600K,water");
    const char *o3[] = {"md/[6]*", NULL};
    select_ok(o3, 0, "md/600K");
}
END_TEST

START_TEST(select_all_keys_and_repeats_once)
{
    const char *o[] = {"water", "*", "water", NULL};
    select_ok(o, 0,
              "water,md/300K,md/600K,sub/cluster_of_molecules,"
              "training/a/x,training/b");
    const char *none[] = {NULL};
    select_ok(none, 1,
              "md/300K,md/600K,sub/cluster_of_molecules,training/a/x,"
              "training/b,water");
    const char *first[] = {"training/b", NULL};
    select_ok(first, 1,
              "training/b,md/300K,md/600K,sub/cluster_of_molecules,"
              "training/a/x,water");
}
END_TEST

START_TEST(select_refuses_pattern_without_match)
{
    mbe_strlist g = strlist(groups_v), out = {0};
    const char *ov[] = {"water", "nothing/*", NULL};
    mbe_strlist o = strlist(ov);
    mbe_err e = {{0}};
    ck_assert(mbe_keys_select(&g, &o, 0, &out, &e) < 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "'nothing/*' matches no"));
    ck_assert_uint_eq(out.n, 0);
    mbe_strlist empty = {0};
    mbe_strlist none = {0};
    ck_assert(mbe_keys_select(&none, &empty, 1, &out, &e) < 0);
    mbe_strlist_free(&o);
    mbe_strlist_free(&g);
}
END_TEST

/* -------------------------------------------------------------- pool */

START_TEST(pool_splits_like_array_split)
{
    /* 3 + 4 + 3 = 10 pairs in 4 pieces: 3, 3, 2, 2 (numpy.array_split). */
    const char *p[] = {"0-2", "0-3", "0-2", NULL};
    chunk_is(p, 1, 4, "0-2||");
    chunk_is(p, 2, 4, "|0-2|");
    chunk_is(p, 3, 4, "|3|0");
    chunk_is(p, 4, 4, "||1-2");
    chunk_is(p, 1, 1, "0-2|0-3|0-2");
}
END_TEST

START_TEST(pool_keeps_order_given_sorts_piece)
{
    const char *p[] = {"5,1,3", "9,0", NULL};
    chunk_is(p, 1, 2, "1,3,5|");
    chunk_is(p, 2, 2, "|0,9");
    chunk_is(p, 1, 3, "1,5|");
    chunk_is(p, 2, 3, "3|9");
    chunk_is(p, 3, 3, "|0");
}
END_TEST

START_TEST(pool_more_pieces_than_pairs)
{
    const char *p[] = {"0", "", "4", NULL};
    chunk_is(p, 1, 5, "0||");
    chunk_is(p, 2, 5, "||4");
    chunk_is(p, 3, 5, "||");
    chunk_is(p, 5, 5, "||");
}
END_TEST

/* Every pair in exactly one piece, pieces differ by at most one pair,
 * and pieces follow the pool order: the property behind "each frame of
 * each key computed exactly once". */
START_TEST(pool_random_pools_cover_once)
{
    srand(15);
    for (int round = 0; round < 200; round++) {
        size_t nk = 1 + (size_t)rand() % 6;
        mbe_frame_list lists[6] = {{0}};
        mbe_err e;
        size_t total = 0;
        for (size_t k = 0; k < nk; k++) {
            int64_t len = rand() % 9;
            ck_assert(mbe_frame_list_all(len, &lists[k], &e) == 0);
            total += (size_t)len;
        }
        int64_t n = 1 + rand() % 12;
        int seen[6][9] = {{0}};
        size_t min = (size_t)-1, max = 0;
        for (int64_t i = 1; i <= n; i++) {
            mbe_frames out[6];
            ck_assert(mbe_pool_chunk(lists, nk, i, n, out, &e) == 0);
            size_t sz = 0;
            for (size_t k = 0; k < nk; k++) {
                for (size_t j = 0; j < out[k].n; j++)
                    seen[k][out[k].idx[j]]++;
                sz += out[k].n;
                mbe_frames_free(&out[k]);
            }
            min = sz < min ? sz : min;
            max = sz > max ? sz : max;
        }
        ck_assert_uint_le(max - min, 1);
        ck_assert_uint_eq(min, total / (size_t)n);
        for (size_t k = 0; k < nk; k++) {
            for (size_t j = 0; j < lists[k].n; j++)
                ck_assert_int_eq(seen[k][j], 1);
            mbe_frame_list_free(&lists[k]);
        }
    }
}
END_TEST

START_TEST(pool_refuses_bad_chunk)
{
    mbe_frame_list l[1] = {{0}};
    mbe_frames out[1];
    mbe_err e;
    ck_assert(mbe_frame_list_all(3, &l[0], &e) == 0);
    ck_assert(mbe_pool_chunk(l, 1, 0, 2, out, &e) < 0);
    ck_assert(mbe_pool_chunk(l, 1, 3, 2, out, &e) < 0);
    ck_assert_uint_eq(out[0].n, 0);
    mbe_frame_list_free(&l[0]);
}
END_TEST

/* ------------------------------------------------------------- specs */

START_TEST(spec_over_lines_and_blanks)
{
    char *s = mbe_spec_normalize("  0 - 9 ,12,\n 14-20\r\n\n30 ");
    ck_assert_str_eq(s, "0-9,12,14-20,30");
    free(s);
    /* "1 2" stays for the parser to refuse: blanks never join numbers. */
    s = mbe_spec_normalize("1 2");
    ck_assert_str_eq(s, "1 2");
    free(s);
    s = mbe_spec_normalize("0-3,,5");
    ck_assert_str_eq(s, "0-3,,5");
    free(s);
}
END_TEST

START_TEST(keyed_spec_per_key)
{
    const char *kv[] = {"a", "b:c", "d", NULL};
    mbe_strlist keys = strlist(kv), specs = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_keyed_spec_split("b:c: 1-3,\n  7\nd: 0\n\n", &keys,
                                       &specs, &e) == 0, "%s", e.msg);
    ck_assert_uint_eq(specs.n, 3);
    ck_assert_str_eq(specs.v[0], "");
    ck_assert_str_eq(specs.v[1], "1-3,7");
    ck_assert_str_eq(specs.v[2], "0");
    mbe_strlist_free(&specs);
    ck_assert(mbe_keyed_spec_split("0-2", &keys, &specs, &e) == 0);
    for (size_t i = 0; i < 3; i++)
        ck_assert_str_eq(specs.v[i], "0-2");
    mbe_strlist_free(&specs);
    mbe_strlist_free(&keys);
}
END_TEST

START_TEST(keyed_spec_refusals)
{
    const char *kv[] = {"a", "b", NULL};
    mbe_strlist keys = strlist(kv), specs = {0};
    mbe_err e = {{0}};
    ck_assert(mbe_keyed_spec_split("c: 1", &keys, &specs, &e) < 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "'c' is not one of"));
    ck_assert(mbe_keyed_spec_split("a: 1\na: 2", &keys, &specs, &e) < 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "twice"));
    ck_assert(mbe_keyed_spec_split("a:\nb: 1", &keys, &specs, &e) < 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "empty"));
    ck_assert(mbe_keyed_spec_split("5\na: 1", &keys, &specs, &e) < 0);
    ck_assert_ptr_nonnull(strstr(e.msg, "before any"));
    ck_assert_uint_eq(specs.n, 0);
    mbe_strlist_free(&keys);
}
END_TEST

START_TEST(key_shard_names)
{
    char *p = mbe_key_shard_path("shards/7_3.h5", 12);
    ck_assert_str_eq(p, "shards/7_3.k0012.h5");
    free(p);
    p = mbe_key_shard_path("out", 0);
    ck_assert_str_eq(p, "out.k0000");
    free(p);
    ck_assert(mbe_key_is_pattern("a/*") && mbe_key_is_pattern("a?") &&
              mbe_key_is_pattern("[ab]") && !mbe_key_is_pattern("a/b"));
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("keys");
    tcase_add_test(tc, select_literal_keys_in_order);
    tcase_add_test(tc, select_patterns_cross_slashes);
    tcase_add_test(tc, select_all_keys_and_repeats_once);
    tcase_add_test(tc, select_refuses_pattern_without_match);
    tcase_add_test(tc, key_shard_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("pool");
    tcase_add_test(tc, pool_splits_like_array_split);
    tcase_add_test(tc, pool_keeps_order_given_sorts_piece);
    tcase_add_test(tc, pool_more_pieces_than_pairs);
    tcase_add_test(tc, pool_random_pools_cover_once);
    tcase_add_test(tc, pool_refuses_bad_chunk);
    suite_add_tcase(s, tc);
    tc = tcase_create("specs");
    tcase_add_test(tc, spec_over_lines_and_blanks);
    tcase_add_test(tc, keyed_spec_per_key);
    tcase_add_test(tc, keyed_spec_refusals);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pool_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
