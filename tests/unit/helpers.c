/* helpers.c - see helpers.h. */
#include "helpers.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

const char *th_python(void)
{
    const char *p = getenv("PYTHON");
    return p && *p ? p : "/usr/bin/python3";
}

void th_make_fixtures(char *tmpl, const char *script)
{
    ck_assert_ptr_nonnull(mkdtemp(tmpl));
    char path[512], cmd[1536];
    snprintf(path, sizeof path, "%s/make.py", tmpl);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(script, f);
    ck_assert_int_eq(fclose(f), 0);
    /* The scripts import tests/pylib from the source tree. */
    if (!getenv("MBE_ROOT"))
        setenv("MBE_ROOT", ".", 0);
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s'", th_python(), path, tmpl);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "fixture script failed (%s)", cmd);
}

void th_remove_fixtures(const char *dir)
{
    char cmd[600];
    if (!dir[0])
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}
