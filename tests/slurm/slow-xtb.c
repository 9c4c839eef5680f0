/* slow-xtb.so - LD_PRELOAD shim for tests/slurm/run-slurm.sh.
 *
 * The example's frames take milliseconds; a test of SLURM's time limit
 * needs a task that is still computing when the limit comes.  This shim
 * wraps libxtb's xtb_singlepoint() and, in one chosen task of a job
 * array, makes frames slow: the real calculation still runs, so every
 * result stays that of GFN2-xTB.
 *
 *   MBE_TEST_DELAY=TASK:MS     in array task TASK, sleep MS ms before each
 *                              frame (a signal cuts the sleep short, as it
 *                              would interrupt no real SCF: the frame is
 *                              then computed and mbe-compute stops)
 *   MBE_TEST_HANG=TASK:FRAME   in array task TASK, hang in frame number
 *                              FRAME (0-based count of calls) for an hour,
 *                              ignoring signals: a frame longer than what
 *                              is left of the time limit
 *   MBE_TEST_ONCE=DIR          slow down only the first mbe-compute of
 *                              each task number (marker files in DIR), so
 *                              that a resubmission runs at full speed
 *
 * Build: cc -shared -fPIC -o slow-xtb.so slow-xtb.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef void (*singlepoint_fn)(void *, void *, void *, void *);

static int task_matches(const char *spec, long *value)
{
    const char *task = getenv("SLURM_ARRAY_TASK_ID");
    char *colon;
    if (!spec || !task || !(colon = strchr(spec, ':')))
        return 0;
    if ((size_t)(colon - spec) != strlen(task) ||
        strncmp(spec, task, (size_t)(colon - spec)) != 0)
        return 0;
    *value = strtol(colon + 1, NULL, 10);
    return 1;
}

/* The first process of this task number to ask gets the slow-down. */
static int first_time(const char *what)
{
    const char *dir = getenv("MBE_TEST_ONCE");
    if (!dir)
        return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-%s", dir, what,
             getenv("SLURM_ARRAY_TASK_ID"));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

static void sleep_ms(long ms, int through_signals)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && through_signals)
        ;
}

void xtb_singlepoint(void *env, void *mol, void *calc, void *res)
{
    static singlepoint_fn real;
    static int init;
    static long delay_ms = -1, hang_frame = -1, calls;
    if (!init) {
        init = 1;
        real = (singlepoint_fn)dlsym(RTLD_NEXT, "xtb_singlepoint");
        long v;
        if (task_matches(getenv("MBE_TEST_DELAY"), &v) && first_time("delay"))
            delay_ms = v;
        if (task_matches(getenv("MBE_TEST_HANG"), &v) && first_time("hang"))
            hang_frame = v;
    }
    if (delay_ms > 0)
        sleep_ms(delay_ms, 0);
    if (hang_frame >= 0 && calls == hang_frame)
        sleep_ms(3600L * 1000, 1);
    calls++;
    real(env, mol, calc, res);
}
