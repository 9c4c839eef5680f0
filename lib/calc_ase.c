/*
 * calc_ase.c - "ase:MODULE:CALL": any ASE calculator, made in our own
 * engine (libexec/mbe-ase-engine.py) by importing MODULE and evaluating
 * CALL.  The engine connects to the server of ipi.c on a private UNIX
 * socket; it is started at the first frame, or earlier when the level of
 * theory is asked for, since the calculator names it.
 *
 * Our messages replace i-PI's: i-PI's never name the species, and convert
 * units both ways.  The engine (whose docstring is the protocol) is told
 * each frame's species, cell and periodicity, and works in the
 * calculator's own eV and Å: nothing is converted either way.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calc_impl.h"
#include "ipi.h"
#include "mbe_internal.h"

#define ASE_VERSION 1
#define ASE_MSG_MAX 4096

typedef struct ase_state {
    ipi_server srv;         /* first: the server's functions take c->state */
    char *level;            /* the calculator's level_of_theory, NULL:
                               none or not known yet */
    int level_known;
} ase_state;

/* ---------------------------------------------------------- messages */

/* An int32 length, then that many bytes into buf (NUL-terminated, at most
 * n - 1 kept, the rest dropped). */
static int recv_text(mbe_calc *c, char *buf, size_t n, double dl,
                     const char *what, mbe_err *e)
{
    int32_t len = 0;
    int r = ipi_recv_all(c, &len, sizeof len, dl, what, e);
    if (r != XC_OK)
        return r;
    if (len < 0 || len > ASE_MSG_MAX)
        return mbe_failc(e, XC_BROKEN, "the engine sent %s of %d bytes "
                         "(garbled?)", what, (int)len);
    size_t keep = (size_t)len < n ? (size_t)len : n - 1;
    if ((r = ipi_recv_all(c, buf, keep, dl, what, e)) != XC_OK ||
        (r = ipi_recv_skip(c, (size_t)len - keep, dl, what, e)) != XC_OK)
        return r;
    buf[keep] = '\0';
    return XC_OK;
}

/* MBEHELLO: the engine made its calculator (and tells its level of
 * theory), or says why it could not.  No time limit but the engine's
 * life: loading a model may take minutes. */
static int ase_greet(mbe_calc *c, mbe_err *e)
{
    ase_state *a = c->state;
    ipi_server *s = &a->srv;
    char h[IPI_HDR], text[1024];
    int32_t head[2] = {0, 0};
    text[0] = '\0';
    int r = ipi_recv_header(c, h, 0, "MBEHELLO", e);
    if (r == XC_OK && !ipi_is_hdr(h, "MBEHELLO"))
        r = ipi_unexpected(h, "the connection", e);
    if (r == XC_OK)
        r = ipi_recv_all(c, head, sizeof head, 0, "MBEHELLO", e);
    if (r == XC_OK && head[0] != ASE_VERSION)
        r = mbe_failc(e, XC_BROKEN, "the engine speaks version %d of our "
                      "protocol, we %d (an mbe-ase-engine of another "
                      "mbe-shard?)", (int)head[0], ASE_VERSION);
    if (r == XC_OK)
        r = recv_text(c, text, sizeof text, 0, "MBEHELLO", e);
    if (r == XC_OK && !head[1])
        r = mbe_failc(e, XC_BROKEN, "%s", text);
    if (r == XC_STOP)
        return r;
    if (r != XC_OK) {
        s->dead = 1;
        snprintf(s->dead_msg, sizeof s->dead_msg, "%s", e->msg);
        return r;
    }
    s->greeted = 1;
    if (!a->level_known) {
        a->level_known = 1;
        if (*text && !(a->level = mbe_strdup(text)))
            return mbe_failc(e, XC_BROKEN, "out of memory");
    }
    return XC_OK;
}

/* MBEFRAME: n, flags, pbc, cell (Å), numbers, positions (Å). */
static char *ase_frame_msg(const mbe_frame_view *f, int want_forces,
                           size_t *len)
{
    size_t n = (size_t)f->n_atoms;
    *len = IPI_HDR + 5 * sizeof(int32_t) + 9 * sizeof(double) +
           n * sizeof(int32_t) + 3 * n * sizeof(double);
    char *msg = malloc(*len);
    if (!msg)
        return NULL;
    memset(msg, ' ', IPI_HDR);
    memcpy(msg, "MBEFRAME", 8);
    int32_t head[5] = {(int32_t)n, want_forces, !!f->cell, !!f->cell,
                       !!f->cell};
    double cell[9] = {0};
    if (f->cell)
        memcpy(cell, f->cell, sizeof cell);
    char *p = msg + IPI_HDR;
    memcpy(p, head, sizeof head);
    p += sizeof head;
    memcpy(p, cell, sizeof cell);
    p += sizeof cell;
    for (size_t i = 0; i < n; i++, p += sizeof(int32_t)) {
        int32_t z = (int32_t)f->atomic_numbers[i];
        memcpy(p, &z, sizeof z);
    }
    memcpy(p, f->positions, 3 * n * sizeof(double));
    return msg;
}

/* One frame: MBEFRAME out, MBERESULT in.  XC_OK, MBE_SCF_NOT_CONVERGED
 * or XC_FRAME (the calculator's exception, in e) leave the connection
 * usable. */
static int ase_exchange(mbe_calc *c, const mbe_frame_view *f, double *energy,
                        double *forces, mbe_err *e)
{
    ipi_server *s = c->state;
    double dl = ipi_frame_deadline(c, mbe_now());
    size_t len, n3 = 3 * (size_t)f->n_atoms;
    char *msg = ase_frame_msg(f, forces != NULL, &len);
    if (!msg)
        return mbe_fail(e, "out of memory");
    int r = ipi_send_all(c, msg, len, dl, "MBEFRAME", e);
    free(msg);
    if (r != XC_OK)
        return r;
    s->busy = 1;
    char h[IPI_HDR];
    int32_t st = 0, nf = 0;
    double en = NAN;
    if ((r = ipi_recv_header(c, h, dl, "MBERESULT", e)) != XC_OK)
        return r;
    if (!ipi_is_hdr(h, "MBERESULT"))
        return ipi_unexpected(h, "MBEFRAME", e);
    if ((r = ipi_recv_all(c, &st, sizeof st, dl, "the status", e)) !=
            XC_OK ||
        (r = ipi_recv_all(c, &en, sizeof en, dl, "the energy", e)) !=
            XC_OK ||
        (r = ipi_recv_all(c, &nf, sizeof nf, dl, "the force count", e)) !=
            XC_OK)
        return r;
    if ((nf != 0 && (size_t)nf != (size_t)f->n_atoms) ||
        (st == MBE_COMPLETED && forces && !nf))
        return mbe_failc(e, XC_BROKEN, "the engine sent %d forces for %lld "
                         "atoms", (int)nf, (long long)f->n_atoms);
    if (nf && (r = forces ? ipi_recv_all(c, forces, n3 * sizeof(double), dl,
                                         "the forces", e)
                          : ipi_recv_skip(c, n3 * sizeof(double), dl,
                                          "the forces", e)) != XC_OK)
        return r;
    char text[MBE_ERR_LEN - 64];
    text[0] = '\0';
    if ((r = recv_text(c, text, sizeof text, dl, "the message", e)) != XC_OK)
        return r;
    s->busy = 0;
    *energy = en;
    if (st == MBE_COMPLETED)
        return XC_OK;
    if (st == MBE_SCF_NOT_CONVERGED)
        return mbe_failc(e, MBE_SCF_NOT_CONVERGED, "%s", text);
    if (st == MBE_FAILED)
        return mbe_failc(e, XC_FRAME, "%s", text);
    return mbe_failc(e, XC_BROKEN, "the engine sent status %d", (int)st);
}

static const ipi_proto ase_messages = {
    .greet = ase_greet,
    .exchange = ase_exchange,
};

/* -------------------------------------------------------- calculator */

/* "MODULE:CALL" as written, MODULE a dotted Python name and CALL one
 * line: a usage error when not (mbe_calc_check). */
static int ase_check_arg(const char *arg, const mbe_calc_opts *o, mbe_err *e)
{
    (void)o;
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg || !colon[1])
        return mbe_fail(e, "'ase:%s': give ase:MODULE:CALL, e.g. "
                        "ase:ase.calculators.emt:EMT()", arg);
    for (const char *p = arg; p < colon; p++)
        if (!(*p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
            return mbe_fail(e, "'%.*s' is not a Python module name "
                            "(ase:MODULE:CALL)", (int)(colon - arg), arg);
    if (strchr(colon, '\n'))
        return mbe_fail(e, "the calculator's CALL must be one line");
    return 0;
}

static int ase_parse(ipi_server *s, const char *arg, const char *program,
                     mbe_err *e)
{
    const char *colon = strchr(arg, ':'); /* ase_check_arg passed it */
    if (!program || !*program)
        return mbe_fail(e, "the engine program mbe-ase-engine was not found "
                        "(set MBE_ASE_ENGINE)");
    if (access(program, R_OK) < 0)
        return mbe_fail(e, "cannot read the engine program %s: %s", program,
                        strerror(errno));
    s->env[0] = mbe_asprintf("MBE_ASE_MODULE=%.*s", (int)(colon - arg),
                             arg);
    s->env[1] = mbe_asprintf("MBE_ASE_CALL=%s", colon + 1);
    s->env[2] = mbe_asprintf("MBE_ASE_ENGINE=%s", program);
    /* The user's python3 (or $MBE_PYTHON): the one their calculator is
     * installed for. */
    s->engine = mbe_strdup("exec \"${MBE_PYTHON:-python3}\" "
                           "\"$MBE_ASE_ENGINE\"");
    if (!s->env[0] || !s->env[1] || !s->env[2] || !s->engine)
        return mbe_fail(e, "out of memory");
    return 0;
}

static int ase_setup(mbe_calc *c, mbe_err *e)
{
    ase_state *a = ipi_new(c, sizeof *a, &ase_messages, e);
    if (!a)
        return MBE_EFAIL;
    ipi_server *s = &a->srv;
    if (c->opts.engine)
        return mbe_fail(e, "ase: starts its own engine (no --engine)");
    if (ase_parse(s, c->arg, c->opts.ase_engine, e) < 0)
        return MBE_EFAIL;
    if (c->opts.engine_log && *c->opts.engine_log &&
        !(s->log = mbe_strdup(c->opts.engine_log)))
        return mbe_fail(e, "out of memory");
    /* A private socket of this calculator: pid and address make it
     * unique on the host. */
    char name[64];
    snprintf(name, sizeof name, "mbe-ase-%ld-%lx", (long)getpid(),
             (unsigned long)(uintptr_t)c);
    return ipi_listen(c, name, e);
}

/* The calculator's level_of_theory: the engine is started to learn it. */
static int ase_level(mbe_calc *c, char **level, mbe_err *e)
{
    ase_state *a = c->state;
    ipi_server *s = &a->srv;
    *level = NULL;
    if (!a->level_known && !s->dead) {
        int r = s->cfd < 0 ? ipi_connect(c, e) : 0;
        if (r == 0)
            r = ase_greet(c, e);
        if (r == MBE_EINTR || r == XC_STOP)
            return mbe_failc(e, MBE_EINTR, "interrupted while the engine "
                             "started");
        if (r != 0)
            return MBE_EFAIL;
    }
    if (s->dead)
        return mbe_fail(e, "%s", s->dead_msg);
    if (a->level && !(*level = mbe_strdup(a->level)))
        return mbe_fail(e, "out of memory");
    return 0;
}

static char *ase_settings(const mbe_calc *c)
{
    const ase_state *a = c->state;
    const ipi_server *s = &a->srv;
    char ft[32];
    return mbe_asprintf("module=%s\ncall=%s\naddress=unix:%s\n"
                        "frame_timeout=%s\n",
                        strchr(s->env[0], '=') + 1,
                        strchr(s->env[1], '=') + 1, s->where,
                        mbe_calc_fmt_double(ft, c->opts.frame_timeout));
}

static void ase_teardown(mbe_calc *c)
{
    ase_state *a = c->state;
    if (a)
        free(a->level);
    ipi_teardown(c);
}

static const char *const ase_operational[] = {
    "address", "frame_timeout", "connect_timeout", NULL};

static const mbe_calc_option ase_options[] = {
    MBE_CALC_OPTION_CONNECT_TIMEOUT,
    MBE_CALC_OPTION_FRAME_TIMEOUT,
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_ase_ops = {
    .name = "ase",
    .takes_arg = 1,
    .synopsis = "ase:MODULE:CALL",
    .operational = ase_operational,
    .options = ase_options,
    .check_arg = ase_check_arg,
    .setup = ase_setup,
    .compute = ipi_compute,
    .settings = ase_settings,
    .level = ase_level,
    .teardown = ase_teardown,
};
