/* test_calc_ipi.c - the i-PI server calculator (ipi:NAME, ipi:HOST:PORT)
 * against a fake client written here: units and the cell convention, the
 * engines' differences (NEEDINIT after every result or never, slow STATUS
 * answers, extra strings of any length), broken clients (disconnect in the
 * middle of a message, wrong header, wrong atom count), frames refused
 * before sending, time-outs, the stop flag, and --engine (started, told to
 * EXIT, its output logged).  The fake client runs in a forked process, or
 * as this program itself ("--fake-client ...") when started as an engine. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mbe.h"

#define BOHR 0.529177210903
#define HARTREE 27.211386245988
#define MAX_AT 16

/* ------------------------------------------------------- fake client */

enum fake_mode {
    F_ASE,        /* NEEDINIT first and after every result, extra 1 byte */
    F_CP2K,       /* never NEEDINIT, extra 0 bytes */
    F_SLOW_LONG,  /* STATUS after POSDATA answered after 0.3 s, 100 kB extra */
    F_DISCONNECT, /* after good results: half of FORCEREADY, then close */
    F_BADHDR,     /* after good results: garbage header answering STATUS */
    F_NATOMS,     /* after good results: FORCEREADY with natoms + 1 */
    F_HANG        /* answers STATUS after POSDATA only after 30 s */
};

static void nap(double s)
{
    struct timespec t = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

static int fake_recv(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void fake_send(int fd, const void *buf, size_t n)
{
    if (send(fd, buf, n, MSG_NOSIGNAL) != (ssize_t)n)
        _exit(20);
}

static void fake_hdr(int fd, const char *h)
{
    char b[12];
    memset(b, ' ', 12);
    memcpy(b, h, strlen(h));
    fake_send(fd, b, 12);
}

/* Connect to a UNIX path or, when port > 0, to 127.0.0.1:port. */
static int fake_connect(const char *path, int port)
{
    for (int i = 0; i < 400; i++) {
        int fd;
        int ok;
        if (port > 0) {
            fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((uint16_t)port);
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        } else {
            fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un a = {0};
            a.sun_family = AF_UNIX;
            snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
            ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        }
        if (ok)
            return fd;
        close(fd);
        nap(0.01);
    }
    _exit(21);
}

/* Energy in Hartree the fake returns: it depends on the off-diagonal
 * elements of h, so a transposed cell gives another answer. */
static double fake_energy(const double h[9], const double *pos, int n)
{
    double e = 3.0 * h[1] + 5.0 * h[3] + 7.0 * h[2] + 11.0 * h[6];
    for (int i = 0; i < 3 * n; i++)
        e += pos[i] * (1 + i % 3);
    return e;
}

/* Exit status: 100 + POSDATA count on EXIT, the count on EOF, 2x on
 * protocol surprises. */
static void fake_client(const char *path, int port, int mode, int good_first)
{
    int fd = fake_connect(path, port);
    const char *state = mode == F_CP2K ? "READY" : "NEEDINIT";
    double h[9], ih[9], pos[3 * MAX_AT];
    int32_t n = 0;
    int results = 0, posdata = 0;
    for (;;) {
        char m[13] = {0};
        if (fake_recv(fd, m, 12) < 0)
            _exit(posdata);
        for (int i = 11; i >= 0 && m[i] == ' '; i--)
            m[i] = 0;
        int bad = results >= good_first;
        if (strcmp(m, "EXIT") == 0)
            _exit(100 + posdata);
        if (strcmp(m, "STATUS") == 0) {
            if (bad && mode == F_BADHDR) {
                fake_send(fd, "HELLO\0WORLD!", 12);
                nap(0.2);
                _exit(posdata);
            }
            if (strcmp(state, "HAVEDATA") == 0) {
                if (mode == F_SLOW_LONG)
                    nap(0.3);
                if (mode == F_HANG)
                    nap(30);
            }
            fake_hdr(fd, state);
        } else if (strcmp(m, "INIT") == 0) {
            int32_t v[2];
            char b[64];
            if (fake_recv(fd, v, 8) < 0 || v[1] != 1 || fake_recv(fd, b, 1))
                _exit(22);
            state = "READY";
        } else if (strcmp(m, "POSDATA") == 0) {
            if (fake_recv(fd, h, 72) || fake_recv(fd, ih, 72) ||
                fake_recv(fd, &n, 4) || n < 1 || n > MAX_AT ||
                fake_recv(fd, pos, 24 * (size_t)n))
                _exit(23);
            /* ih must be the inverse of h. */
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    double s = 0;
                    for (int k = 0; k < 3; k++)
                        s += h[3 * i + k] * ih[3 * k + j];
                    if (fabs(s - (i == j)) > 1e-12)
                        _exit(24);
                }
            posdata++;
            state = "HAVEDATA";
        } else if (strcmp(m, "GETFORCE") == 0) {
            char body[8 + 4 + 24 * MAX_AT + 72 + 4];
            double e = fake_energy(h, pos, n);
            int32_t nn = bad && mode == F_NATOMS ? n + 1 : n;
            size_t k = 0;
            memcpy(body + k, &e, 8), k += 8;
            memcpy(body + k, &nn, 4), k += 4;
            for (int i = 0; i < 3 * n; i++) {
                double f = -pos[i] * (i + 1);
                memcpy(body + k, &f, 8), k += 8;
            }
            double vir[9] = {0};
            memcpy(body + k, vir, 72), k += 72;
            int32_t extra = mode == F_ASE ? 1 : mode == F_SLOW_LONG ? 100000
                                                                   : 0;
            memcpy(body + k, &extra, 4), k += 4;
            fake_hdr(fd, "FORCEREADY");
            if (bad && mode == F_DISCONNECT) {
                fake_send(fd, body, k / 2);
                nap(0.1);
                _exit(posdata);
            }
            fake_send(fd, body, k);
            for (int32_t i = 0; i < extra; i++)
                fake_send(fd, "x", 1);
            results++;
            state = mode == F_CP2K ? "READY" : "NEEDINIT";
        } else {
            _exit(25);
        }
    }
}

static pid_t fork_fake(const char *path, int port, int mode, int good_first)
{
    pid_t p = fork();
    ck_assert(p >= 0);
    if (p == 0)
        fake_client(path, port, mode, good_first);
    return p;
}

static int fake_status(pid_t p)
{
    int st;
    ck_assert(waitpid(p, &st, 0) == p);
    ck_assert_msg(WIFEXITED(st), "fake client killed by signal");
    return WEXITSTATUS(st);
}

/* ------------------------------------------------------------ helpers */

static char sock_name[64], sock_path[100];

static void fresh_name(void)
{
    static int k;
    snprintf(sock_name, sizeof sock_name, "mbeunit%d_%d", (int)getpid(), ++k);
    snprintf(sock_path, sizeof sock_path, "/tmp/ipi_%s", sock_name);
}

static mbe_calc *ipi_calc(const char *arg, mbe_calc_opts *o)
{
    mbe_calc_opts d;
    if (!o) {
        mbe_calc_opts_default(&d);
        o = &d;
    }
    char name[256];
    snprintf(name, sizeof name, "ipi:%s", arg);
    mbe_calc *c = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_calc_new(name, o, &c, &e) == 0, "%s: %s", name, e.msg);
    return c;
}

/* A triclinic crystal of 3 atoms and a molecule of 3. */
static const double tri_cell[9] = {5.1, 0.3, -0.4, 0.7, 6.2, 0.2,
                                   -0.5, 0.9, 7.3};
static const int64_t z3[3] = {8, 1, 1};
static const double pos3[9] = {0.1, 0.2, 0.3, 1.0, 0.1, -0.2,
                               -0.4, 0.9, 0.5};

static mbe_frame_view frame_of(const double *pos, const double *cell,
                               const int64_t *z)
{
    mbe_frame_view v = {.index = 0, .n_atoms = 3, .atomic_numbers = z,
                        .positions = pos, .cell = cell};
    return v;
}

/* What the fake's answer must become: energy (eV) and forces (eV/Å). */
static void expected(const mbe_frame_view *f, double box, double *e,
                     double *forces)
{
    double cell[9] = {box, 0, 0, 0, box, 0, 0, 0, box};
    if (f->cell)
        memcpy(cell, f->cell, sizeof cell);
    double h[9], p[3 * MAX_AT] = {0};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            h[3 * i + j] = cell[3 * j + i] / BOHR; /* vectors as columns */
    for (int i = 0; i < 3 * f->n_atoms; i++)
        p[i] = f->positions[i] / BOHR;
    *e = fake_energy(h, p, (int)f->n_atoms) * HARTREE;
    for (int i = 0; i < 3 * f->n_atoms; i++)
        forces[i] = -p[i] * (i + 1) * HARTREE / BOHR;
}

static void compute_expect_ok(mbe_calc *c, const mbe_frame_view *f,
                              double box)
{
    double en = NAN, forces[3 * MAX_AT], we, wf[3 * MAX_AT];
    mbe_err e = {{0}};
    int st = mbe_calc_compute(c, f, &en, forces, &e);
    ck_assert_msg(st == MBE_COMPLETED, "status %d: %s", st, e.msg);
    expected(f, box, &we, wf);
    ck_assert_msg(fabs(en - we) <= 1e-12 * fabs(we), "E %.17g want %.17g",
                  en, we);
    for (int i = 0; i < 3 * f->n_atoms; i++)
        ck_assert_msg(fabs(forces[i] - wf[i]) <= 1e-12 * fabs(wf[i]),
                      "F[%d] %.17g want %.17g", i, forces[i], wf[i]);
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

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* -------------------------------------------------------------- tests */

static void roundtrip(int mode)
{
    fresh_name();
    mbe_calc *c = ipi_calc(sock_name, NULL);
    ck_assert(mbe_calc_external(c));
    ck_assert_str_eq(mbe_calc_name(c), "ipi");
    pid_t p = fork_fake(sock_path, 0, mode, 1000);
    double moved[9];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 9; i++)
            moved[i] = pos3[i] + 0.01 * k * (i + 1);
        mbe_frame_view v = frame_of(moved, k == 1 ? NULL : tri_cell, z3);
        compute_expect_ok(c, &v, 50.0);
    }
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 103); /* 3 frames, then EXIT */
    ck_assert_msg(access(sock_path, F_OK) < 0, "socket file left behind");
}

START_TEST(ipi_ase_style_needinit_every_time)
{
    roundtrip(F_ASE);
}
END_TEST

START_TEST(ipi_cp2k_style_never_needinit)
{
    roundtrip(F_CP2K);
}
END_TEST

START_TEST(ipi_slow_status_and_long_extra)
{
    roundtrip(F_SLOW_LONG);
}
END_TEST

/* The test can see a transposed cell: the fake's energy differs. */
START_TEST(ipi_transposed_cell_differs)
{
    double t[9], e1, e2, f[9];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            t[3 * i + j] = tri_cell[3 * j + i];
    mbe_frame_view a = frame_of(pos3, tri_cell, z3), b = frame_of(pos3, t, z3);
    expected(&a, 0, &e1, f);
    expected(&b, 0, &e2, f);
    ck_assert(fabs(e1 - e2) > 1.0);
}
END_TEST

START_TEST(ipi_tcp)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
    socklen_t len = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &len);
    int port = ntohs(a.sin_port);
    close(s);
    char arg[64];
    snprintf(arg, sizeof arg, "127.0.0.1:%d", port);
    mbe_calc *c = ipi_calc(arg, NULL);
    char *set = mbe_calc_settings(c);
    ck_assert_msg(strstr(set, "address=tcp:127.0.0.1:"), "%s", set);
    free(set);
    pid_t p = fork_fake(NULL, port, F_ASE, 1000);
    mbe_frame_view v = frame_of(pos3, tri_cell, z3);
    compute_expect_ok(c, &v, 50.0);
    compute_expect_ok(c, &v, 50.0);
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 102);
}
END_TEST

START_TEST(ipi_box_for_molecules)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.ipi_box = 23.5;
    mbe_calc *c = ipi_calc(sock_name, &o);
    pid_t p = fork_fake(sock_path, 0, F_CP2K, 1000);
    mbe_frame_view v = frame_of(pos3, NULL, z3);
    compute_expect_ok(c, &v, 23.5);
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 101);
}
END_TEST

/* Broken after one good result: that frame FAILED; nobody reconnects, so
 * the next frame finds the calculator unusable once the connect time-out
 * passes.  Broken at once: unusable right away. */
static void broken(int mode, const char *frag)
{
    for (int good = 0; good <= 1; good++) {
        fresh_name();
        mbe_calc_opts o;
        mbe_calc_opts_default(&o);
        o.connect_timeout = 0.5;
        mbe_calc *c = ipi_calc(sock_name, &o);
        pid_t p = fork_fake(sock_path, 0, mode, good);
        mbe_frame_view v = frame_of(pos3, tri_cell, z3);
        if (good)
            compute_expect_ok(c, &v, 50);
        compute_expect(c, &v, MBE_FAILED, frag);
        double t0 = now();
        if (good && mode != F_NATOMS)
            compute_expect(c, &v, MBE_EFAIL, "no engine connected");
        else
            compute_expect(c, &v, MBE_EFAIL, mode == F_NATOMS
                                                 ? "same atoms"
                                                 : "not asking the engine "
                                                   "again");
        ck_assert(now() - t0 < 5);
        fake_status(p);
        mbe_calc_free(c);
    }
}

START_TEST(ipi_disconnect_mid_message)
{
    broken(F_DISCONNECT, "closed the connection while we waited for the "
                         "forces");
}
END_TEST

START_TEST(ipi_wrong_header)
{
    broken(F_BADHDR, "'HELLO\\x00WORLD!'");
}
END_TEST

START_TEST(ipi_wrong_atom_count)
{
    broken(F_NATOMS, "the engine computes 4 atoms, the frames have 3");
}
END_TEST

/* Another composition is refused before anything is sent. */
START_TEST(ipi_other_atoms_refused_before_sending)
{
    fresh_name();
    mbe_calc *c = ipi_calc(sock_name, NULL);
    pid_t p = fork_fake(sock_path, 0, F_ASE, 1000);
    mbe_frame_view v = frame_of(pos3, tri_cell, z3);
    compute_expect_ok(c, &v, 50);
    const int64_t other[3] = {8, 1, 6};
    mbe_frame_view w = frame_of(pos3, tri_cell, other);
    compute_expect(c, &w, MBE_FAILED, "atom 2 of the frame is C, the "
                                      "engine's is H");
    w.atomic_numbers = z3;
    w.n_atoms = 2;
    compute_expect(c, &w, MBE_FAILED, "the frame has 2 atoms, the engine's "
                                      "3");
    compute_expect_ok(c, &v, 50); /* still in step */
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 102); /* two POSDATA only */
}
END_TEST

/* Atoms given: even the first frame is checked; settings name them. */
START_TEST(ipi_engine_atoms_given)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    const int64_t given[3] = {8, 1, 6};
    o.engine_atoms = given;
    o.n_engine_atoms = 3;
    mbe_calc *c = ipi_calc(sock_name, &o);
    char *set = mbe_calc_settings(c);
    ck_assert_msg(strstr(set, "engine_atoms=O,H,C\n"), "%s", set);
    free(set);
    pid_t p = fork_fake(sock_path, 0, F_ASE, 1000);
    mbe_frame_view v = frame_of(pos3, tri_cell, z3);
    compute_expect(c, &v, MBE_FAILED, "atom 2 of the frame is H, the "
                                      "engine's is C");
    compute_expect(c, &v, MBE_FAILED, "as given");
    mbe_frame_view w = frame_of(pos3, tri_cell, given);
    compute_expect_ok(c, &w, 50);
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 101);
    /* Invalid atomic numbers are refused at once. */
    const int64_t bad[2] = {8, 0};
    o.engine_atoms = bad;
    o.n_engine_atoms = 2;
    char name[128];
    snprintf(name, sizeof name, "ipi:%s", sock_name);
    mbe_err e;
    ck_assert(mbe_calc_new(name, &o, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "engine atom 1"), "%s", e.msg);
    /* Not given: the first frame's, said so. */
    mbe_calc_opts_default(&o);
    c = ipi_calc(sock_name, &o);
    set = mbe_calc_settings(c);
    ck_assert_msg(strstr(set, "engine_atoms=first frame\n"), "%s", set);
    free(set);
    mbe_calc_free(c);
}
END_TEST

START_TEST(ipi_no_engine_times_out)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.connect_timeout = 0.3;
    mbe_calc *c = ipi_calc(sock_name, &o);
    mbe_frame_view v = frame_of(pos3, NULL, z3);
    double t0 = now();
    compute_expect(c, &v, MBE_EFAIL, "no engine connected to /tmp/ipi_");
    ck_assert(now() - t0 < 3);
    compute_expect(c, &v, MBE_EFAIL, "no engine connected");
    mbe_calc_free(c);
}
END_TEST

START_TEST(ipi_frame_timeout)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.frame_timeout = 0.4;
    mbe_calc *c = ipi_calc(sock_name, &o);
    pid_t p = fork_fake(sock_path, 0, F_HANG, 1000);
    mbe_frame_view v = frame_of(pos3, NULL, z3);
    double t0 = now();
    compute_expect(c, &v, MBE_FAILED, "frame time-out of 0.4 s");
    ck_assert(now() - t0 < 3);
    mbe_calc_free(c);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
}
END_TEST

static volatile sig_atomic_t flag;

static void on_alarm(int sig)
{
    flag = sig;
}

/* A signal while the engine computes: compute gives up promptly. */
START_TEST(ipi_stop_flag_interrupts_wait)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    flag = 0;
    o.stop = &flag;
    mbe_calc *c = ipi_calc(sock_name, &o);
    pid_t p = fork_fake(sock_path, 0, F_HANG, 1000);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    mbe_frame_view v = frame_of(pos3, NULL, z3);
    double t0 = now();
    compute_expect(c, &v, MBE_EINTR, "");
    ck_assert(now() - t0 < 3);
    mbe_calc_free(c);
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
}
END_TEST

static char self_exe[4096];

/* --engine: started at the first frame, told to EXIT at the end, its
 * output in the log. */
START_TEST(ipi_engine_started_and_stopped)
{
    fresh_name();
    char log[] = "/tmp/mbe-ipi-log-XXXXXX";
    int fd = mkstemp(log);
    ck_assert(fd >= 0);
    close(fd);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "echo engine says hello; exec %s --fake-client "
             "%s %d", self_exe, sock_path, F_ASE);
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.engine = cmd;
    o.engine_log = log;
    mbe_calc *c = ipi_calc(sock_name, &o);
    char *set = mbe_calc_settings(c);
    ck_assert_msg(strstr(set, "engine=echo engine says hello"), "%s", set);
    free(set);
    mbe_frame_view v = frame_of(pos3, tri_cell, z3);
    compute_expect_ok(c, &v, 50);
    compute_expect_ok(c, &v, 50);
    mbe_calc_free(c);
    FILE *f = fopen(log, "r");
    ck_assert_ptr_nonnull(f);
    char text[4096] = "";
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    unlink(log);
    ck_assert_msg(strstr(text, "engine says hello"), "%s", text);
    ck_assert_msg(strstr(text, "starting the engine"), "%s", text);
    ck_assert_msg(strstr(text, "exited with status 102"), "%s", text);
}
END_TEST

START_TEST(ipi_engine_dies_at_start)
{
    fresh_name();
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.engine = "exit 3";
    mbe_calc *c = ipi_calc(sock_name, &o);
    mbe_frame_view v = frame_of(pos3, NULL, z3);
    double t0 = now();
    compute_expect(c, &v, MBE_EFAIL, "the engine exited with status 3 before "
                                     "connecting");
    ck_assert(now() - t0 < 5);
    mbe_calc_free(c);
}
END_TEST

START_TEST(ipi_names_and_sockets)
{
    const char *bad[][2] = {
        {"ipi", "needs an argument"},
        {"ipi:", "needs an argument"},
        {"ipi:a/b", "without '/'"},
        {"ipi:localhost:0", "port"},
        {"ipi:localhost:x", "port"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mbe_calc *c = (mbe_calc *)&c;
        mbe_err e = {{0}};
        ck_assert(mbe_calc_new(bad[i][0], NULL, &c, &e) < 0);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(e.msg, bad[i][1]), "%s: '%s' lacks '%s'",
                      bad[i][0], e.msg, bad[i][1]);
    }
    char longname[200];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    char name[256];
    snprintf(name, sizeof name, "ipi:%s", longname);
    mbe_calc *c;
    mbe_err e;
    ck_assert(mbe_calc_new(name, NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "too long"), "%s", e.msg);
    /* In use by a live server: refused; a stale socket file is replaced. */
    fresh_name();
    mbe_calc *a = ipi_calc(sock_name, NULL);
    snprintf(name, sizeof name, "ipi:%s", sock_name);
    ck_assert(mbe_calc_new(name, NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "in use"), "%s", e.msg);
    mbe_calc_free(a);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un ad = {0};
    ad.sun_family = AF_UNIX;
    snprintf(ad.sun_path, sizeof ad.sun_path, "%s", sock_path);
    ck_assert(bind(s, (struct sockaddr *)&ad, sizeof ad) == 0);
    close(s); /* a stale socket file, nobody listening */
    a = ipi_calc(sock_name, NULL);
    mbe_calc_free(a);
    ck_assert(access(sock_path, F_OK) < 0);
    /* A regular file of that name is not ours to remove. */
    FILE *f = fopen(sock_path, "w");
    fclose(f);
    ck_assert(mbe_calc_new(name, NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "not a socket"), "%s", e.msg);
    unlink(sock_path);
    /* Options. */
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.connect_timeout = 0;
    ck_assert(mbe_calc_new(name, &o, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "connect_timeout"), "%s", e.msg);
    mbe_calc_opts_default(&o);
    o.frame_timeout = NAN;
    ck_assert(mbe_calc_new(name, &o, &c, &e) < 0);
    mbe_calc_opts_default(&o);
    o.ipi_box = -1;
    ck_assert(mbe_calc_new(name, &o, &c, &e) < 0);
    ck_assert(access(sock_path, F_OK) < 0);
}
END_TEST

/* Another server probing whether the socket is in use connects and
 * hangs up: not taken for the engine. */
START_TEST(ipi_probe_is_not_the_engine)
{
    fresh_name();
    mbe_calc *c = ipi_calc(sock_name, NULL);
    char name[128];
    snprintf(name, sizeof name, "ipi:%s", sock_name);
    mbe_calc *twin;
    mbe_err e;
    ck_assert(mbe_calc_new(name, NULL, &twin, &e) < 0);
    ck_assert_msg(strstr(e.msg, "in use"), "%s", e.msg);
    pid_t p = fork();
    ck_assert(p >= 0);
    if (p == 0) {
        nap(0.2); /* after the probe's connection is queued */
        fake_client(sock_path, 0, F_ASE, 1000);
    }
    mbe_frame_view v = frame_of(pos3, tri_cell, z3);
    compute_expect_ok(c, &v, 50);
    compute_expect_ok(c, &v, 50);
    mbe_calc_free(c);
    ck_assert_int_eq(fake_status(p), 102);
}
END_TEST

START_TEST(ipi_not_external_builtin)
{
    mbe_calc *c;
    mbe_err e;
    ck_assert(mbe_calc_new("lj", NULL, &c, &e) == 0);
    ck_assert(!mbe_calc_external(c));
    mbe_calc_free(c);
    ck_assert(mbe_calc_new("nosuch", NULL, &c, &e) < 0);
    ck_assert_msg(strstr(e.msg, "ipi:NAME") && strstr(e.msg, "exec:COMMAND"),
                  "%s", e.msg);
}
END_TEST

/* --------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--fake-client") == 0) {
        fake_client(argv[2], 0, atoi(argv[3]), 1000);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n > 0)
        self_exe[n] = 0;
    signal(SIGPIPE, SIG_IGN);

    Suite *s = suite_create("calc_ipi");
    TCase *tc = tcase_create("protocol");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ipi_ase_style_needinit_every_time);
    tcase_add_test(tc, ipi_cp2k_style_never_needinit);
    tcase_add_test(tc, ipi_slow_status_and_long_extra);
    tcase_add_test(tc, ipi_transposed_cell_differs);
    tcase_add_test(tc, ipi_tcp);
    tcase_add_test(tc, ipi_box_for_molecules);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ipi_disconnect_mid_message);
    tcase_add_test(tc, ipi_wrong_header);
    tcase_add_test(tc, ipi_wrong_atom_count);
    tcase_add_test(tc, ipi_other_atoms_refused_before_sending);
    tcase_add_test(tc, ipi_engine_atoms_given);
    tcase_add_test(tc, ipi_no_engine_times_out);
    tcase_add_test(tc, ipi_frame_timeout);
    tcase_add_test(tc, ipi_stop_flag_interrupts_wait);
    suite_add_tcase(s, tc);

    tc = tcase_create("engine");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, ipi_engine_started_and_stopped);
    tcase_add_test(tc, ipi_engine_dies_at_start);
    tcase_add_test(tc, ipi_names_and_sockets);
    tcase_add_test(tc, ipi_probe_is_not_the_engine);
    tcase_add_test(tc, ipi_not_external_builtin);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
