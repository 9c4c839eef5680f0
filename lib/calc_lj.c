/*
 * calc_lj.c - Lennard-Jones pair potential, for tests and demonstrations.
 *
 *   E = sum over pairs i<j with r_ij < rc of 4 eps [(s/r)^12 - (s/r)^6] - shift
 *
 * One eps and one sigma for every species: atomic numbers are ignored.
 *
 * With a cut-off (lj_cutoff > 0) this is the shifted potential: every pair
 * inside rc has shift = 4 eps [(s/rc)^12 - (s/rc)^6] subtracted, so a pair's
 * energy goes to zero at rc.  Forces are those of the plain potential (the
 * shift is a constant per pair and has no gradient); they are not shifted
 * and so jump at rc.  Without a cut-off every pair counts and shift = 0;
 * that is allowed for non-periodic frames only.
 *
 * Periodic frames use the minimum-image convention in any triclinic cell:
 * a pair's separation goes to fractional coordinates, is wrapped to
 * [-0.5, 0.5) and goes back.  That finds every pair closer than rc exactly
 * once when rc is at most half the smallest perpendicular cell width
 * (the wrapped cell then contains the ball of radius rc); larger cut-offs
 * are refused rather than silently missing neighbours.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calc_impl.h"
#include "mbe_internal.h"

typedef struct lj_params {
    double eps, sigma, rc, shift; /* rc INFINITY when no cut-off */
    const double *cell;           /* NULL when not periodic */
    double inv[9];                /* inverse of cell */
} lj_params;

static int lj_setup(mbe_calc *c, mbe_err *e)
{
    (void)c;
    (void)e;
    return 0;
}

static void lj_teardown(mbe_calc *c)
{
    (void)c;
}

static char *lj_settings(const mbe_calc *c)
{
    char eps[32], sig[32], rc[32];
    return mbe_asprintf("lj_epsilon=%s\nlj_sigma=%s\nlj_cutoff=%s\n",
                        mbe_calc_fmt_double(eps, c->opts.lj_epsilon),
                        mbe_calc_fmt_double(sig, c->opts.lj_sigma),
                        mbe_calc_fmt_double(rc, c->opts.lj_cutoff));
}

static void invert_cell(const double h[9], double inv[9])
{
    double d = mbe_cell_det(h);
    inv[0] = (h[4] * h[8] - h[5] * h[7]) / d;
    inv[1] = (h[2] * h[7] - h[1] * h[8]) / d;
    inv[2] = (h[1] * h[5] - h[2] * h[4]) / d;
    inv[3] = (h[5] * h[6] - h[3] * h[8]) / d;
    inv[4] = (h[0] * h[8] - h[2] * h[6]) / d;
    inv[5] = (h[2] * h[3] - h[0] * h[5]) / d;
    inv[6] = (h[3] * h[7] - h[4] * h[6]) / d;
    inv[7] = (h[1] * h[6] - h[0] * h[7]) / d;
    inv[8] = (h[0] * h[4] - h[1] * h[3]) / d;
}

/* d (Cartesian) -> its image with fractional coordinates in [-0.5, 0.5). */
static void min_image(const lj_params *p, double d[3])
{
    double s[3];
    for (int k = 0; k < 3; k++) {
        s[k] = d[0] * p->inv[k] + d[1] * p->inv[3 + k] + d[2] * p->inv[6 + k];
        s[k] -= floor(s[k] + 0.5);
    }
    for (int k = 0; k < 3; k++)
        d[k] = s[0] * p->cell[k] + s[1] * p->cell[3 + k] +
               s[2] * p->cell[6 + k];
}

static double pair_energy(const lj_params *p, double sr2)
{
    double s6 = sr2 * sr2 * sr2;
    return 4.0 * p->eps * (s6 * s6 - s6);
}

static int lj_params_for(const mbe_calc *c, const mbe_frame_view *f,
                         lj_params *p, mbe_err *e)
{
    p->eps = c->opts.lj_epsilon;
    p->sigma = c->opts.lj_sigma;
    p->rc = c->opts.lj_cutoff > 0 ? c->opts.lj_cutoff : INFINITY;
    p->cell = f->cell;
    p->shift = 0.0;
    if (isfinite(p->rc))
        p->shift = pair_energy(p, (p->sigma / p->rc) * (p->sigma / p->rc));
    if (!f->cell)
        return MBE_COMPLETED;
    if (!isfinite(p->rc))
        return mbe_failc(e, MBE_FAILED, "lj: a periodic frame needs a "
                         "cut-off (lj_cutoff > 0)");
    double w = mbe_cell_min_width(f->cell);
    if (p->rc > 0.5 * w) {
        char a[32], b[32];
        return mbe_failc(e, MBE_FAILED, "lj: cut-off %s Å exceeds half the "
                         "smallest cell width (%s Å), where the minimum-image "
                         "convention would miss neighbours",
                         mbe_calc_fmt_double(a, p->rc),
                         mbe_calc_fmt_double(b, 0.5 * w));
    }
    invert_cell(f->cell, p->inv);
    return MBE_COMPLETED;
}

static int lj_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                      double *forces, mbe_err *e)
{
    lj_params p;
    int st = lj_params_for(c, f, &p, e);
    if (st != MBE_COMPLETED)
        return st;
    int64_t n = f->n_atoms;
    const double *x = f->positions;
    double rc2 = p.rc * p.rc, s2 = p.sigma * p.sigma, etot = 0.0;
    if (forces)
        memset(forces, 0, (size_t)n * 3 * sizeof *forces);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = i + 1; j < n; j++) {
            double d[3] = {x[3 * i] - x[3 * j], x[3 * i + 1] - x[3 * j + 1],
                           x[3 * i + 2] - x[3 * j + 2]};
            if (p.cell)
                min_image(&p, d);
            double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if (r2 == 0.0)
                return mbe_failc(e, MBE_FAILED, "lj: atoms %lld and %lld "
                                 "coincide", (long long)i, (long long)j);
            if (r2 >= rc2)
                continue;
            double sr2 = s2 / r2, s6 = sr2 * sr2 * sr2;
            etot += pair_energy(&p, sr2) - p.shift;
            if (!forces)
                continue;
            /* -dE/dr / r, so that F_i = fr * (r_i - r_j). */
            double fr = 24.0 * p.eps * (2.0 * s6 * s6 - s6) / r2;
            for (int k = 0; k < 3; k++) {
                forces[3 * i + k] += fr * d[k];
                forces[3 * j + k] -= fr * d[k];
            }
        }
    }
    *energy = etot;
    return MBE_COMPLETED;
}

static const mbe_calc_option lj_options[] = {
    {"lj-epsilon", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, lj_epsilon),
     "EV", "Lennard-Jones well depth (default 0.0103)", NULL},
    {"lj-sigma", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, lj_sigma), "A",
     "Lennard-Jones sigma (default 3.40)", NULL},
    {"lj-cutoff", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, lj_cutoff),
     "A", "cut-off, 0 for none (default 10.0)", NULL},
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_lj_ops = {
    .name = "lj",
    .options = lj_options,
    .setup = lj_setup,
    .compute = lj_compute,
    .settings = lj_settings,
    .teardown = lj_teardown,
};
