/* test_calc.c - calculators: Lennard-Jones against analytic values and its
 * own finite differences, the xtb back ends against the xtb program, and
 * the interface (names, options, settings). */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "calc_impl.h"

#define BOHR 0.529177210903
#define HARTREE 27.211386245988
#define XTB_PROGRAM "/usr/bin/xtb"
#define MAX_AT 32

/* ------------------------------------------------------------ helpers */

static mbe_frame_view frame(int64_t n, const int64_t *z, const double *pos,
                            const double *cell)
{
    mbe_frame_view v = {.index = 0, .n_atoms = n, .atomic_numbers = z,
                        .positions = pos, .cell = cell};
    return v;
}

static mbe_calc *new_calc(const char *name, const mbe_calc_opts *o)
{
    mbe_calc *c = NULL;
    mbe_err e = {{0}};
    int rc = mbe_calc_new(name, o, &c, &e);
    ck_assert_msg(rc == 0, "mbe_calc_new(%s): %s", name, e.msg);
    ck_assert_ptr_nonnull(c);
    return c;
}

static double compute_ok(mbe_calc *c, const mbe_frame_view *f,
                         double *forces)
{
    mbe_err e = {{0}};
    double en = NAN;
    int st = mbe_calc_compute(c, f, &en, forces, &e);
    ck_assert_msg(st == MBE_COMPLETED, "%s: status %d: %s", mbe_calc_name(c),
                  st, e.msg);
    return en;
}

/* Compute must give status want with every fragment in the message, a
 * one-line message and NaN results. */
static void compute_status(mbe_calc *c, const mbe_frame_view *f, int want,
                           const char *frag)
{
    mbe_err e = {{0}};
    double en = 0.0, forces[3 * MAX_AT];
    int st = mbe_calc_compute(c, f, &en, forces, &e);
    ck_assert_msg(st == want, "%s: status %d, want %d (%s)",
                  mbe_calc_name(c), st, want, e.msg);
    ck_assert_msg(strstr(e.msg, frag), "message '%s' lacks '%s'", e.msg,
                  frag);
    ck_assert_msg(!strchr(e.msg, '\n'), "multi-line message '%s'", e.msg);
    ck_assert(isnan(en));
    if (f->n_atoms > 0)
        ck_assert(isnan(forces[0]));
}

static uint64_t rng_state = 88172645463325252ull;

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double dist(const double *a, const double *b)
{
    double x = a[0] - b[0], y = a[1] - b[1], z = a[2] - b[2];
    return sqrt(x * x + y * y + z * z);
}

/* Forces must be minus the central-difference gradient of the energy. */
static void check_fd_forces(mbe_calc *c, int64_t n, const int64_t *z,
                            double *pos, const double *cell)
{
    double f[3 * MAX_AT], scratch[3 * MAX_AT], fmax = 0.0;
    mbe_frame_view v = frame(n, z, pos, cell);
    compute_ok(c, &v, f);
    for (int64_t i = 0; i < 3 * n; i++)
        fmax = fmax > fabs(f[i]) ? fmax : fabs(f[i]);
    ck_assert(fmax > 1e-3);
    const double h = 1e-5;
    for (int64_t i = 0; i < 3 * n; i++) {
        double x0 = pos[i];
        pos[i] = x0 + h;
        double ep = compute_ok(c, &v, scratch);
        pos[i] = x0 - h;
        double em = compute_ok(c, &v, scratch);
        pos[i] = x0;
        double fd = -(ep - em) / (2 * h);
        ck_assert_msg(fabs(fd - f[i]) <= 1e-6 * fmax + 1e-9,
                      "coordinate %lld: force %.10g, finite difference %.10g",
                      (long long)i, f[i], fd);
    }
}

/* --------------------------------------------------------- Lennard-Jones */

static mbe_calc *lj_calc(double eps, double sigma, double rc)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.lj_epsilon = eps;
    o.lj_sigma = sigma;
    o.lj_cutoff = rc;
    return new_calc("lj", &o);
}

static double lj_pair(double eps, double sigma, double r)
{
    double s6 = pow(sigma / r, 6);
    return 4 * eps * (s6 * s6 - s6);
}

/* Two argon atoms on a skew axis at distance r. */
static void lj_dimer_case(double eps, double sigma, double rc, double r)
{
    mbe_calc *c = lj_calc(eps, sigma, rc);
    const double u[3] = {0.48, -0.6, 0.64}; /* unit vector */
    double pos[6] = {0.3, -1.2, 2.0, 0, 0, 0};
    for (int k = 0; k < 3; k++)
        pos[3 + k] = pos[k] + r * u[k];
    int64_t z[2] = {18, 18};
    double f[6];
    mbe_frame_view v = frame(2, z, pos, NULL);
    double en = compute_ok(c, &v, f);
    double shift = rc > 0 ? lj_pair(eps, sigma, rc) : 0.0;
    double want = rc > 0 && r >= rc ? 0.0 : lj_pair(eps, sigma, r) - shift;
    ck_assert_msg(fabs(en - want) <= 1e-12 * fmax(1.0, fabs(want)),
                  "r=%g rc=%g: E=%.15g want %.15g", r, rc, en, want);
    /* Force on atom 1 along u: positive (pushed away) when repulsive. */
    double s6 = pow(sigma / r, 6);
    double fmag = rc > 0 && r >= rc ? 0.0
                                    : 24 * eps / r * (2 * s6 * s6 - s6);
    for (int k = 0; k < 3; k++) {
        ck_assert_msg(fabs(f[3 + k] - fmag * u[k]) <= 1e-12 * fmax(1, fabs(fmag)),
                      "r=%g: F1[%d]=%.15g want %.15g", r, k, f[3 + k],
                      fmag * u[k]);
        ck_assert_msg(fabs(f[k] + f[3 + k]) <= 1e-15 * fmax(1, fabs(fmag)),
                      "forces not opposite");
    }
    mbe_calc_free(c);
}

START_TEST(lj_dimer)
{
    const double r[] = {2.9, 3.4, 3.7, 4.5, 6.0, 9.99, 10.5, 14.0};
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        lj_dimer_case(0.0103, 3.40, 10.0, r[i]);
        lj_dimer_case(0.0103, 3.40, 0.0, r[i]);
        lj_dimer_case(0.25, 2.1, 6.5, r[i]);
    }
}
END_TEST

START_TEST(lj_dimer_sign)
{
    mbe_calc *c = lj_calc(0.0103, 3.40, 0.0);
    int64_t z[2] = {18, 18};
    double f[6];
    double close[6] = {0, 0, 0, 3.0, 0, 0}, far[6] = {0, 0, 0, 5.0, 0, 0};
    mbe_frame_view v = frame(2, z, close, NULL);
    compute_ok(c, &v, f);
    ck_assert_msg(f[3] > 0 && f[0] < 0, "close atoms must repel");
    v = frame(2, z, far, NULL);
    compute_ok(c, &v, f);
    ck_assert_msg(f[3] < 0 && f[0] > 0, "distant atoms must attract");
    mbe_calc_free(c);
}
END_TEST

START_TEST(lj_minimum)
{
    const double eps = 0.0103, sigma = 3.40, rc = 10.0;
    double rmin = pow(2.0, 1.0 / 6.0) * sigma;
    mbe_calc *c = lj_calc(eps, sigma, rc);
    int64_t z[2] = {18, 18};
    double pos[6] = {1, 2, 3, 1, 2 + rmin, 3}, f[6];
    mbe_frame_view v = frame(2, z, pos, NULL);
    double en = compute_ok(c, &v, f);
    ck_assert_msg(fabs(en - (-eps - lj_pair(eps, sigma, rc))) < 1e-15,
                  "E(rmin)=%.17g", en);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(f[i]) < 1e-14, "F[%d]=%g at the minimum", i, f[i]);
    mbe_calc_free(c);
}
END_TEST

START_TEST(lj_shift_continuous)
{
    /* The shifted energy goes to zero at the cut-off from inside. */
    lj_dimer_case(0.0103, 3.40, 10.0, 10.0 - 1e-9);
    mbe_calc *c = lj_calc(0.0103, 3.40, 10.0);
    int64_t z[2] = {18, 18};
    double pos[6] = {0, 0, 0, 10.0 - 1e-9, 0, 0}, f[6];
    mbe_frame_view v = frame(2, z, pos, NULL);
    ck_assert(fabs(compute_ok(c, &v, f)) < 1e-12);
    mbe_calc_free(c);
}
END_TEST

/* n random atoms in the box [0, side)^3, at least dmin apart. */
static void random_cluster(int n, double side, double dmin, double *pos)
{
    for (int i = 0; i < n; i++) {
        for (int tries = 0;; tries++) {
            ck_assert(tries < 100000);
            for (int k = 0; k < 3; k++)
                pos[3 * i + k] = side * urand();
            int ok = 1;
            for (int j = 0; j < i && ok; j++)
                ok = dist(pos + 3 * i, pos + 3 * j) >= dmin;
            if (ok)
                break;
        }
    }
}

/* No pair distance within tol of rc (finite differences across the jump of
 * the force at rc would not match). */
static int clear_of_cutoff(int n, const double *pos, double rc, double tol)
{
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (fabs(dist(pos + 3 * i, pos + 3 * j) - rc) < tol)
                return 0;
    return 1;
}

START_TEST(lj_cluster_fd)
{
    double pos[60];
    int64_t z[20];
    for (int i = 0; i < 20; i++)
        z[i] = 18;
    do
        random_cluster(20, 10.0, 3.1, pos);
    while (!clear_of_cutoff(20, pos, 7.0, 1e-3));
    mbe_calc *c = lj_calc(0.0103, 3.40, 0.0);
    check_fd_forces(c, 20, z, pos, NULL);
    mbe_calc_free(c);
    c = lj_calc(0.0103, 3.40, 7.0);
    check_fd_forces(c, 20, z, pos, NULL);
    mbe_calc_free(c);
}
END_TEST

/* A triclinic cell whose smallest half-width exceeds 5 Å. */
static const double tri_cell[9] = {12.0, 0.0, 0.0, 3.0, 11.0, 0.0,
                                   2.0, 2.5, 11.0};

static void frac_to_cart(const double *cell, const double *s, double *x)
{
    for (int k = 0; k < 3; k++)
        x[k] = s[0] * cell[k] + s[1] * cell[3 + k] + s[2] * cell[6 + k];
}

START_TEST(lj_periodic_min_image)
{
    const double sa[3] = {0.1, 0.05, 0.9}, sb[3] = {0.8, 0.95, 0.1};
    double pos[6];
    frac_to_cart(tri_cell, sa, pos);
    frac_to_cart(tri_cell, sb, pos + 3);
    ck_assert_msg(dist(pos, pos + 3) > 5.0, "pair must be far in the cell");
    /* Nearest image by brute force over neighbouring cells. */
    double best[3] = {0, 0, 0}, bd = INFINITY;
    for (int i = -2; i <= 2; i++)
        for (int j = -2; j <= 2; j++)
            for (int k = -2; k <= 2; k++) {
                double s[3] = {i, j, k}, t[3], d[3];
                frac_to_cart(tri_cell, s, t);
                for (int m = 0; m < 3; m++)
                    d[m] = pos[3 + m] + t[m] - pos[m];
                double r = sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                if (r < bd) {
                    bd = r;
                    memcpy(best, d, sizeof best);
                }
            }
    ck_assert_msg(bd < 4.5, "nearest image at %g Å", bd);
    int64_t z[2] = {18, 18};
    double fp[6], fd[6];
    mbe_calc *c = lj_calc(0.0103, 3.40, 5.0);
    mbe_frame_view v = frame(2, z, pos, tri_cell);
    double ep = compute_ok(c, &v, fp);
    double direct[6] = {0, 0, 0, best[0], best[1], best[2]};
    v = frame(2, z, direct, NULL);
    double ed = compute_ok(c, &v, fd);
    ck_assert_msg(ed != 0.0 && fabs(ep - ed) < 1e-14, "periodic E %.15g, "
                  "direct %.15g", ep, ed);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(fabs(fp[i] - fd[i]) < 1e-13, "F[%d] %.15g vs %.15g", i,
                      fp[i], fd[i]);
    mbe_calc_free(c);
}
END_TEST

START_TEST(lj_periodic_fd)
{
    /* Random fractional positions, some near the faces so that pairs
     * interact across the boundary. */
    double pos[24];
    int64_t z[8];
    for (int i = 0; i < 8; i++)
        z[i] = 18;
    mbe_calc *c = lj_calc(0.0103, 3.40, 5.0);
    for (int trial = 0; trial < 100; trial++) {
        for (int i = 0; i < 8; i++) {
            double s[3] = {urand(), urand(), urand()};
            frac_to_cart(tri_cell, s, pos + 3 * i);
        }
        /* Keep atoms apart (in every image) and clear of the cut-off. */
        int ok = 1;
        for (int i = 0; i < 8 && ok; i++)
            for (int j = i + 1; j < 8 && ok; j++)
                for (int a = -1; a <= 1 && ok; a++)
                    for (int b = -1; b <= 1 && ok; b++)
                        for (int g = -1; g <= 1 && ok; g++) {
                            double s[3] = {a, b, g}, t[3], q[3];
                            frac_to_cart(tri_cell, s, t);
                            for (int m = 0; m < 3; m++)
                                q[m] = pos[3 * j + m] + t[m];
                            double r = dist(pos + 3 * i, q);
                            ok = r > 3.0 && fabs(r - 5.0) > 1e-3;
                        }
        if (ok)
            break;
    }
    check_fd_forces(c, 8, z, pos, tri_cell);
    mbe_calc_free(c);
}
END_TEST

START_TEST(lj_periodic_refusals)
{
    int64_t z[2] = {18, 18};
    double pos[6] = {1, 1, 1, 4, 1, 1};
    mbe_frame_view v = frame(2, z, pos, tri_cell);
    mbe_calc *c = lj_calc(0.0103, 3.40, 6.0);
    compute_status(c, &v, MBE_FAILED, "half the smallest cell width");
    mbe_calc_free(c);
    c = lj_calc(0.0103, 3.40, 0.0);
    compute_status(c, &v, MBE_FAILED, "needs a cut-off");
    /* The same pair without the cell is fine. */
    v = frame(2, z, pos, NULL);
    double f[6];
    compute_ok(c, &v, f);
    mbe_calc_free(c);
}
END_TEST

START_TEST(lj_bad_frames)
{
    mbe_calc *c = lj_calc(0.0103, 3.40, 10.0);
    int64_t z[2] = {18, 18};
    double pos[6] = {1, 1, 1, 1, 1, 1}, f[6];
    mbe_frame_view v = frame(2, z, pos, NULL);
    compute_status(c, &v, MBE_FAILED, "coincide");
    pos[3] = NAN;
    compute_status(c, &v, MBE_FAILED, "non-finite position");
    pos[3] = INFINITY;
    compute_status(c, &v, MBE_FAILED, "non-finite position");
    pos[3] = 4.0;
    const double flat[9] = {10, 0, 0, 0, 10, 0, 5, 5, 0};
    v = frame(2, z, pos, flat);
    compute_status(c, &v, MBE_FAILED, "degenerate cell");
    const double nan_cell[9] = {10, 0, 0, 0, 10, 0, 0, 0, NAN};
    v = frame(2, z, pos, nan_cell);
    compute_status(c, &v, MBE_FAILED, "non-finite cell");
    v = frame(0, z, pos, NULL);
    compute_status(c, &v, MBE_FAILED, "no atoms");
    v = frame(2, z, pos, NULL);
    z[1] = 0;
    compute_status(c, &v, MBE_FAILED, "invalid atomic number");
    z[1] = 18;
    compute_ok(c, &v, f);
    mbe_calc_free(c);
}
END_TEST

/* ------------------------------------------------------ xtb molecules */

static const int64_t dimer_z[6] = {8, 1, 1, 8, 1, 1};
static const double dimer_pos[18] = {
    -1.551007, -0.114520, 0.000000, -1.934259, 0.762503,  0.000000,
    -0.599677, 0.040712,  0.000000, 1.350625,  0.111469,  0.000000,
    1.680398,  -0.373741, -0.758561, 1.680398, -0.373741, 0.758561};

/* Cyclic water trimer, O-O 2.81 Å. */
static const int64_t trimer_z[9] = {8, 1, 1, 8, 1, 1, 8, 1, 1};
static const double trimer_pos[27] = {
    1.620000,  0.000000,  0.000000,  0.779955,  0.485000,  0.000000,
    1.960564,  0.104137,  0.902259,  -0.810000, 1.402961,  0.000000,
    -0.810000, 0.432961,  0.000000,  -1.070467, 1.645830,  -0.902259,
    -0.810000, -1.402961, 0.000000,  0.030045,  -0.917961, 0.000000,
    -0.890097, -1.749967, 0.902259};

static const int64_t h2_z[2] = {1, 1};
static const double h2_pos[6] = {0.0, 0.0, 0.0, 0.74, 0.05, -0.02};

/* Water in a triclinic box (GFN1-xTB handles periodic systems). */
static const int64_t pbc_z[3] = {8, 1, 1};
static const double pbc_pos[9] = {0.1, 0.2, 0.3, 1.0, 0.2, 0.3,
                                  -0.1, 1.1, 0.4};
static const double pbc_cell[9] = {6.0, 0.0, 0.0, 0.5, 6.5, 0.0,
                                   0.3, 0.2, 7.0};

static void rm_flat_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        for (struct dirent *de; (de = readdir(d));)
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
                unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
    }
    rmdir(path);
}

/* Turbomole coord file in Bohr, with the lattice when periodic. */
static void write_coord(const char *path, const mbe_frame_view *f)
{
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp, "$coord\n");
    for (int64_t i = 0; i < f->n_atoms; i++) {
        const char *sym = mbe_element_symbol((int)f->atomic_numbers[i]);
        ck_assert_ptr_nonnull(sym);
        fprintf(fp, "%.15f %.15f %.15f %s\n", f->positions[3 * i] / BOHR,
                f->positions[3 * i + 1] / BOHR,
                f->positions[3 * i + 2] / BOHR, sym);
    }
    if (f->cell) {
        fprintf(fp, "$periodic 3\n$lattice bohr\n");
        for (int i = 0; i < 3; i++)
            fprintf(fp, "%.15f %.15f %.15f\n", f->cell[3 * i] / BOHR,
                    f->cell[3 * i + 1] / BOHR, f->cell[3 * i + 2] / BOHR);
    }
    fprintf(fp, "$end\n");
    fclose(fp);
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(s);
    size_t got = fread(s, 1, (size_t)n, fp);
    s[got] = '\0';
    fclose(fp);
    return s;
}

/* Gradient of a Turbomole "gradient" file: after "$grad" and the cycle
 * line come n coordinate lines, then n gradient lines. */
static void parse_gradient(const char *text, int64_t n, double *grad)
{
    const char *p = strstr(text, "$grad");
    ck_assert_ptr_nonnull(p);
    for (int64_t skip = 0; skip < 2 + n; skip++) {
        p = strchr(p, '\n');
        ck_assert_ptr_nonnull(p);
        p++;
    }
    for (int64_t i = 0; i < 3 * n; i++) {
        char *end;
        grad[i] = strtod(p, &end);
        ck_assert_msg(end != p, "bad gradient file near '%.40s'", p);
        /* Fortran drops the E of a three-digit exponent: "-4.94-324". */
        if ((*end == '-' || *end == '+') && isdigit((unsigned char)end[1])) {
            long ex = strtol(end, &end, 10);
            grad[i] *= pow(10.0, (double)ex);
        }
        p = end;
    }
}

/* Energy (Eh) and gradient (Eh/Bohr) of the xtb program for frame f. */
static void run_program(const char *args, const mbe_frame_view *f,
                        double *e_eh, double *grad)
{
    char dir[] = "/tmp/test_calc-xtb-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256], cmd[512];
    snprintf(path, sizeof path, "%s/coord", dir);
    write_coord(path, f);
    snprintf(cmd, sizeof cmd, "cd %s && OMP_NUM_THREADS=1 " XTB_PROGRAM
             " coord --grad %s >out 2>&1", dir, args);
    int rc = system(cmd);
    snprintf(path, sizeof path, "%s/out", dir);
    char *out = slurp(path);
    ck_assert_ptr_nonnull(out);
    ck_assert_msg(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0,
                  "xtb %s failed: ...%s", args,
                  out + (strlen(out) > 600 ? strlen(out) - 600 : 0));
    const char *t = strstr(out, "TOTAL ENERGY");
    ck_assert_msg(t && sscanf(t + 12, "%lf", e_eh) == 1,
                  "no TOTAL ENERGY in the output of xtb %s", args);
    free(out);
    snprintf(path, sizeof path, "%s/gradient", dir);
    char *g = slurp(path);
    ck_assert_msg(g != NULL, "xtb %s wrote no gradient file", args);
    parse_gradient(g, f->n_atoms, grad);
    free(g);
    rm_flat_dir(dir);
}

/* Our result for f equals the program's to 1e-7 Eh and 1e-7 Eh/Bohr. */
static void same_as_program(mbe_calc *c, const mbe_frame_view *f,
                            const char *args)
{
    double forces[3 * MAX_AT], grad[3 * MAX_AT], e_prog;
    double en = compute_ok(c, f, forces);
    run_program(args, f, &e_prog, grad);
    ck_assert_msg(fabs(en / HARTREE - e_prog) < 1e-7,
                  "%s vs xtb %s: E %.12f Eh, program %.12f Eh",
                  mbe_calc_name(c), args, en / HARTREE, e_prog);
    for (int64_t i = 0; i < 3 * f->n_atoms; i++) {
        double g = -forces[i] * BOHR / HARTREE;
        ck_assert_msg(fabs(g - grad[i]) < 1e-7,
                      "%s vs xtb %s: gradient[%lld] %.10f, program %.10f",
                      mbe_calc_name(c), args, (long long)i, g, grad[i]);
    }
}

/* Energy of f from a calculator made for this frame alone. */
static double fresh_energy(const char *name, const mbe_frame_view *f,
                           double *forces)
{
    mbe_calc *c = new_calc(name, NULL);
    double en = compute_ok(c, f, forces);
    mbe_calc_free(c);
    return en;
}

static void same_as_fresh(mbe_calc *c, const mbe_frame_view *f)
{
    double a[3 * MAX_AT], b[3 * MAX_AT];
    double ea = compute_ok(c, f, a);
    double eb = fresh_energy(mbe_calc_name(c), f, b);
    ck_assert_msg(fabs(ea - eb) < 1e-9, "E %.12f vs fresh %.12f", ea, eb);
    for (int64_t i = 0; i < 3 * f->n_atoms; i++)
        ck_assert_msg(fabs(a[i] - b[i]) < 1e-9, "F[%lld] %.12f vs fresh %.12f",
                      (long long)i, a[i], b[i]);
}

/* The frames one calculator sees in turn: same species moved (reuse),
 * other species (reload), and back. */
static void sequence_vs_program(const char *name, const char *args)
{
    mbe_calc *c = new_calc(name, NULL);
    double moved[18];
    memcpy(moved, dimer_pos, sizeof moved);
    for (int i = 9; i < 18; i++)
        moved[i] += i % 3 == 0 ? 0.15 : -0.05;
    mbe_frame_view a = frame(6, dimer_z, dimer_pos, NULL);
    mbe_frame_view b = frame(6, dimer_z, moved, NULL);
    mbe_frame_view t = frame(9, trimer_z, trimer_pos, NULL);
    same_as_program(c, &a, args);
    same_as_program(c, &b, args);
    same_as_program(c, &t, args);
    same_as_fresh(c, &a);
    mbe_calc_free(c);
}

START_TEST(xtb_gfn2_vs_program)
{
    sequence_vs_program("gfn2-xtb", "--gfn 2");
}
END_TEST

START_TEST(xtb_gfn1_vs_program)
{
    sequence_vs_program("gfn1-xtb", "--gfn 1");
}
END_TEST

START_TEST(xtb_gfnff_vs_program)
{
    sequence_vs_program("gfn-ff", "--gfnff");
}
END_TEST

START_TEST(xtb_periodic_gfn1_vs_program)
{
    mbe_calc *c = new_calc("gfn1-xtb", NULL);
    mbe_frame_view v = frame(3, pbc_z, pbc_pos, pbc_cell);
    same_as_program(c, &v, "--gfn 1");
    /* Same species, new cell: the lattice is updated too. */
    double cell2[9];
    memcpy(cell2, pbc_cell, sizeof cell2);
    cell2[3] = -0.4;
    cell2[8] = 6.6;
    v = frame(3, pbc_z, pbc_pos, cell2);
    same_as_program(c, &v, "--gfn 1");
    mbe_calc_free(c);
}
END_TEST

START_TEST(xtb_periodic_refused)
{
    mbe_calc *c = new_calc("gfn2-xtb", NULL);
    mbe_frame_view p = frame(3, pbc_z, pbc_pos, pbc_cell);
    compute_status(c, &p, MBE_FAILED, "PBC");
    mbe_frame_view m = frame(6, dimer_z, dimer_pos, NULL);
    same_as_fresh(c, &m);
    mbe_calc_free(c);
    c = new_calc("gfn-ff", NULL);
    compute_status(c, &p, MBE_FAILED, "periodic");
    same_as_fresh(c, &m);
    mbe_calc_free(c);
}
END_TEST

START_TEST(xtb_charged_vs_program)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.charge = 1;
    o.uhf = 1;
    mbe_calc *c = new_calc("gfn2-xtb", &o);
    mbe_frame_view v = frame(6, dimer_z, dimer_pos, NULL);
    same_as_program(c, &v, "--gfn 2 --chrg 1 --uhf 1");
    mbe_calc_free(c);
    c = new_calc("gfn1-xtb", &o);
    same_as_program(c, &v, "--gfn 1 --chrg 1 --uhf 1");
    mbe_calc_free(c);
}
END_TEST

START_TEST(xtb_settings_vs_program)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.accuracy = 0.01;
    o.etemp = 1000;
    mbe_calc *c = new_calc("gfn2-xtb", &o);
    mbe_frame_view v = frame(9, trimer_z, trimer_pos, NULL);
    same_as_program(c, &v, "--gfn 2 --acc 0.01 --etemp 1000");
    mbe_calc_free(c);
}
END_TEST

START_TEST(xtb_scf_not_converged)
{
    /* Three iterations: enough for H2, not for the water dimer. */
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.max_iter = 3;
    mbe_calc *c = new_calc("gfn2-xtb", &o);
    mbe_frame_view d = frame(6, dimer_z, dimer_pos, NULL);
    mbe_frame_view h = frame(2, h2_z, h2_pos, NULL);
    compute_status(c, &d, MBE_SCF_NOT_CONVERGED, "not converge");
    same_as_program(c, &h, "--gfn 2 --iterations 3");
    compute_status(c, &d, MBE_SCF_NOT_CONVERGED, "3 iterations");
    same_as_program(c, &h, "--gfn 2 --iterations 3");
    mbe_calc_free(c);
}
END_TEST

START_TEST(xtb_bad_elements)
{
    mbe_frame_view m = frame(6, dimer_z, dimer_pos, NULL);
    int64_t z[6];
    memcpy(z, dimer_z, sizeof z);
    mbe_frame_view bad = frame(6, z, dimer_pos, NULL);
    const char *names[] = {"gfn2-xtb", "gfn1-xtb", "gfn-ff"};
    for (int k = 0; k < 3; k++) {
        mbe_calc *c = new_calc(names[k], NULL);
        z[0] = 0;
        compute_status(c, &bad, MBE_FAILED, "invalid atomic number");
        z[0] = 200;
        compute_status(c, &bad, MBE_FAILED, "invalid atomic number");
        /* Beyond the parametrisation: libxtb itself would crash (GFN1/2)
         * or read past its tables (GFN-FF). */
        z[0] = 87;
        compute_status(c, &bad, MBE_FAILED, "no parameters");
        same_as_fresh(c, &m);
        mbe_calc_free(c);
    }
}
END_TEST

START_TEST(xtb_engine_error_recovers)
{
    /* Two atoms on top of each other. */
    double pos[18];
    memcpy(pos, dimer_pos, sizeof pos);
    memcpy(pos + 3, pos, 3 * sizeof *pos);
    mbe_frame_view bad = frame(6, dimer_z, pos, NULL);
    mbe_frame_view m = frame(6, dimer_z, dimer_pos, NULL);
    const char *names[] = {"gfn2-xtb", "gfn1-xtb", "gfn-ff"};
    for (int k = 0; k < 3; k++) {
        mbe_calc *c = new_calc(names[k], NULL);
        same_as_fresh(c, &m);
        /* libxtb refuses the structure: FAILED with its reason. */
        compute_status(c, &bad, MBE_FAILED, names[k]);
        same_as_fresh(c, &m);
        mbe_calc_free(c);
    }
}
END_TEST

/* Nothing on stdout, and no files in the working directory, from any xtb
 * back end, including failures.  In a child process so that gfortran's
 * buffered units are flushed (at exit) while stdout is still the file. */
START_TEST(xtb_quiet_and_clean)
{
    char dir[] = "/tmp/test_calc-cwd-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char out[256];
    snprintf(out, sizeof out, "%s.stdout", dir);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 1) < 0 || chdir(dir) < 0)
            _exit(2);
        mbe_calc_opts o;
        mbe_calc_opts_default(&o);
        o.max_iter = 3;
        const char *names[] = {"gfn2-xtb", "gfn1-xtb", "gfn-ff"};
        mbe_frame_view m = frame(6, dimer_z, dimer_pos, NULL);
        mbe_frame_view p = frame(3, pbc_z, pbc_pos, pbc_cell);
        for (int k = 0; k < 3; k++) {
            mbe_calc *c = NULL;
            mbe_err e;
            double en, f[18];
            if (mbe_calc_new(names[k], k == 0 ? &o : NULL, &c, &e) < 0)
                _exit(3);
            mbe_calc_compute(c, &m, &en, f, &e);
            mbe_calc_compute(c, &p, &en, f, &e);
            mbe_calc_compute(c, &m, &en, f, &e);
            mbe_calc_free(c);
        }
        exit(0);
    }
    int status;
    ck_assert(waitpid(pid, &status, 0) == pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "child failed (%d)", status);
    char *text = slurp(out);
    ck_assert_ptr_nonnull(text);
    ck_assert_msg(text[0] == '\0', "library wrote to stdout: %.300s", text);
    free(text);
    unlink(out);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *de; (de = readdir(d));)
        ck_assert_msg(!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."),
                      "file '%s' left in the working directory", de->d_name);
    closedir(d);
    rmdir(dir);
}
END_TEST

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Not a check: ms per frame for the report. */
START_TEST(xtb_timing)
{
    const char *names[] = {"gfn2-xtb", "gfn1-xtb", "gfn-ff"};
    for (int k = 0; k < 3; k++) {
        mbe_calc *c = new_calc(names[k], NULL);
        double pos[27], f[27];
        mbe_frame_view v = frame(9, trimer_z, pos, NULL);
        memcpy(pos, trimer_pos, sizeof pos);
        compute_ok(c, &v, f);
        const int n = 20;
        double t0 = seconds();
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < 27; j++)
                pos[j] = trimer_pos[j] + 0.02 * (urand() - 0.5);
            compute_ok(c, &v, f);
        }
        printf("%s: %.2f ms/frame, 9-atom water trimer\n", names[k],
               1e3 * (seconds() - t0) / n);
        mbe_calc_free(c);
    }
}
END_TEST

/* ---------------------------------------------------------- interface */

START_TEST(iface_defaults)
{
    mbe_calc_opts o;
    memset(&o, 0xff, sizeof o);
    mbe_calc_opts_default(&o);
    ck_assert(o.charge == 0.0 && o.uhf == 0);
    ck_assert(o.accuracy == 1.0 && o.etemp == 300.0 && o.max_iter == 250);
    ck_assert(o.lj_epsilon == 0.0103 && o.lj_sigma == 3.40);
    ck_assert(o.lj_cutoff == 10.0);
}
END_TEST

START_TEST(iface_unknown_name)
{
    mbe_calc *c = (mbe_calc *)&c;
    mbe_err e = {{0}};
    ck_assert(mbe_calc_new("gfn3-xtb", NULL, &c, &e) < 0);
    ck_assert_ptr_null(c);
    const char *frags[] = {"gfn3-xtb", "gfn2-xtb", "gfn1-xtb", "gfn-ff",
                           "lj"};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(strstr(e.msg, frags[i]), "'%s' lacks '%s'", e.msg,
                      frags[i]);
    ck_assert(mbe_calc_new("", NULL, &c, &e) < 0);
    ck_assert(mbe_calc_new(NULL, NULL, &c, &e) < 0);
    mbe_calc_free(NULL);
}
END_TEST

/* What mbe_calc_new refuses before starting anything, without starting
 * anything: mbe-compute's usage errors. */
START_TEST(iface_check_without_setup)
{
    mbe_err e = {{0}};
    ck_assert_int_eq(mbe_calc_check("lj", NULL, &e), 0);
    ck_assert_int_eq(mbe_calc_check("ipi:x", NULL, &e), 0);
    ck_assert_int_eq(mbe_calc_check("exec:true", NULL, &e), 0);
    ck_assert(mbe_calc_check("ljj", NULL, &e) < 0);
    ck_assert_msg(strstr(e.msg, "unknown calculator 'ljj'"), "%s", e.msg);
    ck_assert(mbe_calc_check("ipi:", NULL, &e) < 0);
    ck_assert_msg(strstr(e.msg, "needs an argument"), "%s", e.msg);
    ck_assert(mbe_calc_check(NULL, NULL, &e) < 0);
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.lj_sigma = -1;
    ck_assert(mbe_calc_check("lj", &o, &e) < 0);
    ck_assert_msg(strstr(e.msg, "lj_sigma"), "%s", e.msg);
}
END_TEST

START_TEST(iface_names)
{
    mbe_calc *c = new_calc("LJ", NULL);
    ck_assert_str_eq(mbe_calc_name(c), "lj");
    mbe_calc_free(c);
    const char *names[] = {"gfn2-xtb", "gfn1-xtb", "gfn-ff"};
    for (int k = 0; k < 3; k++) {
        c = new_calc(names[k], NULL);
        ck_assert_str_eq(mbe_calc_name(c), names[k]);
        mbe_calc_free(c);
    }
}
END_TEST

/* The level a job gets without -l: the name of a built-in, none for the
 * i-PI server (only its user knows). */
START_TEST(iface_default_level)
{
    mbe_err e = {{0}};
    char *level = (char *)&e;
    mbe_calc *c = new_calc("lj", NULL);
    ck_assert_int_eq(mbe_calc_default_level(c, &level, &e), 0);
    ck_assert_str_eq(level, "lj");
    free(level);
    mbe_calc_free(c);
    char name[64];
    snprintf(name, sizeof name, "ipi:mbeunit%d", (int)getpid());
    c = new_calc(name, NULL);
    level = (char *)&e;
    ck_assert_int_eq(mbe_calc_default_level(c, &level, &e), 0);
    ck_assert_ptr_null(level);
    mbe_calc_free(c);
}
END_TEST

/* ase:MODULE:CALL refused before any engine starts, in one line. */
START_TEST(iface_ase_refusals)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.ase_engine = "/dev/null";
    struct {
        const char *name, *engine, *frag;
    } cases[] = {
        {"ase:ase.calculators.emt", "/dev/null", "ase:MODULE:CALL"},
        {"ase::EMT()", "/dev/null", "ase:MODULE:CALL"},
        {"ase:a-b:EMT()", "/dev/null", "module name"},
        {"ase:m:EMT(\n)", "/dev/null", NULL},
        {"ase:ase.calculators.emt:EMT()", NULL, "mbe-ase-engine"},
        {"ase:ase.calculators.emt:EMT()", "/nonexistent/x", "No such file"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char name[64];
        /* A real newline in CALL (written escaped above). */
        snprintf(name, sizeof name, "%s", cases[k].name);
        char *bs = strstr(name, "\\n");
        if (bs) {
            bs[0] = '\n';
            memmove(bs + 1, bs + 2, strlen(bs + 2) + 1);
        }
        o.ase_engine = cases[k].engine;
        mbe_calc *c = (mbe_calc *)&o;
        mbe_err e = {{0}};
        ck_assert_msg(mbe_calc_new(name, &o, &c, &e) < 0, "%s accepted",
                      cases[k].name);
        ck_assert_ptr_null(c);
        const char *frag = cases[k].frag ? cases[k].frag : "one line";
        ck_assert_msg(strstr(e.msg, frag), "'%s' lacks '%s'", e.msg, frag);
        ck_assert(!strchr(e.msg, '\n'));
    }
}
END_TEST

static void bad_opts(const char *name, void (*edit)(mbe_calc_opts *),
                     const char *frag)
{
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    edit(&o);
    mbe_calc *c = (mbe_calc *)&o;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_calc_new(name, &o, &c, &e) < 0, "%s accepted bad %s",
                  name, frag);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(e.msg, frag), "'%s' lacks '%s'", e.msg, frag);
    ck_assert(!strchr(e.msg, '\n'));
}

static void acc0(mbe_calc_opts *o) { o->accuracy = 0; }
static void accn(mbe_calc_opts *o) { o->accuracy = NAN; }
static void acc_big(mbe_calc_opts *o) { o->accuracy = 5000; }
static void acc_small(mbe_calc_opts *o) { o->accuracy = 1e-6; }
static void etemp_neg(mbe_calc_opts *o) { o->etemp = -1; }
static void etemp_inf(mbe_calc_opts *o) { o->etemp = INFINITY; }
static void iter0(mbe_calc_opts *o) { o->max_iter = 0; }
static void uhf_neg(mbe_calc_opts *o) { o->uhf = -1; }
static void charge_nan(mbe_calc_opts *o) { o->charge = NAN; }
static void charge_half(mbe_calc_opts *o) { o->charge = 0.5; }
static void sigma0(mbe_calc_opts *o) { o->lj_sigma = 0; }
static void sigma_nan(mbe_calc_opts *o) { o->lj_sigma = NAN; }
static void eps_neg(mbe_calc_opts *o) { o->lj_epsilon = -0.1; }
static void cut_inf(mbe_calc_opts *o) { o->lj_cutoff = INFINITY; }
static void cut_nan(mbe_calc_opts *o) { o->lj_cutoff = NAN; }
static void codata_bad(mbe_calc_opts *o) { o->ipi_codata = 2010; }

START_TEST(iface_invalid_opts)
{
    const char *names[] = {"lj", "gfn2-xtb"};
    for (int k = 0; k < 2; k++) {
        bad_opts(names[k], acc0, "accuracy");
        bad_opts(names[k], accn, "accuracy");
        bad_opts(names[k], etemp_neg, "etemp");
        bad_opts(names[k], etemp_inf, "etemp");
        bad_opts(names[k], iter0, "max_iter");
        bad_opts(names[k], uhf_neg, "uhf");
        bad_opts(names[k], charge_nan, "charge");
        bad_opts(names[k], codata_bad, "ipi_codata");
        bad_opts(names[k], sigma0, "lj_sigma");
        bad_opts(names[k], sigma_nan, "lj_sigma");
        bad_opts(names[k], eps_neg, "lj_epsilon");
        bad_opts(names[k], cut_inf, "lj_cutoff");
        bad_opts(names[k], cut_nan, "lj_cutoff");
    }
    bad_opts("gfn2-xtb", acc_big, "accuracy must be between");
    bad_opts("gfn-ff", acc_small, "accuracy must be between");
    bad_opts("gfn1-xtb", charge_half, "whole number");
    /* Lennard-Jones ignores the charge. */
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    charge_half(&o);
    mbe_calc_free(new_calc("lj", &o));
}
END_TEST

static void settings_have(const char *name, const mbe_calc_opts *o,
                          const char *const *lines)
{
    mbe_calc *c = new_calc(name, o);
    char *s = mbe_calc_settings(c);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(strlen(s) > 0 && s[strlen(s) - 1] == '\n', "'%s'", s);
    for (; *lines; lines++) {
        char want[128];
        snprintf(want, sizeof want, "\n%s", *lines);
        ck_assert_msg(strncmp(s, *lines, strlen(*lines)) == 0 ||
                      strstr(s, want), "settings of %s lack '%s':\n%s",
                      name, *lines, s);
    }
    free(s);
    mbe_calc_free(c);
}

START_TEST(iface_settings)
{
    const char *gfn2[] = {"method=gfn2-xtb\n", "charge=0\n", "uhf=0\n",
                          "accuracy=1\n", "etemp=300\n", "max_iter=250\n",
                          "libxtb=", NULL};
    settings_have("gfn2-xtb", NULL, gfn2);
    const char *gfn1[] = {"method=gfn1-xtb\n", "charge=0\n", "uhf=0\n",
                          "accuracy=1\n", "etemp=300\n", "max_iter=250\n",
                          "libxtb=", NULL};
    settings_have("gfn1-xtb", NULL, gfn1);
    const char *ff[] = {"method=gfn-ff\n", "charge=0\n", "accuracy=1\n",
                        "libxtb=", NULL};
    settings_have("gfn-ff", NULL, ff);
    const char *lj[] = {"method=lj\n", "lj_epsilon=0.0103\n",
                        "lj_sigma=3.4\n", "lj_cutoff=10\n", NULL};
    settings_have("lj", NULL, lj);

    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    o.charge = -2;
    o.uhf = 2;
    o.accuracy = 0.3;
    o.etemp = 1234.5;
    o.max_iter = 77;
    o.lj_epsilon = 0.25;
    o.lj_sigma = 2.1;
    o.lj_cutoff = 0;
    const char *gfn2b[] = {"charge=-2\n", "uhf=2\n", "accuracy=0.3\n",
                           "etemp=1234.5\n", "max_iter=77\n", NULL};
    settings_have("gfn2-xtb", &o, gfn2b);
    const char *ljb[] = {"lj_epsilon=0.25\n", "lj_sigma=2.1\n",
                         "lj_cutoff=0\n", NULL};
    settings_have("lj", &o, ljb);
}
END_TEST

/* One method: the calculator and the settings that change results; how an
 * engine is reached and how long to try do not count. */
START_TEST(iface_same_method)
{
    const char *lj = "method=lj\nlj_epsilon=0.0103\nlj_sigma=3.4\n";
    ck_assert(mbe_calc_same_method(lj, lj));
    ck_assert(!mbe_calc_same_method(lj, "method=lj\nlj_epsilon=0.0103\n"
                                        "lj_sigma=3\n"));
    ck_assert(!mbe_calc_same_method(lj, "method=gfn-ff\ncharge=0\n"));
    ck_assert(!mbe_calc_same_method(lj, "method=lj\nlj_epsilon=0.0103\n"));
    ck_assert(mbe_calc_same_method(
        "method=gfn2-xtb\ncharge=0\nmax_iter=250\n",
        "method=gfn2-xtb\ncharge=0\nmax_iter=500\n"));
    ck_assert(!mbe_calc_same_method(
        "method=gfn2-xtb\ncharge=0\nmax_iter=250\n",
        "method=gfn2-xtb\ncharge=1\nmax_iter=250\n"));
    ck_assert(mbe_calc_same_method(
        "method=ipi\naddress=unix:/tmp/ipi_a\nengine=cp2k a.inp\n"
        "ipi_box=50\nframe_timeout=0\n",
        "method=ipi\naddress=tcp:localhost:31415\nengine=\n"
        "ipi_box=50\nframe_timeout=60\n"));
    ck_assert(!mbe_calc_same_method(
        "method=exec\ncommand=a\nframe_timeout=0\n",
        "method=exec\ncommand=b\nframe_timeout=0\n"));
    char *m = mbe_calc_method("method=ipi\naddress=x\nipi_box=50\n");
    ck_assert_str_eq(m, "method=ipi ipi_box=50");
    free(m);
}
END_TEST

START_TEST(iface_libxtb_version)
{
    mbe_calc *c = new_calc("gfn2-xtb", NULL);
    char *s = mbe_calc_settings(c);
    ck_assert_ptr_nonnull(s);
    const char *v = strstr(s, "libxtb=");
    ck_assert_ptr_nonnull(v);
    ck_assert_msg(v[7] >= '0' && v[7] <= '9', "version unknown: %s", s);
    free(s);
    mbe_calc_free(c);
}
END_TEST

/* ------------------------------------------------- command-line options */

/* Bytes of the field a row of this kind stores into. */
static size_t field_size(mbe_calc_opt_kind k)
{
    switch (k) {
    case MBE_CALC_OPT_NUMBER:
    case MBE_CALC_OPT_SECONDS:
    case MBE_CALC_OPT_POSITIVE_SECONDS: return sizeof(double);
    case MBE_CALC_OPT_INTEGER:
    case MBE_CALC_OPT_FLAG: return sizeof(int);
    case MBE_CALC_OPT_STRING: return sizeof(const char *);
    case MBE_CALC_OPT_FILE: return 0;
    }
    ck_abort_msg("kind %d unknown", (int)k);
    return 0;
}

static const mbe_calc_option *listed(const char *name)
{
    const mbe_calc_option *o;
    for (size_t i = 0; (o = mbe_calc_option_at(i)); i++)
        if (strcmp(o->name, name) == 0)
            return o;
    return NULL;
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Every row of every table: a name of its own in the table, a field
 * inside mbe_calc_opts, help; and the row the program sees by that name is
 * the same (rows shared by several back ends agree). */
START_TEST(iface_option_rows)
{
    const mbe_calc_ops *b;
    size_t n_rows = 0;
    for (size_t i = 0; (b = mbe_calc_backend_at(i)); i++) {
        for (const mbe_calc_option *r = b->options; r && r->name; r++) {
            n_rows++;
            ck_assert_msg(*r->name && r->name[0] != '-', "%s: name '%s'",
                          b->name, r->name);
            for (const mbe_calc_option *q = b->options; q != r; q++)
                ck_assert_msg(strcmp(q->name, r->name) != 0,
                              "%s: --%s twice", b->name, r->name);
            size_t size = field_size(r->kind);
            if (size) {
                ck_assert_msg(r->offset + size <= sizeof(mbe_calc_opts) &&
                              r->offset % size == 0,
                              "--%s: offset %zu", r->name, r->offset);
            } else {
                ck_assert_uint_eq(r->offset, 0);
            }
            ck_assert_msg((r->arg_name == NULL) ==
                          (r->kind == MBE_CALC_OPT_FLAG),
                          "--%s: a value's name only when it takes one",
                          r->name);
            ck_assert_msg(r->help && *r->help &&
                          r->help[strlen(r->help) - 1] != '\n',
                          "--%s: help", r->name);
            const mbe_calc_option *o = listed(r->name);
            ck_assert_msg(o, "--%s of %s not listed", r->name, b->name);
            ck_assert_msg(o->kind == r->kind && o->offset == r->offset &&
                          o->check == r->check &&
                          same_str(o->arg_name, r->arg_name) &&
                          same_str(o->help, r->help),
                          "--%s of %s differs from the one listed", r->name,
                          b->name);
        }
    }
    ck_assert_uint_gt(n_rows, 0);
}
END_TEST

/* The program's list: each name once, shared rows too, and each setting
 * by one option only (a row copied with its offset unchanged). */
START_TEST(iface_option_list)
{
    const mbe_calc_option *o;
    size_t n = 0;
    for (; (o = mbe_calc_option_at(n)); n++) {
        for (size_t j = 0; j < n; j++) {
            const mbe_calc_option *p = mbe_calc_option_at(j);
            ck_assert_msg(strcmp(p->name, o->name), "--%s listed twice",
                          o->name);
            ck_assert_msg(o->kind == MBE_CALC_OPT_FILE ||
                          p->kind == MBE_CALC_OPT_FILE ||
                          o->offset != p->offset,
                          "--%s and --%s set one field", p->name, o->name);
        }
    }
    ck_assert_ptr_null(mbe_calc_option_at(n + 1));
    /* ipi, exec and ase share it; every xtb back end lists --charge. */
    ck_assert_ptr_nonnull(listed("frame-timeout"));
    ck_assert_ptr_nonnull(listed("charge"));
}
END_TEST

/* A good value of every row is stored in its field, and nothing else of
 * the options changes. */
START_TEST(iface_option_set)
{
    const mbe_calc_option *o;
    for (size_t i = 0; (o = mbe_calc_option_at(i)); i++) {
        if (o->kind == MBE_CALC_OPT_FILE)
            continue;
        /* 2014: an integer --ipi-codata's check takes too. */
        const char *value = o->kind == MBE_CALC_OPT_NUMBER ? "-2.5"
                            : o->kind == MBE_CALC_OPT_INTEGER ? "2014"
                            : o->kind == MBE_CALC_OPT_FLAG ? NULL
                            : o->kind == MBE_CALC_OPT_STRING ? "sleep 1"
                                                             : "2.5";
        mbe_calc_opts before, after;
        memset(&before, 0, sizeof before);
        mbe_calc_opts_default(&before);
        memcpy(&after, &before, sizeof after);
        mbe_err e = {{0}};
        ck_assert_msg(mbe_calc_option_set(o, value, &after, &e) == 0,
                      "--%s %s: %s", o->name, value ? value : "", e.msg);
        const char *field = (const char *)&after + o->offset;
        switch (o->kind) {
        case MBE_CALC_OPT_NUMBER:
            ck_assert_double_eq(*(const double *)field, -2.5);
            break;
        case MBE_CALC_OPT_SECONDS:
        case MBE_CALC_OPT_POSITIVE_SECONDS:
            ck_assert_double_eq(*(const double *)field, 2.5);
            break;
        case MBE_CALC_OPT_INTEGER:
            ck_assert_int_eq(*(const int *)field, 2014);
            break;
        case MBE_CALC_OPT_FLAG:
            ck_assert_int_eq(*(const int *)field, 1);
            break;
        case MBE_CALC_OPT_STRING:
            ck_assert_ptr_eq(*(const char *const *)field, value);
            break;
        case MBE_CALC_OPT_FILE:
            break;
        }
        size_t size = field_size(o->kind);
        memcpy((char *)&before + o->offset, field, size);
        ck_assert_msg(memcmp(&before, &after, sizeof before) == 0,
                      "--%s changed more than its field", o->name);
    }
}
END_TEST

/* A refused value: the message the programs print, o as it was. */
static void set_refused(const char *name, const char *value, const char *msg)
{
    const mbe_calc_option *o = listed(name);
    ck_assert_msg(o, "--%s not listed", name);
    mbe_calc_opts before, after;
    memset(&before, 0, sizeof before);
    mbe_calc_opts_default(&before);
    memcpy(&after, &before, sizeof after);
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_calc_option_set(o, value, &after, &e), 0);
    ck_assert_str_eq(e.msg, msg);
    ck_assert(memcmp(&before, &after, sizeof before) == 0);
}

START_TEST(iface_option_refused)
{
    set_refused("charge", "x", "--charge: 'x' is not a number");
    set_refused("lj-sigma", "", "--lj-sigma: '' is not a number");
    set_refused("accuracy", "inf", "--accuracy: 'inf' is not a number");
    set_refused("etemp", "1e999", "--etemp: '1e999' is not a number");
    set_refused("ipi-box", "3 ", "--ipi-box: '3 ' is not a number");
    set_refused("uhf", "1.5", "--uhf: '1.5' is not an integer");
    set_refused("max-iter", "99999999999",
                "--max-iter: '99999999999' is not an integer");
    set_refused("frame-timeout", "-1",
                "--frame-timeout: '-1' is not a number of seconds");
    set_refused("frame-timeout", "nan",
                "--frame-timeout: 'nan' is not a number of seconds");
    set_refused("connect-timeout", "0",
                "--connect-timeout: '0' is not a positive number of seconds");
    set_refused("ipi-codata", "x", "--ipi-codata: 'x' is not an integer");
    set_refused("ipi-codata", "2015",
                "--ipi-codata: '2015' is not 2014 or 2018");
    /* The program reads the file; the library has nowhere to put it. */
    const mbe_calc_option *atoms = listed("engine-atoms");
    ck_assert_ptr_nonnull(atoms);
    ck_assert_int_eq(atoms->kind, MBE_CALC_OPT_FILE);
    mbe_calc_opts o;
    mbe_calc_opts_default(&o);
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_calc_option_set(atoms, "a.xyz", &o, &e), 0);
}
END_TEST

/* --------------------------------------------------------------- main */

int main(void)
{
    Suite *s = suite_create("calc");

    TCase *tc = tcase_create("lj");
    tcase_add_test(tc, lj_dimer);
    tcase_add_test(tc, lj_dimer_sign);
    tcase_add_test(tc, lj_minimum);
    tcase_add_test(tc, lj_shift_continuous);
    tcase_add_test(tc, lj_cluster_fd);
    tcase_add_test(tc, lj_periodic_min_image);
    tcase_add_test(tc, lj_periodic_fd);
    tcase_add_test(tc, lj_periodic_refusals);
    tcase_add_test(tc, lj_bad_frames);
    suite_add_tcase(s, tc);

    tc = tcase_create("interface");
    tcase_add_test(tc, iface_defaults);
    tcase_add_test(tc, iface_unknown_name);
    tcase_add_test(tc, iface_check_without_setup);
    tcase_add_test(tc, iface_names);
    tcase_add_test(tc, iface_default_level);
    tcase_add_test(tc, iface_ase_refusals);
    tcase_add_test(tc, iface_invalid_opts);
    tcase_add_test(tc, iface_settings);
    tcase_add_test(tc, iface_same_method);
    tcase_add_test(tc, iface_libxtb_version);
    tcase_add_test(tc, iface_option_rows);
    tcase_add_test(tc, iface_option_list);
    tcase_add_test(tc, iface_option_set);
    tcase_add_test(tc, iface_option_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("xtb");
    tcase_add_test(tc, xtb_periodic_refused);
    tcase_add_test(tc, xtb_bad_elements);
    tcase_add_test(tc, xtb_engine_error_recovers);
    tcase_add_test(tc, xtb_quiet_and_clean);
    tcase_add_test(tc, xtb_timing);
    suite_add_tcase(s, tc);

    if (access(XTB_PROGRAM, X_OK) == 0) {
        tc = tcase_create("xtb-program");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, xtb_gfn2_vs_program);
        tcase_add_test(tc, xtb_gfn1_vs_program);
        tcase_add_test(tc, xtb_gfnff_vs_program);
        tcase_add_test(tc, xtb_periodic_gfn1_vs_program);
        tcase_add_test(tc, xtb_charged_vs_program);
        tcase_add_test(tc, xtb_settings_vs_program);
        tcase_add_test(tc, xtb_scf_not_converged);
        suite_add_tcase(s, tc);
    } else {
        printf("SKIP xtb-program: %s not found; comparisons with the xtb "
               "program not run\n", XTB_PROGRAM);
    }

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
