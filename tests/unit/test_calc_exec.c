/* test_calc_exec.c - the external-command calculator (exec:COMMAND): the
 * extended XYZ it writes (read back by awk scripts that answer with
 * energies and forces computed from it), parsing of the answer, exit
 * status and standard error in messages, the per-frame time-out, the stop
 * flag, and commands that write a lot or never read their input. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mbe.h"

#define MAX_AT 8

static mbe_calc *exec_calc(const char *cmd, mbe_calc_opts *o)
{
    mbe_calc_opts d;
    if (!o) {
        mbe_calc_opts_default(&d);
        o = &d;
    }
    char *name = malloc(strlen(cmd) + 8);
    sprintf(name, "exec:%s", cmd);
    mbe_calc *c = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_calc_new(name, o, &c, &e) == 0, "%s: %s", name, e.msg);
    free(name);
    ck_assert(mbe_calc_external(c));
    ck_assert_str_eq(mbe_calc_name(c), "exec");
    return c;
}

static const int64_t z3[3] = {8, 1, 1};
static const double pos3[9] = {0.125, -0.25, 0.3, 1.0000000000000002, 0.1,
                               -0.2, -0.4, 0.9, 1e-17};
static const double cell3[9] = {5.1, 0.3, -0.4, 0.7, 6.2, 0.2,
                                -0.5, 0.9, 7.3};

static mbe_frame_view frame_of(const double *cell)
{
    mbe_frame_view v = {.index = 7, .n_atoms = 3, .atomic_numbers = z3,
                        .positions = pos3, .cell = cell};
    return v;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void nap_ms(int ms)
{
    struct timespec t = {0, ms * 1000000L};
    nanosleep(&t, NULL);
}

static int compute_expect(mbe_calc *c, const mbe_frame_view *f, int want,
                          const char *frag)
{
    double en = 0, forces[3 * MAX_AT];
    mbe_err e = {{0}};
    int st = mbe_calc_compute(c, f, &en, forces, &e);
    ck_assert_msg(st == want, "status %d, want %d: %s", st, want, e.msg);
    ck_assert_msg(strstr(e.msg, frag), "message '%s' lacks '%s'", e.msg,
                  frag);
    ck_assert_msg(!strchr(e.msg, '\n'), "multi-line message '%s'", e.msg);
    ck_assert(isnan(en) && isnan(forces[0]));
    return st;
}

/* Answers forces = positions (as written: exact round trip) and energy =
 * the frame index plus the first Lattice number. */
static const char *ECHO =
    "awk 'NR==1{n=$1; print; next} "
    "NR==2{lat=0; if (match($0, /Lattice=\"[^ ]+/)) "
    "lat=substr($0, RSTART+9, RLENGTH-9); "
    "print \"Properties=species:S:1:pos:R:3:forces:R:3 energy=\" "
    "(ENVIRON[\"MBE_FRAME\"] + lat) \" pbc=\\\"F F F\\\"\"; "
    "if ($0 !~ /Properties=species:S:1:pos:R:3/) exit 9; next} "
    "{print $1, $2, $3, $4, $2, $3, $4}'";

START_TEST(exec_roundtrip)
{
    mbe_calc *c = exec_calc(ECHO, NULL);
    for (int periodic = 0; periodic <= 1; periodic++) {
        mbe_frame_view v = frame_of(periodic ? cell3 : NULL);
        double en, f[9];
        mbe_err e = {{0}};
        int st = mbe_calc_compute(c, &v, &en, f, &e);
        ck_assert_msg(st == MBE_COMPLETED, "%s", e.msg);
        ck_assert_msg(en == 7 + (periodic ? 5.1 : 0), "E = %.17g", en);
        for (int i = 0; i < 9; i++)
            ck_assert_msg(f[i] == pos3[i], "coordinate %d: %.17g, wrote "
                          "%.17g", i, f[i], pos3[i]);
    }
    char *s = mbe_calc_settings(c);
    ck_assert_msg(strstr(s, "method=exec\ncommand=awk"), "%s", s);
    ck_assert_msg(strstr(s, "frame_timeout=0\n"), "%s", s);
    free(s);
    mbe_calc_free(c);
}
END_TEST

/* What we write: ASE's extended XYZ, checked line by line. */
START_TEST(exec_input_format)
{
    char dir[] = "/tmp/mbe-exec-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cmd[512], path[256];
    snprintf(path, sizeof path, "%s/in.xyz", dir);
    snprintf(cmd, sizeof cmd, "cat > %s; exit 1", path);
    mbe_calc *c = exec_calc(cmd, NULL);
    mbe_frame_view v = frame_of(cell3);
    compute_expect(c, &v, MBE_FAILED, "exited with status 1");
    mbe_calc_free(c);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, "3\n");
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, "Lattice=\"5.0999999999999996 0.29999999999999999 "
                     "-0.40000000000000002 0.69999999999999996 "
                     "6.2000000000000002 0.20000000000000001 -0.5 "
                     "0.90000000000000002 7.2999999999999998\" "
                     "Properties=species:S:1:pos:R:3 pbc=\"T T T\" "
                     "mbe_frame=7\n");
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, "O  0.125 -0.25 0.29999999999999999\n");
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    ck_assert_str_eq(line, "H  1.0000000000000002 0.10000000000000001 "
                     "-0.20000000000000001\n");
    fclose(f);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(exec_nonzero_exit_with_stderr)
{
    mbe_calc *c = exec_calc("echo starting >&2; echo; echo 'line one' >&2; "
                            "echo 'SCF not converged' >&2; exit 4", NULL);
    mbe_frame_view v = frame_of(NULL);
    compute_expect(c, &v, MBE_FAILED, "exited with status 4: starting | line "
                                      "one | SCF not converged");
    mbe_calc_free(c);
    c = exec_calc("kill -9 $$", NULL);
    compute_expect(c, &v, MBE_FAILED, "killed by signal 9");
    mbe_calc_free(c);
    c = exec_calc("/no/such/program", NULL);
    compute_expect(c, &v, MBE_FAILED, "status 127");
    mbe_calc_free(c);
}
END_TEST

START_TEST(exec_garbage)
{
    const char *cases[][2] = {
        {"echo", "wrote nothing"},
        {"echo three", "not an atom count"},
        {"echo 4", "output has 4 atoms, the frame 3"},
        {"echo 3", "ends after the atom count"},
        {"printf '3\\nProperties=species:S:1:pos:R:3:forces:R:3\\n'",
         "no energy="},
        {"printf '3\\nenergy=x Properties=species:S:1:pos:R:3:forces:R:3\\n'",
         "energy='x'"},
        {"printf '3\\nenergy=1\\n'", "no Properties="},
        {"printf '3\\nenergy=1 Properties=species:S:1:pos:R:3\\n'",
         "no forces property"},
        {"printf '3\\nenergy=1 Properties=species:S:1:forces:I:3\\n'",
         "not R:3"},
        {"printf '3\\nenergy=1 Properties=species:S\\n'", "malformed"},
        {"printf '3\\nenergy=1 Properties=species:S:1:forces:R:3\\n"
         "O 1 2 3\\nH 1 2\\n'", "atom 1: 3 columns, Properties has 4"},
        {"printf '3\\nenergy=1 Properties=species:S:1:forces:R:3\\n"
         "O 1 2 3\\nH 1 2 inf\\n'", "force 'inf'"},
        {"printf '3\\nenergy=1 Properties=species:S:1:forces:R:3\\n"
         "O 1 2 3\\nC 1 2 3\\n'", "atom 1 is 'C', the frame's is H"},
    };
    mbe_frame_view v = frame_of(NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mbe_calc *c = exec_calc(cases[i][0], NULL);
        compute_expect(c, &v, MBE_FAILED, cases[i][1]);
        mbe_calc_free(c);
    }
    /* Quoted values, other keys, {} values, Windows line ends, blank lines
     * before: accepted. */
    mbe_calc *c = exec_calc(
        "printf '\\n\\n3\\r\\nconfig_type={a b} Energy=-1.5e2 "
        "Properties=\"species:S:1:pos:R:3:forces:R:3\" "
        "free_energy=-2\\r\\nO 0 0 0 1 2 3\\r\\nH 0 0 0 4 5 6\\r\\n"
        "H 0 0 0 7 8 9\\r\\nanything after\\n'", NULL);
    double en, f[9];
    mbe_err e;
    ck_assert_int_eq(mbe_calc_compute(c, &v, &en, f, &e), MBE_COMPLETED);
    ck_assert(en == -150.0 && f[0] == 1 && f[8] == 9);
    mbe_calc_free(c);
}
END_TEST

START_TEST(exec_frame_timeout)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.frame_timeout = 0.3;
    /* The grandchild holds the pipes open: the whole group must go. */
    mbe_calc *c = exec_calc("sleep 30 & sleep 30; echo never", &o);
    mbe_frame_view v = frame_of(NULL);
    double t0 = now();
    compute_expect(c, &v, MBE_FAILED, "frame time-out of 0.3 s");
    ck_assert_msg(now() - t0 < 5, "took %.1f s", now() - t0);
    mbe_calc_free(c);
}
END_TEST

static volatile sig_atomic_t flag;

static void on_alarm(int sig)
{
    flag = sig;
}

START_TEST(exec_stop_flag)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    flag = 0;
    o.stop = &flag;
    char pidfile[] = "/tmp/mbe-exec-pid-XXXXXX";
    int fd = mkstemp(pidfile);
    ck_assert(fd >= 0);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "echo $$ > %s; exec sleep 30", pidfile);
    mbe_calc *c = exec_calc(cmd, &o);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    mbe_frame_view v = frame_of(NULL);
    double t0 = now();
    compute_expect(c, &v, MBE_EINTR, "interrupted");
    ck_assert(now() - t0 < 5);
    FILE *f = fopen(pidfile, "r");
    int pid = 0;
    ck_assert(fscanf(f, "%d", &pid) == 1);
    fclose(f);
    unlink(pidfile);
    /* Killed and reaped: no such process any more. */
    ck_assert_msg(kill(pid, 0) < 0 && errno == ESRCH, "pid %d lives", pid);
    /* Once the flag is down again, the calculator works. */
    flag = 0;
    mbe_calc_free(c);
}
END_TEST

/* A command that ignores its input and writes much to both streams does
 * not dead-lock. */
START_TEST(exec_big_streams)
{
    mbe_calc *c = exec_calc(
        "head -c 3000000 /dev/zero | tr '\\0' x >&2; echo >&2 last words; "
        "yes 'padding' | head -n 200000 > /dev/null; "
        "printf '3\\nenergy=2 Properties=species:S:1:pos:R:3:forces:R:3\\n'; "
        "for i in 1 2 3; do echo X 0 0 0 1 1 1; done; exit 0", NULL);
    mbe_frame_view v = frame_of(NULL);
    /* X is no element: refused, with the tail of stderr. */
    compute_expect(c, &v, MBE_FAILED, "(stderr: ");
    compute_expect(c, &v, MBE_FAILED, "last words");
    mbe_calc_free(c);
}
END_TEST

/* Left-overs of a command are killed when it exits, also those holding
 * its output open (after a short grace). */
START_TEST(exec_leftovers_killed)
{
    char pidfile[] = "/tmp/mbe-exec-bg-XXXXXX";
    int fd = mkstemp(pidfile);
    ck_assert(fd >= 0);
    close(fd);
    const char *ok = "printf '3\\nenergy=1 Properties=species:S:1:forces:R:3"
                     "\\nO 1 2 3\\nH 1 2 3\\nH 1 2 3\\n'";
    for (int hold = 0; hold <= 1; hold++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "sleep 30 %s & echo $! > %s; %s",
                 hold ? "" : "</dev/null >/dev/null 2>&1", pidfile, ok);
        mbe_calc *c = exec_calc(cmd, NULL);
        mbe_frame_view v = frame_of(NULL);
        double en, f[9], t0 = now();
        mbe_err e;
        ck_assert_msg(mbe_calc_compute(c, &v, &en, f, &e) == MBE_COMPLETED,
                      "%s", e.msg);
        ck_assert(en == 1);
        ck_assert_msg(now() - t0 < (hold ? 6 : 1.5), "took %.1f s",
                      now() - t0);
        mbe_calc_free(c);
        FILE *pf = fopen(pidfile, "r");
        int pid = 0;
        ck_assert(fscanf(pf, "%d", &pid) == 1);
        fclose(pf);
        /* Killed; not our child, so it may stay a zombie for a while. */
        char path[64], st[512] = "";
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        int gone = 0;
        for (int i = 0; i < 100 && !gone; i++) {
            FILE *sf = fopen(path, "r");
            if (!sf) {
                gone = 1;
                break;
            }
            size_t n = fread(st, 1, sizeof st - 1, sf);
            st[n] = 0;
            fclose(sf);
            char *rp = strrchr(st, ')');
            gone = rp && rp[1] && rp[2] == 'Z';
            if (!gone)
                nap_ms(20);
        }
        ck_assert_msg(gone, "left-over %d lives: %s", pid, st);
    }
    unlink(pidfile);
}
END_TEST

START_TEST(exec_names)
{
    mbe_calc *c = (mbe_calc *)&c;
    mbe_err e;
    ck_assert(mbe_calc_new("exec:", NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "exec:COMMAND"), "%s", e.msg);
    ck_assert_ptr_null(c);
    ck_assert(mbe_calc_new("exec:a\nb", NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "one line"), "%s", e.msg);
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.frame_timeout = -1;
    ck_assert(mbe_calc_new("exec:true", &o, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "frame_timeout"), "%s", e.msg);
    /* "EXEC:" is the same back end; the command keeps its case. */
    c = exec_calc("true", NULL);
    mbe_calc_free(c);
    ck_assert(mbe_calc_new("EXEC:Echo", NULL, &c, &e) == 0);
    char *s = mbe_calc_settings(c);
    ck_assert_msg(strstr(s, "command=Echo\n"), "%s", s);
    free(s);
    mbe_calc_free(c);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("calc_exec");
    TCase *tc = tcase_create("exec");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, exec_roundtrip);
    tcase_add_test(tc, exec_input_format);
    tcase_add_test(tc, exec_nonzero_exit_with_stderr);
    tcase_add_test(tc, exec_garbage);
    tcase_add_test(tc, exec_frame_timeout);
    tcase_add_test(tc, exec_stop_flag);
    tcase_add_test(tc, exec_big_streams);
    tcase_add_test(tc, exec_leftovers_killed);
    tcase_add_test(tc, exec_names);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
