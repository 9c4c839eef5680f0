/* test_crc.c - mbe_crc32 (lib/crc.c, ISA-L's crc32_gzip_refl) is zlib's
 * crc32 call for call: on random buffers of every length up to a few
 * kilobytes and some large ones, at every alignment within a cache line,
 * from random seeds, and when a buffer is split into pieces; and the
 * checksums built on it (results, fingerprints) equal their definition in
 * mbe-shard(5) computed with zlib. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "mbe_internal.h"

#define BIG (5u << 20)

static unsigned char *rbuf; /* BIG + 64 random bytes */

/* xorshift64*: reproducible, independent of libc's rand. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static void setup(void)
{
    rbuf = malloc(BIG + 64);
    ck_assert_ptr_nonnull(rbuf);
    for (size_t i = 0; i < BIG + 64; i++)
        rbuf[i] = (unsigned char)(rnd() >> 56);
}

static void teardown(void)
{
    free(rbuf);
}

static uint32_t zcrc(uint32_t seed, const unsigned char *p, size_t n)
{
    return (uint32_t)crc32_z(seed, p, n);
}

START_TEST(empty_is_the_seed)
{
    ck_assert_uint_eq(mbe_crc32(0, NULL, 0), 0);
    ck_assert_uint_eq(mbe_crc32(0xdeadbeef, NULL, 0), 0xdeadbeef);
    ck_assert_uint_eq(mbe_crc32(0x12345678, rbuf, 0), 0x12345678);
}
END_TEST

START_TEST(known_values)
{
    /* The check value of CRC-32/ISO-HDLC, and zlib.crc32(b"a"). */
    ck_assert_uint_eq(mbe_crc32(0, "123456789", 9), 0xcbf43926u);
    ck_assert_uint_eq(mbe_crc32(0, "a", 1), 0xe8b7be43u);
}
END_TEST

/* _i: the alignment, 0..63. */
START_TEST(every_length_and_alignment)
{
    const unsigned char *p = rbuf + _i;
    for (size_t n = 0; n <= 4200; n++) {
        uint32_t seed = n % 3 == 0 ? 0 : (uint32_t)rnd();
        uint32_t want = zcrc(seed, p, n), got = mbe_crc32(seed, p, n);
        ck_assert_msg(got == want, "length %zu, alignment %d, seed %08x: "
                      "%08x, zlib %08x", n, _i, seed, got, want);
    }
}
END_TEST

START_TEST(large_buffers)
{
    static const size_t len[] = {65535, 65536, 65537, 1u << 20,
                                 (1u << 20) + 13, 3u << 20, BIG};
    for (size_t k = 0; k < sizeof len / sizeof *len; k++)
        for (int a = 0; a < 64; a += 7) {
            uint32_t seed = (uint32_t)rnd();
            ck_assert_uint_eq(mbe_crc32(seed, rbuf + a, len[k]),
                              zcrc(seed, rbuf + a, len[k]));
        }
}
END_TEST

START_TEST(pieces_chain_like_zlib)
{
    for (int round = 0; round < 2000; round++) {
        size_t n = rnd() % 20000, at = 0;
        const unsigned char *p = rbuf + rnd() % 64;
        uint32_t whole = zcrc(0, p, n), c = 0;
        while (at < n) {
            size_t m = 1 + rnd() % (round % 2 ? 17 : 3000);
            if (m > n - at)
                m = n - at;
            c = mbe_crc32(c, p + at, m);
            at += m;
        }
        ck_assert_msg(c == whole, "round %d, %zu bytes: %08x, zlib %08x",
                      round, n, c, whole);
    }
}
END_TEST

/* mbe-shard(5): status (int64 LE), energy, forces; little-endian hosts. */
START_TEST(result_crc_is_zlib_of_its_bytes)
{
    for (int64_t na = 1; na <= 70; na++) {
        double f[70 * 3];
        memcpy(f, rbuf + na, sizeof f);
        int64_t st = na % 4;
        double en = -1.5 * (double)na;
        unsigned char b[16 + sizeof f];
        memcpy(b, &st, 8);
        memcpy(b + 8, &en, 8);
        memcpy(b + 16, f, (size_t)na * 24);
        ck_assert_uint_eq(mbe_result_crc(st, en, f, na),
                          zcrc(0, b, 16 + (size_t)na * 24));
    }
}
END_TEST

START_TEST(fingerprint_is_zlib_of_its_bytes)
{
    double pos[64 * 3], cell[9];
    int64_t z[64];
    memcpy(pos, rbuf, sizeof pos);
    memcpy(cell, rbuf + sizeof pos, sizeof cell);
    for (int i = 0; i < 64; i++)
        z[i] = 1 + i % 54;
    mbe_frame_view v = {.index = 0, .n_atoms = 64, .atomic_numbers = z,
                        .positions = pos, .cell = NULL};
    uint32_t c = zcrc(zcrc(0, (void *)pos, sizeof pos), (void *)z, sizeof z);
    ck_assert_uint_eq(mbe_frame_fingerprint(&v), c);
    v.cell = cell;
    ck_assert_uint_eq(mbe_frame_fingerprint(&v),
                      zcrc(c, (void *)cell, sizeof cell));
}
END_TEST

static Suite *crc_suite(void)
{
    Suite *s = suite_create("crc");
    TCase *tc = tcase_create("zlib");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, empty_is_the_seed);
    tcase_add_test(tc, known_values);
    tcase_add_loop_test(tc, every_length_and_alignment, 0, 64);
    tcase_add_test(tc, large_buffers);
    tcase_add_test(tc, pieces_chain_like_zlib);
    tcase_add_test(tc, result_crc_is_zlib_of_its_bytes);
    tcase_add_test(tc, fingerprint_is_zlib_of_its_bytes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(crc_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
