/*
 * calc_xtb.c - GFN2-xTB, GFN1-xTB and GFN-FF through libxtb, in process.
 *
 * Behaviour of libxtb 6.5 this file is built around (checked against the
 * xtb program of the same version, see tests/unit/test_calc.c):
 *  - Results equal "xtb coord --gfn N --grad" with the same charge, uhf,
 *    accuracy, etemp and SCF iteration limit, to the printed digits.
 *  - The lattice argument is lat[i][k] = component k of vector i in C
 *    order, i.e. rows are lattice vectors as in our cells.
 *  - A loaded GFN1/GFN2 parametrisation holds a basis set for the species
 *    of the molecule it was loaded for.  Frames with the same atomic
 *    numbers in the same order reuse it (xtb_updateMolecule): loading
 *    costs several times a small molecule's SCF.  Anything else loads
 *    again.
 *  - GFN-FF derives its topology (bonds, rings, charges) from the geometry
 *    at load time, as the program does from its input; it is loaded for
 *    every frame so that each frame's result is the program's.
 *  - A fresh results object per frame: libxtb keeps the converged
 *    wavefunction in it as the next SCF's guess, which would make results
 *    depend on which frames a job computed before.
 *  - Elements beyond the parametrisation make libxtb crash or exit (GFN2
 *    and GFN1 with Z 87..118), so they are refused before it sees them.
 *  - SCF failure reports "...did not converge" on the error stack;
 *    xtb_getError returns and clears it, and the environment stays usable.
 *  - GFN2-xTB refuses periodic systems ("Multipoles not available with
 *    PBC"), a FAILED frame; GFN-FF in 6.5 has no periodic support, refused
 *    here for the same reason.
 * libxtb is not thread-safe and has global state of its own: one
 * calculator in use at a time per process.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xtb.h>

#include "calc_impl.h"
#include "mbe_internal.h"

enum xmethod { XM_GFN2, XM_GFN1, XM_GFNFF };

typedef void (*xtb_load_fn)(xtb_TEnvironment, xtb_TMolecule, xtb_TCalculator,
                            char *);

typedef struct xmethod_info {
    const char *name;
    int max_z;         /* last element with parameters */
    int scf;           /* etemp and max_iter apply */
    int periodic;      /* periodic frames possible at all */
    int reuse;         /* parametrisation reusable across geometries */
    xtb_load_fn load;
} xmethod_info;

static const xmethod_info methods[] = {
    [XM_GFN2] = {"gfn2-xtb", 86, 1, 1, 1, xtb_loadGFN2xTB},
    [XM_GFN1] = {"gfn1-xtb", 86, 1, 1, 1, xtb_loadGFN1xTB},
    /* libxtb 6.5.1's GFN-FF tables end at 86 too: beyond, it reads past
     * them (valgrind) before failing. */
    [XM_GFNFF] = {"gfn-ff", 86, 0, 0, 0, xtb_loadGFNFF},
};

typedef struct xtb_state {
    const xmethod_info *m;
    xtb_TEnvironment env;
    xtb_TMolecule mol;       /* NULL: nothing loaded */
    xtb_TCalculator calc;
    int nat;                 /* atoms of mol */
    int periodic;            /* of mol */
    int *z;                  /* [cap] species of mol */
    double *xyz, *grad;      /* [3 cap], Bohr */
    double lat[9];
    size_t cap;
    char *work_dir;          /* GFN-FF: where it writes its files */
    int out_fd;              /* memfd taking libxtb's output, or -1 */
    int max_iter;            /* for messages */
    char version[64];
} xtb_state;

/* ------------------------------------------------------------ errors */

/* libxtb's error log "-2- a\n-1- b" as one line "a; b" in out. */
static void one_line(const char *in, char *out, size_t n)
{
    size_t len = 0;
    out[0] = '\0';
    while (*in && len + 1 < n) {
        size_t end = strcspn(in, "\n");
        const char *p = in, *stop = in + end;
        if (*p == '-' && isdigit((unsigned char)p[1])) {
            const char *q = p + 1;
            while (isdigit((unsigned char)*q))
                q++;
            if (*q == '-')
                p = q + 1;
        }
        while (p < stop && *p == ' ')
            p++;
        while (stop > p && stop[-1] == ' ')
            stop--;
        if (stop > p) {
            int w = snprintf(out + len, n - len, "%s%.*s", len ? "; " : "",
                             (int)(stop - p), p);
            len += w > 0 ? (size_t)w : 0;
        }
        in += end + (in[end] == '\n');
    }
}

/* Take libxtb's error log (clearing it) into buf as one line. */
static void take_error(xtb_state *s, char *buf, int n)
{
    char raw[MBE_ERR_LEN];
    int rn = (int)sizeof raw;
    memset(raw, 0, sizeof raw);
    xtb_getError(s->env, raw, &rn);
    raw[sizeof raw - 1] = '\0';
    one_line(raw, buf, (size_t)n);
    if (!buf[0])
        snprintf(buf, (size_t)n, "unspecified libxtb error");
}

static void drop_molecule(xtb_state *s)
{
    if (s->calc)
        xtb_delete(s->calc);
    if (s->mol)
        xtb_delete(s->mol);
    s->calc = NULL;
    s->mol = NULL;
    s->nat = 0;
}

/* After an engine error: the frame is FAILED (or not converged), and the
 * loaded state is dropped so that the next frame starts clean. */
static int engine_failed(xtb_state *s, const char *what, mbe_err *e)
{
    char msg[MBE_ERR_LEN - 128];
    take_error(s, msg, (int)sizeof msg);
    drop_molecule(s);
    if (strstr(msg, "did not converge") || strstr(msg, "not converged"))
        return mbe_failc(e, MBE_SCF_NOT_CONVERGED, "%s: SCF not converged "
                         "in %d iterations: %s", s->m->name, s->max_iter,
                         msg);
    return mbe_failc(e, MBE_FAILED, "%s: %s: %s", s->m->name, what, msg);
}

/* ------------------------------------------------- GFN-FF's own files */

static void empty_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d));)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            unlinkat(dirfd(d), de->d_name, 0);
    closedir(d);
}

static int make_work_dir(xtb_state *s, mbe_err *e)
{
    const char *tmp = getenv("TMPDIR");
    s->work_dir = mbe_asprintf("%s/mbe-gfnff-XXXXXX", tmp && *tmp ? tmp
                                                                   : "/tmp");
    if (!s->work_dir)
        return mbe_fail(e, "out of memory");
    if (!mkdtemp(s->work_dir)) {
        int err = errno;
        mbe_fail(e, "cannot create a directory for GFN-FF's files (%s): %s",
                 s->work_dir, strerror(err));
        free(s->work_dir);
        s->work_dir = NULL;
        return MBE_EFAIL;
    }
    return 0;
}

/* GFN-FF writes gfnff_topo and gfnff_adjacency into the working directory
 * on every load, with no way to turn that off through the C API; running
 * it inside a private directory keeps the caller's directory clean and
 * concurrent jobs off each other's files.  Returns the fd to come back
 * to, or -1 with e filled. */
static int enter_work_dir(const xtb_state *s, mbe_err *e)
{
    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0)
        return mbe_fail(e, "cannot open the working directory: %s",
                        strerror(errno));
    if (chdir(s->work_dir) < 0) {
        int err = errno;
        close(cwd);
        return mbe_fail(e, "cannot enter %s: %s", s->work_dir,
                        strerror(err));
    }
    return cwd;
}

static int leave_work_dir(const xtb_state *s, int cwd, mbe_err *e)
{
    int rc = fchdir(cwd);
    int err = errno;
    close(cwd);
    empty_dir(s->work_dir);
    if (rc < 0)
        return mbe_fail(e, "cannot return to the working directory: %s",
                        strerror(err));
    return 0;
}

/* ------------------------------------------------------------ set-up */

/* Muted verbosity still leaves GFN-FF's set-up report on libxtb's output
 * unit, stdout by default.  xtb_setOutput opens a Fortran unit that
 * xtb_releaseOutput (6.5) never closes, and gfortran refuses to open one
 * file in two units, so "/dev/null" would work for the first calculator
 * of a process only.  Each calculator gets an anonymous memory file
 * instead, emptied after every frame (writes after that leave a sparse
 * file, which costs no memory). */
static int sink_output(xtb_state *s, mbe_err *e)
{
    s->out_fd = memfd_create("mbe-xtb-output", MFD_CLOEXEC);
    if (s->out_fd < 0)
        return mbe_fail(e, "cannot create a sink for libxtb's output: %s",
                        strerror(errno));
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", s->out_fd);
    xtb_setOutput(s->env, path);
    if (xtb_checkEnvironment(s->env)) {
        char msg[MBE_ERR_LEN - 128];
        take_error(s, msg, (int)sizeof msg);
        return mbe_fail(e, "libxtb cannot write to %s: %s", path, msg);
    }
    return 0;
}

/* Version from the file name of the shared library ("libxtb.so.6.5.1");
 * libxtb has no call that returns it. */
static void find_version(char *buf, size_t n)
{
    snprintf(buf, n, "unknown (API %d)", xtb_getAPIVersion());
    Dl_info info;
    if (!dladdr((void *)xtb_newEnvironment, &info) || !info.dli_fname)
        return;
    char *real = realpath(info.dli_fname, NULL);
    if (!real)
        return;
    const char *v = strstr(real, ".so.");
    if (v && isdigit((unsigned char)v[4]) &&
        strspn(v + 4, "0123456789.") == strlen(v + 4))
        snprintf(buf, n, "%s", v + 4);
    free(real);
}

/* Loading for an H2 molecule shows whether the parameters load at
 * all, so that a broken installation fails here, not in every frame. */
static int probe_load(xtb_state *s, mbe_err *e)
{
    int nat = 2, z[2] = {1, 1}, uhf = 0;
    double xyz[6] = {0, 0, 0, 1.4, 0, 0}, charge = 0.0;
    int cwd = -1;
    if (s->work_dir && (cwd = enter_work_dir(s, e)) < 0)
        return MBE_EFAIL;
    xtb_TMolecule mol = xtb_newMolecule(s->env, &nat, z, xyz, &charge, &uhf,
                                        NULL, NULL);
    xtb_TCalculator calc = xtb_newCalculator();
    if (mol && calc && !xtb_checkEnvironment(s->env))
        s->m->load(s->env, mol, calc, NULL);
    int bad = !mol || !calc || xtb_checkEnvironment(s->env);
    char msg[MBE_ERR_LEN - 128] = "";
    if (bad)
        take_error(s, msg, (int)sizeof msg);
    if (calc)
        xtb_delete(calc);
    if (mol)
        xtb_delete(mol);
    if (cwd >= 0 && leave_work_dir(s, cwd, e) < 0)
        return MBE_EFAIL;
    if (bad)
        return mbe_fail(e, "libxtb cannot load the parametrisation: %s", msg);
    return 0;
}

static int xtb_setup(mbe_calc *c, enum xmethod method, mbe_err *e)
{
    const mbe_calc_opts *o = &c->opts;
    if (o->accuracy < 1e-4 || o->accuracy > 1e3) {
        char a[32];
        return mbe_fail(e, "accuracy must be between 0.0001 and 1000, got %s",
                        mbe_calc_fmt_double(a, o->accuracy));
    }
    /* libxtb rounds the electron count but uses the charge as given
     * elsewhere (charge-model guesses, GFN-FF's topology charges); the xtb
     * program accepts integers only. */
    if (o->charge != floor(o->charge)) {
        char q[32];
        return mbe_fail(e, "charge must be a whole number, got %s",
                        mbe_calc_fmt_double(q, o->charge));
    }
    xtb_state *s = calloc(1, sizeof *s);
    if (!s)
        return mbe_fail(e, "out of memory");
    c->state = s;
    s->m = &methods[method];
    s->out_fd = -1;
    s->max_iter = o->max_iter;
    find_version(s->version, sizeof s->version);
    s->env = xtb_newEnvironment();
    if (!s->env)
        return mbe_fail(e, "libxtb cannot create an environment");
    xtb_setVerbosity(s->env, XTB_VERBOSITY_MUTED);
    if (sink_output(s, e) < 0)
        return MBE_EFAIL;
    if (method == XM_GFNFF && make_work_dir(s, e) < 0)
        return MBE_EFAIL;
    return probe_load(s, e);
}

static int gfn2_setup(mbe_calc *c, mbe_err *e)
{
    return xtb_setup(c, XM_GFN2, e);
}

static int gfn1_setup(mbe_calc *c, mbe_err *e)
{
    return xtb_setup(c, XM_GFN1, e);
}

static int gfnff_setup(mbe_calc *c, mbe_err *e)
{
    return xtb_setup(c, XM_GFNFF, e);
}

static void xtb_teardown(mbe_calc *c)
{
    xtb_state *s = c->state;
    if (!s)
        return;
    drop_molecule(s);
    if (s->env) {
        xtb_releaseOutput(s->env);
        xtb_delete(s->env);
    }
    if (s->work_dir) {
        empty_dir(s->work_dir);
        rmdir(s->work_dir);
        free(s->work_dir);
    }
    if (s->out_fd >= 0)
        close(s->out_fd);
    free(s->z);
    free(s->xyz);
    free(s->grad);
    free(s);
    c->state = NULL;
}

static char *xtb_settings(const mbe_calc *c)
{
    const xtb_state *s = c->state;
    const mbe_calc_opts *o = &c->opts;
    char q[32], acc[32], et[32];
    mbe_calc_fmt_double(q, o->charge);
    mbe_calc_fmt_double(acc, o->accuracy);
    if (!s->m->scf)
        return mbe_asprintf("charge=%s\naccuracy=%s\nlibxtb=%s\n", q, acc,
                            s->version);
    return mbe_asprintf("charge=%s\nuhf=%d\naccuracy=%s\netemp=%s\n"
                        "max_iter=%d\nlibxtb=%s\n",
                        q, o->uhf, acc, mbe_calc_fmt_double(et, o->etemp),
                        o->max_iter, s->version);
}

/* ------------------------------------------------------------ frames */

/* A failure here only lets libxtb's output pile up in memory. */
static void empty_output(const xtb_state *s)
{
    if (ftruncate(s->out_fd, 0) < 0)
        return;
}

static int check_frame(const xtb_state *s, const mbe_frame_view *f,
                       mbe_err *e)
{
    if (f->n_atoms > INT_MAX / 3)
        return mbe_failc(e, MBE_FAILED, "%s: too many atoms (%lld)",
                         s->m->name, (long long)f->n_atoms);
    if (f->cell && !s->m->periodic)
        return mbe_failc(e, MBE_FAILED, "%s: periodic frames are not "
                         "supported by libxtb %s", s->m->name, s->version);
    for (int64_t i = 0; i < f->n_atoms; i++)
        if (f->atomic_numbers[i] > s->m->max_z)
            return mbe_failc(e, MBE_FAILED, "%s: atom %lld: element %lld "
                             "has no parameters (elements 1-%d only)",
                             s->m->name, (long long)i,
                             (long long)f->atomic_numbers[i], s->m->max_z);
    return MBE_COMPLETED;
}

static int reserve(xtb_state *s, size_t n, mbe_err *e)
{
    if (n <= s->cap)
        return 0;
    int *z = realloc(s->z, n * sizeof *z);
    if (z)
        s->z = z;
    double *x = realloc(s->xyz, 3 * n * sizeof *x);
    if (x)
        s->xyz = x;
    double *g = realloc(s->grad, 3 * n * sizeof *g);
    if (g)
        s->grad = g;
    if (!z || !x || !g)
        return mbe_fail(e, "out of memory");
    s->cap = n;
    return 0;
}

/* Whether the loaded parametrisation fits frame f. */
static int same_species(const xtb_state *s, const mbe_frame_view *f)
{
    if (!s->mol || !s->m->reuse || s->nat != f->n_atoms ||
        s->periodic != (f->cell != NULL))
        return 0;
    for (int i = 0; i < s->nat; i++)
        if (s->z[i] != f->atomic_numbers[i])
            return 0;
    return 1;
}

static void to_bohr(xtb_state *s, const mbe_frame_view *f)
{
    for (int64_t i = 0; i < 3 * f->n_atoms; i++)
        s->xyz[i] = f->positions[i] / MBE_BOHR_ANGSTROM;
    if (f->cell)
        for (int i = 0; i < 9; i++)
            s->lat[i] = f->cell[i] / MBE_BOHR_ANGSTROM;
}

static int load(xtb_state *s, const mbe_calc_opts *o,
                const mbe_frame_view *f, mbe_err *e)
{
    drop_molecule(s);
    int nat = (int)f->n_atoms, uhf = o->uhf;
    double charge = o->charge;
    const bool pbc[3] = {true, true, true};
    for (int i = 0; i < nat; i++)
        s->z[i] = (int)f->atomic_numbers[i];
    s->mol = xtb_newMolecule(s->env, &nat, s->z, s->xyz, &charge, &uhf,
                             f->cell ? s->lat : NULL, f->cell ? pbc : NULL);
    if (!s->mol || xtb_checkEnvironment(s->env))
        return engine_failed(s, "molecule", e);
    s->calc = xtb_newCalculator();
    if (!s->calc)
        return engine_failed(s, "calculator", e);
    s->m->load(s->env, s->mol, s->calc, NULL);
    if (xtb_checkEnvironment(s->env))
        return engine_failed(s, "set-up", e);
    xtb_setAccuracy(s->env, s->calc, o->accuracy);
    if (s->m->scf) {
        xtb_setElectronicTemp(s->env, s->calc, o->etemp);
        xtb_setMaxIter(s->env, s->calc, o->max_iter);
    }
    if (xtb_checkEnvironment(s->env))
        return engine_failed(s, "settings", e);
    s->nat = nat;
    s->periodic = f->cell != NULL;
    return MBE_COMPLETED;
}

static int place(xtb_state *s, const mbe_calc_opts *o,
                 const mbe_frame_view *f, mbe_err *e)
{
    to_bohr(s, f);
    if (!same_species(s, f))
        return load(s, o, f, e);
    xtb_updateMolecule(s->env, s->mol, s->xyz, f->cell ? s->lat : NULL);
    if (xtb_checkEnvironment(s->env))
        return engine_failed(s, "molecule", e);
    return MBE_COMPLETED;
}

static int singlepoint(xtb_state *s, const mbe_frame_view *f, double *energy,
                       double *forces, mbe_err *e)
{
    xtb_TResults res = xtb_newResults();
    if (!res)
        return mbe_fail(e, "%s: out of memory", s->m->name);
    double eh = 0.0;
    xtb_singlepoint(s->env, s->mol, s->calc, res);
    /* libxtb evaluates the gradient in every single point (no way to ask
     * for less); without forces it is just not read. */
    if (!xtb_checkEnvironment(s->env)) {
        xtb_getEnergy(s->env, res, &eh);
        if (forces)
            xtb_getGradient(s->env, res, s->grad);
    }
    xtb_delete(res);
    if (xtb_checkEnvironment(s->env))
        return engine_failed(s, "single point", e);
    *energy = eh * MBE_HARTREE_EV;
    for (int64_t i = 0; forces && i < 3 * f->n_atoms; i++)
        forces[i] = -s->grad[i] * (MBE_HARTREE_EV / MBE_BOHR_ANGSTROM);
    return MBE_COMPLETED;
}

static int run_frame(xtb_state *s, const mbe_calc_opts *o,
                     const mbe_frame_view *f, double *energy, double *forces,
                     mbe_err *e)
{
    int st = place(s, o, f, e);
    if (st != MBE_COMPLETED)
        return st;
    return singlepoint(s, f, energy, forces, e);
}

static int xtb_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                       double *forces, mbe_err *e)
{
    xtb_state *s = c->state;
    int st = check_frame(s, f, e);
    if (st != MBE_COMPLETED)
        return st;
    if (reserve(s, (size_t)f->n_atoms, e) < 0)
        return MBE_EFAIL;
    int cwd = -1;
    if (s->work_dir && (cwd = enter_work_dir(s, e)) < 0)
        return MBE_EFAIL;
    st = run_frame(s, &c->opts, f, energy, forces, e);
    empty_output(s);
    if (cwd >= 0 && leave_work_dir(s, cwd, e) < 0)
        return MBE_EFAIL;
    return st;
}

/* The SCF iteration limit says how long to try, not what is computed: a
 * retry of SCF_NOT_CONVERGED frames with a higher one is the same
 * method. */
static const char *const xtb_operational[] = {"max_iter", NULL};

static const mbe_calc_option xtb_options[] = {
    {"charge", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, charge), "Q",
     "total charge (xtb; default 0)", NULL},
    {"uhf", MBE_CALC_OPT_INTEGER, offsetof(mbe_calc_opts, uhf), "N",
     "unpaired electrons (xtb; default 0)", NULL},
    {"accuracy", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, accuracy), "A",
     "xtb accuracy (default 1.0)", NULL},
    {"etemp", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, etemp), "K",
     "electronic temperature (default 300)", NULL},
    {"max-iter", MBE_CALC_OPT_INTEGER, offsetof(mbe_calc_opts, max_iter), "N",
     "SCF iterations (default 250)", NULL},
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_gfn2_ops = {
    .name = "gfn2-xtb",
    .operational = xtb_operational,
    .options = xtb_options,
    .setup = gfn2_setup,
    .compute = xtb_compute,
    .settings = xtb_settings,
    .teardown = xtb_teardown,
};

const mbe_calc_ops mbe_calc_gfn1_ops = {
    .name = "gfn1-xtb",
    .operational = xtb_operational,
    .options = xtb_options,
    .setup = gfn1_setup,
    .compute = xtb_compute,
    .settings = xtb_settings,
    .teardown = xtb_teardown,
};

const mbe_calc_ops mbe_calc_gfnff_ops = {
    .name = "gfn-ff",
    .operational = xtb_operational,
    .options = xtb_options,
    .setup = gfnff_setup,
    .compute = xtb_compute,
    .settings = xtb_settings,
    .teardown = xtb_teardown,
};
