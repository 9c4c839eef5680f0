/*
 * calc_ipi.c - the ipi: calculator, "ipi:NAME" and "ipi:HOST:PORT": the
 * i-PI server of ipi.c (whose comment is the protocol) and an engine the
 * user starts, or that --engine starts.
 *
 * What is here is what the user chooses: the engine, its atoms, the box
 * of molecules, CODATA, and which of these settings are operational (a
 * resumed job may change how the engine is reached, not what it
 * computes).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "calc_impl.h"
#include "ipi.h"
#include "mbe_internal.h"

static int ipi_setup(mbe_calc *c, mbe_err *e)
{
    ipi_server *s = ipi_new(c, sizeof *s, &ipi_messages, e);
    if (!s)
        return MBE_EFAIL;
    if (c->opts.engine && strchr(c->opts.engine, '\n'))
        return mbe_fail(e, "the engine command must be one line");
    if (c->opts.engine && *c->opts.engine &&
        !(s->engine = mbe_strdup(c->opts.engine)))
        return mbe_fail(e, "out of memory");
    if (c->opts.engine_log && *c->opts.engine_log &&
        !(s->log = mbe_strdup(c->opts.engine_log)))
        return mbe_fail(e, "out of memory");
    if (c->opts.engine_atoms && c->opts.n_engine_atoms > 0) {
        int64_t n = c->opts.n_engine_atoms;
        if (!(s->z = malloc((size_t)n * sizeof *s->z)))
            return mbe_fail(e, "out of memory");
        for (int64_t i = 0; i < n; i++) {
            s->z[i] = c->opts.engine_atoms[i];
            if (s->z[i] < 1 || s->z[i] > 118)
                return mbe_fail(e, "engine atom %lld: invalid atomic number "
                                "%lld", (long long)i, (long long)s->z[i]);
        }
        s->n_atoms = n;
        s->atoms_given = 1;
    }
    return ipi_listen(c, c->arg, e);
}

static char *ipi_settings(const mbe_calc *c)
{
    const ipi_server *s = c->state;
    char box[32], ft[32];
    /* The given atoms as symbols, "O,H,H"; a frame's when not given. */
    size_t len = s->atoms_given ? 4 * (size_t)s->n_atoms + 1 : 16;
    char *atoms = malloc(len);
    if (!atoms)
        return NULL;
    if (s->atoms_given) {
        size_t k = 0;
        for (int64_t i = 0; i < s->n_atoms; i++)
            k += (size_t)snprintf(atoms + k, len - k, "%s%s", i ? "," : "",
                                  mbe_element_symbol((int)s->z[i]));
    } else {
        snprintf(atoms, len, "first frame");
    }
    /* Only a CODATA other than the default is written: shards of older
     * versions, which had none, stay resumable and mergeable. */
    char *out = mbe_asprintf("address=%s%s\nengine=%s\nengine_atoms=%s\n"
                             "ipi_box=%s\nframe_timeout=%s\n%s",
                             s->tcp ? "tcp:" : "unix:", s->where,
                             s->engine ? s->engine : "", atoms,
                             mbe_calc_fmt_double(box, c->opts.ipi_box),
                             mbe_calc_fmt_double(ft, c->opts.frame_timeout),
                             c->opts.ipi_codata == 2014 ? "codata=2014\n"
                                                        : "");
    free(atoms);
    return out;
}

static const char *const ipi_operational[] = {
    "address", "engine", "engine_atoms", "frame_timeout", "connect_timeout",
    NULL};

/* check_opts refuses other years too, but names the setting: this names
 * the option as it was typed. */
static int codata_check(const char *value, const mbe_calc_opts *o,
                        mbe_err *e)
{
    if (o->ipi_codata != 2014 && o->ipi_codata != 2018)
        return mbe_fail(e, "'%s' is not 2014 or 2018", value);
    return 0;
}

static const mbe_calc_option ipi_options[] = {
    {"engine", MBE_CALC_OPT_STRING, offsetof(mbe_calc_opts, engine),
     "COMMAND", "ipi: start the engine with COMMAND (output to\n"
     "SHARD's name with .engine.log)", NULL},
    MBE_CALC_OPTION_CONNECT_TIMEOUT,
    MBE_CALC_OPTION_FRAME_TIMEOUT,
    {"ipi-box", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, ipi_box), "A",
     "ipi: cube edge sent for molecules (default 50)", NULL},
    {"engine-atoms", MBE_CALC_OPT_FILE, 0, "XYZ",
     "ipi: the engine's atoms, in order, are those of\n"
     "the file's first frame (default: first frame\ncomputed)", NULL},
    {"ipi-remote", MBE_CALC_OPT_FLAG, offsetof(mbe_calc_opts, ipi_remote),
     NULL, "ipi:HOST:PORT may listen beyond loopback and\n"
     "accept engines of other hosts", NULL},
    {"ipi-codata", MBE_CALC_OPT_INTEGER, offsetof(mbe_calc_opts, ipi_codata),
     "Y", "ipi: the engine's Bohr and Hartree, CODATA 2018\n"
     "(default) or 2014 (ASE 3.22's SocketClient)", codata_check},
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_ipi_ops = {
    .name = "ipi",
    .takes_arg = 1,
    .synopsis = "ipi:NAME, ipi:HOST:PORT",
    .operational = ipi_operational,
    .options = ipi_options,
    .check_arg = ipi_check_address,
    .setup = ipi_setup,
    .compute = ipi_compute,
    .settings = ipi_settings,
    .teardown = ipi_teardown,
};
