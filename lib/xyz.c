/* xyz.c - reading XYZ and extended-XYZ trajectories (ASE conventions).
 *
 * Every message names the file and the line, compiler style, because the
 * files are often hand-edited or glued together from several runs. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mbe_internal.h"

/* Column layout and periodicity of one frame, from its comment line. */
struct layout {
    size_t species_col;   /* SIZE_MAX when absent */
    size_t z_col;         /* SIZE_MAX when absent; wins over species_col */
    size_t pos_col;
    int has_lattice;
    double lattice[9];    /* rows are lattice vectors */
    int has_pbc;
    int pbc[3];
};

struct reader {
    const char *path;
    FILE *f;
    char *line;
    size_t cap;
    size_t len;
    size_t lineno;
    off_t size;           /* of the file; -1 when unknown (a pipe) */
    char **tok;           /* whitespace-separated fields of line */
    size_t ntok;
    size_t tokcap;
    mbe_err *e;
};

/* Frame arrays grown geometrically while reading. */
struct frames {
    size_t cap;
    int64_t n_atoms;
    int periodic;
    mbe_geometry *g;
};

#define NONE ((size_t)-1)

/* "file:line: message" */
static int fail_at(struct reader *r, size_t lineno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(struct reader *r, size_t lineno, const char *fmt, ...)
{
    char msg[MBE_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mbe_fail(r->e, "%s:%zu: %s", r->path, lineno, msg);
}

/* 1: a line was read, 0: end of file, negative: error. */
static int next_line(struct reader *r)
{
    errno = 0;
    ssize_t n = getline(&r->line, &r->cap, r->f);
    if (n < 0) {
        if (ferror(r->f))
            return mbe_fail(r->e, "%s: read error after line %zu: %s",
                            r->path, r->lineno, strerror(errno));
        return 0;
    }
    r->lineno++;
    while (n > 0 && (r->line[n - 1] == '\n' || r->line[n - 1] == '\r'))
        r->line[--n] = '\0';
    /* A UTF-8 byte-order mark, as some Windows editors write. */
    if (r->lineno == 1 && n >= 3 && memcmp(r->line, "\xef\xbb\xbf", 3) == 0) {
        memmove(r->line, r->line + 3, (size_t)n - 2);
        n -= 3;
    }
    r->len = (size_t)n;
    return 1;
}

static int is_blank(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return *s == '\0';
}

/* Split r->line in place into whitespace-separated fields. */
static int tokenize(struct reader *r)
{
    r->ntok = 0;
    char *save = NULL;
    for (char *t = strtok_r(r->line, " \t\v\f", &save); t;
         t = strtok_r(NULL, " \t\v\f", &save)) {
        if (r->ntok == r->tokcap) {
            size_t cap = r->tokcap ? 2 * r->tokcap : 16;
            char **v = realloc(r->tok, cap * sizeof *v);
            if (!v)
                return mbe_fail(r->e, "out of memory");
            r->tok = v;
            r->tokcap = cap;
        }
        r->tok[r->ntok++] = t;
    }
    return 0;
}

/* --------------------------------------------------- comment key=value */

struct kv {
    size_t key;           /* offsets into the scratch buffer */
    size_t val;           /* NONE: a bare key */
};

struct kvlist {
    struct kv *v;
    size_t n;
    size_t cap;
};

static int kv_push(struct kvlist *l, size_t key)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        struct kv *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (struct kv){key, NONE};
    return 0;
}

static char closing_of(char c)
{
    switch (c) {
    case '"': return '"';
    case '\'': return '\'';
    case '{': return '}';
    case '[': return ']';
    default: return 0;
    }
}

/* Split an extended-XYZ comment into key=value pairs the way ASE's
 * key_val_str_to_dict does: values may be quoted with "", '', {} or [],
 * backslash escapes the next character, "key = value" is one pair, a
 * second '=' belongs to the value.  Strings go NUL-terminated into buf
 * (at least 2 * strlen(s) + 2 bytes). */
static int split_pairs(const char *s, char *buf, struct kvlist *l)
{
    size_t w = 0, part = 0;
    char close = 0;
    int escaped = 0;
    if (kv_push(l, 0) < 0)
        return -1;
    for (; *s; s++) {
        char c = *s;
        struct kv *cur = &l->v[l->n - 1];
        if (escaped) {
            escaped = 0;
        } else if (c == '\\') {
            escaped = 1;
            continue;
        } else if (close) {
            if (c == close) {
                close = 0;
                continue;
            }
        } else if (closing_of(c)) {
            close = closing_of(c);
            continue;
        } else if (isspace((unsigned char)c)) {
            if (part == 0)
                continue;
            buf[w++] = '\0';
            if (kv_push(l, w) < 0)
                return -1;
            part = 0;
            continue;
        } else if (c == '=') {
            /* "key =value": the pair begun by the blank is dropped and the
             * value goes to the key before it. */
            if (part == 0 && cur->val == NONE && l->n > 1) {
                l->n--;
                cur = &l->v[l->n - 1];
            }
            if (cur->val == NONE) {
                buf[w++] = '\0';
                cur->val = w;
            } else {
                buf[w++] = '=';
            }
            part = 0;
            continue;
        }
        buf[w++] = c;
        part++;
    }
    buf[w] = '\0';
    return 0;
}

/* Numbers separated by blanks, commas or brackets; returns how many were
 * found (up to max stored), or -1 with *bad pointing at a bad one. */
static int parse_numbers(char *s, double *out, int max, char **bad)
{
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(s, " \t,[]", &save); t;
         t = strtok_r(NULL, " \t,[]", &save)) {
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (end == t || *end || errno == ERANGE || !isfinite(v)) {
            *bad = t;
            return -1;
        }
        if (n < max)
            out[n] = v;
        n++;
    }
    return n;
}

static int parse_lattice(struct reader *r, char *val, struct layout *lay)
{
    char *bad = NULL;
    int n = parse_numbers(val, lay->lattice, 9, &bad);
    if (n < 0)
        return fail_at(r, r->lineno, "bad number '%s' in Lattice", bad);
    if (n != 9)
        return fail_at(r, r->lineno,
                       "Lattice has %d numbers, expected 9 (three lattice "
                       "vectors)", n);
    lay->has_lattice = 1;
    return 0;
}

static int parse_bool(const char *t, int *v)
{
    static const char *const yes[] = {"T", "True", "true", "TRUE", "1"};
    static const char *const no[] = {"F", "False", "false", "FALSE", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(t, yes[i]) == 0) {
            *v = 1;
            return 0;
        }
        if (strcmp(t, no[i]) == 0) {
            *v = 0;
            return 0;
        }
    }
    return -1;
}

static int parse_pbc(struct reader *r, char *val, struct layout *lay)
{
    int v[3], n = 0;
    char *save = NULL;
    for (char *t = strtok_r(val, " \t,[]", &save); t;
         t = strtok_r(NULL, " \t,[]", &save)) {
        if (n == 3 || parse_bool(t, &v[n]) < 0)
            return fail_at(r, r->lineno,
                           "bad pbc value (expected \"T T T\", one T or F "
                           "per lattice vector)");
        n++;
    }
    if (n != 1 && n != 3)
        return fail_at(r, r->lineno,
                       "pbc has %d values, expected 3 (or 1 for all three)",
                       n);
    for (int i = 0; i < 3; i++)
        lay->pbc[i] = v[n == 1 ? 0 : i];
    lay->has_pbc = 1;
    return 0;
}

/* Properties=name:type:ncols:...; we need species (or Z) and pos. */
static int parse_properties(struct reader *r, char *val, struct layout *lay)
{
    const char *why = NULL;
    size_t col = 0;
    char *save = NULL;
    lay->species_col = lay->z_col = lay->pos_col = NONE;
    char *name = strtok_r(val, ":", &save);
    while (name && !why) {
        char *type = strtok_r(NULL, ":", &save);
        char *cols = strtok_r(NULL, ":", &save);
        char *end = NULL;
        long nc = cols ? strtol(cols, &end, 10) : 0;
        if (!type || !cols || *end || nc < 1 || nc > 1000000 ||
            strlen(type) != 1 || !strchr("RISL", type[0])) {
            why = "expected name:type:columns triples with type R, I, S "
                  "or L";
            break;
        }
        int is_pos = !strcmp(name, "pos") || !strcmp(name, "positions");
        int is_sp = !strcmp(name, "species") || !strcmp(name, "symbols");
        int is_z = !strcmp(name, "Z") || !strcmp(name, "numbers");
        if (is_pos && (type[0] != 'R' || nc != 3))
            why = "pos must be R:3";
        else if (is_sp && (type[0] != 'S' || nc != 1))
            why = "species must be S:1";
        else if (is_z && (type[0] != 'I' || nc != 1))
            why = "Z must be I:1";
        if (is_pos)
            lay->pos_col = col;
        if (is_sp)
            lay->species_col = col;
        if (is_z)
            lay->z_col = col;
        col += (size_t)nc;
        name = strtok_r(NULL, ":", &save);
    }
    if (!why && lay->pos_col == NONE)
        why = "no pos column";
    if (!why && lay->species_col == NONE && lay->z_col == NONE)
        why = "no species or Z column";
    if (why)
        return fail_at(r, r->lineno, "bad Properties: %s", why);
    return 0;
}

/* Plain XYZ: symbol, then x y z. */
static void layout_default(struct layout *lay)
{
    memset(lay, 0, sizeof *lay);
    lay->species_col = 0;
    lay->z_col = NONE;
    lay->pos_col = 1;
}

static int parse_comment(struct reader *r, struct layout *lay)
{
    layout_default(lay);
    char *buf = malloc(2 * r->len + 2);
    struct kvlist l = {0};
    int rc = 0;
    if (!buf || split_pairs(r->line, buf, &l) < 0)
        rc = mbe_fail(r->e, "out of memory");
    /* The last of repeated keys wins, as in a Python dict. */
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        char *key = buf + l.v[i].key;
        if (l.v[i].val == NONE)
            continue;
        char *val = buf + l.v[i].val;
        if (!strcmp(key, "Lattice"))
            rc = parse_lattice(r, val, lay);
        else if (!strcmp(key, "pbc"))
            rc = parse_pbc(r, val, lay);
        else if (!strcmp(key, "Properties"))
            rc = parse_properties(r, val, lay);
    }
    free(l.v);
    free(buf);
    return rc;
}

static double det3(const double *m)
{
    return m[0] * (m[4] * m[8] - m[5] * m[7]) -
           m[1] * (m[3] * m[8] - m[5] * m[6]) +
           m[2] * (m[3] * m[7] - m[4] * m[6]);
}

/* Whether the frame is periodic.  ASE writes Lattice for any non-zero
 * cell, also for a molecule centred in a box with pbc="F F F": that cell
 * is dropped, the frame is a molecule.  A Lattice with pbc partly F (a
 * slab, a wire) is stored as periodic with its full cell, since the master
 * layout knows only periodic or not; calculators then treat it as 3-D. */
static int frame_periodic(struct reader *r, struct layout *lay, int *periodic)
{
    int any = !lay->has_pbc || lay->pbc[0] || lay->pbc[1] || lay->pbc[2];
    if (!lay->has_lattice) {
        if (lay->has_pbc && any)
            return fail_at(r, r->lineno,
                           "pbc is true but there is no Lattice");
        *periodic = 0;
        return 0;
    }
    *periodic = any;
    if (!any)
        return 0;
    const double *m = lay->lattice;
    double na = sqrt(m[0] * m[0] + m[1] * m[1] + m[2] * m[2]);
    double nb = sqrt(m[3] * m[3] + m[4] * m[4] + m[5] * m[5]);
    double nc = sqrt(m[6] * m[6] + m[7] * m[7] + m[8] * m[8]);
    if (!(fabs(det3(m)) > 1e-10 * na * nb * nc) || na * nb * nc == 0)
        return fail_at(r, r->lineno,
                       "Lattice vectors are linearly dependent (zero "
                       "volume)");
    return 0;
}

/* -------------------------------------------------------------- atoms */

/* Element symbol in any case ("CL", "cl" -> Cl), or an atomic number. */
static int atom_z(const char *t)
{
    char sym[4];
    size_t n = strlen(t);
    if (n == 0)
        return 0;
    if (isdigit((unsigned char)t[0])) {
        char *end;
        long z = strtol(t, &end, 10);
        return *end || z < 1 || z > 118 ? 0 : (int)z;
    }
    if (n >= sizeof sym)
        return 0;
    for (size_t i = 0; i < n; i++)
        sym[i] = (char)(i ? tolower((unsigned char)t[i])
                          : toupper((unsigned char)t[i]));
    sym[n] = '\0';
    return mbe_element_z(sym);
}

static int z_of_column(struct reader *r, const struct layout *lay, int *z)
{
    if (lay->z_col != NONE) {
        const char *t = r->tok[lay->z_col];
        char *end;
        errno = 0;
        long v = strtol(t, &end, 10);
        if (end == t || *end || errno)
            return fail_at(r, r->lineno, "bad atomic number '%s'", t);
        if (v < 1 || v > 118)
            return fail_at(r, r->lineno,
                           "atomic number %ld outside 1-118", v);
        *z = (int)v;
        return 0;
    }
    const char *t = r->tok[lay->species_col];
    if (!(*z = atom_z(t)))
        return fail_at(r, r->lineno, "unknown element '%s'", t);
    return 0;
}

static int parse_atom(struct reader *r, const struct layout *lay, double *pos,
                      int64_t *z_out, double *mass_out)
{
    if (tokenize(r) < 0)
        return MBE_EFAIL;
    if (r->ntok == 0)
        return fail_at(r, r->lineno, "blank line where an atom was expected");
    size_t zc = lay->z_col != NONE ? lay->z_col : lay->species_col;
    if (zc >= r->ntok)
        return fail_at(r, r->lineno,
                       "expected the %s in column %zu, found %zu columns",
                       lay->z_col != NONE ? "atomic number" : "element",
                       zc + 1, r->ntok);
    size_t have = r->ntok > lay->pos_col ? r->ntok - lay->pos_col : 0;
    if (have < 3)
        return fail_at(r, r->lineno, "expected 3 coordinates, found %zu",
                       have);
    int z = 0;
    if (z_of_column(r, lay, &z) < 0)
        return MBE_EFAIL;
    for (int k = 0; k < 3; k++) {
        const char *t = r->tok[lay->pos_col + (size_t)k];
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (end == t || *end)
            return fail_at(r, r->lineno, "bad coordinate '%s'", t);
        if (!isfinite(v) || errno == ERANGE)
            return fail_at(r, r->lineno, "non-finite coordinate '%s'", t);
        pos[k] = v;
    }
    *z_out = z;
    *mass_out = mbe_element_mass(z);
    return 0;
}

/* ------------------------------------------------------------- frames */

static int grow(void **p, size_t count, size_t elem)
{
    if (count && elem > SIZE_MAX / count)
        return -1;
    void *q = realloc(*p, count * elem);
    if (!q)
        return -1;
    *p = q;
    return 0;
}

/* Room for one more frame. */
static int reserve(struct frames *fr, mbe_err *e)
{
    mbe_geometry *g = fr->g;
    if (g->n < fr->cap)
        return 0;
    size_t cap = fr->cap ? 2 * fr->cap : 16;
    size_t na = (size_t)fr->n_atoms;
    if (na > SIZE_MAX / 3 ||
        grow((void **)&g->index, cap, sizeof *g->index) < 0 ||
        grow((void **)&g->positions, cap, 3 * na * sizeof(double)) < 0 ||
        grow((void **)&g->atomic_numbers, cap, na * sizeof(int64_t)) < 0 ||
        grow((void **)&g->masses, cap, na * sizeof(double)) < 0 ||
        (fr->periodic &&
         grow((void **)&g->cells, cap, 9 * sizeof(double)) < 0))
        return mbe_fail(e, "out of memory for %zu frames of %lld atoms", cap,
                        (long long)fr->n_atoms);
    fr->cap = cap;
    return 0;
}

static int parse_count(struct reader *r, int64_t *count)
{
    char *end;
    errno = 0;
    long long v = strtoll(r->line, &end, 10);
    int ok = end != r->line && errno == 0 && is_blank(end);
    if (!ok)
        return fail_at(r, r->lineno,
                       "bad count line '%.40s' (expected the number of "
                       "atoms)", r->line);
    if (v < 1)
        return fail_at(r, r->lineno,
                       "bad count line '%.40s' (a frame needs at least one "
                       "atom)", r->line);
    if (v > (long long)(SIZE_MAX / 64))
        return fail_at(r, r->lineno, "count %lld is too large", v);
    *count = v;
    return 0;
}

/* After the count line of frame k: check it against the first frame. */
static int check_count(struct reader *r, struct frames *fr, int64_t count)
{
    mbe_geometry *g = fr->g;
    if (g->n == 0) {
        fr->n_atoms = g->n_atoms = count;
        return 0;
    }
    if (count != fr->n_atoms)
        return fail_at(r, r->lineno,
                       "frame %zu has %lld atoms, the first frame has %lld "
                       "(every frame needs the same atoms)",
                       g->n, (long long)count, (long long)fr->n_atoms);
    return 0;
}

static int check_periodic(struct reader *r, struct frames *fr, int periodic)
{
    if (fr->g->n == 0) {
        fr->periodic = fr->g->periodic = periodic;
        return 0;
    }
    if (periodic != fr->periodic)
        return fail_at(r, r->lineno,
                       "frame %zu is %s but the first frame is %s",
                       fr->g->n, periodic ? "periodic" : "not periodic",
                       fr->periodic ? "periodic" : "not periodic");
    return 0;
}

static int truncated(struct reader *r, size_t count_line, size_t frame,
                     int64_t count, int64_t found)
{
    return fail_at(r, count_line,
                   "truncated frame %zu: the count line says %lld atoms, "
                   "the file ends after %lld",
                   frame, (long long)count, (long long)found);
}

/* One frame, its count line already in r->line. */
static int read_frame(struct reader *r, struct frames *fr)
{
    mbe_geometry *g = fr->g;
    size_t count_line = r->lineno, k = g->n;
    int64_t count = 0;
    int rc, periodic;
    struct layout lay;
    if (parse_count(r, &count) < 0 || check_count(r, fr, count) < 0)
        return MBE_EFAIL;
    /* Every atom line takes at least 7 bytes ("H 0 0 0"): a count the rest
     * of the file cannot hold ends in an error below (a truncated frame or
     * a bad atom line), so its atoms go to scratch space rather than into
     * room reserved for 16 frames of that many atoms (found by fuzzing). */
    off_t at = r->size >= 0 ? ftello(r->f) : -1;
    int cannot_fit = at >= 0 && count > (r->size - at) / 7;
    double scratch_pos[3], scratch_mass;
    int64_t scratch_z;
    if ((rc = next_line(r)) <= 0)
        return rc < 0 ? rc : truncated(r, count_line, k, count, 0);
    if (parse_comment(r, &lay) < 0 || frame_periodic(r, &lay, &periodic) < 0 ||
        check_periodic(r, fr, periodic) < 0 ||
        (!cannot_fit && reserve(fr, r->e) < 0))
        return MBE_EFAIL;
    size_t na = (size_t)count;
    for (size_t i = 0; i < na; i++) {
        if ((rc = next_line(r)) <= 0)
            return rc < 0 ? rc
                          : truncated(r, count_line, k, count, (int64_t)i);
        if (cannot_fit ? parse_atom(r, &lay, scratch_pos, &scratch_z,
                                    &scratch_mass) < 0
                       : parse_atom(r, &lay, g->positions + (k * na + i) * 3,
                                    g->atomic_numbers + k * na + i,
                                    g->masses + k * na + i) < 0)
            return MBE_EFAIL;
    }
    if (cannot_fit) /* only when the file grew while being read */
        return truncated(r, count_line, k, count, count);
    if (periodic)
        memcpy(g->cells + 9 * k, lay.lattice, sizeof lay.lattice);
    g->index[k] = (int64_t)k;
    g->n++;
    return 0;
}

/* Blank lines may end the file but not separate frames. */
static int skip_blank(struct reader *r, int *eof)
{
    size_t first_blank = r->lineno;
    int rc;
    while ((rc = next_line(r)) > 0 && is_blank(r->line))
        ;
    if (rc < 0)
        return rc;
    *eof = rc == 0;
    if (!*eof)
        return fail_at(r, first_blank,
                       "blank line where the count line of a frame was "
                       "expected");
    return 0;
}

static int read_all(struct reader *r, struct frames *fr)
{
    int rc, eof = 0;
    while (!eof) {
        if ((rc = next_line(r)) < 0)
            return rc;
        if (rc == 0)
            break;
        if (is_blank(r->line)) {
            if (skip_blank(r, &eof) < 0)
                return MBE_EFAIL;
            continue;
        }
        if (read_frame(r, fr) < 0)
            return MBE_EFAIL;
    }
    if (fr->g->n == 0)
        return mbe_fail(r->e, "%s: empty file (no frames)", r->path);
    return 0;
}

int mbe_xyz_read(const char *path, mbe_geometry *g, mbe_err *e)
{
    memset(g, 0, sizeof *g);
    struct reader r = {.path = path, .e = e};
    struct frames fr = {.g = g};
    if (!(r.f = fopen(path, "r")))
        return mbe_fail(e, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    r.size = fstat(fileno(r.f), &st) == 0 && S_ISREG(st.st_mode)
                 ? st.st_size : -1;
    int rc = read_all(&r, &fr);
    fclose(r.f);
    free(r.line);
    free(r.tok);
    if (rc < 0)
        mbe_geometry_free(g);
    return rc < 0 ? MBE_EFAIL : 0;
}
