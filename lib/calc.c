/* calc.c - the calculator interface: option defaults and checks, dispatch
 * by name to a back end (calc_impl.h), and the frame checks every back end
 * relies on. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "calc_impl.h"
#include "mbe_internal.h"

/* Known back ends, in the order error messages list them. */
static const mbe_calc_ops *const backends[] = {
    &mbe_calc_gfn2_ops,
    &mbe_calc_gfn1_ops,
    &mbe_calc_gfnff_ops,
    &mbe_calc_lj_ops,
    &mbe_calc_ipi_ops,
    &mbe_calc_exec_ops,
    &mbe_calc_ase_ops,
};
#define N_BACKENDS (sizeof backends / sizeof backends[0])

/*
 * Defaults (the man page lists the same):
 *   charge 0 e, uhf 0          neutral closed shell
 *   accuracy 1.0               xtb's own default
 *   etemp 300 K                xtb's own default
 *   max_iter 250               xtb's own default
 *   lj_epsilon 0.0103 eV       argon (epsilon/k_B ~ 120 K)
 *   lj_sigma 3.40 Å            argon
 *   lj_cutoff 10.0 Å           about 3 sigma
 *   connect_timeout 60 s       an engine starting under a loaded node
 *   frame_timeout 0            none: SLURM's time limit bounds the job
 *   ipi_box 50 Å               room around any molecule the tests meet
 * With these, gfn*-xtb results equal those of "xtb --gfn N" run without
 * options.
 */
void mbe_calc_opts_default(mbe_calc_opts *o)
{
    o->charge = 0.0;
    o->uhf = 0;
    o->accuracy = 1.0;
    o->etemp = 300.0;
    o->max_iter = 250;
    o->lj_epsilon = 0.0103;
    o->lj_sigma = 3.40;
    o->lj_cutoff = 10.0;
    o->connect_timeout = 60.0;
    o->frame_timeout = 0.0;
    o->ipi_box = 50.0;
    o->engine = NULL;
    o->engine_log = NULL;
    o->engine_atoms = NULL;
    o->n_engine_atoms = 0;
    o->ipi_remote = 0;
    o->ipi_codata = 2018;
    o->ase_engine = NULL;
    o->notice = NULL;
    o->notice_ud = NULL;
    o->stop = NULL;
}

char *mbe_calc_fmt_double(char *buf, double v)
{
    /* "300", not "3e+02". */
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, 32, "%.0f", v);
        return buf;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

double mbe_cell_det(const double c[9])
{
    return c[0] * (c[4] * c[8] - c[5] * c[7]) -
           c[1] * (c[3] * c[8] - c[5] * c[6]) +
           c[2] * (c[3] * c[7] - c[4] * c[6]);
}

double mbe_cell_min_width(const double c[9])
{
    double vol = fabs(mbe_cell_det(c));
    double w = INFINITY;
    /* Width along vector i = volume / area of the face of the other two. */
    for (int i = 0; i < 3; i++) {
        const double *a = c + 3 * ((i + 1) % 3), *b = c + 3 * ((i + 2) % 3);
        double x = a[1] * b[2] - a[2] * b[1];
        double y = a[2] * b[0] - a[0] * b[2];
        double z = a[0] * b[1] - a[1] * b[0];
        double area = sqrt(x * x + y * y + z * z);
        double wi = area > 0 ? vol / area : 0.0;
        if (wi < w)
            w = wi;
    }
    return w;
}

/* ----------------------------------------------------------- options */

static int bad_opt(mbe_err *e, const char *what, double got)
{
    char g[32];
    return mbe_fail(e, "invalid calculator option: %s, got %s", what,
                    mbe_calc_fmt_double(g, got));
}

static int check_opts(const mbe_calc_opts *o, mbe_err *e)
{
    if (!isfinite(o->charge))
        return bad_opt(e, "charge must be finite", o->charge);
    if (o->uhf < 0)
        return bad_opt(e, "uhf must be >= 0", o->uhf);
    if (!isfinite(o->accuracy) || !(o->accuracy > 0))
        return bad_opt(e, "accuracy must be finite and > 0", o->accuracy);
    if (!isfinite(o->etemp) || !(o->etemp >= 0))
        return bad_opt(e, "etemp must be finite and >= 0", o->etemp);
    if (o->max_iter < 1)
        return bad_opt(e, "max_iter must be >= 1", o->max_iter);
    if (!isfinite(o->lj_epsilon) || !(o->lj_epsilon >= 0))
        return bad_opt(e, "lj_epsilon must be finite and >= 0",
                       o->lj_epsilon);
    if (!isfinite(o->lj_sigma) || !(o->lj_sigma > 0))
        return bad_opt(e, "lj_sigma must be finite and > 0", o->lj_sigma);
    if (!isfinite(o->lj_cutoff))
        return bad_opt(e, "lj_cutoff must be finite (<= 0 for none)",
                       o->lj_cutoff);
    if (!isfinite(o->connect_timeout) || !(o->connect_timeout > 0))
        return bad_opt(e, "connect_timeout must be finite and > 0",
                       o->connect_timeout);
    if (!isfinite(o->frame_timeout) || !(o->frame_timeout >= 0))
        return bad_opt(e, "frame_timeout must be finite and >= 0 (0 for "
                       "none)", o->frame_timeout);
    if (!isfinite(o->ipi_box) || !(o->ipi_box > 0))
        return bad_opt(e, "ipi_box must be finite and > 0", o->ipi_box);
    if (o->ipi_codata != 2014 && o->ipi_codata != 2018)
        return bad_opt(e, "ipi_codata must be 2014 or 2018", o->ipi_codata);
    return 0;
}

/* ----------------------------------------------- command-line options */

const mbe_calc_ops *mbe_calc_backend_at(size_t i)
{
    return i < N_BACKENDS ? backends[i] : NULL;
}

/* Whether a row named name comes before row k of back end b, in the order
 * of the back ends and of their tables. */
static int named_before(const char *name, size_t b, size_t k)
{
    for (size_t i = 0; i <= b; i++) {
        const mbe_calc_option *o = backends[i]->options;
        for (size_t j = 0; o && o[j].name && (i < b || j < k); j++)
            if (strcmp(o[j].name, name) == 0)
                return 1;
    }
    return 0;
}

/* A dozen rows: walking the tables again for each costs nothing, and the
 * library keeps no list of its own (no mutable state). */
const mbe_calc_option *mbe_calc_option_at(size_t i)
{
    for (size_t b = 0; b < N_BACKENDS; b++) {
        const mbe_calc_option *o = backends[b]->options;
        for (size_t k = 0; o && o[k].name; k++)
            if (!named_before(o[k].name, b, k) && i-- == 0)
                return &o[k];
    }
    return NULL;
}

/* s as a finite number; NAN when it is not one (or has more after it). */
static double parse_number(const char *s)
{
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : NAN;
    return !s || errno || end == s || *end || !isfinite(v) ? NAN : v;
}

static int parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* Store value in o as opt's kind says: NULL, or what value is not. */
static const char *store(const mbe_calc_option *opt, const char *value,
                         mbe_calc_opts *o)
{
    void *field = (char *)o + opt->offset;
    double v = NAN;
    switch (opt->kind) {
    case MBE_CALC_OPT_NUMBER:
        if (isnan(v = parse_number(value)))
            return "a number";
        break;
    case MBE_CALC_OPT_SECONDS:
        if (!((v = parse_number(value)) >= 0))
            return "a number of seconds";
        break;
    case MBE_CALC_OPT_POSITIVE_SECONDS:
        if (!((v = parse_number(value)) > 0))
            return "a positive number of seconds";
        break;
    case MBE_CALC_OPT_INTEGER:
        return parse_int(value, field) < 0 ? "an integer" : NULL;
    case MBE_CALC_OPT_FLAG:
        *(int *)field = 1;
        return NULL;
    case MBE_CALC_OPT_STRING:
        *(const char **)field = value;
        return NULL;
    case MBE_CALC_OPT_FILE:
        return "stored by the library (the program reads the file)";
    }
    *(double *)field = v;
    return NULL;
}

int mbe_calc_option_set(const mbe_calc_option *opt, const char *value,
                        mbe_calc_opts *o, mbe_err *e)
{
    /* Into a copy, so that a refused value leaves o as it was (copied
     * whole, padding too: o then differs from before in the field only). */
    mbe_calc_opts t;
    memcpy(&t, o, sizeof t);
    const char *not = store(opt, value, &t);
    if (not)
        return mbe_fail(e, "--%s: '%s' is not %s", opt->name,
                        value ? value : "", not);
    if (opt->check && opt->check(value, &t, e) < 0) {
        mbe_err_prefix(e, "--%s", opt->name);
        return MBE_EFAIL;
    }
    memcpy(o, &t, sizeof t);
    return 0;
}

/* ----------------------------------------------------------- objects */

/* "lj" -> lj; "ipi:x" -> ipi with *arg "x" ("" when nothing follows). */
static const mbe_calc_ops *find_backend(const char *name, const char **arg)
{
    *arg = NULL;
    for (size_t i = 0; i < N_BACKENDS; i++) {
        const mbe_calc_ops *b = backends[i];
        size_t n = strlen(b->name);
        if (b->takes_arg) {
            if (strncasecmp(name, b->name, n) == 0 &&
                (name[n] == ':' || name[n] == '\0')) {
                *arg = name[n] ? name + n + 1 : "";
                return b;
            }
        } else if (strcasecmp(name, b->name) == 0) {
            return b;
        }
    }
    return NULL;
}

static int unknown_name(const char *name, mbe_err *e)
{
    char known[256] = "";
    for (size_t i = 0; i < N_BACKENDS; i++) {
        size_t n = strlen(known);
        const char *s = backends[i]->synopsis ? backends[i]->synopsis
                                              : backends[i]->name;
        snprintf(known + n, sizeof known - n, "%s%s", i ? ", " : "", s);
    }
    return mbe_fail(e, "unknown calculator '%s' (known: %s)", name, known);
}

/* The backend of name with its argument, o's values checked (o not
 * NULL). */
static const mbe_calc_ops *checked_backend(const char *name,
                                           const mbe_calc_opts *o,
                                           const char **arg, mbe_err *e)
{
    *arg = NULL;
    const mbe_calc_ops *ops = name ? find_backend(name, arg) : NULL;
    if (!ops) {
        unknown_name(name ? name : "(null)", e);
        return NULL;
    }
    if (ops->takes_arg && !**arg) {
        mbe_fail(e, "calculator '%s' needs an argument: %s", name,
                 ops->synopsis ? ops->synopsis : ops->name);
        return NULL;
    }
    if (ops->takes_arg && ops->check_arg && ops->check_arg(*arg, o, e) < 0)
        return NULL;
    return check_opts(o, e) < 0 ? NULL : ops;
}

static const mbe_calc_opts *or_default(const mbe_calc_opts *o,
                                       mbe_calc_opts *def)
{
    if (o)
        return o;
    mbe_calc_opts_default(def);
    return def;
}

int mbe_calc_check(const char *name, const mbe_calc_opts *o, mbe_err *e)
{
    const char *arg;
    mbe_calc_opts def;
    return checked_backend(name, or_default(o, &def), &arg, e) ? 0
                                                              : MBE_EFAIL;
}

int mbe_calc_new(const char *name, const mbe_calc_opts *o, mbe_calc **out,
                 mbe_err *e)
{
    *out = NULL;
    const char *arg = NULL;
    mbe_calc_opts def;
    o = or_default(o, &def);
    const mbe_calc_ops *ops = checked_backend(name, o, &arg, e);
    if (!ops)
        return MBE_EFAIL;
    mbe_calc *c = calloc(1, sizeof *c);
    if (!c)
        return mbe_fail(e, "out of memory");
    c->ops = ops;
    c->opts = *o;
    c->arg = arg;
    int rc = ops->setup(c, e);
    c->arg = NULL;
    if (rc < 0) {
        mbe_err_prefix(e, "%s", ops->name);
        ops->teardown(c);
        free(c);
        return MBE_EFAIL;
    }
    *out = c;
    return 0;
}

int mbe_calc_external(const mbe_calc *c)
{
    return c->ops->takes_arg;
}

int mbe_calc_stopped(const mbe_calc *c)
{
    return c && c->opts.stop && *c->opts.stop;
}

const char *mbe_calc_name(const mbe_calc *c)
{
    return c->ops->name;
}

int mbe_calc_default_level(mbe_calc *c, char **level, mbe_err *e)
{
    *level = NULL;
    if (c->ops->level)
        return c->ops->level(c, level, e);
    if (c->ops->takes_arg)
        return 0;
    if (!(*level = mbe_strdup(c->ops->name)))
        return mbe_fail(e, "out of memory");
    return 0;
}

char *mbe_calc_settings(const mbe_calc *c)
{
    char *tail = c->ops->settings(c);
    if (!tail)
        return NULL;
    char *s = mbe_asprintf("method=%s\n%s", c->ops->name, tail);
    free(tail);
    return s;
}

/* The back end named by the "method=" line that settings start with. */
static const mbe_calc_ops *ops_of_settings(const char *settings)
{
    static const char key[] = "method=";
    if (strncmp(settings, key, sizeof key - 1))
        return NULL;
    const char *name = settings + sizeof key - 1;
    size_t n = strcspn(name, "\n");
    for (size_t i = 0; i < sizeof backends / sizeof *backends; i++)
        if (strlen(backends[i]->name) == n &&
            !strncmp(backends[i]->name, name, n))
            return backends[i];
    return NULL;
}

static int is_operational(const mbe_calc_ops *o, const char *line,
                          size_t len)
{
    for (const char *const *k = o && o->operational ? o->operational : NULL;
         k && *k; k++) {
        size_t n = strlen(*k);
        if (len > n && line[n] == '=' && !strncmp(line, *k, n))
            return 1;
    }
    return 0;
}

/* Next "key=value" line of s at or after *pos that is not operational. */
static const char *next_setting(const mbe_calc_ops *o, const char *s,
                                size_t *pos, size_t *len)
{
    while (s[*pos]) {
        const char *line = s + *pos;
        const char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        *pos += n + (nl ? 1 : 0);
        if (n && !is_operational(o, line, n)) {
            *len = n;
            return line;
        }
    }
    return NULL;
}

int mbe_calc_same_method(const char *a, const char *b)
{
    const mbe_calc_ops *o = ops_of_settings(a);
    if (o != ops_of_settings(b))
        return 0;
    size_t pa = 0, pb = 0, la = 0, lb = 0;
    for (;;) {
        const char *x = next_setting(o, a, &pa, &la);
        const char *y = next_setting(o, b, &pb, &lb);
        if (!x || !y)
            return !x && !y;
        if (la != lb || memcmp(x, y, la) != 0)
            return 0;
    }
}

char *mbe_calc_method(const char *settings)
{
    const mbe_calc_ops *o = ops_of_settings(settings);
    size_t pos = 0, len, used = 0;
    char *out = malloc(strlen(settings) + 1);
    if (!out)
        return NULL;
    for (const char *x; (x = next_setting(o, settings, &pos, &len));) {
        if (used)
            out[used++] = ' ';
        memcpy(out + used, x, len);
        used += len;
    }
    out[used] = '\0';
    return out;
}

void mbe_calc_free(mbe_calc *c)
{
    if (!c)
        return;
    c->ops->teardown(c);
    free(c);
}

/* ------------------------------------------------------------ frames */

static int check_cell(const double *cell, mbe_err *e)
{
    for (int i = 0; i < 9; i++)
        if (!isfinite(cell[i]))
            return mbe_failc(e, MBE_FAILED, "non-finite cell vector");
    double len = 1.0;
    for (int i = 0; i < 3; i++)
        len *= sqrt(cell[3 * i] * cell[3 * i] +
                    cell[3 * i + 1] * cell[3 * i + 1] +
                    cell[3 * i + 2] * cell[3 * i + 2]);
    /* Relative test: a cell of any size whose vectors are nearly coplanar
     * is useless for minimum images and lattice sums alike. */
    if (!(fabs(mbe_cell_det(cell)) > 1e-8 * len))
        return mbe_failc(e, MBE_FAILED, "degenerate cell (vectors coplanar "
                         "or zero)");
    return MBE_COMPLETED;
}

static int check_frame(const mbe_frame_view *f, mbe_err *e)
{
    if (f->n_atoms < 1)
        return mbe_failc(e, MBE_FAILED, "frame has no atoms");
    for (int64_t i = 0; i < f->n_atoms; i++) {
        int64_t z = f->atomic_numbers[i];
        if (z < 1 || z > 118)
            return mbe_failc(e, MBE_FAILED, "atom %lld: invalid atomic "
                             "number %lld", (long long)i, (long long)z);
        const double *p = f->positions + 3 * i;
        if (!isfinite(p[0]) || !isfinite(p[1]) || !isfinite(p[2]))
            return mbe_failc(e, MBE_FAILED, "atom %lld: non-finite position",
                             (long long)i);
    }
    return f->cell ? check_cell(f->cell, e) : MBE_COMPLETED;
}

static void fill_nan(const mbe_frame_view *f, double *energy, double *forces)
{
    *energy = NAN;
    for (int64_t i = 0; forces && i < 3 * f->n_atoms; i++)
        forces[i] = NAN;
}

static int all_finite(const mbe_frame_view *f, double energy,
                      const double *forces)
{
    if (!isfinite(energy))
        return 0;
    for (int64_t i = 0; forces && i < 3 * f->n_atoms; i++)
        if (!isfinite(forces[i]))
            return 0;
    return 1;
}

int mbe_calc_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                     double *forces, mbe_err *e)
{
    if (!c || !f || !energy)
        return mbe_fail(e, "mbe_calc_compute: NULL argument");
    int st = check_frame(f, e);
    if (st == MBE_COMPLETED)
        st = c->ops->compute(c, f, energy, forces, e);
    if (st == MBE_COMPLETED && !all_finite(f, *energy, forces))
        st = mbe_failc(e, MBE_FAILED, "%s returned a non-finite energy or "
                       "force", c->ops->name);
    if (st != MBE_COMPLETED)
        fill_nan(f, energy, forces);
    return st;
}
