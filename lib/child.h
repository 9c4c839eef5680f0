/*
 * child.h - child processes of the library (child.c): an engine or a
 * command started under /bin/sh in a group of its own, waited for with a
 * deadline and a stop flag, killed with its group.  Private to lib/;
 * used by calc_exec.c (a command per frame) and ipi.c (the engines of
 * ipi: and ase:).
 */
#ifndef MBE_CHILD_H
#define MBE_CHILD_H

#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#include "mbe.h"

/* Start "/bin/sh -c cmd" in a process group of its own, with in, out and
 * err (-1: /dev/null) as its standard streams, every other descriptor
 * closed, and the strings of env (NULL-terminated "KEY=value" list, may be
 * NULL) added to the environment.  The child gets SIGTERM if we die. */
int mbe_child_start(const char *cmd, int in, int out, int err,
                    const char *const *env, pid_t *pid, mbe_err *e);
/* Reap pid if it has exited: 1 with *status (waitpid's) filled, 0 while it
 * runs. */
int mbe_child_exited(pid_t pid, int *status);
/* Wait until pid exits or deadline (mbe_now() clock) passes: 1 exited, 0
 * timed out, MBE_EINTR when *stop is set (stop may be NULL: no flag). */
int mbe_child_wait(const volatile sig_atomic_t *stop, pid_t pid,
                   double deadline, int *status);
/* SIGTERM to pid's process group, SIGKILL after grace seconds, reaped. */
void mbe_child_kill(pid_t pid, double grace, int *status);
/* "exited with status 3", "killed by signal 9 (Killed)" into buf. */
void mbe_child_describe(int status, char *buf, size_t n);
/* The last few non-empty lines of text[0..len) on one line (" | " between
 * them), printable ASCII only, at most n-1 bytes: what a child said last
 * on its standard error. */
void mbe_text_tail(const char *text, size_t len, char *buf, size_t n);

#endif
