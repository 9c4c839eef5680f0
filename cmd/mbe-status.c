/* mbe-status - what is done, what failed and what is missing, in masters
 * and shards.
 *
 * Every file is read into one JSON object (the documented schema of
 * mbe-status(1)); the human table is printed from that same object, so the
 * two outputs can never disagree.  A master is read under the shared lock
 * with a short time-out, held only while reading, so mbe-status never
 * keeps a merge waiting for long. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "status.h"

const char *prog_name = "mbe-status";

#define SCHEMA "mbe-status/1"
/* Short: a status query must not stall an mbe-merge for long. */
#define STATUS_TIMEOUT_DEFAULT 10.0

static void usage(void)
{
    printf(
        "Usage: %s [OPTIONS] FILE...\n"
        "Report what masters and shards hold: frames by status per group and\n"
        "level of theory, merged shards, and the provenance of shards.\n"
        "\n"
        "  -k, --key KEY            only this frame-holding group; repeated, or a\n"
        "                           shell pattern ('md/*'): these groups\n"
        "      --all-keys           every group (with --missing: 'KEY: SPEC'\n"
        "                           lines, for mbe-compute -f with the same -k)\n"
        "  -l, --level-of-theory L  only this level of theory\n"
        "      --missing            print the frames of level L that are not\n"
        "                           COMPLETED as a spec for mbe-compute --frames\n"
        "      --failed             same, for FAILED and SCF_NOT_CONVERGED only\n"
        "      --master M           for shards: whether M's merge log lists them\n"
        "      --no-verify          do not check the shards' checksums\n"
        "      --json               JSON (schema " SCHEMA ", see mbe-status(1))\n"
        "      --timeout SEC        wait at most SEC for the lock (default 10)\n"
        "  -q, --quiet              no report; the exit status tells\n"
        "  -h, --help               this help\n"
        "  -V, --version            version\n"
        "\n"
        "Exit status: 0 success, 1 error, 2 usage, 3 a shard fails its\n"
        "checksums or a master awaits recovery, 4 lock time-out.\n",
        prog_name);
}

enum { OPT_MISSING = 256, OPT_FAILED, OPT_MASTER, OPT_NOVERIFY, OPT_JSON,
       OPT_TIMEOUT, OPT_ALL_KEYS };

static void check_args(const struct args *a)
{
    if (a->n_files < 1)
        usage_error("no FILE given");
    for (size_t k = 0; k < a->keys.n; k++)
        if (!*a->keys.v[k])
            usage_error("--key must not be empty");
    if (a->level && !*a->level)
        usage_error("--level-of-theory must not be empty");
    if (a->master && !*a->master)
        usage_error("--master must not be empty");
    if (a->missing && a->failed)
        usage_error("--missing and --failed exclude each other");
    if (!a->missing && !a->failed)
        return;
    const char *opt = a->missing ? "--missing" : "--failed";
    if (!a->level)
        usage_error("%s needs -l LEVEL", opt);
    if (a->n_files != 1)
        usage_error("%s takes exactly one master FILE", opt);
    if (a->json)
        usage_error("%s prints a frame spec; it does not combine with --json",
                    opt);
    if (a->master)
        usage_error("%s reads a master; --master is for shards", opt);
}

static void parse_args(int argc, char **argv, struct args *a)
{
    static const struct option longopts[] = {
        {"key", required_argument, 0, 'k'},
        {"all-keys", no_argument, 0, OPT_ALL_KEYS},
        {"level-of-theory", required_argument, 0, 'l'},
        {"level", required_argument, 0, 'l'},
        {"missing", no_argument, 0, OPT_MISSING},
        {"failed", no_argument, 0, OPT_FAILED},
        {"master", required_argument, 0, OPT_MASTER},
        {"no-verify", no_argument, 0, OPT_NOVERIFY},
        {"json", no_argument, 0, OPT_JSON},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->verify = 1;
    a->timeout = STATUS_TIMEOUT_DEFAULT;
    mbe_err e;
    int c;
    while ((c = getopt_long(argc, argv, ":k:l:qhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'k':
            if (mbe_strlist_push(&a->keys, optarg, &e) < 0)
                usage_error("%s", e.msg);
            break;
        case OPT_ALL_KEYS: a->all_keys = 1; break;
        case 'l': a->level = optarg; break;
        case OPT_MISSING: a->missing = 1; break;
        case OPT_FAILED: a->failed = 1; break;
        case OPT_MASTER: a->master = optarg; break;
        case OPT_NOVERIFY: a->verify = 0; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_TIMEOUT:
            a->timeout = seconds_arg("--timeout", optarg);
            break;
        case 'q': a->quiet = 1; break;
        case 'h': usage(); exit(EXIT_OK);
        case 'V': print_version(); exit(EXIT_OK);
        default: option_error(c, argv);
        }
    }
    a->files = argv + optind;
    a->n_files = argc - optind;
    a->multi = a->all_keys || a->keys.n > 1 ||
               (a->keys.n == 1 && mbe_key_is_pattern(a->keys.v[0]));
    a->key = a->keys.n == 1 && !a->multi ? a->keys.v[0] : NULL;
    check_args(a);
}

/* ------------------------------------------------------- exit codes */

/* The exit code of several files is the most serious one: an error, then
 * a lock time-out, then something that needs attention. */
static int severity(int code)
{
    switch (code) {
    case EXIT_FAIL: return 3;
    case EXIT_LOCK_TIMEOUT: return 2;
    case EXIT_ATTENTION: return 1;
    default: return 0;
    }
}

void note_code(struct ctx *c, int code)
{
    if (severity(code) > severity(c->code))
        c->code = code;
}

int code_of(int rc)
{
    switch (rc) {
    case MBE_ETIMEOUT: return EXIT_LOCK_TIMEOUT;
    case MBE_ERECOVERY: return EXIT_ATTENTION;
    default: return EXIT_FAIL;
    }
}

/* "mbe-status: FILE: why" on one line; the library's messages that name
 * the file start with it (mbe_err_strip_path), which is not repeated. */
static void file_error(const char *path, const char *msg)
{
    say_error("%s: %s", path, mbe_err_strip_path(msg, path));
}

/* ------------------------------------------------- telling them apart */

enum kind { KIND_ERROR, KIND_SHARD, KIND_MASTER };

/* A shard is what the shard reader accepts.  Only a file that is an HDF5
 * file without the shard's format attribute, or one that HDF5 cannot open
 * because a writer has it open, is taken for a master: the master route
 * takes the lock (creating <FILE>.lock), which must not happen beside a
 * damaged shard. */
static enum kind classify(const char *path, mbe_shard_reader **r,
                          mbe_err *e)
{
    int rc = mbe_shard_open(path, r, e);
    if (rc == 0)
        return KIND_SHARD;
    return rc == MBE_ENOTSHARD || rc == MBE_EBUSY ? KIND_MASTER : KIND_ERROR;
}

/* A job's shard is <SHARD>.part until it finishes: the name the job was
 * given finds it too. */
static char *resolve_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return strdup(path);
    char *part = mbe_shard_part_path(path);
    if (part && stat(part, &st) == 0)
        return part;
    free(part);
    return strdup(path);
}

/* ------------------------------------------------------------ files */

/* On failure: reported, and o made an "error" object. */
static void error_json(struct ctx *c, const char *path, int rc,
                       const mbe_err *e, json_t *o)
{
    file_error(path, e->msg);
    note_code(c, code_of(rc));
    json_object_clear(o);
    put(c, o, "path", jstr(path));
    put(c, o, "type", jstr("error"));
    put(c, o, "error", jstr(mbe_err_strip_path(e->msg, path)));
    put(c, o, "lock_timeout", json_boolean(rc == MBE_ETIMEOUT));
}

static json_t *new_entry(struct ctx *c, json_t *out, const char *path)
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "path", jstr(path));
    if (json_array_append_new(out, o) < 0) {
        c->oom = 1;
        return NULL;
    }
    return o;
}

/* The members after the first of a shard of several keys, an entry
 * each. */
static void more_members(struct ctx *c, const char *path, size_t n,
                         json_t *out)
{
    for (size_t i = 1; i < n && !c->oom; i++) {
        json_t *o = new_entry(c, out, path);
        mbe_err e = {{0}};
        mbe_shard_reader *r = NULL;
        int rc = mbe_shard_open_member(path, i, &r, &e);
        if (o && rc == 0)
            rc = shard_json(c, path, r, o);
        mbe_shard_reader_close(r);
        if (o && rc < 0)
            error_json(c, path, rc, &e, o);
    }
}

/* Read one file into JSON objects appended to out: one, or one per member
 * of a shard of several keys; on failure report it and append an "error"
 * object instead. */
static void file_json(struct ctx *c, const char *arg, json_t *out)
{
    char *path = resolve_path(arg);
    json_t *o = path ? new_entry(c, out, path) : NULL;
    if (!o) {
        free(path);
        c->oom = 1;
        return;
    }
    mbe_err e = {{0}};
    mbe_shard_reader *r = NULL;
    size_t members = 1;
    int rc;
    switch (classify(path, &r, &e)) {
    case KIND_SHARD:
        members = mbe_shard_reader_members(r);
        rc = shard_json(c, path, r, o);
        mbe_shard_reader_close(r);
        break;
    case KIND_MASTER:
        rc = master_json(c, path, o, &e);
        break;
    default:
        rc = MBE_EFAIL;
    }
    if (rc < 0)
        error_json(c, path, rc, &e, o);
    more_members(c, path, members, out);
    free(path);
}

static int report(struct ctx *c)
{
    json_t *root = json_object(), *files = json_array();
    if (!root || !files)
        c->oom = 1;
    put(c, root, "schema", jstr(SCHEMA));
    put(c, root, "version", jstr(MBE_VERSION));
    int printed = 0;
    for (int i = 0; i < c->a.n_files && files; i++) {
        size_t from = json_array_size(files);
        file_json(c, c->a.files[i], files);
        for (size_t k = from; k < json_array_size(files); k++) {
            const json_t *o = json_array_get(files, k);
            if (c->a.json || c->a.quiet || !strcmp(gs(o, "type"), "error"))
                continue;
            if (printed++)
                putchar('\n');
            print_human(o);
            fflush(stdout);
        }
    }
    put(c, root, "files", files);
    if (c->a.json && !c->oom) {
        if (json_dumpf(root, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) < 0)
            c->oom = 1;
        putchar('\n');
    }
    json_decref(root);
    if (c->oom) {
        say_error("out of memory while building the report");
        note_code(c, EXIT_FAIL);
    }
    return c->code;
}

/* -------------------------------------------------- --missing, --failed */

/* Why the spec is not what the stored status says, when it is not. */
static void note_view(void *ud, const char *key, mbe_level_view view)
{
    const struct ctx *c = ud;
    if (view == MBE_LEVEL_GENERATOR)
        say_info(c->a.quiet, "'%s' is the level_of_theory of '%s' (the "
                 "model that generated its geometries): as in "
                 "mbe_automation, every frame counts as COMPLETED",
                 c->a.level, key);
    else if (view == MBE_LEVEL_HIDDEN)
        say_info(c->a.quiet, "'%s' has datasets in the ground_truth of '%s' "
                 "but is not listed in its levels_of_theory: as in "
                 "mbe_automation, its stored status is not seen and no "
                 "frame counts as COMPLETED", c->a.level, key);
}

static int frames_spec(struct ctx *c, const char *path, char **spec,
                       mbe_err *e)
{
    mbe_missing_opts o = {.level = c->a.level, .undefined = c->a.missing,
                          .lock = c->lk, .on_view = note_view, .ud = c};
    return c->a.multi ? mbe_master_missing_keyed(path, &c->a.keys,
                                                 c->a.all_keys, &o, spec, e)
                      : mbe_master_missing(path, c->a.key, &o, spec, e);
}

static int print_frames(struct ctx *c)
{
    char *path = resolve_path(c->a.files[0]);
    if (!path) {
        say_error("out of memory");
        return EXIT_FAIL;
    }
    mbe_err e = {{0}};
    mbe_shard_reader *r = NULL;
    char *spec = NULL;
    int rc;
    switch (classify(path, &r, &e)) {
    case KIND_SHARD:
        mbe_shard_reader_close(r);
        rc = mbe_fail(&e, "a shard; %s reads a master",
                      c->a.missing ? "--missing" : "--failed");
        break;
    case KIND_MASTER:
        rc = frames_spec(c, path, &spec, &e);
        break;
    default:
        rc = MBE_EFAIL;
    }
    if (rc < 0) {
        file_error(path, e.msg);
        free(path);
        return code_of(rc);
    }
    /* Nothing at all when no frame is left: "$(mbe-status --missing ...)"
     * is then empty. */
    if (*spec)
        printf("%s\n", spec);
    free(spec);
    free(path);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    mbe_init();
    struct ctx c;
    memset(&c, 0, sizeof c);
    parse_args(argc, argv, &c.a);
    c.lk.timeout = c.a.timeout;
    c.lk.on_wait = lock_wait_message;
    c.wait.quiet = &c.a.quiet;
    c.wait.timeout = c.a.timeout;
    c.lk.ud = &c.wait;
    int code = c.a.missing || c.a.failed ? print_frames(&c) : report(&c);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        say_error("cannot write the report to standard output");
        code = EXIT_FAIL;
    }
    mbe_strlist_free(&c.a.keys);
    return code;
}
