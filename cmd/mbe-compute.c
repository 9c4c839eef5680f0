/* mbe-compute - compute selected frames of a master into a private shard.
 *
 * The master is read under the shared lock only while the geometry of the
 * selected frames is read; computing holds no lock.  Every finished frame is
 * stored in the shard <SHARD>.part and made durable (see sync policy below),
 * so a job killed at any moment loses at most the frame in progress, and
 * running the same command again continues where it stopped.  The job is
 * mbe_compute (lib/compute.c); this program gives it the options, the
 * signal flag and the calculator, and prints what it reports. */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
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

/* State of one run, passed between the steps of main. */
struct run {
    struct args a;
    mbe_calc *calc;
    const char *level;
    progress p;            /* of the frames being computed */
};

/* The job's lines: progress unless quiet, an interruption always. */
static void on_say(void *ud, int kind, const char *msg)
{
    const struct run *r = ud;
    if (kind == MBE_COMPUTE_ALERT)
        say_error("%s", msg);
    else
        say_info(r->a.quiet, "%s", msg);
}

static void on_frame(void *ud, const mbe_compute_frame *f)
{
    struct run *r = ud;
    if (f->event == MBE_FRAMES_BEGIN) {
        progress_start(&r->p, "frames", f->n, r->a.quiet);
        return;
    }
    if (f->event == MBE_FRAMES_END) {
        progress_end(&r->p);
        return;
    }
    char label[96];
    if (f->status == MBE_COMPLETED) {
        snprintf(label, sizeof label, "frame %lld: %.8f eV/atom, %.3g ms",
                 (long long)f->index, f->e_atom, f->seconds * 1e3);
    } else {
        snprintf(label, sizeof label, "frame %lld: %s", (long long)f->index,
                 mbe_status_name(f->status));
        /* Failures are always reported, with the engine's own words. */
        if (r->p.tty && !r->a.quiet)
            fputc('\n', stderr);
        say_error("frame %lld: %s: %s", (long long)f->index,
                  mbe_status_name(f->status), f->error);
    }
    progress_step(&r->p, f->status != MBE_COMPLETED, label);
}

/* The job (mbe_compute), with the calculator; the exit status. */
static int run_job(struct run *r, double t0)
{
    lock_wait w = {&r->a.quiet, r->a.timeout};
    mbe_compute_opts o = {
        .master = r->a.master, .output = r->a.output, .key = r->a.key,
        .keys = r->a.multi ? &r->a.keys : NULL, .all_keys = r->a.all_keys,
        .frames = r->a.frames, .chunk = r->a.chunk, .level = r->level,
        .overwrite = r->a.overwrite, .no_forces = r->a.no_forces,
        .allow_renamed = r->a.allow_renamed,
        .lock = {r->a.timeout, lock_wait_message, &w},
        .sync_interval = r->a.sync_interval, .t_start = t0,
        .stop = &stop_signal, .on_say = on_say, .on_frame = on_frame,
        .ud = r};
    mbe_compute_report rep;
    mbe_err e;
    int rc = mbe_compute(&o, r->calc, &rep, &e);
    r->calc = NULL;
    if (rc < 0 && rc != MBE_EINTR) {
        if (rep.stage)
            say_err(rep.stage, &e);
        else
            say_error("%s", e.msg);
    }
    if (rc == MBE_ETIMEOUT)
        return EXIT_LOCK_TIMEOUT;
    if (rc == MBE_EINTR)
        return EXIT_INTERRUPTED;
    if (rc < 0)
        return EXIT_FAIL;
    return rep.failed ? EXIT_FRAMES_FAILED : EXIT_OK;
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
    int code = run_job(r, t0);
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
