/*
 * ipi.c - the server of the i-PI socket protocol, for "ipi:NAME" and
 * "ipi:HOST:PORT" (calc_ipi.c); the engine (CP2K, QE, NWChem, LAMMPS,
 * ASE's SocketClient, ...) is the client (../shared/docs/ipi-protocol.md).
 *
 * Setup binds and listens (UNIX socket /tmp/ipi_NAME, or TCP) and nothing
 * else; the engine is started (opts.engine) and accepted at the first
 * frame, so a job with nothing to compute never starts one.  Each frame:
 *
 *   STATUS -> NEEDINIT: INIT (replica 0, length 1, one byte), STATUS again
 *          -> READY:    POSDATA (h, h^-1, natoms, positions; Bohr)
 *   STATUS -> HAVEDATA  (may take as long as the calculation)
 *   GETFORCE -> FORCEREADY, energy, natoms, forces, virial, extra string
 *
 * h holds the lattice vectors as columns and is sent row major, i.e. the
 * transpose of our cell (rows are vectors).  Non-periodic frames are sent
 * in a cube of edge opts.ipi_box.
 *
 * The protocol never sends species: the engine's input fixes atoms and
 * their order.  opts.engine_atoms, or else the first frame computed, fixes
 * the engine's atoms; frames with other atoms are refused before anything
 * is sent.
 *
 * Every wait is a poll() in slices of SLICE_MS, so that the caller's stop
 * flag (its signal handler) and the time-outs are noticed promptly.  A
 * connection that breaks or carries garbage fails its frame and is
 * closed (a started engine is killed).  If that connection had given
 * results before, the failure is taken to be the frame's: the next frame
 * waits up to connect_timeout for the engine to connect again (a started
 * engine is started again).  A connection that fails before its first
 * result means the engine or its input is broken: the calculator reports
 * itself unusable from the next frame on (negative rc), so that frames it
 * was never asked about stay UNDEFINED rather than FAILED.  So does an
 * engine whose atom count differs from the frames'.
 *
 * Every accepted client is checked first (calc_peer.c): only the engine
 * may give results.
 *
 * "ase:MODULE:CALL" (calc_ase.c) is the same server with our own engine
 * (libexec/mbe-ase-engine.py) and our own messages instead of i-PI's:
 * species, cell and periodicity of every frame, in the calculator's units.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "calc_impl.h"
#include "child.h"
#include "ipi.h"
#include "mbe_internal.h"

#define SLICE_MS 100
/* Seconds an engine has to exit after EXIT, and between SIGTERM and
 * SIGKILL. */
#define EXIT_GRACE 5.0
#define KILL_GRACE 3.0
/* Bound on the extra string of FORCEREADY. */
#define EXTRA_MAX (64 << 20)

/* ---------------------------------------------------------- transport */

/* Whether arg is "NAME" or "HOST:PORT" as written: a usage error when not
 * (mbe_calc_check), before anything is bound.  "*" and an empty host
 * without --ipi-remote are refused too. */
int ipi_check_address(const char *arg, const mbe_calc_opts *o, mbe_err *e)
{
    const char *colon = strrchr(arg, ':');
    size_t room = sizeof(((struct sockaddr_un *)0)->sun_path) - 1 -
                  strlen("/tmp/ipi_");
    if (!colon) {
        if (strchr(arg, '/') || !*arg)
            return mbe_fail(e, "socket name '%s' must be non-empty and "
                            "without '/' (the engine connects to "
                            "/tmp/ipi_NAME)", arg);
        if (strlen(arg) > room)
            return mbe_fail(e, "socket name '%s' is too long for a UNIX "
                            "socket path (at most %zu characters)", arg,
                            room);
        return 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || port < 1 || port > 65535)
        return mbe_fail(e, "'%s': the port must be a number from 1 to 65535 "
                        "(ipi:HOST:PORT)", arg);
    if (!o->ipi_remote && (colon == arg || !strncmp(arg, "*:", 2)))
        return mbe_fail(e, "%s would listen on every address of this host; "
                        "use ipi:localhost:%s, or --ipi-remote for engines "
                        "on other hosts", arg, colon + 1);
    return 0;
}

/* Split "NAME" or "HOST:PORT", which ipi_check_address passed before
 * set-up (mbe_calc_new). */
static int parse_address(mbe_calc *c, const char *arg, mbe_err *e)
{
    ipi_server *s = c->state;
    const char *colon = strrchr(arg, ':');
    if (!colon) {
        snprintf(s->path, sizeof s->path, "/tmp/ipi_%s", arg);
        s->where = mbe_strdup(s->path);
        return s->where ? 0 : mbe_fail(e, "out of memory");
    }
    s->tcp = 1;
    s->host = strndup(arg, (size_t)(colon - arg));
    s->port = mbe_strdup(colon + 1);
    s->where = mbe_strdup(arg);
    if (!s->host || !s->port || !s->where)
        return mbe_fail(e, "out of memory");
    return 0;
}

static int bind_unix(ipi_server *s, mbe_err *e)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, s->path, strlen(s->path) + 1);
    struct stat st;
    if (lstat(s->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return mbe_fail(e, "%s exists and is not a socket", s->path);
        /* A live server answers; a stale socket file refuses. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
            return mbe_fail(e, "socket: %s", strerror(errno));
        int live = connect(probe, (struct sockaddr *)&a, sizeof a) == 0;
        close(probe);
        if (live)
            return mbe_fail(e, "%s is in use by another server (another "
                            "mbe-compute?); choose another ipi:NAME",
                            s->path);
        if (unlink(s->path) < 0)
            return mbe_fail(e, "cannot remove the stale socket %s: %s",
                            s->path, strerror(errno));
    }
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0)
        return mbe_fail(e, "socket: %s", strerror(errno));
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof a) < 0)
        return mbe_fail(e, "cannot bind %s: %s", s->path, strerror(errno));
    s->bound = 1;
    /* Connecting needs write permission on the file; before listen()
     * nobody can have connected yet, whatever the umask made it. */
    if (chmod(s->path, 0600) < 0)
        return mbe_fail(e, "cannot make %s private (chmod 0600): %s",
                        s->path, strerror(errno));
    return 0;
}

static int is_loopback(const struct sockaddr *a)
{
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)a;
        return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    }
    const struct in6_addr *v6 = &((const struct sockaddr_in6 *)a)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(v6) ||
           (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127);
}

/* Every address of a node is reachable by its other users and by other
 * hosts: only an explicit option opens more than loopback. */
static int check_bind_address(const mbe_calc *c, const struct addrinfo *res,
                              mbe_err *e)
{
    const ipi_server *s = c->state;
    /* "*" and an empty host were refused by ipi_check_address. */
    if (c->opts.ipi_remote)
        return 0;
    for (const struct addrinfo *r = res; r; r = r->ai_next)
        if (!is_loopback(r->ai_addr))
            return mbe_fail(e, "%s is not a loopback address; use "
                            "ipi:localhost:%s, or --ipi-remote for engines "
                            "on other hosts", s->where, s->port);
    return 0;
}

static int bind_tcp(mbe_calc *c, mbe_err *e)
{
    ipi_server *s = c->state;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    const char *host = *s->host && strcmp(s->host, "*") != 0 ? s->host : NULL;
    int g = getaddrinfo(host, s->port, &hints, &res);
    if (g != 0)
        return mbe_fail(e, "%s: %s", s->where, gai_strerror(g));
    if (check_bind_address(c, res, e) < 0) {
        freeaddrinfo(res);
        return MBE_EFAIL;
    }
    int err = 0;
    for (struct addrinfo *r = res; r; r = r->ai_next) {
        int fd = socket(r->ai_family, r->ai_socktype | SOCK_CLOEXEC,
                        r->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, r->ai_addr, r->ai_addrlen) == 0) {
            s->lfd = fd;
            break;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (s->lfd < 0)
        return mbe_fail(e, "cannot bind %s: %s", s->where, strerror(err));
    return 0;
}

static void close_conn(ipi_server *s)
{
    if (s->cfd >= 0)
        close(s->cfd);
    s->cfd = -1;
    s->busy = 0;
    s->greeted = 0;
}

/* Wait for fd to become ready for events.  0 ready, 1 deadline passed,
 * MBE_EINTR stopped, -1 error (e filled). */
static int wait_fd(const mbe_calc *c, int fd, short events, double deadline,
                   mbe_err *e)
{
    for (;;) {
        if (mbe_calc_stopped(c))
            return MBE_EINTR;
        int ms = mbe_poll_ms(deadline, SLICE_MS);
        if (ms < 0)
            return 1;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno != EINTR)
            return mbe_fail(e, "poll: %s", strerror(errno));
        if (r > 0)
            return 0;
    }
}

double ipi_frame_deadline(const mbe_calc *c, double t0)
{
    return c->opts.frame_timeout > 0 ? t0 + c->opts.frame_timeout : 0;
}

static int timed_out(const mbe_calc *c, const char *what, mbe_err *e)
{
    return mbe_failc(e, XC_BROKEN, "no answer from the engine within the "
                     "frame time-out of %g s (%s)", c->opts.frame_timeout,
                     what);
}

int ipi_send_all(mbe_calc *c, const void *buf, size_t n, double deadline,
                 const char *what, mbe_err *e)
{
    ipi_server *s = c->state;
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(s->cfd, p + done, n - done,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
                      errno == EINTR)) {
            int r = wait_fd(c, s->cfd, POLLOUT, deadline, e);
            if (r == 1)
                return timed_out(c, what, e);
            if (r == MBE_EINTR)
                return XC_STOP;
            if (r < 0)
                return XC_BROKEN;
            continue;
        }
        s->hung_up = 1;
        return mbe_failc(e, XC_BROKEN, "the engine's connection broke while "
                         "sending %s: %s", what,
                         w < 0 ? strerror(errno) : "nothing written");
    }
    return XC_OK;
}

int ipi_recv_all(mbe_calc *c, void *buf, size_t n, double deadline,
                 const char *what, mbe_err *e)
{
    ipi_server *s = c->state;
    char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = recv(s->cfd, p + done, n - done, MSG_DONTWAIT);
        if (r > 0) {
            done += (size_t)r;
            s->bytes_in += (size_t)r;
            continue;
        }
        if (r == 0)
            s->hung_up = 1;
        if (r == 0)
            return mbe_failc(e, XC_BROKEN, "the engine closed the connection "
                             "while we waited for %s (%zu of %zu bytes "
                             "received)", what, done, n);
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int w = wait_fd(c, s->cfd, POLLIN, deadline, e);
            if (w == 1)
                return timed_out(c, what, e);
            if (w == MBE_EINTR)
                return XC_STOP;
            if (w < 0)
                return XC_BROKEN;
            continue;
        }
        s->hung_up = 1;
        return mbe_failc(e, XC_BROKEN, "the engine's connection broke while "
                         "we waited for %s: %s", what, strerror(errno));
    }
    return XC_OK;
}

static int send_header(mbe_calc *c, const char *h, double deadline,
                       mbe_err *e)
{
    char buf[IPI_HDR];
    memset(buf, ' ', IPI_HDR);
    memcpy(buf, h, strlen(h));
    return ipi_send_all(c, buf, IPI_HDR, deadline, h, e);
}

/* The 12 bytes of a header answered by the engine. */
int ipi_recv_header(mbe_calc *c, char out[IPI_HDR], double deadline,
                    const char *what, mbe_err *e)
{
    return ipi_recv_all(c, out, IPI_HDR, deadline, what, e);
}

/* Whether raw is exactly want padded with spaces (or NULs, as a C client
 * might). */
int ipi_is_hdr(const char raw[IPI_HDR], const char *want)
{
    size_t n = strlen(want);
    if (memcmp(raw, want, n) != 0)
        return 0;
    for (size_t i = n; i < IPI_HDR; i++)
        if (raw[i] != ' ' && raw[i] != '\0')
            return 0;
    return 1;
}

/* The bytes escaped, trailing spaces dropped: for messages. */
static void show_header(const char *h, char *buf, size_t n)
{
    int len = IPI_HDR;
    while (len > 0 && h[len - 1] == ' ')
        len--;
    size_t k = 0;
    for (int i = 0; i < len && k + 5 < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (ch >= 32 && ch < 127 && ch != '\\')
            buf[k++] = (char)ch;
        else
            k += (size_t)snprintf(buf + k, n - k, "\\x%02x", ch);
    }
    buf[k] = '\0';
}

int ipi_unexpected(const char *h, const char *after, mbe_err *e)
{
    char shown[64];
    show_header(h, shown, sizeof shown);
    return mbe_failc(e, XC_BROKEN, "the engine answered %s with '%s', not an "
                     "i-PI header expected there (a garbled or non-i-PI "
                     "client?)", after, shown);
}

/* ------------------------------------------------------------- engine */

static void log_line(ipi_server *s, const char *fmt, const char *arg)
{
    if (!s->log)
        return;
    FILE *f = fopen(s->log, "ae");
    if (!f)
        return;
    char when[32];
    mbe_iso_time(when);
    fprintf(f, "=== mbe-compute %s: ", when);
    fprintf(f, fmt, arg);
    fputc('\n', f);
    fclose(f);
}

static int start_engine(mbe_calc *c, mbe_err *e)
{
    ipi_server *s = c->state;
    int fd = -1;
    if (s->log) {
        fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0)
            return mbe_fail(e, "cannot open the engine log %s: %s", s->log,
                            strerror(errno));
    }
    log_line(s, "starting the engine: %s", s->engine);
    char env_addr[sizeof s->path + 300];
    snprintf(env_addr, sizeof env_addr, "MBE_IPI_ADDRESS=%s", s->where);
    const char *env[] = {env_addr, s->env[0], s->env[1], s->env[2], NULL};
    int rc = mbe_child_start(s->engine, -1, fd, fd, env, &s->child, e);
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        return rc;
    s->starts++;
    return 0;
}

/* Stop a started engine: EXIT when it listens (polite), then signals. */
static void stop_engine(mbe_calc *c, int polite)
{
    ipi_server *s = c->state;
    int st = 0;
    if (s->cfd >= 0 && polite && !s->busy) {
        mbe_err ignored;
        send_header(c, "EXIT", mbe_now() + 1.0, &ignored);
    }
    close_conn(s);
    if (s->child <= 0)
        return;
    int r = polite ? mbe_child_wait(c->opts.stop, s->child, mbe_now() + EXIT_GRACE, &st)
                   : 0;
    if (r != 1)
        mbe_child_kill(s->child, KILL_GRACE, &st);
    char how[96];
    mbe_child_describe(st, how, sizeof how);
    log_line(s, "the engine %s", how);
    s->child = 0;
}

/* Whether the client just accepted on fd may compute for us; a refused
 * one is reported in one line (the notice callback and the engine log)
 * and the server goes on waiting. */
static int peer_allowed(mbe_calc *c, int fd)
{
    ipi_server *s = c->state;
    char why[256];
    pid_t engine = s->engine ? s->child : 0;
    if (mbe_peer_allowed(fd, s->tcp, engine, c->opts.ipi_remote, why,
                         sizeof why))
        return 1;
    char msg[MBE_ERR_LEN];
    snprintf(msg, sizeof msg, "%s: refused a client: %s", s->where, why);
    log_line(s, "%s", msg);
    if (c->opts.notice)
        c->opts.notice(c->opts.notice_ud, msg);
    return 0;
}

int ipi_connect(mbe_calc *c, mbe_err *e)
{
    ipi_server *s = c->state;
    if (s->engine && s->child > 0) {
        int st;
        if (mbe_child_exited(s->child, &st)) {
            char how[96];
            mbe_child_describe(st, how, sizeof how);
            log_line(s, "the engine %s", how);
            s->child = 0;
        }
    }
    if (s->engine && s->child <= 0 && start_engine(c, e) < 0)
        return MBE_EFAIL;
    double deadline = mbe_now() + c->opts.connect_timeout;
    for (;;) {
        /* Short waits: a started engine that dies is noticed at once. */
        double now = mbe_now();
        double until = now + 0.1 < deadline ? now + 0.1 : deadline;
        int r = wait_fd(c, s->lfd, POLLIN, until, e);
        if (r == 1 && until < deadline)
            r = 2;
        if (r == MBE_EINTR)
            return MBE_EINTR;
        if (r < 0)
            return MBE_EFAIL;
        if (r == 0) {
            int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd >= 0 && !peer_allowed(c, fd)) {
                close(fd);
                fd = -1;
                errno = EAGAIN;
            }
            if (fd >= 0) {
                if (s->tcp) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                }
                s->cfd = fd;
                s->connections++;
                s->results = 0;
                s->bytes_in = 0;
                s->hung_up = 0;
                return 0;
            }
            if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
                return mbe_fail(e, "accept on %s: %s", s->where,
                                strerror(errno));
        }
        int st;
        if (s->engine && s->child > 0 && mbe_child_exited(s->child, &st)) {
            char how[96];
            mbe_child_describe(st, how, sizeof how);
            log_line(s, "the engine %s", how);
            s->child = 0;
            return mbe_fail(e, "the engine %s before connecting to %s%s%s",
                            how, s->where, s->log ? "; see " : "",
                            s->log ? s->log : "");
        }
        if (r == 1)
            return mbe_fail(e, "no engine connected to %s within %g s%s",
                            s->where, c->opts.connect_timeout,
                            s->engine ? " (is its input's address the same?)"
                                      : " (start the engine, or use "
                                        "--engine)");
    }
}

/* -------------------------------------------------------------- frames */

static int check_atoms(ipi_server *s, const mbe_frame_view *f, mbe_err *e)
{
    if (f->n_atoms > (1 << 24))
        return mbe_failc(e, MBE_FAILED, "%lld atoms: more than the protocol's "
                         "int32 fields hold in this server",
                         (long long)f->n_atoms);
    if (!s->n_atoms) {
        s->z = malloc((size_t)f->n_atoms * sizeof *s->z);
        if (!s->z)
            return mbe_fail(e, "out of memory");
        memcpy(s->z, f->atomic_numbers, (size_t)f->n_atoms * sizeof *s->z);
        s->n_atoms = f->n_atoms;
        return MBE_COMPLETED;
    }
    if (f->n_atoms != s->n_atoms)
        return mbe_failc(e, MBE_FAILED, "the frame has %lld atoms, the "
                         "engine's %lld (fixed by its input, as %s); not "
                         "sent", (long long)f->n_atoms, (long long)s->n_atoms,
                         s->atoms_given ? "given" : "taken from the first "
                         "frame");
    for (int64_t i = 0; i < f->n_atoms; i++)
        if (f->atomic_numbers[i] != s->z[i])
            return mbe_failc(e, MBE_FAILED, "atom %lld of the frame is %s, "
                             "the engine's is %s (the engine's input fixes "
                             "species and order; %s); not sent", (long long)i,
                             mbe_element_symbol((int)f->atomic_numbers[i]),
                             mbe_element_symbol((int)s->z[i]),
                             s->atoms_given ? "as given"
                                            : "taken from the first frame");
    return MBE_COMPLETED;
}

/* The engine's Bohr (Å) and Hartree (eV).  2014: as ASE 3.22 derives
 * them from CODATA 2014 (ase.units), so that its SocketClient's round trip
 * is exact but for rounding. */
static void engine_units(const mbe_calc *c, double *bohr, double *hartree)
{
    *bohr = c->opts.ipi_codata == 2014 ? 0.5291772105638411
                                       : MBE_BOHR_ANGSTROM;
    *hartree = c->opts.ipi_codata == 2014 ? 27.211386024367243
                                          : MBE_HARTREE_EV;
}

/* h (vectors as columns, row major, Bohr) and its inverse. */
static void cell_matrices(const mbe_calc *c, const mbe_frame_view *f,
                          double h[9], double ih[9])
{
    double B, H;
    engine_units(c, &B, &H);
    double cell[9] = {0};
    if (f->cell) {
        memcpy(cell, f->cell, sizeof cell);
    } else {
        cell[0] = cell[4] = cell[8] = c->opts.ipi_box;
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            h[3 * i + j] = cell[3 * j + i] / B;
    double d = mbe_cell_det(h);
    ih[0] = (h[4] * h[8] - h[5] * h[7]) / d;
    ih[1] = (h[2] * h[7] - h[1] * h[8]) / d;
    ih[2] = (h[1] * h[5] - h[2] * h[4]) / d;
    ih[3] = (h[5] * h[6] - h[3] * h[8]) / d;
    ih[4] = (h[0] * h[8] - h[2] * h[6]) / d;
    ih[5] = (h[2] * h[3] - h[0] * h[5]) / d;
    ih[6] = (h[3] * h[7] - h[4] * h[6]) / d;
    ih[7] = (h[1] * h[6] - h[0] * h[7]) / d;
    ih[8] = (h[0] * h[4] - h[1] * h[3]) / d;
}

int ipi_recv_skip(mbe_calc *c, size_t n, double dl, const char *what,
                  mbe_err *e)
{
    char sink[4096];
    int r = XC_OK;
    while (n && r == XC_OK) {
        size_t k = n < sizeof sink ? n : sizeof sink;
        r = ipi_recv_all(c, sink, k, dl, what, e);
        n -= k;
    }
    return r;
}

/* Send and receive one frame on the open connection; forces NULL: the
 * engine's forces are read and dropped (the protocol always sends
 * them). */
static int exchange(mbe_calc *c, const mbe_frame_view *f, double *energy,
                    double *forces, mbe_err *e)
{
    ipi_server *s = c->state;
    double dl = ipi_frame_deadline(c, mbe_now());
    char h[IPI_HDR];
    int r, inits = 0;
    /* Until the engine is READY for positions. */
    for (;;) {
        if ((r = send_header(c, "STATUS", dl, e)) != XC_OK ||
            (r = ipi_recv_header(c, h, dl, "the answer to STATUS", e)) !=
                XC_OK)
            return r;
        if (ipi_is_hdr(h, "READY"))
            break;
        if (ipi_is_hdr(h, "NEEDINIT") && inits++ < 2) {
            /* QE 6.7 reads exactly one byte of the string: send one. */
            int32_t hdr2[2] = {0, 1};
            char byte = 0;
            if ((r = send_header(c, "INIT", dl, e)) != XC_OK ||
                (r = ipi_send_all(c, hdr2, sizeof hdr2, dl, "INIT", e)) !=
                    XC_OK ||
                (r = ipi_send_all(c, &byte, 1, dl, "INIT", e)) != XC_OK)
                return r;
            continue;
        }
        if (ipi_is_hdr(h, "HAVEDATA"))
            return mbe_failc(e, XC_BROKEN, "the engine says HAVEDATA before "
                             "it was sent any positions");
        return ipi_unexpected(h, inits ? "STATUS after INIT" : "STATUS", e);
    }
    /* POSDATA in one buffer. */
    size_t n3 = 3 * (size_t)f->n_atoms;
    size_t len = 18 * sizeof(double) + sizeof(int32_t) + n3 * sizeof(double);
    char *msg = malloc(len);
    if (!msg)
        return mbe_fail(e, "out of memory");
    double hm[9], ih[9];
    cell_matrices(c, f, hm, ih);
    double B, H;
    engine_units(c, &B, &H);
    int32_t na = (int32_t)f->n_atoms;
    memcpy(msg, hm, sizeof hm);
    memcpy(msg + sizeof hm, ih, sizeof ih);
    memcpy(msg + 2 * sizeof hm, &na, sizeof na);
    char *pos = msg + 2 * sizeof hm + sizeof na; /* not aligned */
    for (size_t i = 0; i < n3; i++) {
        double x = f->positions[i] / B;
        memcpy(pos + i * sizeof x, &x, sizeof x);
    }
    r = send_header(c, "POSDATA", dl, e);
    if (r == XC_OK)
        r = ipi_send_all(c, msg, len, dl, "POSDATA", e);
    free(msg);
    if (r != XC_OK)
        return r;
    s->busy = 1;
    /* The answer comes when the engine is done. */
    if ((r = send_header(c, "STATUS", dl, e)) != XC_OK ||
        (r = ipi_recv_header(c, h, dl, "the answer to STATUS after POSDATA",
                             e)) != XC_OK)
        return r;
    if (!ipi_is_hdr(h, "HAVEDATA"))
        return ipi_unexpected(h, "STATUS after POSDATA", e);
    if ((r = send_header(c, "GETFORCE", dl, e)) != XC_OK ||
        (r = ipi_recv_header(c, h, dl, "FORCEREADY", e)) != XC_OK)
        return r;
    if (!ipi_is_hdr(h, "FORCEREADY"))
        return ipi_unexpected(h, "GETFORCE", e);
    double en;
    int32_t n_got;
    if ((r = ipi_recv_all(c, &en, sizeof en, dl, "the energy", e)) !=
            XC_OK ||
        (r = ipi_recv_all(c, &n_got, sizeof n_got, dl, "the atom count",
                          e)) != XC_OK)
        return r;
    if (n_got != na) {
        s->dead = 1;
        snprintf(s->dead_msg, sizeof s->dead_msg, "the engine computes %d "
                 "atoms, the frames have %d: its input must list the same "
                 "atoms in the same order", (int)n_got, (int)na);
        return mbe_failc(e, XC_BROKEN, "%s", s->dead_msg);
    }
    double virial[9];
    int32_t n_extra;
    if ((r = forces ? ipi_recv_all(c, forces, n3 * sizeof(double), dl,
                                   "the forces", e)
                    : ipi_recv_skip(c, n3 * sizeof(double), dl,
                                    "the forces", e)) != XC_OK ||
        (r = ipi_recv_all(c, virial, sizeof virial, dl, "the virial", e)) !=
            XC_OK ||
        (r = ipi_recv_all(c, &n_extra, sizeof n_extra, dl,
                          "the extra string length", e)) != XC_OK)
        return r;
    if (n_extra < 0 || n_extra > EXTRA_MAX)
        return mbe_failc(e, XC_BROKEN, "the engine sent an extra string of "
                         "%d bytes after the forces (garbled?)", (int)n_extra);
    if ((r = ipi_recv_skip(c, (size_t)n_extra, dl, "the extra string",
                           e)) != XC_OK)
        return r;
    s->busy = 0;
    *energy = en * H;
    for (size_t i = 0; forces && i < n3; i++)
        forces[i] *= H / B;
    if (!isfinite(*energy))
        return mbe_failc(e, MBE_FAILED, "the engine returned a non-finite "
                         "energy");
    return MBE_COMPLETED;
}

const ipi_proto ipi_messages = {
    .check = check_atoms,
    .exchange = exchange,
};

/* ------------------------------------------------------------- server */

void *ipi_new(mbe_calc *c, size_t size, const ipi_proto *proto, mbe_err *e)
{
    ipi_server *s = calloc(1, size);
    if (!s) {
        mbe_fail(e, "out of memory");
        return NULL;
    }
    s->proto = proto;
    s->lfd = s->cfd = -1;
    c->state = s;
    return s;
}

int ipi_listen(mbe_calc *c, const char *arg, mbe_err *e)
{
    ipi_server *s = c->state;
    if (parse_address(c, arg, e) < 0)
        return MBE_EFAIL;
    if ((s->tcp ? bind_tcp(c, e) : bind_unix(s, e)) < 0)
        return MBE_EFAIL;
    if (listen(s->lfd, 4) < 0)
        return mbe_fail(e, "listen on %s: %s", s->where, strerror(errno));
    return 0;
}

int ipi_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                double *forces, mbe_err *e)
{
    ipi_server *s = c->state;
    const ipi_proto *p = s->proto;
    if (s->dead)
        return mbe_fail(e, "%s", s->dead_msg);
    int st = p->check ? p->check(s, f, e) : MBE_COMPLETED;
    if (st != MBE_COMPLETED)
        return st;
    /* A started engine that died between frames (killed, out of memory)
     * is started again for this one rather than failing it. */
    int died = 0;
    if (s->cfd >= 0 && s->engine && s->child > 0 &&
        mbe_child_exited(s->child, &died)) {
        char how[96];
        mbe_child_describe(died, how, sizeof how);
        log_line(s, "the engine %s between frames", how);
        s->child = 0;
        close_conn(s);
    }
    /* A connection closed before it said anything is no engine (another
     * server probing whether the socket is in use, a port scanner): drop
     * it and wait for the next one.  Nothing was sent to it but STATUS. */
    int spurious = 0;
again:
    if (s->cfd < 0) {
        int r = ipi_connect(c, e);
        if (r == MBE_EINTR)
            return mbe_failc(e, MBE_EINTR, "interrupted while waiting for "
                             "the engine to connect");
        if (r < 0) {
            s->dead = 1;
            snprintf(s->dead_msg, sizeof s->dead_msg, "%s",
                     e ? e->msg : "the engine is unusable");
            return r;
        }
    }
    if (p->greet && !s->greeted && (st = p->greet(c, e)) != XC_OK)
        return st == XC_STOP ? mbe_failc(e, MBE_EINTR, "interrupted while "
                                         "the engine started")
                             : MBE_EFAIL;
    st = p->exchange(c, f, energy, forces, e);
    if (st == XC_BROKEN && s->hung_up && s->bytes_in == 0 && !s->busy &&
        spurious++ < 8) {
        close_conn(s);
        goto again;
    }
    if (st == XC_OK || st == MBE_SCF_NOT_CONVERGED || st == XC_FRAME) {
        /* The engine answered: it works, whatever the frame's fate. */
        s->results++;
        return st == XC_FRAME ? MBE_FAILED : st;
    }
    if (st == XC_STOP)
        return mbe_failc(e, MBE_EINTR, "interrupted while the engine was "
                         "computing");
    if (!s->results && !s->dead && e) {
        s->dead = 1;
        snprintf(s->dead_msg, sizeof s->dead_msg, "not asking the engine "
                 "again: it failed before giving any result (%.900s)",
                 e->msg);
    }
    /* Anything else leaves the connection in an unknown state. */
    int had_child = s->child > 0;
    close_conn(s);
    if (had_child)
        stop_engine(c, 0);
    if (s->log && e) {
        size_t n = strlen(e->msg);
        snprintf(e->msg + n, sizeof e->msg - n, "; engine log: %s", s->log);
    }
    return st < 0 ? MBE_FAILED : st;
}

void ipi_teardown(mbe_calc *c)
{
    ipi_server *s = c->state;
    if (!s)
        return;
    /* EXIT to whatever engine listens, then signals for a started one. */
    stop_engine(c, !mbe_calc_stopped(c));
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->bound)
        unlink(s->path);
    free(s->host);
    free(s->port);
    free(s->where);
    free(s->engine);
    free(s->log);
    free(s->z);
    for (int i = 0; i < 3; i++)
        free(s->env[i]);
    free(s);
    c->state = NULL;
}