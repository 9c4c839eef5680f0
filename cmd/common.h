/* common.h - helpers shared by the programs in cmd/: messages in the
 * "prog: what failed: why" form, the lock-wait message, progress lines. */
#ifndef MBE_CMD_COMMON_H
#define MBE_CMD_COMMON_H

#include <stdio.h>

#include "mbe.h"

/* Exit codes shared by every program (each man page lists its own). */
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,
    EXIT_USAGE = 2
};

extern const char *prog_name;

/* "prog: msg" on stderr. */
void say_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "prog: what: e->msg" on stderr. */
void say_err(const char *what, const mbe_err *e);
/* Message on stderr unless quiet. */
void say_info(int quiet, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Usage error: message, hint to --help, exit 2. */
void usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
/* Usage error for what getopt_long returned as c ('?' or ':', with an
 * optstring that starts with ':'); getopt's own messages are turned off
 * so that the user sees one line. */
void option_error(int c, char **argv) __attribute__((noreturn));
void print_version(void);

/* Lock-wait callback printing "prog: waiting for the lock on X (N s so
 * far)"; ud is a lock_wait.  A time-out under a second asks for a quick
 * answer, not a wait: its one line is the time-out error. */
typedef struct lock_wait {
    const int *quiet;
    double timeout;
} lock_wait;
void lock_wait_message(void *ud, const char *lock_path, double waited);

/* The non-negative number of seconds s given to option opt; a usage
 * error (exit 2) otherwise. */
double seconds_arg(const char *opt, const char *s);
/* Same, for options that need more than zero seconds. */
double positive_seconds_arg(const char *opt, const char *s);

/* The text of @FILE given to option opt (- for standard input), white
 * space around it dropped; malloc'd.  A usage error when unreadable. */
char *read_at_file(const char *opt, const char *name);

/* Progress on stderr: a live line on a terminal, one line per step (at
 * most every `every` seconds) otherwise. */
typedef struct progress {
    int tty;
    int quiet;
    double t0;
    double last;
    double every;
    size_t total;
    size_t done;
    size_t failed;
    const char *what;
} progress;

double now_seconds(void);
void progress_start(progress *p, const char *what, size_t total, int quiet);
/* Record one more item; print when due.  label may be NULL. */
void progress_step(progress *p, int failed, const char *label);
void progress_end(progress *p);

#endif
