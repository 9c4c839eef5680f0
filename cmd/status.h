/* status.h - what the files of mbe-status(1) share; no other program
 * includes it.  mbe-status.c parses the arguments, picks the exit code and
 * reads each file (and does --missing and --failed); status_json.c builds
 * the mbe-status/1 object of a master or a shard; status_print.c prints
 * the human output from that object. */
#ifndef MBE_CMD_STATUS_H
#define MBE_CMD_STATUS_H

#include <jansson.h>

#include "common.h"

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

/* mbe-status.c: keep the most serious exit code of the run; the exit
 * code of a library error. */
void note_code(struct ctx *c, int code);
int code_of(int rc);

/* status_json.c: a JSON string of s, bytes that are not UTF-8 as '?';
 * obj[k] = v, or c->oom when v is NULL or cannot be stored. */
json_t *jstr(const char *s);
void put(struct ctx *c, json_t *obj, const char *k, json_t *v);
/* Fill o (which has "path") with the object of a master or of the shard
 * (or bundle member) r.  A master's failure is returned with e for the
 * caller to report; a shard's problems are reported here and its object
 * still stands, so shard_json returns 0. */
int master_json(struct ctx *c, const char *path, json_t *o, mbe_err *e);
int shard_json(struct ctx *c, const char *path, mbe_shard_reader *r,
               json_t *o);

/* status_print.c: the string o[k], "" when absent; the human output of
 * one object of "files" (nothing for an "error" one). */
const char *gs(const json_t *o, const char *k);
void print_human(const json_t *o);

#endif
