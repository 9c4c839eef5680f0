/* mbe-merge - apply the shards of mbe-compute jobs to their master.
 *
 * Everything is checked before the master's lock is taken, once, for the
 * whole merge; the library does the work (mbe_merge), this program parses
 * options, prints the report and removes shards on request. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

const char *prog_name = "mbe-merge";

enum {
    EXIT_SKIPPED = 3,
    EXIT_LOCK_TIMEOUT = 4
};

/* Paths wider than this are not padded to. */
#define PATH_COL_MAX 48

struct args {
    const char *master;
    char **shards;
    size_t n_shards;
    int prefer;
    int skip_invalid;
    int dry_run;
    int remove_shards;
    int convert_names;
    int reset_log;
    int allow_mixed;
    int allow_renamed;
    int quiet;
    char **lists;         /* the text of @LIST files, kept for shards */
    size_t n_lists;
    double timeout;
    size_t buf_bytes;
};

static void usage(void)
{
    printf(
        "Usage: %s [OPTIONS] MASTER SHARD|@LIST...\n"
        "       %s --convert-names | --reset-log [-n] MASTER\n"
        "Apply the results in the shard files of mbe-compute(1) jobs to\n"
        "MASTER, with the update rule of mbe_automation, under the master's\n"
        "lock taken once.  Every shard is verified first; an invalid shard\n"
        "stops the merge before anything is written.  @LIST reads shard\n"
        "paths from LIST, one per line (@- from standard input).\n"
        "\n"
        "Options:\n"
        "      --prefer first|last  for frames COMPLETED with different\n"
        "                           results in several shards, take the\n"
        "                           first (last) one on the command line\n"
        "                           (default: refuse the merge)\n"
        "      --skip-invalid       apply the valid shards, refuse the others\n"
        "                           (exit status 3)\n"
        "  -n, --dry-run            check and show what would change; write\n"
        "                           nothing\n"
        "      --timeout SEC        wait at most SEC for the lock (default 300)\n"
        "      --buffer MIB         I/O buffer in MiB (default 8)\n"
        "      --convert-names      rename the datasets of MASTER that\n"
        "                           mbe-shard 0.2 spelt with U+00C5 to the\n"
        "                           package's U+212B (merges do this for the\n"
        "                           groups they write)\n"
        "      --allow-mixed-settings  merge shards of one level computed\n"
        "                           with different calculators or settings\n"
        "      --allow-renamed      accept shards computed for a master of\n"
        "                           another file name (a copy, a renamed\n"
        "                           master) if key, shape and geometry match\n"
        "      --reset-log          drop MASTER's merge logs (when one is\n"
        "                           damaged); they are rebuilt by merges\n"
        "      --remove-shards      delete the applied shard files once the\n"
        "                           master is durable (never invalid ones,\n"
        "                           never unfinished .part files)\n"
        "  -q, --quiet              no progress and no report, only errors\n"
        "  -h, --help               this help\n"
        "  -V, --version            version\n"
        "\n"
        "Exit status: 0 merged, 1 error (nothing written, or finished by\n"
        "running the same command again), 2 usage, 3 invalid shards skipped\n"
        "(--skip-invalid), 4 lock time-out.\n",
        prog_name, prog_name);
}

enum {
    OPT_PREFER = 256, OPT_SKIP, OPT_TIMEOUT, OPT_BUFFER, OPT_REMOVE,
    OPT_CONVERT, OPT_RESET_LOG, OPT_MIXED, OPT_RENAMED
};

static int parse_prefer(const char *s)
{
    if (!strcmp(s, "first"))
        return MBE_PREFER_FIRST;
    if (!strcmp(s, "last"))
        return MBE_PREFER_LAST;
    usage_error("--prefer: '%s' is neither 'first' nor 'last'", s);
}

static size_t parse_buffer(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > 1048576)
        usage_error("--buffer: '%s' is not a size in MiB (0 < MIB <= "
                    "1048576)", s);
    double b = v * 1048576.0;
    return b < 1 ? 1 : (size_t)b;
}

static void push_shard(struct args *a, char *path, size_t *cap)
{
    if (a->n_shards == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        char **v = realloc(a->shards, *cap * sizeof *v);
        if (!v)
            usage_error("out of memory for %zu shard names", *cap);
        a->shards = v;
    }
    a->shards[a->n_shards++] = path;
}

/* SHARD or @LIST (one path per line, empty lines skipped): a job array
 * of 10^4 tasks leaves more shard names than one command line holds. */
static void shard_args(struct args *a, char **v, size_t n)
{
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i][0] != '@') {
            push_shard(a, v[i], &cap);
            continue;
        }
        char *text = read_at_file("shard list", v[i] + 1);
        char **l = realloc(a->lists, (a->n_lists + 1) * sizeof *l);
        if (!l)
            usage_error("out of memory");
        a->lists = l;
        a->lists[a->n_lists++] = text;
        for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            line[strcspn(line, "\r")] = '\0';
            if (*line)
                push_shard(a, line, &cap);
        }
    }
    if (n && !a->n_shards)
        usage_error("no shard files given (the lists are empty)");
}

static void free_args(struct args *a)
{
    free(a->shards);
    for (size_t i = 0; i < a->n_lists; i++)
        free(a->lists[i]);
    free(a->lists);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    static const struct option longopts[] = {
        {"prefer", required_argument, 0, OPT_PREFER},
        {"skip-invalid", no_argument, 0, OPT_SKIP},
        {"dry-run", no_argument, 0, 'n'},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"buffer", required_argument, 0, OPT_BUFFER},
        {"remove-shards", no_argument, 0, OPT_REMOVE},
        {"convert-names", no_argument, 0, OPT_CONVERT},
        {"reset-log", no_argument, 0, OPT_RESET_LOG},
        {"allow-mixed-settings", no_argument, 0, OPT_MIXED},
        {"allow-renamed", no_argument, 0, OPT_RENAMED},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->timeout = MBE_LOCK_TIMEOUT_DEFAULT;
    a->buf_bytes = MBE_MERGE_BUF_DEFAULT;
    int c;
    while ((c = getopt_long(argc, argv, ":nqhV", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_PREFER: a->prefer = parse_prefer(optarg); break;
        case OPT_SKIP: a->skip_invalid = 1; break;
        case 'n': a->dry_run = 1; break;
        case OPT_TIMEOUT:
            a->timeout = seconds_arg("--timeout", optarg);
            break;
        case OPT_BUFFER: a->buf_bytes = parse_buffer(optarg); break;
        case OPT_REMOVE: a->remove_shards = 1; break;
        case OPT_CONVERT: a->convert_names = 1; break;
        case OPT_RESET_LOG: a->reset_log = 1; break;
        case OPT_MIXED: a->allow_mixed = 1; break;
        case OPT_RENAMED: a->allow_renamed = 1; break;
        case 'q': a->quiet = 1; break;
        case 'h': usage(); exit(EXIT_OK);
        case 'V': print_version(); exit(EXIT_OK);
        default: option_error(c, argv);
        }
    }
    if (argc - optind < 1)
        usage_error("no master file given");
    const char *whole = a->convert_names ? "--convert-names"
                        : a->reset_log   ? "--reset-log"
                                         : NULL;
    if (a->convert_names && a->reset_log)
        usage_error("--convert-names and --reset-log exclude each other");
    if (whole && argc - optind > 1)
        usage_error("%s takes the master only, no shards", whole);
    if (whole && (a->prefer || a->skip_invalid || a->remove_shards ||
                  a->allow_mixed || a->allow_renamed))
        usage_error("%s takes no --prefer, --skip-invalid, "
                    "--allow-mixed-settings, --allow-renamed or "
                    "--remove-shards", whole);
    if (!whole && argc - optind < 2)
        usage_error("no shard files given");
    a->master = argv[optind];
    shard_args(a, argv + optind + 1, (size_t)(argc - optind - 1));
}

/* ------------------------------------------------------------ progress */

struct prog {
    int quiet;
    int tty;
    double t0;
    double last;
    int shown;          /* a live line is on the terminal */
};

/* Long steps only: nothing is printed during the first two seconds, then
 * a live line on a terminal, or a line every 10 s in a job's log. */
static void on_step(void *ud, const char *what, size_t done, size_t total)
{
    struct prog *p = ud;
    double t = now_seconds();
    if (p->quiet || t - p->t0 < 2 || t - p->last < (p->tty ? 0.2 : 10))
        return;
    p->last = t;
    fprintf(stderr, "%s%s: %s %zu/%zu%s", p->tty ? "\r" : "", prog_name,
            what, done, total, p->tty ? "\033[K" : "\n");
    p->shown = p->tty;
    fflush(stderr);
}

static void progress_done(struct prog *p)
{
    if (p->shown)
        fputs("\r\033[K", stderr);
    p->shown = 0;
}

/* -------------------------------------------------------------- report */

static int is_part(const char *path)
{
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".part");
}

/* A shard the merge never got to (it stopped before: no master, a lock
 * time-out, an interrupted merge to roll back first) is neither valid nor
 * refused; mbe_merge gives every refused shard its reason. */
static int refused(const mbe_merge_shard *s)
{
    return !s->valid && s->error;
}

static const char *result_of(const mbe_merge_shard *s, int rc, int dry)
{
    if (refused(s))
        return "INVALID";
    if (!s->valid)
        return "not checked";
    if (s->already_applied)
        return "already applied";
    if (s->error)
        return rc == 0 ? "duplicate" : "conflict";
    if (rc != 0)
        return "not applied";
    return dry ? "would apply" : "applied";
}

static int path_width(const mbe_merge_report *r)
{
    size_t w = 5;
    for (size_t i = 0; i < r->n_shards; i++)
        if (strlen(r->shards[i].name) > w)
            w = strlen(r->shards[i].name);
    return (int)(w > PATH_COL_MAX ? PATH_COL_MAX : w);
}

static void print_row(int w, const mbe_merge_shard *s, const char *result)
{
    if (!s->shard_id) {
        printf("%-*s %-12s %8s %9s %7s %9s %8s %8s  %s\n", w, s->name, "-",
               "-", "-", "-", "-", "-", "-", result);
        return;
    }
    printf("%-*s %-12s %8zu %9zu %7zu %9zu %8zu %8zu  %s%s\n", w, s->name,
           s->level, s->frames, s->completed,
           s->failed + s->scf_not_converged, s->undefined, s->applied,
           s->kept, result, is_part(s->path) ? " (unfinished)" : "");
}

static void print_table(const struct args *a, const mbe_merge_report *r,
                        int rc)
{
    int w = path_width(r);
    size_t tot[6] = {0};
    printf("%-*s %-12s %8s %9s %7s %9s %8s %8s  %s\n", w, "shard", "level",
           "frames", "completed", "failed", "undefined", "applied", "kept",
           "result");
    for (size_t i = 0; i < r->n_shards; i++) {
        const mbe_merge_shard *s = &r->shards[i];
        print_row(w, s, result_of(s, rc, a->dry_run));
        size_t v[6] = {s->frames, s->completed,
                       s->failed + s->scf_not_converged, s->undefined,
                       s->applied, s->kept};
        for (int k = 0; s->valid && k < 6; k++)
            tot[k] += v[k];
    }
    printf("%-*s %-12s %8zu %9zu %7zu %9zu %8zu %8zu\n", w, "total", "",
           tot[0], tot[1], tot[2], tot[3], tot[4], tot[5]);
}

static void print_notes(const mbe_merge_report *r, const char *master)
{
    for (size_t i = 0; i < r->n_shards; i++) {
        const mbe_merge_shard *s = &r->shards[i];
        if (s->valid && s->error)
            printf("note: %s: %s\n", s->name, s->error);
        if (s->valid && s->master_file)
            printf("note: %s: computed for master %s, merged into %s "
                   "(--allow-renamed)\n", s->name, s->master_file,
                   master);
        if (s->already_applied)
            printf("note: %s: in the master's merge log already; not "
                   "applied again\n", s->name);
        if (s->earlier)
            printf("note: %s: %zu frame%s taken by an earlier merge of this "
                   "shard (unchanged since); not applied again\n", s->name,
                   s->earlier, s->earlier == 1 ? "" : "s");
    }
}

static void print_summary(const struct args *a, const mbe_merge_report *r,
                          int rc)
{
    if (r->recovered)
        printf("rolled back an interrupted merge of %s first\n", a->master);
    /* A failed merge rolled its new datasets back (or a re-run makes
     * them): naming them "created" would mislead. */
    for (size_t i = 0; rc == 0 && i < r->renamed.n; i++)
        printf("%s %s (the package's spelling, U+212B)\n",
               a->dry_run ? "would rename" : "renamed", r->renamed.v[i]);
    for (size_t i = 0; rc == 0 && i < r->new_datasets.n; i++)
        printf("%s dataset %s\n", a->dry_run ? "would create" : "created",
               r->new_datasets.v[i]);
    if (rc == 0)
        printf("%s: %zu frame%s %s", a->master, r->frames_written,
               r->frames_written == 1 ? "" : "s",
               a->dry_run ? "would be written (dry run: nothing was "
                            "written)\n" : "written");
    /* How long every other writer waited: what a merge costs the others. */
    if (rc == 0 && !a->dry_run)
        printf("; lock held %.3f s\n", r->lock_held_s);
}

/* One line per refused shard; when that one line says it all (a single
 * refused shard stopped the merge), it ends with the outcome instead of a
 * second summary line.  Returns whether it did. */
static int print_errors(const mbe_merge_report *r, int rc)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_shards; i++)
        n += refused(&r->shards[i]) != 0;
    int whole = rc == MBE_EINVALID && n == 1;
    for (size_t i = 0; i < r->n_shards; i++)
        if (refused(&r->shards[i]))
            say_error("cannot apply %s: %s%s", r->shards[i].name,
                      r->shards[i].error,
                      whole && !r->stopped ? "; nothing was written" : "");
    return whole;
}

/* -------------------------------------------------------------- remove */

/* Only after a successful merge; unfinished shards stay, since their job
 * may be resumed, and so does a file of several keys with a member that
 * was not applied (its entries are consecutive in the report). */
static int remove_shards(const struct args *a, const mbe_merge_report *r)
{
    int rc = 0;
    for (size_t i = 0, j; i < r->n_shards; i = j) {
        const mbe_merge_shard *s = &r->shards[i];
        int valid = 1;
        for (j = i; j < r->n_shards && !strcmp(r->shards[j].path, s->path) &&
                    (j == i || r->shards[j].member > 0);
             j++)
            valid = valid && r->shards[j].valid;
        if (!valid)
            continue;
        if (is_part(s->path)) {
            say_info(a->quiet, "kept %s: unfinished (its job may resume it)",
                     s->path);
            continue;
        }
        if (unlink(s->path) < 0 && errno != ENOENT) {
            say_error("cannot remove %s: %s", s->path, strerror(errno));
            rc = -1;
        } else {
            say_info(a->quiet, "removed %s", s->path);
        }
    }
    return rc;
}

/* ---------------------------------------------------------------- main */

static int any_invalid(const mbe_merge_report *r)
{
    for (size_t i = 0; i < r->n_shards; i++)
        if (refused(&r->shards[i]))
            return 1;
    return 0;
}

/* --convert-names and --reset-log: one change to the whole master. */
static int maintain(const struct args *a, const mbe_merge_opts *o)
{
    mbe_strlist done = {0};
    mbe_err e = {""};
    int conv = a->convert_names;
    int rc = conv ? mbe_merge_convert_names(a->master, o, &done, &e)
                  : mbe_merge_reset_log(a->master, o, &done, &e);
    const char *verb = conv ? "rename" : "drop";
    for (size_t i = 0; rc == 0 && !a->quiet && i < done.n; i++)
        printf("%s%s %s\n", a->dry_run ? "would " : "",
               a->dry_run ? verb : conv ? "renamed" : "dropped",
               done.v[i]);
    if (rc == 0 && conv)
        say_info(a->quiet, "%s: %zu name%s %s to the package's spelling",
                 a->master, done.n, done.n == 1 ? "" : "s",
                 a->dry_run ? "would be converted" : "converted");
    else if (rc == 0)
        say_info(a->quiet, "%s: %zu merge log%s %s", a->master, done.n,
                 done.n == 1 ? "" : "s",
                 a->dry_run ? "would be dropped" : "dropped");
    else
        say_error("cannot %s %s: %s",
                  conv ? "convert the names of" : "reset the merge logs of",
                  a->master, e.msg);
    mbe_strlist_free(&done);
    if (rc < 0)
        return rc == MBE_ETIMEOUT ? EXIT_LOCK_TIMEOUT : EXIT_FAIL;
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    mbe_init();
    struct args a;
    parse_args(argc, argv, &a);
    struct prog p = {a.quiet, isatty(STDERR_FILENO), now_seconds(), 0, 0};
    lock_wait w = {&a.quiet, a.timeout};
    mbe_merge_opts o = {
        .prefer = a.prefer, .skip_invalid = a.skip_invalid,
        .dry_run = a.dry_run, .allow_mixed = a.allow_mixed,
        .allow_renamed = a.allow_renamed,
        .buf_bytes = a.buf_bytes,
        .lock = {a.timeout, lock_wait_message, &w},
        .on_step = on_step, .ud = &p};
    if (a.convert_names || a.reset_log) {
        int st = maintain(&a, &o);
        free_args(&a);
        return st;
    }
    mbe_merge_report r;
    mbe_err e = {""};
    int rc = mbe_merge(a.master, a.shards, a.n_shards, &o, &r, &e);
    progress_done(&p);
    if (!a.quiet && r.shards) {
        print_table(&a, &r, rc);
        print_notes(&r, a.master);
        print_summary(&a, &r, rc);
        fflush(stdout);
    }
    int said = r.shards ? print_errors(&r, rc) : 0;
    int status = EXIT_OK;
    if (rc < 0) {
        if (!said)
            say_error("merge into %s failed: %s", a.master, e.msg);
        status = rc == MBE_ETIMEOUT ? EXIT_LOCK_TIMEOUT : EXIT_FAIL;
    } else {
        if (a.remove_shards && !a.dry_run && remove_shards(&a, &r) < 0)
            status = EXIT_FAIL;
        if (status == EXIT_OK && any_invalid(&r))
            status = EXIT_SKIPPED;
    }
    mbe_merge_report_free(&r);
    free_args(&a);
    return status;
}
