/* mbe-compute - compute selected frames of a master into a private shard.
 *
 * The master is read under the shared lock only while the geometry of the
 * selected frames is read; computing holds no lock.  Every finished frame is
 * stored in the shard <SHARD>.part and made durable (see sync policy below),
 * so a job killed at any moment loses at most the frame in progress, and
 * running the same command again continues where it stopped. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

const char *prog_name = "mbe-compute";

enum {
    EXIT_FRAMES_FAILED = 3,
    EXIT_LOCK_TIMEOUT = 4,
    EXIT_INTERRUPTED = 5
};

/* A frame is made durable before the next one starts when at least this
 * long has passed since the last sync: any frame that took a second or more
 * is synced on its own, and cheap frames are batched so that at most about
 * a second of work is at risk. */
#define SYNC_INTERVAL_DEFAULT 1.0

/* Signal flag: the only state a handler may touch. */
static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

struct args {
    const char *master;
    const char *output;
    const char *key;           /* the group being computed */
    mbe_strlist keys;          /* every -k */
    int all_keys;
    int multi;                 /* several keys: -k twice, a pattern, or
                                  --all-keys */
    const char *frames;
    char *frames_file;         /* what --frames @FILE read */
    const char *chunk;
    const char *level;
    const char *calculator;
    const char *engine_atoms;  /* XYZ file */
    int overwrite;
    int no_forces;
    int allow_renamed;
    int ase;                   /* -c ase:... */
    int quiet;
    double timeout;
    double sync_interval;
    mbe_calc_opts calc;
};

/* Help text starts in this column; a longer "--name ARG" gets a line of
 * its own. */
#define HELP_COLUMN 27

/* The calculators' options as their tables describe them. */
static void print_calc_options(void)
{
    const mbe_calc_option *o;
    for (size_t i = 0; (o = mbe_calc_option_at(i)); i++) {
        int n = printf("      --%s%s%s", o->name, o->arg_name ? " " : "",
                       o->arg_name ? o->arg_name : "");
        if (n > HELP_COLUMN - 2) {
            putchar('\n');
            n = 0;
        }
        for (const char *h = o->help; *h;) {
            size_t len = strcspn(h, "\n");
            printf("%*s%.*s\n", HELP_COLUMN - n, "", (int)len, h);
            h += len + (h[len] == '\n');
            n = 0;
        }
    }
}

static void usage(void)
{
    printf(
        "Usage: %s [OPTIONS] [MASTER] -o SHARD\n"
        "Compute energies and forces of selected frames of MASTER (default:\n"
        "$MBE_MASTER) into the shard file SHARD, for mbe-merge(1).\n"
        "\n"
        "Selection:\n"
        "  -k, --key KEY            frame-holding group (default: the only one);\n"
        "                           repeated, or a shell pattern ('md/*'): every\n"
        "                           key in one job, one shard per key\n"
        "      --all-keys           every frame-holding group of MASTER\n"
        "  -f, --frames SPEC        frames, e.g. 0-99,120 (0-based, inclusive);\n"
        "                           @FILE reads SPEC from FILE (- for stdin);\n"
        "                           several keys: 'KEY: SPEC' lines, or one SPEC\n"
        "                           for every key\n"
        "      --chunk I/N          piece I of N of the (key, frame) pool in the\n"
        "                           order of -k and -f (1-based), then sorted\n"
        "      --chunk slurm        I and N from the SLURM job array\n"
        "      --overwrite          also compute frames already COMPLETED\n"
        "  -l, --level-of-theory L  label of the results (default: calculator)\n"
        "      --no-forces          energies only (methods without gradients);\n"
        "                           the level gets no forces dataset\n"
        "Calculator:\n"
        "  -c, --calculator NAME    gfn2-xtb (default), gfn1-xtb, gfn-ff, lj,\n"
        "                           ipi:NAME, ipi:HOST:PORT (i-PI server for an\n"
        "                           engine), exec:COMMAND (a command per frame);\n"
        "                           these two need -l; ase:MODULE:CALL (an ASE\n"
        "                           calculator; -l defaults to its\n"
        "                           level_of_theory)\n",
        prog_name);
    print_calc_options();
    fputs(
        "Other:\n"
        "  -o, --output SHARD       the shard to write (required)\n"
        "      --allow-renamed      continue SHARD for a master of another file\n"
        "                           name (a copy, a renamed master) if its\n"
        "                           geometry matches\n"
        "      --timeout SEC        wait at most SEC for the lock (default 300)\n"
        "      --sync-interval SEC  batch fsyncs of quick frames (default 1)\n"
        "  -q, --quiet              no progress, only errors\n"
        "  -h, --help               this help\n"
        "  -V, --version            version\n"
        "\n"
        "Exit status: 0 all frames COMPLETED, 1 error, 2 usage, 3 some frames\n"
        "failed, 4 lock time-out, 5 interrupted (run again to continue).\n",
        stdout);
}

enum {
    OPT_CHUNK = 256, OPT_OVERWRITE, OPT_NO_FORCES, OPT_TIMEOUT, OPT_SYNC,
    OPT_ALL_KEYS, OPT_RENAMED,
    OPT_CALC /* OPT_CALC + i: mbe_calc_option_at(i) */
};

/* One of the calculators' options: a setting, or the XYZ file of
 * --engine-atoms, which is read when the calculator is made. */
static void calc_option(struct args *a, const mbe_calc_option *o,
                        const char *value)
{
    mbe_err e;
    if (o->kind == MBE_CALC_OPT_FILE && strcmp(o->name, "engine-atoms") == 0)
        a->engine_atoms = value;
    else if (mbe_calc_option_set(o, value, &a->calc, &e) < 0)
        usage_error("%s", e.msg);
}

/* Room for the program's options and the calculators'. */
#define MAX_LONGOPTS 128

/* The program's options followed by the calculators', into all: on the
 * stack, since a usage error or --help exits from parse_args. */
static void all_options(const struct option *own, size_t n_own,
                        struct option all[MAX_LONGOPTS])
{
    size_t n = 0;
    while (mbe_calc_option_at(n))
        n++;
    if (n_own + n + 1 > MAX_LONGOPTS)
        usage_error("too many options (%zu)", n_own + n);
    memset(all, 0, MAX_LONGOPTS * sizeof *all);
    memcpy(all, own, n_own * sizeof *own);
    for (size_t i = 0; i < n; i++) {
        const mbe_calc_option *o = mbe_calc_option_at(i);
        all[n_own + i] = (struct option){
            o->name, o->kind == MBE_CALC_OPT_FLAG ? no_argument
                                                  : required_argument,
            NULL, OPT_CALC + (int)i};
    }
}

static int same_file(const struct stat *a, const char *path)
{
    struct stat b;
    return stat(path, &b) == 0 && a->st_dev == b.st_dev &&
           a->st_ino == b.st_ino;
}

/* A shard written over the master (the same name, a link to it, another
 * path to it) would destroy it: compared by device and inode. */
static void check_output(const struct args *a)
{
    struct stat m;
    if (stat(a->master, &m) < 0)
        return; /* prepare says why */
    char *part = mbe_shard_part_path(a->output);
    int clash = same_file(&m, a->output) || (part && same_file(&m, part));
    free(part);
    if (clash)
        usage_error("-o %s: that is the master %s; give the shard a file "
                    "name of its own", a->output, a->master);
}

/* Malformed specs are usage errors, found before any file is opened; the
 * bound against the master's frames is checked once it is open. */

static void check_syntax(const struct args *a)
{
    mbe_err e;
    if (a->frames && !a->multi && mbe_frames_parse(a->frames, -1, NULL, &e) < 0)
        usage_error("--frames: %s", e.msg);
    int64_t i, n;
    if (a->chunk && strcmp(a->chunk, "slurm") != 0 &&
        mbe_chunk_parse(a->chunk, &i, &n, &e) < 0)
        usage_error("--chunk: %s", e.msg);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    static const struct option own[] = {
        {"output", required_argument, 0, 'o'},
        {"key", required_argument, 0, 'k'},
        {"all-keys", no_argument, 0, OPT_ALL_KEYS},
        {"frames", required_argument, 0, 'f'},
        {"chunk", required_argument, 0, OPT_CHUNK},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"no-forces", no_argument, 0, OPT_NO_FORCES},
        {"level-of-theory", required_argument, 0, 'l'},
        {"calculator", required_argument, 0, 'c'},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"allow-renamed", no_argument, 0, OPT_RENAMED},
        {"sync-interval", required_argument, 0, OPT_SYNC},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'}};
    struct option longopts[MAX_LONGOPTS];
    all_options(own, sizeof own / sizeof *own, longopts);
    memset(a, 0, sizeof *a);
    a->calculator = "gfn2-xtb";
    a->timeout = MBE_LOCK_TIMEOUT_DEFAULT;
    a->sync_interval = SYNC_INTERVAL_DEFAULT;
    mbe_calc_opts_default(&a->calc);
    mbe_err e;
    int c;
    while ((c = getopt_long(argc, argv, ":o:k:f:l:c:qhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'o': a->output = optarg; break;
        case 'k':
            if (!*optarg)
                usage_error("--key must not be empty");
            if (mbe_strlist_push(&a->keys, optarg, &e) < 0)
                usage_error("%s", e.msg);
            break;
        case OPT_ALL_KEYS: a->all_keys = 1; break;
        case 'f': a->frames = optarg; break;
        case OPT_CHUNK: a->chunk = optarg; break;
        case OPT_OVERWRITE: a->overwrite = 1; break;
        case OPT_NO_FORCES: a->no_forces = 1; break;
        case 'l': a->level = optarg; break;
        case 'c': a->calculator = optarg; break;
        case OPT_RENAMED: a->allow_renamed = 1; break;
        case OPT_TIMEOUT:
            a->timeout = seconds_arg("--timeout", optarg);
            break;
        case OPT_SYNC:
            a->sync_interval = seconds_arg("--sync-interval", optarg);
            break;
        case 'q': a->quiet = 1; break;
        case 'h': usage(); exit(EXIT_OK);
        case 'V': print_version(); exit(EXIT_OK);
        default:
            if (c < OPT_CALC)
                option_error(c, argv);
            calc_option(a, mbe_calc_option_at((size_t)(c - OPT_CALC)), optarg);
        }
    }
    if (optind < argc)
        a->master = argv[optind++];
    else
        a->master = getenv("MBE_MASTER");
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (!a->master || !*a->master)
        usage_error("no master file given (argument or $MBE_MASTER)");
    if (!a->output || !*a->output)
        usage_error("no shard file given (-o SHARD)");
    if (a->level && !*a->level)
        usage_error("--level-of-theory must not be empty");
    int ipi = strncasecmp(a->calculator, "ipi:", 4) == 0 ||
              strcasecmp(a->calculator, "ipi") == 0;
    int ext = ipi || strncasecmp(a->calculator, "exec:", 5) == 0 ||
              strcasecmp(a->calculator, "exec") == 0;
    a->ase = strncasecmp(a->calculator, "ase:", 4) == 0 ||
             strcasecmp(a->calculator, "ase") == 0;
    if (a->calc.engine && !ipi)
        usage_error("--engine needs an i-PI calculator (-c ipi:NAME)");
    if (a->engine_atoms && !ipi)
        usage_error("--engine-atoms needs an i-PI calculator (-c ipi:NAME)");
    if ((a->calc.ipi_remote || a->calc.ipi_codata != 2018) && !ipi)
        usage_error("--ipi-remote and --ipi-codata need an i-PI calculator "
                    "(-c ipi:NAME)");
    if (ext && !a->level)
        usage_error("-c %s needs -l LEVEL: only you know the engine's level "
                    "of theory", a->calculator);
    a->multi = a->all_keys || a->keys.n > 1 ||
               (a->keys.n == 1 && mbe_key_is_pattern(a->keys.v[0]));
    a->key = a->keys.n == 1 && !a->multi ? a->keys.v[0] : NULL;
    /* Over several lines and with blanks, as files are written. */
    a->frames_file = a->frames && a->frames[0] == '@'
                         ? read_at_file("--frames", a->frames + 1)
                         : a->frames ? strdup(a->frames) : NULL;
    if (a->frames && !a->multi) {
        char *norm = a->frames_file ? mbe_spec_normalize(a->frames_file)
                                    : NULL;
        if (!norm)
            usage_error("out of memory");
        free(a->frames_file);
        a->frames_file = norm;
    }
    if (a->frames && !a->frames_file)
        usage_error("out of memory");
    if (a->frames)
        a->frames = a->frames_file;
    check_syntax(a);
    if (mbe_calc_check(a->calculator, &a->calc, &e) < 0)
        usage_error("%s", e.msg);
    check_output(a);
}

/* The job's frames as the package chooses them (_resolve_chunk_indices,
 * _run_model): the pool is --frames in the order given (or every frame),
 * --chunk takes its piece of that order, and only the piece is sorted. */
static int select_frames(const struct args *a, int64_t n_frames,
                         mbe_frames *out, mbe_err *e)
{
    mbe_frame_list pool = {0};
    int rc = a->frames ? mbe_frame_list_parse(a->frames, n_frames, &pool, e)
                       : mbe_frame_list_all(n_frames, &pool, e);
    if (rc < 0) {
        mbe_err_prefix(e, "--frames");
        return rc;
    }
    int64_t i = 1, n = 1;
    if (a->chunk)
        rc = strcmp(a->chunk, "slurm") == 0
                 ? mbe_chunk_from_slurm(&i, &n, e)
                 : mbe_chunk_parse(a->chunk, &i, &n, e);
    if (rc == 0)
        rc = mbe_frame_list_chunk(&pool, i, n, out, e);
    if (rc < 0 && a->chunk)
        mbe_err_prefix(e, "--chunk");
    mbe_frame_list_free(&pool);
    return rc;
}

/* The piece was cut with the group's size read a moment earlier, under
 * another hold of the lock: a writer may have replaced the group since. */
static int piece_frames(const mbe_frames *piece, const mbe_master *m,
                        mbe_frames *sel, mbe_err *e)
{
    if (piece->n && piece->idx[piece->n - 1] >= mbe_master_n_frames(m))
        return mbe_fail(e, "group '%s' changed while the job started (now "
                        "%lld frames); run the job again", mbe_master_key(m),
                        (long long)mbe_master_n_frames(m));
    return mbe_frames_copy(piece, sel, e);
}

static char *iso_now(void)
{
    char buf[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return strdup(buf);
}

static char *env_or_empty(const char *name)
{
    const char *v = getenv(name);
    return strdup(v ? v : "");
}

static int fill_meta(const struct args *a, const mbe_master *m,
                     const mbe_calc *calc, const char *level,
                     const char *selection, double startup,
                     mbe_shard_meta *meta, mbe_err *e)
{
    char host[256] = "";
    char id[33];
    gethostname(host, sizeof host - 1);
    if (mbe_shard_new_id(id, e) < 0)
        return -1;
    char *abs = realpath(a->master, NULL);
    meta->master_file = abs ? abs : strdup(a->master);
    meta->key = strdup(mbe_master_key(m));
    meta->n_frames = mbe_master_n_frames(m);
    meta->n_atoms = mbe_master_n_atoms(m);
    meta->level = strdup(level);
    meta->selection = strdup(selection);
    meta->calculator = strdup(mbe_calc_name(calc));
    meta->calc_settings = mbe_calc_settings(calc);
    meta->tool_version = strdup(MBE_VERSION);
    meta->host = strdup(host);
    meta->slurm_job_id = env_or_empty("SLURM_JOB_ID");
    meta->slurm_array_job_id = env_or_empty("SLURM_ARRAY_JOB_ID");
    meta->slurm_array_task_id = env_or_empty("SLURM_ARRAY_TASK_ID");
    meta->shard_id = strdup(id);
    meta->start_time = iso_now();
    meta->no_forces = a->no_forces;
    meta->startup_ms = (int64_t)(startup * 1e3 + 0.5);
    if (!meta->key || !meta->level || !meta->selection || !meta->calculator ||
        !meta->calc_settings || !meta->tool_version || !meta->host ||
        !meta->slurm_job_id || !meta->slurm_array_job_id ||
        !meta->slurm_array_task_id || !meta->shard_id || !meta->start_time)
        return mbe_fail(e, "out of memory");
    return 0;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* State of one run, passed between the steps of main. */

struct run {
    struct args a;
    mbe_calc *calc;
    mbe_shard *shard;
    mbe_geometry geom;     /* frames still to compute */
    mbe_frames todo_pos;   /* their positions in the shard */
    const mbe_frames *piece; /* several keys: this key's frames of the
                                job's piece of the pool */
    /* Seconds: set-up before any key (calculator, the pool), the start of
     * this key's preparation, its start-up in all, the first frame and
     * every frame computed. */
    double t_ready, t_prep, startup, t_first, t_frames;
    int first_done;        /* t_first is set */
    const char *level;
    size_t completed, failed;
};

/* An existing shard may be continued only by the job that made it. */
static int check_resumable(const mbe_shard_meta *sm, const mbe_master *m,
                           const struct args *a, const char *level,
                           const char *selection, const mbe_calc *calc,
                           mbe_err *e)
{
    const char *master_path = a->master, *shard_path = a->output;
    const char *why = NULL;
    char *settings = mbe_calc_settings(calc);
    if (!settings)
        return mbe_fail(e, "out of memory");
    if (!a->allow_renamed &&
        !mbe_master_name_matches(sm->master_file, master_path)) {
        free(settings);
        return mbe_fail(e, "existing shard %s was computed for master %s, "
                        "not %s (for a copy or a renamed master give "
                        "--allow-renamed; else remove it or choose another "
                        "-o)", shard_path, sm->master_file,
                        base_name(master_path));
    }
    if (strcmp(sm->key, mbe_master_key(m)) != 0)
        why = "key";
    else if (sm->n_frames != mbe_master_n_frames(m) ||
             sm->n_atoms != mbe_master_n_atoms(m))
        why = "master size";
    else if (strcmp(sm->level, level) != 0)
        why = "level of theory";
    else if (strcmp(sm->selection, selection) != 0)
        why = "frame selection";
    else if (strcmp(sm->calculator, mbe_calc_name(calc)) != 0 ||
             !mbe_calc_same_method(sm->calc_settings, settings))
        why = "calculator or its settings";
    free(settings);
    if (!why && sm->no_forces != a->no_forces)
        return mbe_fail(e, "existing shard %s was computed %s --no-forces; "
                        "give the same, remove it or choose another -o",
                        shard_path, sm->no_forces ? "with" : "without");
    if (!why)
        return 0;
    return mbe_fail(e,
                    "existing shard %s belongs to another job (its %s differs: "
                    "master %s, key '%s', level '%s', frames %s); remove it "
                    "or choose another -o",
                    shard_path, why, base_name(sm->master_file), sm->key,
                    sm->level, *sm->selection ? sm->selection : "(none)");
}

/* The master must still hold the geometry a shard was made for: compare
 * the fingerprints stored at creation with the frames just read. */
static int check_geometry(struct run *r, mbe_err *e)
{
    const uint32_t *stored = mbe_shard_geom_crc(r->shard);
    size_t bad = 0;
    int64_t first = -1;
    for (size_t k = 0; k < r->geom.n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&r->geom, k, &v);
        if (mbe_frame_fingerprint(&v) != stored[r->todo_pos.idx[k]]) {
            if (!bad++)
                first = v.index;
        }
    }
    if (bad)
        return mbe_fail(e,
                        "the geometry of %zu frames (first: %lld) in the master "
                        "differs from the one %s was started with; remove the "
                        "shard to start again",
                        bad, (long long)first, r->a.output);
    return 0;
}

static int file_exists(const char *p)
{
    return access(p, F_OK) == 0;
}


/* Why frames count as COMPLETED when the stored status is not the reason,
 * or why stored COMPLETED frames do not count. */
static void say_view(const struct run *r, const mbe_master *m,
                     mbe_level_view view, size_t n)
{
    if (view == MBE_LEVEL_GENERATOR)
        say_info(r->a.quiet,
                 "'%s' is the level_of_theory of '%s' (the model that "
                 "generated its geometries): as in mbe_automation, every "
                 "selected frame (%zu) counts as COMPLETED; nothing to "
                 "compute (--overwrite computes them)",
                 r->level, mbe_master_key(m), n);
    else if (view == MBE_LEVEL_HIDDEN)
        say_info(r->a.quiet,
                 "'%s' has datasets in the ground_truth of '%s' but is not "
                 "listed in its levels_of_theory: as in mbe_automation, none "
                 "of its frames counts as COMPLETED",
                 r->level, mbe_master_key(m));
}

/* Unless --overwrite, drop the frames the package counts as COMPLETED for
 * the level.  The status is read even with --overwrite, so that a damaged
 * status dataset is refused before hours of computing, not by the merge. */
static int skip_completed(const struct run *r, mbe_master *m,
                          mbe_frames *sel, mbe_err *e)
{
    int64_t *status = malloc((sel->n ? sel->n : 1) * sizeof *status);
    mbe_level_view view;
    if (!status)
        return mbe_fail(e, "out of memory");
    int rc = mbe_master_level_view(m, r->level, &view, e);
    if (rc == 0)
        rc = mbe_master_read_visible_status(m, r->level, sel, status, e);
    size_t before = sel->n;
    if (rc == 0 && !r->a.overwrite && before) {
        say_view(r, m, view, before);
        mbe_frames_drop_completed(sel, status);
        if (before != sel->n && view != MBE_LEVEL_GENERATOR)
            say_info(r->a.quiet,
                     "%zu of %zu selected frames are already COMPLETED for "
                     "'%s'; skipping them (--overwrite computes them)",
                     before - sel->n, before, r->level);
    }
    free(status);
    return rc;
}

/* The geometry fingerprint of every frame of g; NULL when out of memory. */
static uint32_t *fingerprints(const mbe_geometry *g)
{
    uint32_t *crc = malloc((g->n ? g->n : 1) * sizeof *crc);
    for (size_t k = 0; crc && k < g->n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(g, k, &v);
        crc[k] = mbe_frame_fingerprint(&v);
    }
    return crc;
}

/* The master at key, read under the shared lock until it is closed. */
static int open_master(const struct run *r, const char *key, mbe_master **m,
                       mbe_err *e)
{
    lock_wait w = {&r->a.quiet, r->a.timeout};
    mbe_lock_opts lk = {r->a.timeout, lock_wait_message, &w};
    int rc = mbe_master_open(r->a.master, key, 0, &lk, m, e);
    if (rc < 0) {
        /* Most messages of the master reader name the file already. */
        size_t n = strlen(r->a.master);
        if (strncmp(e->msg, r->a.master, n) != 0 || e->msg[n] != ':')
            mbe_err_prefix(e, "%s", r->a.master);
    }
    return rc;
}

/* Closes m; its failure replaces a success in rc and e. */
static int close_master(mbe_master *m, int rc, mbe_err *e)
{
    mbe_err ce;
    if (m && mbe_master_close(m, &ce) < 0 && rc == 0) {
        *e = ce;
        return -1;
    }
    return rc;
}

/* Open the master, work out the frames, create or resume the shard, and
 * read the geometry of the frames still to compute.  The lock is held only
 * inside this function. */
static int prepare(struct run *r, mbe_err *e)
{
    lock_wait w = {&r->a.quiet, r->a.timeout};
    mbe_lock_opts lk = {r->a.timeout, lock_wait_message, &w};
    mbe_master *m = NULL;
    mbe_frames sel = {0}, todo = {0};
    mbe_shard_meta meta = {0};
    char *selection = NULL;
    int rc = mbe_master_open(r->a.master, r->a.key, 0, &lk, &m, e);
    if (rc < 0) {
        /* Most messages of the master reader name the file already. */
        size_t n = strlen(r->a.master);
        if (strncmp(e->msg, r->a.master, n) != 0 || e->msg[n] != ':')
            mbe_err_prefix(e, "%s", r->a.master);
        return rc;
    }
    rc = r->piece ? piece_frames(r->piece, m, &sel, e)
                  : select_frames(&r->a, mbe_master_n_frames(m), &sel, e);
    if (rc < 0)
        goto out;
    rc = -1;
    if (!(selection = mbe_frames_format(&sel))) {
        mbe_fail(e, "out of memory");
        goto out;
    }
    char *part = mbe_shard_part_path(r->a.output);
    int resume = part && (file_exists(part) || file_exists(r->a.output));
    free(part);
    if (resume) {
        if (mbe_shard_resume(r->a.output, &r->shard, e) < 0)
            goto out;
        const mbe_shard_meta *sm = mbe_shard_meta_of(r->shard);
        if (check_resumable(sm, m, &r->a, r->level, selection, r->calc,
                            e) < 0)
            goto out;
        const mbe_frames *sf = mbe_shard_frames(r->shard);
        for (size_t k = 0; k < sf->n; k++)
            if (mbe_shard_status(r->shard, k) == MBE_UNDEFINED &&
                (mbe_frames_push(&todo, sf->idx[k], e) < 0 ||
                 mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0))
                goto out;
        say_info(r->a.quiet, "resuming %s: %zu of %zu frames left",
                 r->a.output, todo.n, sf->n);
    } else {
        if (skip_completed(r, m, &sel, e) < 0 ||
            mbe_frames_copy(&sel, &todo, e) < 0)
            goto out;
        for (size_t k = 0; k < sel.n; k++)
            if (mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0)
                goto out;
    }
    if (mbe_master_read_geometry(m, &todo, &r->geom, e) < 0) {
        mbe_err_prefix(e, "%s", r->a.master);
        goto out;
    }
    if (resume) {
        if (check_geometry(r, e) < 0)
            goto out;
    } else {
        uint32_t *crc = fingerprints(&r->geom);
        if (!crc) {
            mbe_fail(e, "out of memory");
            goto out;
        }
        int crc_rc = fill_meta(&r->a, m, r->calc, r->level, selection,
                               r->t_ready + now_seconds() - r->t_prep, &meta,
                               e);
        if (crc_rc == 0)
            crc_rc = mbe_shard_create(r->a.output, &meta, &todo, crc, &r->shard, e);
        free(crc);
        if (crc_rc < 0)
            goto out;
    }
    rc = 0;
out:
    if (m) {
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0) {
            *e = ce;
            rc = -1;
        }
    }
    mbe_shard_meta_free(&meta);
    mbe_frames_free(&sel);
    mbe_frames_free(&todo);
    free(selection);
    return rc;
}

static void report_frame(struct run *r, progress *p, const mbe_frame_view *v,
                         int status, double e_atom, double secs,
                         const mbe_err *ce)
{
    char label[96];
    if (status == MBE_COMPLETED) {
        r->completed++;
        snprintf(label, sizeof label, "frame %lld: %.8f eV/atom, %.3g ms",
                 (long long)v->index, e_atom, secs * 1e3);
    } else {
        r->failed++;
        snprintf(label, sizeof label, "frame %lld: %s", (long long)v->index,
                 mbe_status_name(status));
        /* Failures are always reported, with the engine's own words. */
        if (p->tty && !r->a.quiet)
            fputc('\n', stderr);
        say_error("frame %lld: %s: %s", (long long)v->index,
                  mbe_status_name(status), ce->msg);
    }
    progress_step(p, status != MBE_COMPLETED, label);
}

/* Compute every frame left; stop early on a signal.  Returns 0, or -1 on a
 * storage or calculator error (e filled). */
static int compute_all(struct run *r, mbe_err *e)
{
    int64_t na = r->geom.n_atoms;
    double *forces = r->a.no_forces
                         ? NULL
                         : malloc((size_t)(na > 0 ? na : 1) * 3 *
                                  sizeof *forces);
    if (!forces && !r->a.no_forces)
        return mbe_fail(e, "out of memory");
    progress p;
    progress_start(&p, "frames", r->geom.n, r->a.quiet);
    double last_sync = now_seconds();
    int rc = 0;
    for (size_t k = 0; k < r->geom.n && !stop_signal; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&r->geom, k, &v);
        mbe_err ce = {{0}};
        double energy = NAN, t_frame = now_seconds();
        int st = mbe_calc_compute(r->calc, &v, &energy, forces, &ce);
        t_frame = now_seconds() - t_frame;
        r->t_frames += t_frame;
        if (!r->first_done) {
            r->t_first = t_frame;
            r->first_done = 1;
        }
        if (st == MBE_EINTR && stop_signal)
            break; /* abandoned, stays UNDEFINED for the next run */
        if (st < 0) {
            *e = ce;
            mbe_err_prefix(e, "frame %lld", (long long)v.index);
            rc = -1;
            break;
        }
        double e_atom = st == MBE_COMPLETED ? energy / (double)na : NAN;
        if (st == MBE_COMPLETED && !isfinite(e_atom)) {
            snprintf(ce.msg, sizeof ce.msg, "calculator returned a non-finite energy");
            st = MBE_FAILED;
        }
        double t = now_seconds();
        int durable = t - last_sync >= r->a.sync_interval || stop_signal;
        if (mbe_shard_put(r->shard, (size_t)r->todo_pos.idx[k], st, e_atom,
                          st == MBE_COMPLETED ? forces : NULL, durable, e) < 0) {
            rc = -1;
            break;
        }
        if (durable)
            last_sync = now_seconds();
        report_frame(r, &p, &v, st, e_atom, t_frame, &ce);
    }
    progress_end(&p);
    free(forces);
    return rc;
}

/* The calculator's notices (a client refused by the i-PI server) are not
 * errors, but always worth their line. */
static void on_notice(void *ud, const char *msg)
{
    (void)ud;
    say_error("%s", msg);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

static int finish(struct run *r, int rc, double t0)
{
    mbe_err e;
    if (rc < 0 || stop_signal) {
        /* Keep <SHARD>.part: every stored frame is in it, durable.  After
         * an error (already reported) a failing close is the same fault
         * again: one line is enough. */
        if (mbe_shard_close(r->shard, &e) < 0) {
            if (rc >= 0)
                say_err("closing the shard", &e);
            return EXIT_FAIL;
        }
        if (rc < 0)
            return EXIT_FAIL;
        say_error("interrupted by signal %d after %zu frames; %s.part keeps "
                  "them; run the same command again to continue",
                  (int)stop_signal, r->completed + r->failed, r->a.output);
        return EXIT_INTERRUPTED;
    }
    if (mbe_shard_finish(r->shard, &e) < 0) {
        say_err("finishing the shard", &e);
        return EXIT_FAIL;
    }
    /* Every piece pays the start-up: it sizes pieces (mbe(7)). */
    say_info(r->a.quiet, "%s: %zu frames computed (%zu COMPLETED, %zu failed) "
             "in %.1f s (start-up %.2f s, frames %.2f s, first frame %.2f s)",
             r->a.output, r->completed + r->failed, r->completed, r->failed,
             now_seconds() - t0, r->startup, r->t_frames, r->t_first);
    return r->failed ? EXIT_FRAMES_FAILED : EXIT_OK;
}

/* mbe-ase-engine: $MBE_ASE_ENGINE, else beside us as installed
 * (PREFIX/bin -> PREFIX/libexec/mbe-shard) and as built (build/bin ->
 * build/libexec/mbe-shard). */
static const char *ase_engine_path(char *buf, size_t n)
{
    const char *env = getenv("MBE_ASE_ENGINE");
    if (env && *env)
        return env;
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return NULL;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    snprintf(buf, n, "%s/../libexec/mbe-shard/mbe-ase-engine", exe);
    return buf;
}

/* The level of the results: -l, else the calculator's own (an ase:
 * calculator's level_of_theory, whose engine is started to tell it);
 * *owned is what to free.  -1 after saying why. */
static int choose_level(struct run *r, char **owned)
{
    *owned = NULL;
    if (r->a.level) {
        r->level = r->a.level;
        return 0;
    }
    mbe_err e;
    if (mbe_calc_default_level(r->calc, owned, &e) < 0) {
        say_err("calculator", &e);
        return -1;
    }
    if (!*owned) {
        say_error("-c %s: the calculator has no level_of_theory attribute; "
                  "give -l LEVEL", r->a.calculator);
        return -1;
    }
    r->level = *owned;
    return 0;
}

/* One key's shard: open, create or resume, compute, finish.  When last,
 * the engine is stopped (and reaped) before the shard is finished, so
 * that its end is in the log when we report. */
static int run_key(struct run *r, int last, double t0)
{
    mbe_err e;
    r->t_prep = now_seconds();
    r->t_first = r->t_frames = 0;
    r->first_done = 0;
    int rc = prepare(r, &e);
    r->startup = r->t_ready + now_seconds() - r->t_prep;
    if (rc < 0) {
        say_err(rc == MBE_ETIMEOUT ? "lock" : "cannot start", &e);
        if (r->shard) {
            mbe_err ce;
            mbe_shard_close(r->shard, &ce);
        }
        r->shard = NULL;
        mbe_geometry_free(&r->geom);
        mbe_frames_free(&r->todo_pos);
        return rc == MBE_ETIMEOUT ? EXIT_LOCK_TIMEOUT : EXIT_FAIL;
    }
    if (r->geom.n == 0 && mbe_shard_frames(r->shard)->n == 0)
        say_info(r->a.quiet, "nothing to compute; writing an empty shard");
    else if (r->geom.n == 0)
        say_info(r->a.quiet, "nothing left to compute in %s", r->a.output);
    else
        say_info(r->a.quiet, "computing %zu frames of %s:%s with %s, level '%s'",
                 r->geom.n, r->a.master, mbe_shard_meta_of(r->shard)->key,
                 mbe_calc_name(r->calc), r->level);
    rc = compute_all(r, &e);
    if (rc < 0)
        say_err("computing", &e);
    if (last) {
        mbe_calc_free(r->calc);
        r->calc = NULL;
    }
    int code = finish(r, rc, t0);
    r->shard = NULL;
    mbe_geometry_free(&r->geom);
    mbe_frames_free(&r->todo_pos);
    memset(&r->geom, 0, sizeof r->geom);
    return code;
}

/* I and N of --chunk (1/1 without it). */
static int chunk_of(const struct args *a, int64_t *i, int64_t *n, mbe_err *e)
{
    *i = *n = 1;
    if (!a->chunk)
        return 0;
    int rc = strcmp(a->chunk, "slurm") == 0 ? mbe_chunk_from_slurm(i, n, e)
                                            : mbe_chunk_parse(a->chunk, i, n, e);
    if (rc < 0)
        mbe_err_prefix(e, "--chunk");
    return rc;
}

/* The worst of two exit codes of keys: an error or an interruption stops
 * the job, failed frames do not. */
static int worse(int code, int key_code)
{
    if (key_code == EXIT_OK)
        return code;
    if (key_code == EXIT_FRAMES_FAILED && code != EXIT_OK)
        return code;
    return key_code;
}

/* ------------------------------------------------- several keys */

/* One key's member of a new shard: its frames to compute, their
 * fingerprints and its provenance. */
typedef struct member_plan {
    mbe_shard_meta meta;
    mbe_frames todo;
    uint32_t *crc;
} member_plan;

static void member_plan_free(member_plan *mp)
{
    mbe_shard_meta_free(&mp->meta);
    mbe_frames_free(&mp->todo);
    free(mp->crc);
}

/* As prepare does for a new shard of one key, for the key's frames of the
 * piece: the frames the package counts as COMPLETED are skipped. */
static int plan_member(struct run *r, const mbe_frames *piece,
                       member_plan *mp, mbe_err *e)
{
    mbe_master *m = NULL;
    mbe_frames sel = {0};
    mbe_geometry g = {0};
    char *selection = NULL;
    int rc = open_master(r, r->a.key, &m, e);
    if (rc < 0)
        return rc;
    rc = piece_frames(piece, m, &sel, e);
    if (!rc && !(selection = mbe_frames_format(&sel)))
        rc = mbe_fail(e, "out of memory");
    if (!rc)
        rc = skip_completed(r, m, &sel, e);
    if (!rc)
        rc = mbe_frames_copy(&sel, &mp->todo, e);
    if (!rc && mbe_master_read_geometry(m, &mp->todo, &g, e) < 0) {
        mbe_err_prefix(e, "%s", r->a.master);
        rc = -1;
    }
    if (!rc && !(mp->crc = fingerprints(&g)))
        rc = mbe_fail(e, "out of memory");
    if (!rc)
        rc = fill_meta(&r->a, m, r->calc, r->level, selection,
                       r->t_ready + now_seconds() - r->t_prep, &mp->meta, e);
    mbe_geometry_free(&g);
    mbe_frames_free(&sel);
    free(selection);
    return close_master(m, rc, e);
}

/* A new shard of the job's keys (shard format 4): one member for each key
 * of the piece, in the pool's order. */
static int create_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                         size_t n, mbe_err *e)
{
    member_plan *mp = calloc(n, sizeof *mp);
    mbe_shard_meta *meta = calloc(n, sizeof *meta);
    mbe_frames *frames = calloc(n, sizeof *frames);
    const uint32_t **crc = calloc(n, sizeof *crc);
    int rc = mp && meta && frames && crc ? 0 : mbe_fail(e, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) {
        r->a.key = p->keys.v[used[i]];
        rc = plan_member(r, &p->pieces[used[i]], &mp[i], e);
        meta[i] = mp[i].meta;
        frames[i] = mp[i].todo;
        crc[i] = mp[i].crc;
    }
    if (!rc)
        rc = mbe_shard_create_bundle(r->a.output, n, meta, frames, crc,
                                     &r->shard, e);
    for (size_t i = 0; mp && i < n; i++)
        member_plan_free(&mp[i]);
    free(mp);
    free(meta);
    free(frames);
    free(crc);
    return rc;
}

/* An existing shard continues only the job that made it: the same keys in
 * the same order, each checked as a shard of one key is. */
static int resume_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                         size_t n, mbe_err *e)
{
    if (mbe_shard_resume(r->a.output, &r->shard, e) < 0)
        return -1;
    size_t have = mbe_shard_members(r->shard), left = 0, total = 0;
    if (have != n)
        return mbe_fail(e, "existing shard %s belongs to another job (it "
                        "holds %zu keys, this piece %zu); remove it or "
                        "choose another -o", r->a.output, have, n);
    for (size_t i = 0; i < n; i++) {
        mbe_master *m = NULL;
        mbe_frames sel = {0};
        char *selection = NULL;
        mbe_shard_select(r->shard, i, e);
        int rc = open_master(r, p->keys.v[used[i]], &m, e);
        if (rc < 0)
            return rc;
        rc = piece_frames(&p->pieces[used[i]], m, &sel, e);
        if (!rc && !(selection = mbe_frames_format(&sel)))
            rc = mbe_fail(e, "out of memory");
        if (!rc)
            rc = check_resumable(mbe_shard_meta_of(r->shard), m, &r->a,
                                 r->level, selection, r->calc, e);
        mbe_frames_free(&sel);
        free(selection);
        if ((rc = close_master(m, rc, e)) < 0)
            return rc;
        const mbe_frames *f = mbe_shard_frames(r->shard);
        for (size_t k = 0; k < f->n; k++)
            left += mbe_shard_status(r->shard, k) == MBE_UNDEFINED;
        total += f->n;
    }
    say_info(r->a.quiet, "resuming %s: %zu of %zu frames left", r->a.output,
             left, total);
    return 0;
}

/* The selected member's frames still UNDEFINED, read from the master and
 * checked against the fingerprints the shard was made with. */
static int load_member(struct run *r, mbe_err *e)
{
    mbe_master *m = NULL;
    mbe_frames todo = {0};
    int rc = open_master(r, r->a.key, &m, e);
    if (rc < 0)
        return rc;
    const mbe_frames *f = mbe_shard_frames(r->shard);
    for (size_t k = 0; !rc && k < f->n; k++)
        if (mbe_shard_status(r->shard, k) == MBE_UNDEFINED &&
            (mbe_frames_push(&todo, f->idx[k], e) < 0 ||
             mbe_frames_push(&r->todo_pos, (int64_t)k, e) < 0))
            rc = -1;
    if (!rc && todo.n &&
        todo.idx[todo.n - 1] >= mbe_master_n_frames(m))
        rc = mbe_fail(e, "group '%s' has %lld frames now, fewer than %s "
                      "was started with; remove the shard to start again",
                      r->a.key, (long long)mbe_master_n_frames(m),
                      r->a.output);
    if (!rc && mbe_master_read_geometry(m, &todo, &r->geom, e) < 0) {
        mbe_err_prefix(e, "%s", r->a.master);
        rc = -1;
    }
    if (!rc)
        rc = check_geometry(r, e);
    mbe_frames_free(&todo);
    return close_master(m, rc, e);
}

/* Every member in turn; stops at an error or a signal. */
static int compute_members(struct run *r, const mbe_pool *p,
                           const size_t *used, size_t n, mbe_err *e)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < n && !stop_signal; i++) {
        r->a.key = p->keys.v[used[i]];
        mbe_shard_select(r->shard, i, e);
        rc = load_member(r, e);
        if (!rc && r->geom.n)
            say_info(r->a.quiet, "computing %zu frames of %s:%s with %s, "
                     "level '%s'", r->geom.n, r->a.master, r->a.key,
                     mbe_calc_name(r->calc), r->level);
        if (!rc)
            rc = compute_all(r, e);
        mbe_geometry_free(&r->geom);
        memset(&r->geom, 0, sizeof r->geom);
        mbe_frames_free(&r->todo_pos);
    }
    return rc;
}

/* The job's piece into one shard holding a member for each of its keys
 * (mbe-shard(5)), created or resumed, with one calculator. */
static int run_bundle(struct run *r, const mbe_pool *p, const size_t *used,
                      size_t n, double t0)
{
    mbe_err e;
    char *part = mbe_shard_part_path(r->a.output);
    int resume = part && (file_exists(part) || file_exists(r->a.output));
    free(part);
    r->t_prep = now_seconds();
    int rc = resume ? resume_bundle(r, p, used, n, &e)
                    : create_bundle(r, p, used, n, &e);
    r->startup = r->t_ready + now_seconds() - r->t_prep;
    if (rc < 0) {
        say_err(rc == MBE_ETIMEOUT ? "lock" : "cannot start", &e);
        if (r->shard) {
            mbe_err ce;
            mbe_shard_close(r->shard, &ce);
            r->shard = NULL;
        }
        return rc == MBE_ETIMEOUT ? EXIT_LOCK_TIMEOUT : EXIT_FAIL;
    }
    rc = compute_members(r, p, used, n, &e);
    if (rc < 0)
        say_err(rc == MBE_ETIMEOUT ? "lock" : "computing", &e);
    /* The engine's end is in its log before the shard is reported. */
    mbe_calc_free(r->calc);
    r->calc = NULL;
    int code = finish(r, rc, t0);
    if (rc == MBE_ETIMEOUT && code == EXIT_FAIL)
        code = EXIT_LOCK_TIMEOUT;
    r->shard = NULL;
    return code;
}

/* Shards of one key each, as mbe-shard 0.2 wrote for a job over several
 * keys (mbe_key_shard_path): whether this job left any. */
static int left_key_shards(const struct run *r, const mbe_pool *p)
{
    int found = 0;
    for (size_t k = 0; k < p->keys.n && !found; k++) {
        char *path = p->pieces[k].n ? mbe_key_shard_path(r->a.output, k)
                                    : NULL;
        char *part = path ? mbe_shard_part_path(path) : NULL;
        found = part && (file_exists(path) || file_exists(part));
        free(path);
        free(part);
    }
    return found;
}

/* Such a job is continued as it began, one shard per key, so that no
 * computed frame is computed again. */
static int run_key_shards(struct run *r, const mbe_pool *p, size_t last,
                          double t0)
{
    const char *output = r->a.output;
    double frames_time = 0;
    size_t used = 0, completed = 0, failed = 0;
    int code = EXIT_OK;
    say_info(r->a.quiet, "continuing the shards of one key each that an "
             "earlier mbe-shard began for %s (%s.k0000.h5, ...)", output,
             output);
    for (size_t k = 0; k < p->keys.n && !stop_signal; k++) {
        if (!p->pieces[k].n)
            continue;
        char *path = mbe_key_shard_path(output, k);
        if (!path) {
            say_error("out of memory");
            code = EXIT_FAIL;
            break;
        }
        used++;
        r->a.key = p->keys.v[k];
        r->a.output = path;
        r->piece = &p->pieces[k];
        r->completed = r->failed = 0;
        int kc = run_key(r, k == last, now_seconds());
        completed += r->completed;
        failed += r->failed;
        frames_time += r->t_frames;
        r->a.output = output;
        free(path);
        code = worse(code, kc);
        if (code != EXIT_OK && code != EXIT_FRAMES_FAILED)
            break;
    }
    r->piece = NULL;
    if (code == EXIT_OK || code == EXIT_FRAMES_FAILED)
        say_info(r->a.quiet, "%zu keys: %zu frames computed (%zu COMPLETED, "
                 "%zu failed) in %.1f s (start-up %.2f s, frames %.2f s)",
                 used, completed + failed, completed, failed,
                 now_seconds() - t0, r->t_ready, frames_time);
    return code;
}

/* Several keys: the job's piece of the (key, frame) pool into one shard,
 * with one calculator. */
static int run_keys(struct run *r, double t0)
{
    lock_wait w = {&r->a.quiet, r->a.timeout};
    mbe_lock_opts lk = {r->a.timeout, lock_wait_message, &w};
    mbe_err e;
    mbe_pool p;
    int64_t i = 1, n = 1;
    int rc = chunk_of(&r->a, &i, &n, &e);
    if (rc == 0)
        rc = mbe_pool_plan(r->a.master, &r->a.keys, r->a.all_keys,
                           r->a.frames, i, n, &lk, &p, &e);
    if (rc < 0) {
        say_err(rc == MBE_ETIMEOUT ? "lock" : "cannot start", &e);
        return rc == MBE_ETIMEOUT ? EXIT_LOCK_TIMEOUT : EXIT_FAIL;
    }
    r->t_ready = now_seconds() - t0;
    size_t *used = malloc((p.keys.n ? p.keys.n : 1) * sizeof *used);
    size_t n_used = 0, frames = 0;
    if (!used) {
        mbe_pool_free(&p);
        say_error("out of memory");
        return EXIT_FAIL;
    }
    for (size_t k = 0; k < p.keys.n; k++)
        if (p.pieces[k].n) {
            used[n_used++] = k;
            frames += p.pieces[k].n;
        }
    say_info(r->a.quiet, "%zu of %zu keys in piece %lld/%lld (%zu frames)",
             n_used, p.keys.n, (long long)i, (long long)n, frames);
    int code = EXIT_OK;
    if (!n_used)
        say_info(r->a.quiet, "no frame of any key in this piece; no shard "
                 "written");
    else if (left_key_shards(r, &p))
        code = run_key_shards(r, &p, used[n_used - 1], t0);
    else
        code = run_bundle(r, &p, used, n_used, t0);
    r->a.key = NULL;
    free(used);
    mbe_pool_free(&p);
    return code;
}

/* Everything after the arguments; main frees what they hold. */
static int compute_main(struct run *r)
{
    double t0 = now_seconds();
    mbe_err e;
    install_signals();
    /* A blocked wait for an engine or command notices signals through
     * this flag. */
    r->a.calc.stop = &stop_signal;
    r->a.calc.notice = on_notice;
    char engine_path[PATH_MAX + 64];
    r->a.calc.ase_engine = ase_engine_path(engine_path, sizeof engine_path);
    char *engine_log = NULL;
    if (r->a.calc.engine || r->a.ase) {
        size_t n = strlen(r->a.output);
        if (n > 3 && strcmp(r->a.output + n - 3, ".h5") == 0)
            n -= 3;
        if (!(engine_log = malloc(n + sizeof ".engine.log"))) {
            say_error("out of memory");
            return EXIT_FAIL;
        }
        memcpy(engine_log, r->a.output, n);
        strcpy(engine_log + n, ".engine.log");
        r->a.calc.engine_log = engine_log;
    }
    /* The engine's atoms: the first frame of an XYZ file. */
    mbe_geometry atoms = {0};
    if (r->a.engine_atoms) {
        if (mbe_xyz_read(r->a.engine_atoms, &atoms, &e) < 0) {
            say_err("--engine-atoms", &e);
            free(engine_log);
            return EXIT_FAIL;
        }
        r->a.calc.engine_atoms = atoms.atomic_numbers;
        r->a.calc.n_engine_atoms = atoms.n_atoms;
    }
    int calc_rc = mbe_calc_new(r->a.calculator, &r->a.calc, &r->calc, &e);
    mbe_geometry_free(&atoms); /* copied by the calculator */
    r->a.calc.engine_atoms = NULL;
    if (calc_rc < 0) {
        say_err("calculator", &e);
        free(engine_log);
        return EXIT_FAIL;
    }
    char *own_level = NULL;
    if (choose_level(r, &own_level) < 0) {
        mbe_calc_free(r->calc);
        free(engine_log);
        return EXIT_FAIL;
    }
    r->t_ready = now_seconds() - t0;
    int code = r->a.multi ? run_keys(r, t0) : run_key(r, 1, t0);
    mbe_calc_free(r->calc);
    free(engine_log);
    free(own_level);
    return code;
}

int main(int argc, char **argv)
{
    mbe_init();
    struct run r;
    memset(&r, 0, sizeof r);
    parse_args(argc, argv, &r.a);
    int code = compute_main(&r);
    free(r.a.frames_file);
    mbe_strlist_free(&r.a.keys);
    return code;
}
