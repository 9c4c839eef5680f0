/* status_print.c - the human output of mbe-status: a table per master,
 * a block of fields per shard.
 *
 * It reads only the mbe-status/1 object that status_json.c built, so the
 * table cannot say what --json does not. */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

/* Readers of the JSON object for the human table. */
const char *gs(const json_t *o, const char *k)
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

void print_human(const json_t *o)
{
    const char *type = gs(o, "type");
    if (strcmp(type, "master") == 0)
        print_master(o);
    else if (strcmp(type, "shard") == 0)
        print_shard(o);
}
