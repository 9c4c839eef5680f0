/* helpers.h - what several Check suites share: Python fixture scripts run
 * with Debian's h5py, and their temporary directories. */
#ifndef MBE_TEST_HELPERS_H
#define MBE_TEST_HELPERS_H

/* $PYTHON, or /usr/bin/python3 (Debian's, with h5py and numpy). */
const char *th_python(void);

/* Make a directory from tmpl (ending in XXXXXX, filled in place), write
 * script into it and run it with the directory as its one argument; the
 * test fails when any step does. */
void th_make_fixtures(char *tmpl, const char *script);

/* rm -rf of a directory made by th_make_fixtures (no-op when empty). */
void th_remove_fixtures(const char *dir);

#endif
