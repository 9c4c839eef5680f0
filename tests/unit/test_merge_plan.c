/* test_merge_plan.c - how mbe-merge combines shards per frame: runs,
 * conflicts, --prefer, and the package's update rule against a brute-force
 * sequential reference on every combination of statuses, including
 * re-running after a partial application. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "merge_plan.h"

enum { C = MBE_COMPLETED, U = MBE_UNDEFINED, S = MBE_SCF_NOT_CONVERGED,
       F = MBE_FAILED };

/* ------------------------------------------------------------ fixture */

#define MAXS 4
#define MAXF 512

/* Shards built frame by frame; energies differ per shard so that every
 * COMPLETED pair is a conflict unless made equal on purpose. */
typedef struct fx {
    int64_t frame[MAXS][MAXF];
    int64_t status[MAXS][MAXF];
    double energy[MAXS][MAXF];
    uint32_t crc[MAXS][MAXF];
    mp_shard s[MAXS];
    size_t ns;
} fx;

static void fx_init(fx *x, size_t ns)
{
    memset(x, 0, sizeof *x);
    x->ns = ns;
    for (size_t j = 0; j < ns; j++)
        x->s[j] = (mp_shard){.frame = x->frame[j], .status = x->status[j],
                             .energy = x->energy[j], .crc = x->crc[j]};
}

static void fx_add(fx *x, size_t j, int64_t frame, int64_t status)
{
    size_t k = x->s[j].n++;
    ck_assert(k < MAXF);
    x->frame[j][k] = frame;
    x->status[j][k] = status;
    x->energy[j][k] = status == C ? 100.0 * (double)(j + 1) + (double)frame
                                  : NAN;
    x->crc[j][k] = (uint32_t)(1000 * (j + 1) + frame);
}

static void index_ok(const fx *x, mp_index *ix)
{
    mbe_err e = {""};
    ck_assert_msg(mp_index_build(x->s, x->ns, ix, &e) == 0, "%s", e.msg);
}

static void plan_ok(const fx *x, const mp_index *ix, int prefer,
                    const int64_t *stored, int has_status, mp_plan *p)
{
    mbe_err e = {""};
    ck_assert_msg(mp_plan_build(ix, x->s, x->ns, prefer, stored, has_status,
                                p, &e) == 0, "%s", e.msg);
}

/* ----------------------------------------------------------------- runs */

static void run_is(const int64_t *fr, const unsigned char *mask, size_t n,
                   size_t *pos, size_t max, size_t want_start,
                   size_t want_len)
{
    size_t start = 99, len = 99;
    ck_assert(mp_next_run(fr, mask, n, pos, max, &start, &len));
    ck_assert_uint_eq(start, want_start);
    ck_assert_uint_eq(len, want_len);
}

START_TEST(runs_coalesce_consecutive_frames)
{
    int64_t fr[] = {0, 1, 2, 5, 6, 9};
    size_t pos = 0, a, b;
    run_is(fr, NULL, 6, &pos, 0, 0, 3);
    run_is(fr, NULL, 6, &pos, 0, 3, 2);
    run_is(fr, NULL, 6, &pos, 0, 5, 1);
    ck_assert(!mp_next_run(fr, NULL, 6, &pos, 0, &a, &b));
    ck_assert(!mp_next_run(fr, NULL, 0, &(size_t){0}, 0, &a, &b));
}
END_TEST

START_TEST(runs_follow_the_mask)
{
    int64_t fr[] = {0, 1, 2, 3, 4, 5, 6};
    unsigned char m[] = {1, 0, 1, 1, 1, 0, 0};
    size_t pos = 0, a, b;
    run_is(fr, m, 7, &pos, 0, 0, 1);
    run_is(fr, m, 7, &pos, 0, 2, 3);
    ck_assert(!mp_next_run(fr, m, 7, &pos, 0, &a, &b));
    ck_assert_uint_eq(pos, 7);
    unsigned char none[] = {0, 0, 0, 0, 0, 0, 0};
    pos = 0;
    ck_assert(!mp_next_run(fr, none, 7, &pos, 0, &a, &b));
}
END_TEST

START_TEST(runs_are_bounded)
{
    int64_t fr[] = {10, 11, 12, 13, 14};
    size_t pos = 0, a, b;
    run_is(fr, NULL, 5, &pos, 2, 0, 2);
    run_is(fr, NULL, 5, &pos, 2, 2, 2);
    run_is(fr, NULL, 5, &pos, 2, 4, 1);
    ck_assert(!mp_next_run(fr, NULL, 5, &pos, 2, &a, &b));
    pos = 0;
    run_is(fr, NULL, 5, &pos, 1, 0, 1);
}
END_TEST

/* ----------------------------------------------------------------- index */

START_TEST(index_groups_frames_in_shard_order)
{
    fx x;
    fx_init(&x, 3);
    int64_t f0[] = {1, 4, 7}, f1[] = {0, 4}, f2[] = {4, 7, 9};
    for (size_t k = 0; k < 3; k++)
        fx_add(&x, 0, f0[k], C);
    for (size_t k = 0; k < 2; k++)
        fx_add(&x, 1, f1[k], C);
    for (size_t k = 0; k < 3; k++)
        fx_add(&x, 2, f2[k], C);
    mp_index ix;
    index_ok(&x, &ix);
    int64_t want[] = {0, 1, 4, 7, 9};
    ck_assert_uint_eq(ix.n_frames, 5);
    ck_assert_uint_eq(ix.n_ent, 8);
    for (size_t u = 0; u < 5; u++)
        ck_assert_int_eq(ix.frame[u], want[u]);
    /* Frame 4: shards 0, 1, 2 in that order. */
    ck_assert_uint_eq(ix.first[3] - ix.first[2], 3);
    for (size_t i = ix.first[2]; i < ix.first[3]; i++) {
        ck_assert_int_eq(ix.ent[i].frame, 4);
        ck_assert_uint_eq(ix.ent[i].shard, i - ix.first[2]);
    }
    ck_assert_uint_eq(ix.ent[ix.first[2] + 2].k, 0);
    mp_index_free(&ix);
}
END_TEST

START_TEST(index_of_nothing)
{
    fx x;
    fx_init(&x, 2);
    mp_index ix;
    index_ok(&x, &ix);
    ck_assert_uint_eq(ix.n_frames, 0);
    mp_plan p;
    plan_ok(&x, &ix, MBE_PREFER_NONE, NULL, 1, &p);
    ck_assert_uint_eq(p.frames_written, 0);
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

/* ------------------------------------------------------------- conflicts */

START_TEST(equal_results_do_not_conflict)
{
    fx x;
    fx_init(&x, 2);
    for (int64_t f = 0; f < 10; f++) {
        fx_add(&x, 0, f, C);
        fx_add(&x, 1, f, C);
        x.energy[1][f] = x.energy[0][f];
        x.crc[1][f] = x.crc[0][f];
    }
    /* NaN with the same bits is the same result. */
    x.energy[0][2] = x.energy[1][2] = NAN;
    mp_index ix;
    index_ok(&x, &ix);
    mp_conflicts c;
    mp_find_conflicts(&ix, x.s, &c);
    ck_assert_uint_eq(c.count, 0);
    mp_index_free(&ix);
}
END_TEST

START_TEST(different_results_conflict)
{
    fx x;
    fx_init(&x, 2);
    for (int64_t f = 0; f < 10; f++) {
        fx_add(&x, 0, f, C);
        fx_add(&x, 1, f, C);
        x.energy[1][f] = x.energy[0][f];
        x.crc[1][f] = x.crc[0][f];
    }
    x.energy[1][3] += 1e-12;         /* energy bits differ */
    x.energy[1][7] = -0.0;           /* -0.0 is not 0.0 bitwise */
    x.energy[0][7] = 0.0;
    x.crc[1][8] ^= 1;                /* forces differ (crc) */
    mp_index ix;
    index_ok(&x, &ix);
    mp_conflicts c;
    mp_find_conflicts(&ix, x.s, &c);
    ck_assert_uint_eq(c.count, 3);
    ck_assert_uint_eq(c.n_first, 3);
    ck_assert_int_eq(c.first[0], 3);
    ck_assert_int_eq(c.first[1], 7);
    ck_assert_int_eq(c.first[2], 8);
    ck_assert_uint_eq(c.shard_a, 0);
    ck_assert_uint_eq(c.shard_b, 1);
    mp_index_free(&ix);
}
END_TEST

START_TEST(only_completed_results_conflict)
{
    fx x;
    fx_init(&x, 3);
    /* Frame 0: FAILED twice with different values: no conflict.  Frame 1:
     * COMPLETED in shards 0 and 2, FAILED in 1: conflict between 0 and 2. */
    fx_add(&x, 0, 0, F);
    fx_add(&x, 1, 0, F);
    x.energy[0][0] = 1;
    x.energy[1][0] = 2;
    fx_add(&x, 0, 1, C);
    fx_add(&x, 1, 1, F);
    fx_add(&x, 2, 0, U);
    fx_add(&x, 2, 1, C);
    mp_index ix;
    index_ok(&x, &ix);
    mp_conflicts c;
    mp_find_conflicts(&ix, x.s, &c);
    ck_assert_uint_eq(c.count, 1);
    ck_assert_int_eq(c.first[0], 1);
    ck_assert_uint_eq(c.shard_a, 0);
    ck_assert_uint_eq(c.shard_b, 2);
    mp_index_free(&ix);
}
END_TEST

START_TEST(many_conflicts_are_counted)
{
    fx x;
    fx_init(&x, 2);
    for (int64_t f = 0; f < 40; f++) {
        fx_add(&x, 0, 2 * f, C);
        fx_add(&x, 1, 2 * f, C);
    }
    mp_index ix;
    index_ok(&x, &ix);
    mp_conflicts c;
    mp_find_conflicts(&ix, x.s, &c);
    ck_assert_uint_eq(c.count, 40);
    ck_assert_uint_eq(c.n_first, MP_CONFLICTS_SHOWN);
    ck_assert_int_eq(c.first[MP_CONFLICTS_SHOWN - 1],
                     2 * (MP_CONFLICTS_SHOWN - 1));
    mp_index_free(&ix);
}
END_TEST

/* ----------------------------------------------------- prefer, credits */

static int64_t final_status(const mp_plan *p, const int64_t *stored,
                            size_t u)
{
    return p->write_status[u] ? p->status[u] : stored[u];
}

static int src_shard(const mp_index *ix, const mp_plan *p, size_t u)
{
    return p->src[u] == MP_NONE ? -1 : (int)ix->ent[p->src[u]].shard;
}

START_TEST(prefer_chooses_first_or_last)
{
    fx x;
    fx_init(&x, 3);
    fx_add(&x, 0, 0, C);
    fx_add(&x, 1, 0, C);
    fx_add(&x, 2, 0, F);
    int64_t stored[] = {U};
    int want[3] = {1, 0, 1};  /* NONE (last), FIRST, LAST */
    int prefer[3] = {MBE_PREFER_NONE, MBE_PREFER_FIRST, MBE_PREFER_LAST};
    mp_index ix;
    index_ok(&x, &ix);
    for (int q = 0; q < 3; q++) {
        mp_plan p;
        plan_ok(&x, &ix, prefer[q], stored, 1, &p);
        ck_assert_int_eq(src_shard(&ix, &p, 0), want[q]);
        ck_assert_int_eq(final_status(&p, stored, 0), C);
        ck_assert(p.is_src[want[q]][0]);
        ck_assert(!p.is_src[1 - want[q]][0]);
        ck_assert(!p.is_src[2][0]);
        /* The winner is applied; the other result and the FAILED status
         * (never downgrading COMPLETED) are kept. */
        ck_assert_uint_eq(p.applied[want[q]], 1);
        ck_assert_uint_eq(p.kept[1 - want[q]], 1);
        ck_assert_uint_eq(p.kept[2], 1);
        ck_assert_uint_eq(p.frames_written, 1);
        mp_plan_free(&p);
    }
    mp_index_free(&ix);
}
END_TEST

/* Energies-only shards: no conflict with a full shard of the same energy
 * (their crcs cover different bytes), forces taken from the full shard
 * whichever wins the energy, none when only energies-only shards hold the
 * frame, and a different energy still conflicts. */
START_TEST(energies_only_shards_supply_no_forces)
{
    fx x;
    fx_init(&x, 3);
    x.s[1].no_forces = x.s[2].no_forces = 1;
    fx_add(&x, 0, 0, C);
    fx_add(&x, 1, 0, C);
    fx_add(&x, 2, 1, C);
    x.energy[1][0] = x.energy[0][0];  /* same energy, other crc */
    int64_t stored[] = {U, U};
    mp_index ix;
    index_ok(&x, &ix);
    mp_conflicts cf;
    mp_find_conflicts(&ix, x.s, &cf);
    ck_assert_uint_eq(cf.count, 0);
    int prefer[3] = {MBE_PREFER_NONE, MBE_PREFER_FIRST, MBE_PREFER_LAST};
    int want_e[3] = {1, 0, 1};
    for (int q = 0; q < 3; q++) {
        mp_plan p;
        plan_ok(&x, &ix, prefer[q], stored, 1, &p);
        ck_assert_int_eq(src_shard(&ix, &p, 0), want_e[q]);
        ck_assert_uint_eq(ix.ent[p.fsrc[0]].shard, 0);
        ck_assert(p.is_src[0][0] && !p.is_src[1][0]);
        ck_assert(p.fsrc[1] == MP_NONE && p.src[1] != MP_NONE);
        ck_assert(!p.is_src[2][0]);
        ck_assert_uint_eq(p.f_frames, 1);
        ck_assert_uint_eq(p.ef_frames, 2);
        /* The full shard supplies forces: applied in every order. */
        ck_assert_uint_eq(p.applied[0], 1);
        mp_plan_free(&p);
    }
    mp_index_free(&ix);
    x.energy[1][0] += 1.0;
    index_ok(&x, &ix);
    mp_find_conflicts(&ix, x.s, &cf);
    ck_assert_uint_eq(cf.count, 1);
    mp_index_free(&ix);
}
END_TEST

START_TEST(completed_master_is_never_downgraded)
{
    fx x;
    fx_init(&x, 1);
    fx_add(&x, 0, 0, F);
    fx_add(&x, 0, 1, S);
    fx_add(&x, 0, 2, U);
    fx_add(&x, 0, 3, C);
    int64_t stored[] = {C, C, C, C};
    mp_index ix;
    index_ok(&x, &ix);
    mp_plan p;
    plan_ok(&x, &ix, MBE_PREFER_NONE, stored, 1, &p);
    for (size_t u = 0; u < 3; u++) {
        ck_assert(!p.write_status[u]);
        ck_assert_int_eq(src_shard(&ix, &p, u), -1);
    }
    /* A new COMPLETED result replaces the stored one (the package's rule
     * writes energies and forces wherever the new status is COMPLETED). */
    ck_assert_int_eq(src_shard(&ix, &p, 3), 0);
    ck_assert_uint_eq(p.applied[0], 1);
    ck_assert_uint_eq(p.kept[0], 2);  /* F and S; U is neither */
    ck_assert_uint_eq(p.frames_written, 1);
    ck_assert_uint_eq(p.ef_frames, 1);
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

START_TEST(legacy_level_gets_no_status)
{
    fx x;
    fx_init(&x, 1);
    fx_add(&x, 0, 0, C);
    fx_add(&x, 0, 1, F);
    int64_t stored[] = {C, C};
    mp_index ix;
    index_ok(&x, &ix);
    mp_plan p;
    plan_ok(&x, &ix, MBE_PREFER_NONE, stored, 0, &p);
    ck_assert(!p.write_status[0] && !p.write_status[1]);
    ck_assert_uint_eq(p.status_frames, 0);
    ck_assert_int_eq(src_shard(&ix, &p, 0), 0);
    ck_assert_int_eq(src_shard(&ix, &p, 1), -1);
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

START_TEST(rule_status_table)
{
    /* master-format.md: written where the new status is not UNDEFINED and
     * the stored one is not COMPLETED. */
    for (int64_t s = 0; s < MBE_N_STATUS; s++)
        for (int64_t t = 0; t < MBE_N_STATUS; t++)
            ck_assert_int_eq(mp_rule_status(s, t),
                             (t != U && s != C) ? t : s);
}
END_TEST

/* ------------------------------------- every combination, brute force */

/* The package storing the shards one after the other (master-format.md),
 * with prefer FIRST keeping the first COMPLETED result of this merge. */
typedef struct ref {
    int64_t status;
    int src;       /* shard whose energy/forces end up stored, -1: none */
    int wrote;     /* the rule wrote a status at some point */
} ref;

static ref reference(int64_t stored, const int64_t *t, int m, int prefer,
                     int has_status)
{
    ref r = {stored, -1, 0};
    for (int j = 0; j < m; j++) {
        if (t[j] == C && (prefer != MBE_PREFER_FIRST || r.src < 0))
            r.src = j;
        if (has_status && t[j] != U && r.status != C) {
            r.status = t[j];
            r.wrote = 1;
        }
    }
    return r;
}

/* Combination c: stored status, number of shards m (1..3), their
 * statuses; each combination is one master frame. */
typedef struct combo {
    int64_t stored;
    int m;
    int64_t t[3];
} combo;

static size_t all_combos(combo *out)
{
    size_t n = 0;
    for (int m = 1; m <= 3; m++) {
        int total = 1;
        for (int j = 0; j < m; j++)
            total *= MBE_N_STATUS;
        for (int64_t s = 0; s < MBE_N_STATUS; s++)
            for (int v = 0; v < total; v++) {
                combo c = {s, m, {0, 0, 0}};
                for (int j = 0, w = v; j < m; j++, w /= MBE_N_STATUS)
                    c.t[j] = w % MBE_N_STATUS;
                out[n++] = c;
            }
    }
    return n;
}

/* Shards holding every combination (frame = combination number). */
static void combos_fx(fx *x, const combo *c, size_t n, int64_t *stored,
                      int has_status)
{
    fx_init(x, 3);
    for (size_t f = 0; f < n; f++) {
        stored[f] = has_status ? c[f].stored : C;
        for (int j = 0; j < c[f].m; j++)
            fx_add(x, (size_t)j, (int64_t)f, c[f].t[j]);
    }
}

static void check_against_reference(const fx *x, const mp_index *ix,
                                    const mp_plan *p, const combo *c,
                                    size_t n, const int64_t *stored,
                                    int prefer, int has_status)
{
    ck_assert_uint_eq(ix->n_frames, n);
    for (size_t f = 0; f < n; f++) {
        ref r = reference(stored[f], c[f].t, c[f].m, prefer, has_status);
        ck_assert_msg(final_status(p, stored, f) == r.status,
                      "stored %lld, shards %d (%lld %lld %lld), prefer %d: "
                      "status %lld, reference %lld", (long long)stored[f],
                      c[f].m, (long long)c[f].t[0], (long long)c[f].t[1],
                      (long long)c[f].t[2], prefer,
                      (long long)final_status(p, stored, f),
                      (long long)r.status);
        ck_assert_int_eq(p->write_status[f], r.wrote);
        ck_assert_int_eq(src_shard(ix, p, f), r.src);
        if (r.src >= 0)
            ck_assert(p->is_src[r.src][ix->ent[p->src[f]].k]);
    }
    (void)x;
}

/* Re-plan from a master where, per frame, the status was written or not
 * (written[f]) after energies and forces: the final state must be the
 * uninterrupted one. */
static void check_rerun(const fx *x, const mp_index *ix, const mp_plan *p,
                        const int64_t *stored, size_t n, int prefer,
                        int has_status, const unsigned char *written)
{
    int64_t *now = malloc(n * sizeof *now);
    for (size_t f = 0; f < n; f++)
        now[f] = written[f] ? final_status(p, stored, f) : stored[f];
    mp_plan q;
    plan_ok(x, ix, prefer, now, has_status, &q);
    for (size_t f = 0; f < n; f++) {
        ck_assert_int_eq(final_status(&q, now, f), final_status(p, stored, f));
        ck_assert_int_eq(src_shard(ix, &q, f), src_shard(ix, p, f));
    }
    mp_plan_free(&q);
    free(now);
}

START_TEST(every_combination_matches_sequential_rule)
{
    static combo c[4 * (4 + 16 + 64)];
    size_t n = all_combos(c);
    ck_assert_uint_eq(n, 336);
    int prefer = _i % 3, has_status = _i / 3;
    static fx x;
    int64_t stored[336];
    combos_fx(&x, c, n, stored, has_status);
    mp_index ix;
    index_ok(&x, &ix);
    mp_plan p;
    plan_ok(&x, &ix, prefer, stored, has_status, &p);
    check_against_reference(&x, &ix, &p, c, n, stored, prefer, has_status);
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

START_TEST(rerun_after_partial_application_is_idempotent)
{
    static combo c[336];
    size_t n = all_combos(c);
    int prefer = _i % 3, has_status = _i / 3;
    static fx x;
    int64_t stored[336];
    combos_fx(&x, c, n, stored, has_status);
    mp_index ix;
    index_ok(&x, &ix);
    mp_plan p;
    plan_ok(&x, &ix, prefer, stored, has_status, &p);
    unsigned char written[336];
    /* Nothing, everything, every other frame, and pseudo-random sets of
     * frames with their status already written. */
    unsigned seed = 12345;
    for (int pattern = 0; pattern < 12; pattern++) {
        for (size_t f = 0; f < n; f++) {
            seed = seed * 1103515245u + 12345u;
            written[f] = pattern == 0   ? 0
                         : pattern == 1 ? 1
                         : pattern == 2 ? f % 2
                                        : (seed >> 16) & 1;
        }
        check_rerun(&x, &ix, &p, stored, n, prefer, has_status, written);
    }
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

START_TEST(counts_add_up)
{
    static combo c[336];
    size_t n = all_combos(c);
    static fx x;
    int64_t stored[336];
    combos_fx(&x, c, n, stored, 1);
    mp_index ix;
    index_ok(&x, &ix);
    mp_plan p;
    plan_ok(&x, &ix, MBE_PREFER_LAST, stored, 1, &p);
    /* Every shard frame that is not UNDEFINED is applied or kept. */
    for (size_t j = 0; j < 3; j++) {
        size_t defined = 0;
        for (size_t k = 0; k < x.s[j].n; k++)
            defined += x.s[j].status[k] != U;
        ck_assert_uint_eq(p.applied[j] + p.kept[j], defined);
    }
    size_t written = 0;
    for (size_t f = 0; f < n; f++)
        written += p.write_status[f] || p.src[f] != MP_NONE;
    ck_assert_uint_eq(p.frames_written, written);
    mp_plan_free(&p);
    mp_index_free(&ix);
}
END_TEST

static Suite *plan_suite(void)
{
    Suite *s = suite_create("merge_plan");
    TCase *tc = tcase_create("runs");
    tcase_add_test(tc, runs_coalesce_consecutive_frames);
    tcase_add_test(tc, runs_follow_the_mask);
    tcase_add_test(tc, runs_are_bounded);
    suite_add_tcase(s, tc);

    tc = tcase_create("index");
    tcase_add_test(tc, index_groups_frames_in_shard_order);
    tcase_add_test(tc, index_of_nothing);
    suite_add_tcase(s, tc);

    tc = tcase_create("conflicts");
    tcase_add_test(tc, equal_results_do_not_conflict);
    tcase_add_test(tc, different_results_conflict);
    tcase_add_test(tc, only_completed_results_conflict);
    tcase_add_test(tc, many_conflicts_are_counted);
    suite_add_tcase(s, tc);

    tc = tcase_create("rule");
    tcase_add_test(tc, prefer_chooses_first_or_last);
    tcase_add_test(tc, energies_only_shards_supply_no_forces);
    tcase_add_test(tc, completed_master_is_never_downgraded);
    tcase_add_test(tc, legacy_level_gets_no_status);
    tcase_add_test(tc, rule_status_table);
    /* _i: prefer (0..2) + 3 * has_status (0..1) */
    tcase_add_loop_test(tc, every_combination_matches_sequential_rule, 0, 6);
    tcase_add_loop_test(tc, rerun_after_partial_application_is_idempotent, 0,
                        6);
    tcase_add_test(tc, counts_add_up);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(plan_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
