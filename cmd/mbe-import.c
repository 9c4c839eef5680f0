/* mbe-import - store the frames of an XYZ or extended-XYZ trajectory as a
 * Structure group of a master file, in the layout of mbe_automation, so
 * that mbe-compute(1) can split them over jobs.
 *
 * The whole trajectory is read and checked before the master is touched:
 * a bad input never leaves anything behind in the master. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *prog_name = "mbe-import";

struct args {
    const char *xyz;
    const char *master;
    const char *key;
    int overwrite;
    int quiet;
    double timeout;
};

static void usage(void)
{
    printf(
        "Usage: %s [OPTIONS] TRAJ.xyz MASTER.h5\n"
        "Store the frames of the XYZ or extended-XYZ file TRAJ.xyz as a\n"
        "Structure group of the master file MASTER.h5 (created when missing).\n"
        "\n"
        "  -k, --key KEY      group to write (default: the XYZ file's name\n"
        "                     without directory and extension)\n"
        "      --overwrite    replace KEY when it exists\n"
        "      --timeout SEC  wait at most SEC for the lock (default 300)\n"
        "  -q, --quiet        no summary, only errors\n"
        "  -h, --help         this help\n"
        "  -V, --version      version\n"
        "\n"
        "Exit status: 0 success, 1 error, 2 usage.\n",
        prog_name);
}

enum { OPT_OVERWRITE = 256, OPT_TIMEOUT };

static void parse_args(int argc, char **argv, struct args *a)
{
    static const struct option longopts[] = {
        {"key", required_argument, 0, 'k'},
        {"overwrite", no_argument, 0, OPT_OVERWRITE},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->timeout = MBE_LOCK_TIMEOUT_DEFAULT;
    int c;
    while ((c = getopt_long(argc, argv, ":k:qhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'k': a->key = optarg; break;
        case OPT_OVERWRITE: a->overwrite = 1; break;
        case OPT_TIMEOUT:
            a->timeout = seconds_arg("--timeout", optarg);
            break;
        case 'q': a->quiet = 1; break;
        case 'h': usage(); exit(EXIT_OK);
        case 'V': print_version(); exit(EXIT_OK);
        default: option_error(c, argv);
        }
    }
    if (argc - optind < 2)
        usage_error("expected TRAJ.xyz and MASTER.h5");
    if (argc - optind > 2)
        usage_error("unexpected argument '%s'", argv[optind + 2]);
    a->xyz = argv[optind];
    a->master = argv[optind + 1];
    if (!*a->xyz || !*a->master)
        usage_error("empty file name");
    if (a->key && !*a->key)
        usage_error("--key must not be empty");
}

/* "dir/water_cluster.xyz" -> "water_cluster"; a leading dot is part of
 * the name, not an extension. */
static char *default_key(const char *xyz)
{
    const char *base = strrchr(xyz, '/');
    base = base ? base + 1 : xyz;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    return strndup(base, n);
}

int main(int argc, char **argv)
{
    mbe_init();
    struct args a;
    parse_args(argc, argv, &a);
    char *key = a.key ? strdup(a.key) : default_key(a.xyz);
    if (!key) {
        say_error("out of memory");
        return EXIT_FAIL;
    }
    if (!*key) {
        free(key);
        usage_error("cannot derive a key from '%s'; give one with --key",
                    a.xyz);
    }
    mbe_err e;
    mbe_geometry g;
    int status = EXIT_FAIL;
    if (mbe_xyz_read(a.xyz, &g, &e) < 0) {
        say_error("%s", e.msg);
        free(key);
        return EXIT_FAIL;
    }
    lock_wait w = {&a.quiet, a.timeout};
    mbe_lock_opts lk = {a.timeout, lock_wait_message, &w};
    if (mbe_master_write_structure(a.master, key, &g, a.overwrite, &lk,
                                   &e) < 0) {
        say_error("%s", e.msg);
    } else {
        say_info(a.quiet, "wrote %zu frame%s of %lld atoms (%s) to %s:%s",
                 g.n, g.n == 1 ? "" : "s", (long long)g.n_atoms,
                 g.periodic ? "periodic" : "non-periodic", a.master, key);
        status = EXIT_OK;
    }
    mbe_geometry_free(&g);
    free(key);
    return status;
}
