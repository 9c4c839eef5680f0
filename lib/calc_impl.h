/*
 * calc_impl.h - what a calculator back end provides to calc.c.  Private to
 * lib/calc*.c.
 *
 * A back end is one const mbe_calc_ops table; calc.c picks the table by
 * name, validates the options, checks the frame, and calls the hooks.
 * Adding a calculator (an i-PI socket server, an external command) means a
 * new calc_<name>.c with its table and one line in calc.c's list.
 */
#ifndef MBE_CALC_IMPL_H
#define MBE_CALC_IMPL_H

#include "mbe.h"

typedef struct mbe_calc_ops mbe_calc_ops;

struct mbe_calc {
    const mbe_calc_ops *ops;
    mbe_calc_opts opts;   /* validated copy; its strings are the caller's,
                             setup copies what it keeps */
    const char *arg;      /* what follows "name:" (back ends with takes_arg),
                             valid during setup only */
    void *state;          /* the back end's, made by setup */
};

struct mbe_calc_ops {
    const char *name;     /* canonical, lowercase */
    /* Non-zero: selected as "name:ARG" (ARG non-empty, handed to setup in
     * c->arg); such back ends are external engines. */
    int takes_arg;
    /* How error messages list it, e.g. "ipi:NAME"; NULL: name. */
    const char *synopsis;
    /* Keys of its settings that say how to reach an engine or how long to
     * wait for it, not what is computed (NULL-terminated; NULL: none): a
     * resumed job may change them, and shards that differ only in them
     * hold results of one method. */
    const char *const *operational;
    /* Its command-line options (mbe.h), ended by a row whose name is
     * NULL; NULL: none.  A row several back ends list is one macro below,
     * so that they agree and --help shows it once. */
    const mbe_calc_option *options;
    /* Whether ARG is well formed, before anything is set up (NULL: any
     * ARG): a malformed one is a usage error.  0, or negative with e. */
    int (*check_arg)(const char *arg, const mbe_calc_opts *o, mbe_err *e);
    /* Check the options the back end cares about beyond the generic checks
     * and make c->state.  0 or negative with e filled. */
    int (*setup)(mbe_calc *c, mbe_err *e);
    /* Frame already checked by calc.c: n_atoms >= 1, atomic numbers
     * 1..118, finite positions, finite non-degenerate cell when periodic.
     * Same contract as mbe_calc_compute: forces NULL asks for the energy
     * only. */
    int (*compute)(mbe_calc *c, const mbe_frame_view *f, double *energy,
                   double *forces, mbe_err *e);
    /* The level of theory the calculator itself names (malloc'd into
     * *level), NULL when it names none.  NULL hook: none. */
    int (*level)(mbe_calc *c, char **level, mbe_err *e);
    /* "key=value\n" lines after the common "method=" line; malloc'd, NULL
     * when out of memory. */
    char *(*settings)(const mbe_calc *c);
    /* Free c->state (may be NULL after a failed setup). */
    void (*teardown)(mbe_calc *c);
};

extern const mbe_calc_ops mbe_calc_gfn2_ops;
extern const mbe_calc_ops mbe_calc_gfn1_ops;
extern const mbe_calc_ops mbe_calc_gfnff_ops;
extern const mbe_calc_ops mbe_calc_lj_ops;
extern const mbe_calc_ops mbe_calc_ipi_ops;
extern const mbe_calc_ops mbe_calc_exec_ops;
extern const mbe_calc_ops mbe_calc_ase_ops;

/* The i-th known back end, NULL past the last (for the tests). */
const mbe_calc_ops *mbe_calc_backend_at(size_t i);

/* Option rows shared by the external engines. */
#define MBE_CALC_OPTION_CONNECT_TIMEOUT                                     \
    {"connect-timeout", MBE_CALC_OPT_POSITIVE_SECONDS,                      \
     offsetof(mbe_calc_opts, connect_timeout), "S",                         \
     "ipi: wait S for the engine (default 60)", NULL}
#define MBE_CALC_OPTION_FRAME_TIMEOUT                                       \
    {"frame-timeout", MBE_CALC_OPT_SECONDS,                                 \
     offsetof(mbe_calc_opts, frame_timeout), "S",                           \
     "ipi, exec: limit per frame (default none)", NULL}

/* CODATA 2018, as master-format.md prescribes. */
#define MBE_BOHR_ANGSTROM 0.529177210903
#define MBE_HARTREE_EV 27.211386245988

/* Shortest "%.Ng" (N = 1..17) that reads back as exactly v, into buf of at
 * least 32 bytes; returns buf. */
char *mbe_calc_fmt_double(char *buf, double v);

/* Lattice helpers for cells whose rows are lattice vectors. */
double mbe_cell_det(const double cell[9]);
/* Smallest distance between opposite faces; 0 for a degenerate cell. */
double mbe_cell_min_width(const double cell[9]);

/* ------------------------------------------------------ external engines
 * (child processes of engines and commands: child.h) */

#include <sys/types.h>

/* Whether the client connected on fd (an accepted socket: TCP when tcp)
 * may give results (calc_peer.c): a process of our uid and, when engine >
 * 0, that process or one of its descendants; on TCP a peer on another
 * host only when allow_remote.  0 with the reason in why when refused. */
int mbe_peer_allowed(int fd, int tcp, pid_t engine, int allow_remote,
                     char *why, size_t n);

/* Whether the caller's stop flag is set. */
int mbe_calc_stopped(const mbe_calc *c);

#endif
