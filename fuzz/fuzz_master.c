/* fuzz_master.c - libFuzzer target for the master reader (lib/master.c,
 * lib/master_probe.c, lib/status.c, lib/ground_truth.c) on mutated h5py
 * masters.
 *
 * Masters have superblock 0, which libhdf5 does not checksum: every input
 * is first read by mbe_master_check in a child process (lib/isolate.c),
 * where a crash or a hang of libhdf5 becomes an error.  What the child
 * survived, the reader then reads in process: a crash here is a finding
 * (the probe missed metadata the reader decodes), as is a sanitizer report
 * in our code, a message that is not one line, or an HDF5 object left open
 * after an input. */
#define _GNU_SOURCE
#include <hdf5.h>
#include <pthread.h>
#include <sanitizer/common_interface_defs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "mbe.h"

#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "fuzz_master: check failed: %s (line %d)\n",  \
                    #c, __LINE__);                                        \
            abort();                                                      \
        }                                                                 \
    } while (0)

static char path[256], lock[272];

static void cleanup(void)
{
    if (*path) {
        unlink(path);
        unlink(lock);
    }
}

/* The probe's child dies of what kills libhdf5; libFuzzer's death
 * callback there would save the input as a crash of this process. */
static void quiet_child(void)
{
    __sanitizer_set_death_callback(NULL);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* A damaged file that makes libhdf5 loop costs 2 s, not 60. */
    setenv("MBE_PROBE_TIMEOUT", "2", 1);
    pthread_atfork(NULL, NULL, quiet_child);
    mbe_init();
    return 0;
}

/* A real file (tmpfs when /dev/shm is there), as a master is opened by
 * path; rewritten in place for every input. */
static void put_input(const uint8_t *data, size_t size)
{
    if (!*path) {
        const char *dir = getenv("FUZZ_TMPDIR");
        if (!dir || !*dir)
            dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/fuzz_master.%ld.h5", dir,
                 (long)getpid());
        snprintf(lock, sizeof lock, "%s.lock", path);
        atexit(cleanup);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, data + done, size - done);
        CHECK(w > 0);
        done += (size_t)w;
    }
    close(fd);
}

static void check_msg(const mbe_err *e)
{
    size_t n = strnlen(e->msg, sizeof e->msg);
    CHECK(n > 0 && n < sizeof e->msg);
    CHECK(!strchr(e->msg, '\n'));
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_master: %s\n", e->msg);
}

/* The first and the last frame, as mbe-compute reads them. */
static void read_frames(mbe_master *m)
{
    int64_t n = mbe_master_n_frames(m);
    CHECK(n >= 0 && mbe_master_n_atoms(m) >= 1);
    mbe_frames sel = {0};
    mbe_err e = {""};
    if (n == 0 || mbe_frames_push(&sel, 0, &e) < 0 ||
        (n > 1 && mbe_frames_push(&sel, n - 1, &e) < 0))
        goto out;
    mbe_geometry g = {0};
    if (mbe_master_read_geometry(m, &sel, &g, &e) < 0)
        check_msg(&e);
    else
        CHECK(g.n == sel.n);
    mbe_geometry_free(&g);
out:
    mbe_frames_free(&sel);
}

/* Every level as mbe-status reads it, and the merge log. */
static void read_levels(mbe_master *m)
{
    mbe_strlist levels = {0};
    mbe_err e = {""};
    if (mbe_master_levels(m, &levels, &e) < 0) {
        check_msg(&e);
        return;
    }
    for (size_t i = 0; i < levels.n && i < 8; i++) {
        mbe_level_summary s;
        memset(&s, 0, sizeof s);
        if (mbe_master_summarize(m, levels.v[i], &s, &e) < 0)
            check_msg(&e);
        mbe_level_summary_free(&s);
        mbe_level_view v;
        if (mbe_master_level_view(m, levels.v[i], &v, &e) < 0)
            check_msg(&e);
    }
    mbe_strlist_free(&levels);
    mbe_merge_log_entry *log = NULL;
    size_t n = 0;
    if (mbe_master_merge_log(m, &log, &n, &e) < 0)
        check_msg(&e);
    mbe_merge_log_free(log, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    put_input(data, size);
    mbe_lock_opts lk = {0, NULL, NULL};
    mbe_strlist keys = {0};
    mbe_err e = {""};
    if (mbe_list_frame_groups(path, &lk, &keys, &e) < 0)
        check_msg(&e);
    for (size_t k = 0; k < keys.n && k < 4; k++) {
        mbe_master *m = NULL;
        if (mbe_master_open(path, keys.v[k], 0, &lk, &m, &e) < 0) {
            check_msg(&e);
            CHECK(m == NULL);
            continue;
        }
        read_frames(m);
        read_levels(m);
        if (mbe_master_close(m, &e) < 0)
            check_msg(&e);
    }
    mbe_strlist_free(&keys);
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) {
        fprintf(stderr, "fuzz_master: HDF5 objects left open\n");
        abort();
    }
    return 0;
}
