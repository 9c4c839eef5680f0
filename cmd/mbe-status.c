/* mbe-status - what is done, what failed and what is missing, in masters
 * and shards.
 *
 * Every file is read into one JSON object (the documented schema of
 * mbe-status(1)); the human table is printed from that same object, so the
 * two outputs can never disagree.  A master is read under the shared lock
 * with a short time-out, held only while reading, so mbe-status never
 * keeps a merge waiting for long. */
#include <ctype.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

const char *prog_name = "mbe-status";

#define SCHEMA "mbe-status/1"
/* Short: a status query must not stall an mbe-merge for long. */
#define STATUS_TIMEOUT_DEFAULT 10.0
/* Forces buffer of the checksum verification of a shard. */
#define VERIFY_BUF ((size_t)32 << 20)

enum {
    EXIT_ATTENTION = 3,     /* bad shard checksum, master awaits recovery */
    EXIT_LOCK_TIMEOUT = 4
};

struct args {
    char **files;
    int n_files;
    const char *key;        /* one -k, not a pattern */
    mbe_strlist keys;       /* every -k */
    int all_keys;           /* --all-keys */
    int multi;              /* several keys, a pattern or --all-keys */
    const char *level;
    const char *master;     /* --master, for shards */
    int missing;            /* --missing */
    int failed;             /* --failed */
    int json;
    int quiet;
    int verify;
    double timeout;
};

/* State of one run: options, the worst exit code so far, and whether the
 * JSON document could be built completely. */
struct ctx {
    struct args a;
    mbe_lock_opts lk;
    lock_wait wait;
    int code;
    int oom;
};

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

static void note_code(struct ctx *c, int code)
{
    if (severity(code) > severity(c->code))
        c->code = code;
}

static int code_of(int rc)
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

/* ------------------------------------------------------ JSON values */

/* Strings from files and the command line need not be UTF-8, which JSON
 * requires: bytes that are not are shown as '?'. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j || !s)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *jreal(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static void put(struct ctx *c, json_t *obj, const char *k, json_t *v)
{
    if (!v || json_object_set_new(obj, k, v) < 0)
        c->oom = 1;
}

static void append(struct ctx *c, json_t *arr, json_t *v)
{
    if (!v || json_array_append_new(arr, v) < 0)
        c->oom = 1;
}

/* {"COMPLETED": n, "UNDEFINED": n, "SCF_NOT_CONVERGED": n, "FAILED": n} */
static json_t *jcounts(struct ctx *c, const int64_t count[MBE_N_STATUS])
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    for (int s = 0; s < MBE_N_STATUS; s++)
        put(c, o, mbe_status_name(s), json_integer(count[s]));
    return o;
}

/* Readers of the JSON object for the human table. */
static const char *gs(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long gi(const json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

static long long gcount(const json_t *o, int status)
{
    return gi(json_object_get(o, "counts"), mbe_status_name(status));
}

/* ---------------------------------------------------------- masters */

static json_t *level_json(struct ctx *c, const mbe_level_summary *s,
                          int listed)
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "level", jstr(s->level));
    put(c, o, "listed", json_boolean(listed));
    put(c, o, "legacy", json_boolean(s->legacy));
    json_t *ds = json_array();
    if (!ds)
        c->oom = 1;
    if (s->has_energies)
        append(c, ds, jstr("energies"));
    if (s->has_forces)
        append(c, ds, jstr("forces"));
    if (s->has_status)
        append(c, ds, jstr("status"));
    put(c, o, "datasets", ds);
    put(c, o, "n_frames", json_integer(s->n_frames));
    put(c, o, "counts", jcounts(c, s->count));
    put(c, o, "energy_min", jreal(s->e_min));
    put(c, o, "energy_max", jreal(s->e_max));
    return o;
}

static int strlist_has(const mbe_strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

static int levels_json(struct ctx *c, mbe_master *m, json_t *arr,
                       int *spelling, mbe_err *e)
{
    mbe_strlist levels;
    if (mbe_master_levels(m, &levels, e) < 0)
        return MBE_EFAIL;
    int rc = 0;
    /* -l names a level that may be absent: then every frame is UNDEFINED,
     * which is what the user needs to know. */
    size_t n = c->a.level ? 1 : levels.n;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *lv = c->a.level ? c->a.level : levels.v[i];
        mbe_level_summary s;
        rc = mbe_master_summarize(m, lv, &s, e);
        if (rc == 0)
            append(c, arr, level_json(c, &s, strlist_has(&levels, lv)));
        *spelling |= s.forces_spelling;
        mbe_level_summary_free(&s);
    }
    mbe_strlist_free(&levels);
    return rc;
}

static json_t *merge_entry_json(struct ctx *c, const mbe_merge_log_entry *m)
{
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "shard_id", jstr(m->shard_id));
    put(c, o, "level", jstr(m->level));
    put(c, o, "time", jstr(m->time));
    put(c, o, "path", jstr(m->path));
    put(c, o, "frames", json_integer(m->frames));
    return o;
}

/* A log that cannot be read does not hide what the group holds: its
 * error goes to merge_log_error, with the way out. */
static int merges_json(struct ctx *c, mbe_master *m, json_t *arr, json_t *g)
{
    mbe_merge_log_entry *log = NULL;
    size_t n = 0;
    mbe_err le = {""};
    if (mbe_master_merge_log(m, &log, &n, &le) < 0) {
        char msg[MBE_ERR_LEN + 256];
        snprintf(msg, sizeof msg, "%s (mbe-merge --reset-log %s drops it)",
                 le.msg, mbe_master_path(m));
        put(c, g, "merge_log_error", jstr(msg));
        return 0;
    }
    put(c, g, "merge_log_error", json_null());
    for (size_t i = 0; i < n; i++)
        if (!c->a.level || strcmp(log[i].level, c->a.level) == 0)
            append(c, arr, merge_entry_json(c, &log[i]));
    mbe_merge_log_free(log, n);
    return 0;
}

/* The Angstrom sign in the group's dataset names. */
static const char *spelling_name(int spelling)
{
    switch (spelling) {
    case MBE_SPELL_0_2: return "U+00C5";
    case MBE_SPELL_0_2 | MBE_SPELL_PACKAGE: return "U+212B+U+00C5";
    default: return "U+212B";
    }
}

/* One frame-holding group, opened under the caller's lock, which
 * checked the file (mbe_master_check). */
static int group_json(struct ctx *c, const char *path, const char *key,
                      json_t *groups, mbe_err *e)
{
    mbe_master *m = NULL;
    int rc = mbe_master_open_checked(path, key, 0, &c->lk, &m, e);
    if (rc < 0)
        return rc;
    json_t *g = json_object(), *levels = json_array(), *merges = json_array();
    if (!g || !levels || !merges)
        c->oom = 1;
    int spelling = mbe_master_spelling(m);
    rc = levels_json(c, m, levels, &spelling, e);
    if (rc == 0 && g)
        rc = merges_json(c, m, merges, g);
    if (g) {
        put(c, g, "key", jstr(mbe_master_key(m)));
        put(c, g, "n_frames", json_integer(mbe_master_n_frames(m)));
        put(c, g, "n_atoms", json_integer(mbe_master_n_atoms(m)));
        put(c, g, "periodic", json_boolean(mbe_master_periodic(m)));
        put(c, g, "angstrom", jstr(spelling_name(spelling)));
    }
    put(c, g, "levels", levels);
    put(c, g, "merges", merges);
    append(c, groups, g);
    mbe_err ce;
    if (mbe_master_close(m, &ce) < 0 && rc == 0) {
        *e = ce;
        rc = MBE_EFAIL;
    }
    return rc;
}

static int group_keys(struct ctx *c, const char *path, mbe_strlist *keys,
                      mbe_err *e)
{
    if (c->a.key) {
        keys->v = NULL;
        keys->n = 0;
        return mbe_strlist_push(keys, c->a.key, e);
    }
    int rc = mbe_list_frame_groups(path, &c->lk, keys, e);
    if (rc == 0 && keys->n == 0)
        rc = mbe_fail(e, "neither a shard nor a master: no frame-holding "
                         "group (Structure, Trajectory or FiniteSubsystem)");
    if (rc == 0 && c->a.multi) {
        mbe_strlist all = *keys;
        rc = mbe_keys_select(&all, &c->a.keys, c->a.all_keys, keys, e);
        mbe_strlist_free(&all);
    }
    return rc;
}

/* Every group of a master.  The shared lock is taken once for the whole
 * file, so the groups are one consistent snapshot (mbe_master_open takes
 * its own shared lock too, which a held shared lock never blocks). */
static int master_json(struct ctx *c, const char *path, json_t *o,
                       mbe_err *e)
{
    mbe_lock lock;
    int rc = mbe_lock_acquire(path, 0, &c->lk, &lock, e);
    if (rc < 0)
        return rc;
    int recovery = mbe_master_needs_recovery(path);
    put(c, o, "type", jstr("master"));
    put(c, o, "needs_recovery", json_boolean(recovery));
    json_t *groups = json_array();
    if (!groups)
        c->oom = 1;
    mbe_strlist keys = {0};
    /* Checked once under the lock held for every group (group_json): a
     * check per group would walk the whole file once per group.  Listing
     * the groups checks it (mbe_list_frame_groups). */
    rc = c->a.key ? mbe_master_check(path, e) : 0;
    if (rc == 0)
        rc = group_keys(c, path, &keys, e);
    for (size_t i = 0; rc == 0 && i < keys.n; i++)
        rc = group_json(c, path, keys.v[i], groups, e);
    mbe_strlist_free(&keys);
    mbe_lock_release(&lock);
    put(c, o, "groups", groups);
    if (recovery)
        note_code(c, EXIT_ATTENTION);
    /* The likely cause of a master that cannot be read. */
    if (rc < 0 && recovery)
        snprintf(e->msg + strlen(e->msg), sizeof e->msg - strlen(e->msg),
                 "; an interrupted merge awaits recovery: run mbe-merge "
                 "again");
    return rc;
}

/* ----------------------------------------------------------- shards */

static json_t *provenance_json(struct ctx *c, const mbe_shard_reader *r)
{
    const mbe_shard_meta *m = mbe_shard_reader_meta(r);
    json_t *o = json_object();
    if (!o) {
        c->oom = 1;
        return NULL;
    }
    put(c, o, "calculator", jstr(m->calculator));
    put(c, o, "calc_settings", jstr(m->calc_settings));
    put(c, o, "tool_version", jstr(m->tool_version));
    put(c, o, "host", jstr(m->host));
    put(c, o, "slurm_job_id", jstr(m->slurm_job_id));
    put(c, o, "slurm_array_job_id", jstr(m->slurm_array_job_id));
    put(c, o, "slurm_array_task_id", jstr(m->slurm_array_task_id));
    put(c, o, "start_time", jstr(m->start_time));
    put(c, o, "end_time", jstr(mbe_shard_reader_end_time(r)));
    put(c, o, "startup_ms", m->startup_ms < 0 ? json_null()
                                              : json_integer(m->startup_ms));
    return o;
}

static void verify_json(struct ctx *c, mbe_shard_reader *r, json_t *o)
{
    if (!c->a.verify) {
        put(c, o, "checksums", jstr("skipped"));
        put(c, o, "checksum_error", json_null());
        return;
    }
    mbe_err ve;
    int ok = mbe_shard_verify(r, VERIFY_BUF, &ve) == 0;
    put(c, o, "checksums", jstr(ok ? "ok" : "bad"));
    put(c, o, "checksum_error", ok ? json_null() : jstr(ve.msg));
    if (!ok)
        note_code(c, EXIT_ATTENTION);
}

/* Whether --master's merge log lists the shard.  A master that cannot be
 * read is reported on its own line; the shard's report still stands. */
static void merged_json(struct ctx *c, const char *path,
                        const mbe_shard_meta *meta, json_t *o)
{
    if (!c->a.master) {
        put(c, o, "merged", json_null());
        return;
    }
    mbe_master *m = NULL;
    mbe_merge_log_entry *log = NULL;
    size_t n = 0;
    mbe_err e;
    int rc = mbe_master_open(c->a.master, meta->key, 0, &c->lk, &m, &e);
    if (rc == 0)
        rc = mbe_master_merge_log(m, &log, &n, &e);
    if (m) {
        mbe_err ce;
        if (mbe_master_close(m, &ce) < 0 && rc == 0) {
            e = ce;
            rc = MBE_EFAIL;
        }
    }
    if (rc < 0) {
        say_error("%s: --master %s: %s", path, c->a.master,
                  mbe_err_strip_path(e.msg, c->a.master));
        note_code(c, code_of(rc));
        put(c, o, "merged", json_null());
        return;
    }
    const mbe_merge_log_entry *hit = NULL;
    for (size_t i = 0; i < n && !hit; i++)
        if (strcmp(log[i].shard_id, meta->shard_id) == 0)
            hit = &log[i];
    json_t *mj = json_object();
    if (!mj)
        c->oom = 1;
    put(c, mj, "master", jstr(c->a.master));
    put(c, mj, "merged", json_boolean(hit != NULL));
    put(c, mj, "time", hit ? jstr(hit->time) : json_null());
    put(c, o, "merged", mj);
    mbe_merge_log_free(log, n);
}

static int shard_json(struct ctx *c, const char *path, mbe_shard_reader *r,
                      json_t *o)
{
    const mbe_shard_meta *m = mbe_shard_reader_meta(r);
    const mbe_frames *f = mbe_shard_reader_frames(r);
    mbe_shard_summary sum;
    mbe_shard_summarize(r, &sum);
    char *spec = mbe_frames_format(f);
    if (!spec)
        c->oom = 1;
    put(c, o, "type", jstr("shard"));
    if (mbe_shard_reader_is_bundle(r)) {
        put(c, o, "member", json_integer((json_int_t)mbe_shard_reader_member(r)));
        put(c, o, "n_members",
            json_integer((json_int_t)mbe_shard_reader_members(r)));
    }
    put(c, o, "finished", json_boolean(mbe_shard_reader_finished(r)));
    put(c, o, "running", json_boolean(mbe_shard_reader_running(r)));
    put(c, o, "has_forces", json_boolean(mbe_shard_reader_has_forces(r)));
    put(c, o, "shard_id", jstr(m->shard_id));
    put(c, o, "master_file", jstr(m->master_file));
    put(c, o, "key", jstr(m->key));
    put(c, o, "level", jstr(m->level));
    put(c, o, "master_n_frames", json_integer(m->n_frames));
    put(c, o, "n_atoms", json_integer(m->n_atoms));
    put(c, o, "selection", jstr(m->selection));
    put(c, o, "frames", jstr(spec ? spec : ""));
    put(c, o, "n_frames", json_integer((json_int_t)f->n));
    put(c, o, "n_done",
        json_integer((json_int_t)f->n - sum.count[MBE_UNDEFINED]));
    put(c, o, "counts", jcounts(c, sum.count));
    put(c, o, "energy_min", jreal(sum.e_min));
    put(c, o, "energy_max", jreal(sum.e_max));
    free(spec);
    verify_json(c, r, o);
    put(c, o, "provenance", provenance_json(c, r));
    merged_json(c, path, m, o);
    return 0;
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

/* ------------------------------------------------------- human output */

static void print_range(const json_t *o)
{
    const json_t *lo = json_object_get(o, "energy_min");
    const json_t *hi = json_object_get(o, "energy_max");
    if (json_is_real(lo) && json_is_real(hi))
        printf("%.6f .. %.6f", json_real_value(lo), json_real_value(hi));
    else
        printf("-");
}

/* "E,F,S": which of energies, forces and status the level has. */
static const char *data_letters(const json_t *l, char buf[8])
{
    size_t i, n = 0;
    const json_t *d;
    json_array_foreach(json_object_get(l, "datasets"), i, d) {
        if (n)
            buf[n++] = ',';
        buf[n++] = (char)toupper((unsigned char)*json_string_value(d));
    }
    buf[n] = '\0';
    return n ? buf : "-";
}

static void print_levels(const json_t *levels)
{
    size_t i, w = 5;
    const json_t *l;
    json_array_foreach(levels, i, l) {
        size_t n = strlen(gs(l, "level")) + (json_is_true(json_object_get(
                                                 l, "legacy")) ? 9 : 0);
        w = n > w ? n : w;
    }
    printf("    %-*s %10s %10s %17s %10s %10s %-5s  %s\n", (int)w, "LEVEL",
           "FRAMES", "COMPLETED", "SCF_NOT_CONVERGED", "FAILED", "UNDEFINED",
           "DATA", "E RANGE (eV/atom)");
    json_array_foreach(levels, i, l) {
        char name[1024], data[8];
        snprintf(name, sizeof name, "%s%s", gs(l, "level"),
                 json_is_true(json_object_get(l, "legacy")) ? " (legacy)"
                                                           : "");
        printf("    %-*s %10lld %10lld %17lld %10lld %10lld %-5s  ", (int)w,
               name, gi(l, "n_frames"), gcount(l, MBE_COMPLETED),
               gcount(l, MBE_SCF_NOT_CONVERGED), gcount(l, MBE_FAILED),
               gcount(l, MBE_UNDEFINED), data_letters(l, data));
        print_range(l);
        printf("%s\n", json_is_false(json_object_get(l, "listed"))
                           ? "  (not in the master)" : "");
    }
}

static void print_merges(const json_t *g)
{
    const json_t *merges = json_object_get(g, "merges");
    size_t i;
    const json_t *m;
    if (json_is_string(json_object_get(g, "merge_log_error"))) {
        printf("    merged shards: unknown: the merge log cannot be read: "
               "%s\n", gs(g, "merge_log_error"));
        return;
    }
    if (json_array_size(merges) == 0) {
        printf("    merged shards: none\n");
        return;
    }
    printf("    merged shards: %zu\n", json_array_size(merges));
    json_array_foreach(merges, i, m)
        printf("      %s  %s  %s  %lld frames  %s\n", gs(m, "shard_id"),
               gs(m, "time"), gs(m, "level"), gi(m, "frames"), gs(m, "path"));
}

static void print_master(const json_t *o)
{
    const json_t *groups = json_object_get(o, "groups");
    size_t i;
    const json_t *g;
    printf("%s: master, %zu group%s\n", gs(o, "path"),
           json_array_size(groups), json_array_size(groups) == 1 ? "" : "s");
    if (json_is_true(json_object_get(o, "needs_recovery")))
        printf("  WARNING: an interrupted merge awaits recovery: run "
               "mbe-merge again\n");
    json_array_foreach(groups, i, g) {
        printf("  %s: %lld frames, %lld atoms%s\n", gs(g, "key"),
               gi(g, "n_frames"), gi(g, "n_atoms"),
               json_is_true(json_object_get(g, "periodic")) ? ", periodic"
                                                           : "");
        if (strcmp(gs(g, "angstrom"), "U+212B"))
            printf("    names: %s (mbe-shard 0.2's); the package reads only "
                   "U+212B: run mbe-merge --convert-names %s\n",
                   gs(g, "angstrom"), gs(o, "path"));
        const json_t *levels = json_object_get(g, "levels");
        if (json_array_size(levels))
            print_levels(levels);
        else
            printf("    no levels of theory\n");
        print_merges(g);
    }
}

static void print_field(const char *name, const char *value)
{
    printf("  %-11s %s\n", name, *value ? value : "-");
}

static void print_slurm(const json_t *p)
{
    char buf[512];
    const char *job = gs(p, "slurm_job_id");
    const char *arr = gs(p, "slurm_array_job_id");
    const char *task = gs(p, "slurm_array_task_id");
    if (*arr)
        snprintf(buf, sizeof buf, "job %s, array job %s task %s",
                 *job ? job : "-", arr, *task ? task : "-");
    else
        snprintf(buf, sizeof buf, "%s%s", *job ? "job " : "", job);
    print_field("slurm", buf);
}

/* calc_settings is "key=value" lines: shown on one line. */
static void print_settings(const json_t *p)
{
    char *s = strdup(gs(p, "calc_settings"));
    if (!s)
        return;
    size_t n = strlen(s);
    while (n && s[n - 1] == '\n')
        s[--n] = '\0';
    for (char *q = s; *q; q++)
        if (*q == '\n')
            *q = ' ';
    print_field("settings", s);
    free(s);
}

static void print_done(const json_t *o)
{
    printf("  %-11s %lld of %lld: %lld COMPLETED, %lld SCF_NOT_CONVERGED, "
           "%lld FAILED; %lld UNDEFINED\n", "done", gi(o, "n_done"),
           gi(o, "n_frames"), gcount(o, MBE_COMPLETED),
           gcount(o, MBE_SCF_NOT_CONVERGED), gcount(o, MBE_FAILED),
           gcount(o, MBE_UNDEFINED));
    printf("  %-11s ", "energy");
    print_range(o);
    printf("%s\n", json_is_real(json_object_get(o, "energy_min"))
                       ? " eV/atom" : "");
}

static void print_merged(const json_t *o)
{
    const json_t *m = json_object_get(o, "merged");
    if (!json_is_object(m))
        return;
    char buf[1024];
    if (json_is_true(json_object_get(m, "merged")))
        snprintf(buf, sizeof buf, "yes, into %s at %s", gs(m, "master"),
                 gs(m, "time"));
    else
        snprintf(buf, sizeof buf, "no (not in the merge log of %s)",
                 gs(m, "master"));
    print_field("merged", buf);
}

static void print_shard(const json_t *o)
{
    const json_t *p = json_object_get(o, "provenance");
    char buf[256];
    const json_t *mem = json_object_get(o, "member");
    if (json_is_integer(mem))
        printf("%s:/%lld: shard, member %lld of %lld, ", gs(o, "path"),
               (long long)json_integer_value(mem),
               (long long)json_integer_value(mem) + 1, gi(o, "n_members"));
    else
        printf("%s: shard, ", gs(o, "path"));
    printf("%s\n",
           json_is_true(json_object_get(o, "finished")) ? "finished"
           : json_is_true(json_object_get(o, "running"))
               ? "unfinished (being written by a running job)"
               : "unfinished (its job did not end)");
    print_field("master", gs(o, "master_file"));
    print_field("key", gs(o, "key"));
    print_field("level", gs(o, "level"));
    print_field("data", json_is_true(json_object_get(o, "has_forces"))
                            ? "energies and forces"
                            : "energies only (--no-forces)");
    printf("  %-11s %s (%lld frames)\n", "frames",
           *gs(o, "frames") ? gs(o, "frames") : "none", gi(o, "n_frames"));
    print_done(o);
    const char *ck = gs(o, "checksums");
    print_field("checksums", strcmp(ck, "bad") ? ck : gs(o, "checksum_error"));
    print_field("calculator", gs(p, "calculator"));
    print_settings(p);
    snprintf(buf, sizeof buf, "%s", gs(p, "tool_version"));
    print_field("version", buf);
    print_field("host", gs(p, "host"));
    print_slurm(p);
    print_field("started", gs(p, "start_time"));
    json_t *su = json_object_get(p, "startup_ms");
    if (json_is_integer(su)) {
        snprintf(buf, sizeof buf, "%.3f s before the first frame",
                 (double)json_integer_value(su) / 1e3);
        print_field("start-up", buf);
    }
    print_field("ended", gs(p, "end_time"));
    print_field("shard id", gs(o, "shard_id"));
    print_merged(o);
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

static void print_human(const json_t *o)
{
    const char *type = gs(o, "type");
    if (strcmp(type, "master") == 0)
        print_master(o);
    else if (strcmp(type, "shard") == 0)
        print_shard(o);
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
