/* paths.c - whether a master is the one a shard was computed for, by its
 * file name. */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "mbe_internal.h"

/* A master may move (another directory, another machine) but keeps its
 * name; reached through a link, the name is the link's or the file's
 * (mbe-compute records the resolved path). */
int mbe_master_name_matches(const char *recorded, const char *master)
{
    const char *want = mbe_base_name(recorded);
    if (!strcmp(want, mbe_base_name(master)))
        return 1;
    char *real = realpath(master, NULL);
    int same = real && !strcmp(want, mbe_base_name(real));
    free(real);
    return same;
}
