/* common.c - see common.h. */
#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void say_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void say_err(const char *what, const mbe_err *e)
{
    fprintf(stderr, "%s: %s: %s\n", prog_name, what, e->msg);
}

void say_info(int quiet, const char *fmt, ...)
{
    if (quiet)
        return;
    va_list ap;
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see %s --help)\n", prog_name);
    exit(EXIT_USAGE);
}

void option_error(int c, char **argv)
{
    char shortopt[3] = {'-', (char)optopt, '\0'};
    const char *last = optind > 0 ? argv[optind - 1] : "";
    const char *opt = strncmp(last, "--", 2) == 0 || optopt <= 0 ||
                      optopt >= 128 ? last : shortopt;
    if (c == ':')
        usage_error("option '%s' needs an argument", opt);
    usage_error("unknown option '%s'", opt);
}

void print_version(void)
{
    printf("%s (mbe-shard) %s\n", prog_name, MBE_VERSION);
}

void lock_wait_message(void *ud, const char *lock_path, double waited)
{
    const lock_wait *w = ud;
    if (w && ((w->quiet && *w->quiet) || w->timeout < 1.0))
        return;
    fprintf(stderr, "%s: waiting for the lock on %s (%.0f s so far)\n",
            prog_name, lock_path, waited);
}

/* -1 unless s is a finite, non-negative number. */
static double parse_seconds(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        return -1;
    return v;
}

double seconds_arg(const char *opt, const char *s)
{
    double v = parse_seconds(s);
    if (v < 0)
        usage_error("%s: '%s' is not a number of seconds", opt, s);
    return v;
}

double positive_seconds_arg(const char *opt, const char *s)
{
    double v = parse_seconds(s);
    if (v <= 0)
        usage_error("%s: '%s' is not a positive number of seconds", opt, s);
    return v;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_start(progress *p, const char *what, size_t total, int quiet)
{
    memset(p, 0, sizeof *p);
    p->tty = isatty(STDERR_FILENO);
    p->quiet = quiet;
    p->t0 = now_seconds();
    p->every = p->tty ? 0.2 : 5.0;
    p->total = total;
    p->what = what;
}

static void fmt_duration(char *buf, size_t n, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, n, "?");
    else if (s < 120)
        snprintf(buf, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(buf, n, "%.0fm", s / 60);
    else
        snprintf(buf, n, "%.1fh", s / 3600);
}

static void progress_print(progress *p, const char *label, int final)
{
    double el = now_seconds() - p->t0;
    double rate = el > 0 ? p->done / el : 0;
    char eta[32], elapsed[32];
    fmt_duration(eta, sizeof eta,
                 rate > 0 ? (p->total - p->done) / rate : NAN);
    fmt_duration(elapsed, sizeof elapsed, el);
    if (p->tty)
        fputc('\r', stderr);
    fprintf(stderr, "%s: %s %zu/%zu, %zu failed, %.3g/s, elapsed %s, eta %s",
            prog_name, p->what, p->done, p->total, p->failed, rate, elapsed,
            eta);
    if (label && !p->tty)
        fprintf(stderr, " [%s]", label);
    if (p->tty && !final)
        fputs("\033[K", stderr);
    else
        fputc('\n', stderr);
    fflush(stderr);
}

void progress_step(progress *p, int failed, const char *label)
{
    p->done++;
    p->failed += failed != 0;
    if (p->quiet)
        return;
    double t = now_seconds();
    if (t - p->last >= p->every || p->done == p->total) {
        p->last = t;
        progress_print(p, label, 0);
    }
}

void progress_end(progress *p)
{
    if (!p->quiet && p->tty && p->done)
        fputc('\n', stderr);
}

/* @FILE arguments (- for standard input): what outgrows the 128 kB the
 * kernel allows one argument (a spec of many scattered frames, a list of
 * 10^4 shards).  Surrounding white space is dropped. */
char *read_at_file(const char *opt, const char *name)
{
    FILE *f = strcmp(name, "-") == 0 ? stdin : fopen(name, "r");
    if (!f)
        usage_error("%s @%s: %s", opt, name, strerror(errno));
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    for (int c; s && (c = getc(f)) != EOF;) {
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t)
                free(s);
            s = t;
        }
        if (s)
            s[n++] = (char)c;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!s)
        usage_error("%s @%s: out of memory", opt, name);
    if (bad)
        usage_error("%s @%s: cannot read it", opt, name);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    s[n] = '\0';
    size_t lead = strspn(s, " \t\r\n");
    memmove(s, s + lead, n - lead + 1);
    return s;
}
