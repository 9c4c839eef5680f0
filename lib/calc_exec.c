/*
 * calc_exec.c - "exec:COMMAND": an external command as a calculator.
 *
 * For each frame, COMMAND runs through /bin/sh -c in a process group of
 * its own, with the frame as extended XYZ (ASE's conventions) on standard
 * input, MBE_FRAME (the frame's index) and MBE_NATOMS in its environment.
 * It must write one frame of extended XYZ to standard output with
 * "energy=<eV>" in the comment line and a "forces:R:3" property (eV/Å),
 * as ase.io.write(sys.stdout, atoms, format="extxyz") does after a
 * calculation, and exit 0.  Anything else gives the frame FAILED with the
 * command's own words (the tail of its standard error).
 *
 * Standard input is an unlinked temporary file, so that a command that
 * never reads it cannot block us and one that exits early cannot raise
 * SIGPIPE.  Standard output and error are pipes drained with poll() in
 * slices, so that the per-frame time-out and the caller's stop flag are
 * noticed within a fraction of a second; on either the whole process
 * group is killed (SIGTERM, then SIGKILL) and reaped.  Processes the
 * command leaves behind are killed when it exits; if they keep its output
 * open, after EXIT_GRACE seconds.
 *
 * lib/xyz.c's reader works on files and keeps positions only; the
 * command's output needs energy and forces, so the one frame is parsed
 * here, with the same key=value and Properties conventions.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calc_impl.h"
#include "child.h"
#include "mbe_internal.h"

/* Poll slice: how quickly a stop flag or a time-out is noticed. */
#define SLICE_MS 100
/* Limits on what a command may write. */
#define OUT_MAX ((size_t)512 << 20)
#define ERR_KEEP ((size_t)16 << 10)
/* Seconds between SIGTERM and SIGKILL. */
#define KILL_GRACE 2.0
/* Seconds the pipes may stay open after the command exited. */
#define EXIT_GRACE 2.0

/* -------------------------------------------------------------- writing */

/* One frame as extended XYZ, ASE's conventions: Lattice rows are the
 * lattice vectors; every number round-trips exactly. */
static int write_xyz(FILE *f, const mbe_frame_view *v)
{
    fprintf(f, "%lld\n", (long long)v->n_atoms);
    if (v->cell) {
        fputs("Lattice=\"", f);
        for (int i = 0; i < 9; i++)
            fprintf(f, "%s%.17g", i ? " " : "", v->cell[i]);
        fputs("\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"", f);
    } else {
        fputs("Properties=species:S:1:pos:R:3 pbc=\"F F F\"", f);
    }
    fprintf(f, " mbe_frame=%lld\n", (long long)v->index);
    for (int64_t i = 0; i < v->n_atoms; i++) {
        const double *p = v->positions + 3 * i;
        fprintf(f, "%-2s %.17g %.17g %.17g\n",
                mbe_element_symbol((int)v->atomic_numbers[i]), p[0], p[1],
                p[2]);
    }
    return fflush(f) == 0 && !ferror(f) ? 0 : -1;
}

/* -------------------------------------------------------------- parsing */

/* Next line of s (NUL-terminated, modified): returns it, advances *s. */
static char *next_line(char **s)
{
    if (!*s || !**s)
        return NULL;
    char *line = *s;
    char *nl = strchr(line, '\n');
    if (nl) {
        *nl = '\0';
        *s = nl + 1;
    } else {
        *s = line + strlen(line);
    }
    size_t n = strlen(line);
    if (n && line[n - 1] == '\r')
        line[n - 1] = '\0';
    return line;
}

static int blank(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return !*s;
}

/* key=value pairs of an extended-XYZ comment line, values optionally in
 * "..." or {...}.  Finds the values of "energy" and "Properties" (keys
 * case-insensitive); they point into line, which is modified. */
static void comment_values(char *line, char **energy, char **props)
{
    *energy = *props = NULL;
    char *p = line;
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            return;
        char *key = p;
        while (*p && *p != '=' && !isspace((unsigned char)*p))
            p++;
        char *key_end = p;
        while (isspace((unsigned char)*p))
            p++;
        char *val = NULL;
        if (*p == '=') {
            p++;
            while (isspace((unsigned char)*p))
                p++;
            char close = *p == '"' ? '"' : *p == '{' ? '}' : 0;
            if (close) {
                val = ++p;
                while (*p && *p != close)
                    p++;
            } else {
                val = p;
                while (*p && !isspace((unsigned char)*p))
                    p++;
            }
            if (*p)
                *p++ = '\0';
        }
        char save = *key_end;
        *key_end = '\0';
        if (val && strcasecmp(key, "energy") == 0)
            *energy = val;
        else if (val && strcasecmp(key, "properties") == 0)
            *props = val;
        if (!val)
            *key_end = save;
    }
}

/* Columns of species and forces from "species:S:1:pos:R:3:forces:R:3".
 * 0, or -1 with e filled (status FAILED). */
static int property_columns(char *props, long *species_col, long *force_col,
                            long *n_cols, mbe_err *e)
{
    *species_col = *force_col = -1;
    long col = 0;
    char *save = NULL;
    for (char *name = strtok_r(props, ":", &save); name;
         name = strtok_r(NULL, ":", &save)) {
        char *type = strtok_r(NULL, ":", &save);
        char *count = strtok_r(NULL, ":", &save);
        char *end;
        long n = count ? strtol(count, &end, 10) : 0;
        if (!type || !count || *end || n < 1 || n > 1000 || strlen(type) != 1)
            return mbe_failc(e, -1, "output: malformed Properties near "
                             "'%s'", name);
        if (strcasecmp(name, "species") == 0 && n == 1)
            *species_col = col;
        if (strcasecmp(name, "forces") == 0) {
            if (n != 3 || (*type != 'R' && *type != 'r'))
                return mbe_failc(e, -1, "output: property 'forces' is "
                                 "%s:%ld, not R:3", type, n);
            *force_col = col;
        }
        col += n;
    }
    *n_cols = col;
    return 0;
}

static int parse_double(const char *s, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && !*end && errno != ERANGE && isfinite(*v);
}

/* Energy (eV) and forces (eV/Å) from the command's standard output. */
static int parse_output(char *out, const mbe_frame_view *f, double *energy,
                        double *forces, mbe_err *e)
{
    char *s = out, *line;
    while ((line = next_line(&s)) && blank(line))
        ;
    if (!line)
        return mbe_failc(e, MBE_FAILED, "the command wrote nothing to "
                         "standard output");
    char *end;
    errno = 0;
    long long n = strtoll(line, &end, 10);
    if (end == line || !blank(end) || errno)
        return mbe_failc(e, MBE_FAILED, "output line 1 is not an atom count "
                         "(extended XYZ expected): '%.60s'", line);
    if (n != f->n_atoms)
        return mbe_failc(e, MBE_FAILED, "output has %lld atoms, the frame "
                         "%lld", n, (long long)f->n_atoms);
    char *comment = next_line(&s);
    if (!comment)
        return mbe_failc(e, MBE_FAILED, "output ends after the atom count");
    char *en = NULL, *props = NULL;
    comment_values(comment, &en, &props);
    if (!en)
        return mbe_failc(e, MBE_FAILED, "output: no energy= in the comment "
                         "line");
    if (!parse_double(en, energy))
        return mbe_failc(e, MBE_FAILED, "output: energy='%.40s' is not a "
                         "finite number", en);
    if (!forces)
        return MBE_COMPLETED;
    if (!props)
        return mbe_failc(e, MBE_FAILED, "output: no Properties= in the "
                         "comment line (a forces:R:3 property is needed)");
    long sp_col = -1, f_col = -1, n_cols = 0;
    if (property_columns(props, &sp_col, &f_col, &n_cols, e) < 0)
        return MBE_FAILED;
    if (f_col < 0)
        return mbe_failc(e, MBE_FAILED, "output: no forces property in "
                         "Properties");
    for (int64_t i = 0; i < f->n_atoms; i++) {
        line = next_line(&s);
        if (!line)
            return mbe_failc(e, MBE_FAILED, "output ends after %lld of %lld "
                             "atoms", (long long)i, (long long)f->n_atoms);
        char *save = NULL, *tok;
        long col = 0;
        int got = 0;
        for (tok = strtok_r(line, " \t", &save); tok && col < n_cols;
             tok = strtok_r(NULL, " \t", &save), col++) {
            if (col == sp_col) {
                int z = mbe_element_z(tok);
                if (z != f->atomic_numbers[i])
                    return mbe_failc(e, MBE_FAILED, "output atom %lld is "
                                     "'%.8s', the frame's is %s",
                                     (long long)i, tok,
                                     mbe_element_symbol(
                                         (int)f->atomic_numbers[i]));
            }
            if (col >= f_col && col < f_col + 3) {
                if (!parse_double(tok, &forces[3 * i + (col - f_col)]))
                    return mbe_failc(e, MBE_FAILED, "output atom %lld: force "
                                     "'%.30s' is not a finite number",
                                     (long long)i, tok);
                got++;
            }
        }
        if (col < n_cols || got != 3)
            return mbe_failc(e, MBE_FAILED, "output atom %lld: %ld columns, "
                             "Properties has %ld", (long long)i, col, n_cols);
    }
    return MBE_COMPLETED;
}

/* ------------------------------------------------------------ the calc */

typedef struct exec_state {
    char *cmd;
    char *tmpdir;
} exec_state;

static int exec_setup(mbe_calc *c, mbe_err *e)
{
    if (strchr(c->arg, '\n'))
        return mbe_fail(e, "the command must be one line");
    exec_state *s = calloc(1, sizeof *s);
    if (!s)
        return mbe_fail(e, "out of memory");
    c->state = s;
    const char *t = getenv("TMPDIR");
    s->cmd = mbe_strdup(c->arg);
    s->tmpdir = mbe_strdup(t && *t ? t : "/tmp");
    if (!s->cmd || !s->tmpdir)
        return mbe_fail(e, "out of memory");
    return 0;
}

static void exec_teardown(mbe_calc *c)
{
    exec_state *s = c->state;
    if (!s)
        return;
    free(s->cmd);
    free(s->tmpdir);
    free(s);
    c->state = NULL;
}

static char *exec_settings(const mbe_calc *c)
{
    const exec_state *s = c->state;
    char t[32];
    return mbe_asprintf("command=%s\nframe_timeout=%s\n", s->cmd,
                        mbe_calc_fmt_double(t, c->opts.frame_timeout));
}

/* Growable byte buffer. */
struct buf {
    char *p;
    size_t n, cap;
};

static int buf_reserve(struct buf *b, size_t more)
{
    if (b->n + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Standard input: an unlinked temporary file holding the frame. */
static int frame_file(const exec_state *s, const mbe_frame_view *f,
                      mbe_err *e)
{
    char *path = mbe_asprintf("%s/mbe-exec-XXXXXX", s->tmpdir);
    if (!path)
        return mbe_fail(e, "out of memory");
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        mbe_fail(e, "cannot create a temporary file in %s: %s", s->tmpdir,
                 strerror(err));
        free(path);
        return -1;
    }
    unlink(path);
    free(path);
    int fd2 = dup(fd);
    FILE *fp = fd2 >= 0 ? fdopen(fd2, "w") : NULL;
    int ok = fp && write_xyz(fp, f) == 0;
    if (fp)
        ok = fclose(fp) == 0 && ok;
    else if (fd2 >= 0)
        close(fd2);
    if (!ok || lseek(fd, 0, SEEK_SET) != 0) {
        int err = errno;
        close(fd);
        return mbe_fail(e, "cannot write the frame to a temporary file in "
                        "%s: %s", s->tmpdir, strerror(err));
    }
    return fd;
}

/* Read what the child writes until both pipes close.  When the command
 * itself has exited (*reaped set, *status filled) but something it left
 * behind keeps the pipes open, that group is killed after EXIT_GRACE.
 * 0 done, 1 timed out, MBE_EINTR stopped, -1 error (e filled). */
static int drain(mbe_calc *c, pid_t pid, int out_fd, int err_fd,
                 double deadline, struct buf *out, struct buf *err,
                 int *reaped, int *status, mbe_err *e)
{
    struct pollfd p[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
    int open_ = 2;
    char chunk[65536];
    double exited_at = 0;
    while (open_ > 0) {
        if (mbe_calc_stopped(c))
            return MBE_EINTR;
        if (!*reaped && mbe_child_exited(pid, status)) {
            *reaped = 1;
            exited_at = mbe_now();
        }
        if (*reaped && mbe_now() - exited_at > EXIT_GRACE) {
            kill(-pid, SIGKILL); /* its leftovers hold our pipes */
            return 0;
        }
        int ms = mbe_poll_ms(deadline, SLICE_MS);
        if (ms < 0)
            return 1;
        int r = poll(p, 2, ms);
        if (r < 0 && errno != EINTR)
            return mbe_fail(e, "poll: %s", strerror(errno));
        if (r <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !p[i].revents)
                continue;
            ssize_t got = read(p[i].fd, chunk, sizeof chunk);
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (got <= 0) {
                p[i].fd = -1;
                open_--;
                continue;
            }
            struct buf *b = i == 0 ? out : err;
            if (i == 0 && b->n + (size_t)got > OUT_MAX)
                return mbe_failc(e, MBE_FAILED, "the command wrote more than "
                                 "%zu MiB to standard output", OUT_MAX >> 20);
            if (buf_reserve(b, (size_t)got) < 0)
                return mbe_fail(e, "out of memory");
            memcpy(b->p + b->n, chunk, (size_t)got);
            b->n += (size_t)got;
            if (i == 1 && b->n > 2 * ERR_KEEP) {
                /* Keep the tail: the error is usually at the end. */
                memmove(b->p, b->p + b->n - ERR_KEEP, ERR_KEEP);
                b->n = ERR_KEEP;
            }
            b->p[b->n] = '\0';
        }
    }
    return 0;
}

static int exec_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                        double *forces, mbe_err *e)
{
    exec_state *s = c->state;
    int in = frame_file(s, f, e);
    if (in < 0)
        return MBE_FAILED;
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
        int err = errno;
        close(in);
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0)
                close(po[i]);
            if (pe[i] >= 0)
                close(pe[i]);
        }
        return mbe_failc(e, MBE_FAILED, "pipe: %s", strerror(err));
    }
    char env_frame[48], env_natoms[48];
    snprintf(env_frame, sizeof env_frame, "MBE_FRAME=%lld",
             (long long)f->index);
    snprintf(env_natoms, sizeof env_natoms, "MBE_NATOMS=%lld",
             (long long)f->n_atoms);
    /* So that a command can skip its gradient. */
    const char *env[] = {env_frame, env_natoms,
                         forces ? "MBE_FORCES=1" : "MBE_FORCES=0", NULL};
    double t0 = mbe_now();
    double deadline = c->opts.frame_timeout > 0 ? t0 + c->opts.frame_timeout
                                                : 0;
    pid_t pid;
    int rc = mbe_child_start(s->cmd, in, po[1], pe[1], env, &pid, e);
    close(in);
    close(po[1]);
    close(pe[1]);
    if (rc < 0) {
        close(po[0]);
        close(pe[0]);
        return MBE_FAILED;
    }
    struct buf out = {0}, err = {0};
    int st = 0, reaped = 0;
    rc = drain(c, pid, po[0], pe[0], deadline, &out, &err, &reaped, &st, e);
    close(po[0]);
    close(pe[0]);
    if (rc == 0 && !reaped) {
        /* Output closed: the command is normally exiting now. */
        rc = mbe_child_wait(c->opts.stop, pid, deadline > 0 ? deadline : mbe_now() + 1e9,
                            &st);
        rc = rc == 1 ? 0 : rc == 0 ? 1 : rc;
        reaped = rc == 0;
    }
    /* Whatever the command left running goes with it. */
    if (rc == 0 && reaped)
        kill(-pid, SIGKILL);
    char tail[400] = "";
    if (err.n)
        mbe_text_tail(err.p, err.n, tail, sizeof tail);
    if (rc != 0) {
        if (reaped)
            kill(-pid, SIGKILL);
        else
            mbe_child_kill(pid, KILL_GRACE, &st);
        if (rc == 1)
            rc = mbe_failc(e, MBE_FAILED, "the command took longer than the "
                           "frame time-out of %g s and was killed%s%s",
                           c->opts.frame_timeout, *tail ? ": " : "", tail);
        else if (rc == MBE_EINTR)
            rc = mbe_failc(e, MBE_EINTR, "interrupted; the command was "
                           "killed");
        else if (rc == -1)
            rc = MBE_FAILED;
        /* else MBE_FAILED from drain, e filled */
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char how[96];
        mbe_child_describe(st, how, sizeof how);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 127 && !out.n)
            snprintf(how, sizeof how, "could not be run (status 127)");
        rc = mbe_failc(e, MBE_FAILED, "the command %s%s%s", how,
                       *tail ? ": " : " (nothing on standard error)", tail);
    } else {
        if (!out.p && buf_reserve(&out, 0) < 0) {
            rc = mbe_fail(e, "out of memory");
        } else {
            out.p[out.n] = '\0';
            rc = parse_output(out.p, f, energy, forces, e);
            if (rc != MBE_COMPLETED && *tail && e) {
                size_t n = strlen(e->msg);
                snprintf(e->msg + n, sizeof e->msg - n, " (stderr: %s)",
                         tail);
            }
        }
    }
    free(out.p);
    free(err.p);
    return rc;
}

static const char *const exec_operational[] = {"frame_timeout", NULL};

static const mbe_calc_option exec_options[] = {
    MBE_CALC_OPTION_FRAME_TIMEOUT,
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_exec_ops = {
    .operational = exec_operational,
    .options = exec_options,
    .name = "exec",
    .takes_arg = 1,
    .synopsis = "exec:COMMAND",
    .setup = exec_setup,
    .compute = exec_compute,
    .settings = exec_settings,
    .teardown = exec_teardown,
};
