/* test_util.c - small helpers of lib/util.c: whole-buffer pread at and
 * before the end of a file, the UTC time stamp, base names, the path
 * prefix of messages. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mbe_internal.h"

/* An unlinked temporary file holding "0123456789". */
static int ten_bytes(void)
{
    char path[] = "/tmp/mbe-util-XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    unlink(path);
    ck_assert_int_eq(mbe_pwrite_full(fd, "0123456789", 10, 0), 0);
    return fd;
}

START_TEST(pread_at_and_past_end)
{
    int fd = ten_bytes();
    char b[16] = "";
    /* upto: the count, short only at end of file. */
    ck_assert_int_eq(mbe_pread_upto(fd, b, 4, 3), 4);
    ck_assert(!memcmp(b, "3456", 4));
    ck_assert_int_eq(mbe_pread_upto(fd, b, 16, 6), 4);
    ck_assert(!memcmp(b, "6789", 4));
    ck_assert_int_eq(mbe_pread_upto(fd, b, 4, 10), 0);
    ck_assert_int_eq(mbe_pread_upto(fd, b, 0, 0), 0);
    /* full: all of it, or EIO when the file ends first. */
    ck_assert_int_eq(mbe_pread_full(fd, b, 10, 0), 0);
    ck_assert(!memcmp(b, "0123456789", 10));
    errno = 0;
    ck_assert_int_eq(mbe_pread_full(fd, b, 5, 6), -1);
    ck_assert_int_eq(errno, EIO);
    close(fd);
    /* Errors of pread itself keep their errno. */
    errno = 0;
    ck_assert_int_eq(mbe_pread_upto(fd, b, 4, 0), -1);
    ck_assert_int_eq(errno, EBADF);
    errno = 0;
    ck_assert_int_eq(mbe_pread_full(fd, b, 4, 0), -1);
    ck_assert_int_eq(errno, EBADF);
}
END_TEST

START_TEST(iso_time_is_now_in_utc)
{
    /* A zone far from UTC (POSIX syntax: no tzdata needed), so that a
     * local time would show. */
    setenv("TZ", "XYZ-5:30", 1);
    tzset();
    char s[32];
    memset(s, 0x55, sizeof s);
    time_t before = time(NULL);
    mbe_iso_time(s);
    time_t after = time(NULL);
    ck_assert_int_eq(strlen(s), 20);
    for (size_t i = 20; i < sizeof s; i++)
        ck_assert_int_eq(s[i], 0);
    struct tm tm = {0};
    char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    ck_assert_msg(end && !*end, "'%s'", s);
    time_t t = timegm(&tm);
    ck_assert(t >= before && t <= after);
}
END_TEST

START_TEST(base_name)
{
    ck_assert_str_eq(mbe_base_name("/a/b/master.h5"), "master.h5");
    ck_assert_str_eq(mbe_base_name("master.h5"), "master.h5");
    ck_assert_str_eq(mbe_base_name("dir/"), "");
    ck_assert_str_eq(mbe_base_name("/"), "");
}
END_TEST

/* Only a whole leading "PATH: " goes: not a longer name that begins with
 * path, not a path named later in the sentence. */
START_TEST(poll_ms_to_the_deadline)
{
    ck_assert_int_eq(mbe_poll_ms(0, 200), 200);      /* no deadline */
    ck_assert_int_eq(mbe_poll_ms(-1, 200), 200);
    ck_assert_int_eq(mbe_poll_ms(mbe_now() - 0.001, 200), -1);
    ck_assert_int_eq(mbe_poll_ms(mbe_now() + 60, 200), 200);
    /* 50 ms left: wake at the deadline, not a slice later. */
    int ms = mbe_poll_ms(mbe_now() + 0.05, 200);
    ck_assert_msg(ms > 0 && ms <= 51, "%d", ms);
}
END_TEST

START_TEST(strip_path)
{
    const char *m = "/d/m.h5: no group 'x'";
    ck_assert_str_eq(mbe_err_strip_path(m, "/d/m.h5"), "no group 'x'");
    ck_assert_ptr_eq(mbe_err_strip_path(m, "/d/m"), m);
    ck_assert_ptr_eq(mbe_err_strip_path(m, "/d/m.h5 "), m);
    const char *nospace = "/d/m.h5:x";
    ck_assert_ptr_eq(mbe_err_strip_path(nospace, "/d/m.h5"), nospace);
    const char *lk = "cannot lock /d/m.h5.lock: EIO";
    ck_assert_ptr_eq(mbe_err_strip_path(lk, "/d/m.h5"), lk);
    const char *member = "/d/s.h5:/1: damaged shard";
    ck_assert_str_eq(mbe_err_strip_path(member, "/d/s.h5:/1"),
                     "damaged shard");
    ck_assert_ptr_eq(mbe_err_strip_path(member, "/d/s.h5"), member);
    ck_assert_str_eq(mbe_err_strip_path("/d/m.h5: ", "/d/m.h5"), "");
    const char *bare = "/d/m.h5";
    ck_assert_ptr_eq(mbe_err_strip_path(bare, "/d/m.h5"), bare);
}
END_TEST

START_TEST(name_file_once)
{
    mbe_err e;
    snprintf(e.msg, sizeof e.msg, "no such group 'x'");
    mbe_err_name_file(&e, "m.h5");
    ck_assert_str_eq(e.msg, "m.h5: no such group 'x'");
    mbe_err_name_file(&e, "m.h5");          /* named already */
    ck_assert_str_eq(e.msg, "m.h5: no such group 'x'");
    snprintf(e.msg, sizeof e.msg, "m.h5:key: damaged");
    mbe_err_name_file(&e, "m.h5");
    ck_assert_str_eq(e.msg, "m.h5:key: damaged");
    /* A longer name that starts with the path is another file. */
    snprintf(e.msg, sizeof e.msg, "m.h5.lock: busy");
    mbe_err_name_file(&e, "m.h5");
    ck_assert_str_eq(e.msg, "m.h5: m.h5.lock: busy");
    mbe_err_name_file(NULL, "m.h5");
}
END_TEST

static Suite *util_suite(void)
{
    Suite *s = suite_create("util");
    TCase *tc = tcase_create("util");
    tcase_add_test(tc, pread_at_and_past_end);
    tcase_add_test(tc, iso_time_is_now_in_utc);
    tcase_add_test(tc, base_name);
    tcase_add_test(tc, strip_path);
    tcase_add_test(tc, poll_ms_to_the_deadline);
    tcase_add_test(tc, name_file_once);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(util_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
