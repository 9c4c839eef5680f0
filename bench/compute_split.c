/* compute_split - bench/run's stopwatch inside mbe-compute's loop.
 *
 *   compute_split MASTER SHARD N_FRAMES SYNC_INTERVAL [CALC]
 *
 * mbe-compute reports no timings, so this program makes the library calls
 * that cmd/mbe-compute.c makes for a fresh shard of frames 0..N-1, in the
 * same order and with the same sync policy (a frame is durable when
 * SYNC_INTERVAL seconds have passed since the last sync), and times each
 * step:
 *
 *   open     mbe_master_open (shared lock) + mbe_master_read_status
 *   read     mbe_master_read_geometry of the selected frames
 *   create   fingerprints + mbe_shard_create (a durable, pre-allocated .part)
 *   calc     mbe_calc_compute, summed over frames
 *   put      mbe_shard_put of frames not made durable, summed
 *   durable  mbe_shard_put of frames made durable (write + fsync), summed
 *   finish   mbe_shard_finish (end time, fsync, rename, directory sync)
 *
 * and prints them as one JSON object.  Argument parsing, progress output
 * and signal handling of mbe-compute are left out (bench/run reports the
 * difference between mbe-compute's wall time and the sum here). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mbe.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void die(const char *what, const mbe_err *e)
{
    fprintf(stderr, "compute_split: %s: %s\n", what, e->msg);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: compute_split MASTER SHARD N SYNC [CALC]\n");
        return 2;
    }
    const char *master = argv[1], *out = argv[2];
    long n = strtol(argv[3], NULL, 10);
    double sync_interval = strtod(argv[4], NULL);
    const char *calc_name = argc > 5 ? argv[5] : "lj";
    mbe_err e = {""};
    mbe_calc_opts co;
    mbe_calc_opts_default(&co);
    mbe_calc *calc;
    if (mbe_calc_new(calc_name, &co, &calc, &e) < 0)
        die("calculator", &e);
    const char *level = mbe_calc_name(calc);

    double t0 = now();
    mbe_lock_opts lk = {300, NULL, NULL};
    mbe_master *m;
    if (mbe_master_open(master, NULL, 0, &lk, &m, &e) < 0)
        die("open", &e);
    mbe_frames sel = {0};
    for (long k = 0; k < n; k++)
        if (mbe_frames_push(&sel, k, &e) < 0)
            die("frames", &e);
    int64_t *status = malloc((size_t)n * sizeof *status);
    if (mbe_master_read_status(m, level, &sel, status, &e) < 0)
        die("status", &e);
    double t1 = now();
    mbe_geometry g;
    if (mbe_master_read_geometry(m, &sel, &g, &e) < 0)
        die("geometry", &e);
    double t2 = now();

    uint32_t *crc = malloc(g.n * sizeof *crc);
    for (size_t k = 0; k < g.n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        crc[k] = mbe_frame_fingerprint(&v);
    }
    char id[33];
    if (mbe_shard_new_id(id, &e) < 0)
        die("id", &e);
    mbe_shard_meta meta = {
        .master_file = (char *)master, .key = (char *)mbe_master_key(m),
        .n_frames = mbe_master_n_frames(m), .n_atoms = mbe_master_n_atoms(m),
        .level = (char *)level, .selection = "bench",
        .calculator = (char *)level, .calc_settings = "",
        .tool_version = MBE_VERSION, .host = "", .slurm_job_id = "",
        .slurm_array_job_id = "", .slurm_array_task_id = "",
        .shard_id = id, .start_time = "1970-01-01T00:00:00Z"};
    mbe_shard *s;
    if (mbe_shard_create(out, &meta, &sel, crc, &s, &e) < 0)
        die("create", &e);
    if (mbe_master_close(m, &e) < 0)
        die("close", &e);
    double t3 = now();

    int64_t na = g.n_atoms;
    double *forces = malloc((size_t)na * 3 * sizeof *forces);
    double t_calc = 0, t_put = 0, t_dur = 0, last_sync = now();
    size_t n_dur = 0;
    for (size_t k = 0; k < g.n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        double energy = NAN;
        double a = now();
        int st = mbe_calc_compute(calc, &v, &energy, forces, &e);
        double b = now();
        if (st < 0)
            die("compute", &e);
        double e_atom = st == MBE_COMPLETED ? energy / (double)na : NAN;
        int durable = b - last_sync >= sync_interval;
        if (mbe_shard_put(s, k, st, e_atom,
                          st == MBE_COMPLETED ? forces : NULL, durable,
                          &e) < 0)
            die("put", &e);
        double c = now();
        t_calc += b - a;
        if (durable) {
            t_dur += c - b;
            n_dur++;
            last_sync = c;
        } else {
            t_put += c - b;
        }
    }
    double t4 = now();
    if (mbe_shard_finish(s, &e) < 0)
        die("finish", &e);
    double t5 = now();
    printf("{\"frames\": %zu, \"n_atoms\": %lld, \"open\": %.6f, "
           "\"read\": %.6f, \"create\": %.6f, \"calc\": %.6f, "
           "\"put\": %.6f, \"durable\": %.6f, \"n_durable\": %zu, "
           "\"loop\": %.6f, \"finish\": %.6f, \"total\": %.6f}\n",
           g.n, (long long)na, t1 - t0, t2 - t1, t3 - t2, t_calc, t_put,
           t_dur, n_dur, t4 - t3, t5 - t4, t5 - t0);
    free(forces);
    free(crc);
    free(status);
    mbe_frames_free(&sel);
    mbe_geometry_free(&g);
    mbe_calc_free(calc);
    return 0;
}
