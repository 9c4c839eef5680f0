/*
 * calc_ipi.c - "ipi:NAME" and "ipi:HOST:PORT": we are the server of the
 * i-PI socket protocol and the engine (CP2K, QE, NWChem, LAMMPS, ASE's
 * SocketClient, ...) is the client (../shared/docs/ipi-protocol.md).
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
 * "ase:MODULE:CALL" is the same server with our own engine
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
#include "mbe_internal.h"

#define SLICE_MS 100
#define HDR 12
/* Seconds an engine has to exit after EXIT, and between SIGTERM and
 * SIGKILL. */
#define EXIT_GRACE 5.0
#define KILL_GRACE 3.0
/* Bound on the extra string of FORCEREADY. */
#define EXTRA_MAX (64 << 20)

typedef struct ipi_state {
    int tcp;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char *host, *port;      /* tcp */
    char *where;            /* "/tmp/ipi_x" or "host:port", for messages */
    int lfd, cfd;           /* listening and connected sockets, -1 */
    int bound;              /* we created path */
    char *engine, *log;
    pid_t child;            /* 0: none running */
    int starts;
    int connections;
    int64_t results;        /* on the current connection */
    size_t bytes_in;        /* received on the current connection */
    int hung_up;            /* the peer closed or reset it */
    int busy;               /* POSDATA sent, result not read */
    int dead;               /* unusable: dead_msg */
    char dead_msg[MBE_ERR_LEN];
    int64_t n_atoms;        /* 0 until the first frame */
    int64_t *z;
    int atoms_given;        /* by opts.engine_atoms, not the first frame */
    /* ase:MODULE:CALL: our own engine, our own messages (section ase
     * below). */
    int ase;
    char *ase_env[3];       /* MBE_ASE_MODULE=, MBE_ASE_CALL=,
                               MBE_ASE_ENGINE= */
    int greeted;            /* MBEHELLO read on this connection */
    char *level;            /* the calculator's level_of_theory, NULL:
                               none or not known yet */
    int level_known;
} ipi_state;

/* ---------------------------------------------------------- transport */

/* Whether arg is "NAME" or "HOST:PORT" as written: a usage error when not
 * (mbe_calc_check), before anything is bound.  "*" and an empty host
 * without --ipi-remote are refused too. */
static int check_address(const char *arg, const mbe_calc_opts *o,
                         mbe_err *e)
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

static int ipi_check_arg(const char *arg, const mbe_calc_opts *o, mbe_err *e)
{
    return check_address(arg, o, e);
}

/* Split "NAME" or "HOST:PORT", which check_address passed before set-up
 * (mbe_calc_new). */
static int parse_address(mbe_calc *c, const char *arg, mbe_err *e)
{
    ipi_state *s = c->state;
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

static int bind_unix(ipi_state *s, mbe_err *e)
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
    const ipi_state *s = c->state;
    /* "*" and an empty host were refused by check_address. */
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
    ipi_state *s = c->state;
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

static void close_conn(ipi_state *s)
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
        int ms = SLICE_MS;
        if (deadline > 0) {
            double left = deadline - mbe_now();
            if (left <= 0)
                return 1;
            if (left * 1000 < ms)
                ms = (int)(left * 1000) + 1;
        }
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, ms);
        if (r < 0 && errno != EINTR)
            return mbe_fail(e, "poll: %s", strerror(errno));
        if (r > 0)
            return 0;
    }
}

/* Outcomes of one exchange: ok, a broken frame (e filled, the connection
 * should be dropped), or an interruption. */
enum { XC_OK = 0, XC_BROKEN = MBE_FAILED, XC_STOP = MBE_EINTR };
/* ase: the calculator failed the frame and said so; the connection is
 * fine. */
enum { XC_FRAME = 100 };

static double frame_deadline(const mbe_calc *c, double t0)
{
    return c->opts.frame_timeout > 0 ? t0 + c->opts.frame_timeout : 0;
}

static int timed_out(const mbe_calc *c, const char *what, mbe_err *e)
{
    return mbe_failc(e, XC_BROKEN, "no answer from the engine within the "
                     "frame time-out of %g s (%s)", c->opts.frame_timeout,
                     what);
}

static int send_all(mbe_calc *c, const void *buf, size_t n, double deadline,
                    const char *what, mbe_err *e)
{
    ipi_state *s = c->state;
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

static int recv_all(mbe_calc *c, void *buf, size_t n, double deadline,
                    const char *what, mbe_err *e)
{
    ipi_state *s = c->state;
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
    char buf[HDR];
    memset(buf, ' ', HDR);
    memcpy(buf, h, strlen(h));
    return send_all(c, buf, HDR, deadline, h, e);
}

/* The 12 bytes of a header answered by the engine. */
static int recv_header(mbe_calc *c, char out[HDR], double deadline,
                       const char *what, mbe_err *e)
{
    return recv_all(c, out, HDR, deadline, what, e);
}

/* Whether raw is exactly want padded with spaces (or NULs, as a C client
 * might). */
static int is_hdr(const char raw[HDR], const char *want)
{
    size_t n = strlen(want);
    if (memcmp(raw, want, n) != 0)
        return 0;
    for (size_t i = n; i < HDR; i++)
        if (raw[i] != ' ' && raw[i] != '\0')
            return 0;
    return 1;
}

/* The bytes escaped, trailing spaces dropped: for messages. */
static void show_header(const char *h, char *buf, size_t n)
{
    int len = HDR;
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

static int unexpected(const char *h, const char *after, mbe_err *e)
{
    char shown[64];
    show_header(h, shown, sizeof shown);
    return mbe_failc(e, XC_BROKEN, "the engine answered %s with '%s', not an "
                     "i-PI header expected there (a garbled or non-i-PI "
                     "client?)", after, shown);
}

/* ------------------------------------------------------------- engine */

static void log_line(ipi_state *s, const char *fmt, const char *arg)
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
    ipi_state *s = c->state;
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
    const char *env[] = {env_addr, s->ase_env[0], s->ase_env[1],
                         s->ase_env[2], NULL};
    if (!s->ase)
        env[1] = NULL;
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
    ipi_state *s = c->state;
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
    ipi_state *s = c->state;
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

/* Until the engine is connected: start it when it is ours and not running,
 * then accept. */
static int connect_engine(mbe_calc *c, mbe_err *e)
{
    ipi_state *s = c->state;
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

static int check_atoms(ipi_state *s, const mbe_frame_view *f, mbe_err *e)
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

/* Receive n bytes and drop them. */
static int recv_skip(mbe_calc *c, size_t n, double dl, const char *what,
                     mbe_err *e)
{
    char sink[4096];
    int r = XC_OK;
    while (n && r == XC_OK) {
        size_t k = n < sizeof sink ? n : sizeof sink;
        r = recv_all(c, sink, k, dl, what, e);
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
    ipi_state *s = c->state;
    double dl = frame_deadline(c, mbe_now());
    char h[HDR];
    int r, inits = 0;
    /* Until the engine is READY for positions. */
    for (;;) {
        if ((r = send_header(c, "STATUS", dl, e)) != XC_OK ||
            (r = recv_header(c, h, dl, "the answer to STATUS", e)) != XC_OK)
            return r;
        if (is_hdr(h, "READY"))
            break;
        if (is_hdr(h, "NEEDINIT") && inits++ < 2) {
            /* QE 6.7 reads exactly one byte of the string: send one. */
            int32_t hdr2[2] = {0, 1};
            char byte = 0;
            if ((r = send_header(c, "INIT", dl, e)) != XC_OK ||
                (r = send_all(c, hdr2, sizeof hdr2, dl, "INIT", e)) != XC_OK ||
                (r = send_all(c, &byte, 1, dl, "INIT", e)) != XC_OK)
                return r;
            continue;
        }
        if (is_hdr(h, "HAVEDATA"))
            return mbe_failc(e, XC_BROKEN, "the engine says HAVEDATA before "
                             "it was sent any positions");
        return unexpected(h, inits ? "STATUS after INIT" : "STATUS", e);
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
        r = send_all(c, msg, len, dl, "POSDATA", e);
    free(msg);
    if (r != XC_OK)
        return r;
    s->busy = 1;
    /* The answer comes when the engine is done. */
    if ((r = send_header(c, "STATUS", dl, e)) != XC_OK ||
        (r = recv_header(c, h, dl, "the answer to STATUS after POSDATA",
                         e)) != XC_OK)
        return r;
    if (!is_hdr(h, "HAVEDATA"))
        return unexpected(h, "STATUS after POSDATA", e);
    if ((r = send_header(c, "GETFORCE", dl, e)) != XC_OK ||
        (r = recv_header(c, h, dl, "FORCEREADY", e)) != XC_OK)
        return r;
    if (!is_hdr(h, "FORCEREADY"))
        return unexpected(h, "GETFORCE", e);
    double en;
    int32_t n_got;
    if ((r = recv_all(c, &en, sizeof en, dl, "the energy", e)) != XC_OK ||
        (r = recv_all(c, &n_got, sizeof n_got, dl, "the atom count", e)) !=
            XC_OK)
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
    if ((r = forces ? recv_all(c, forces, n3 * sizeof(double), dl,
                               "the forces", e)
                    : recv_skip(c, n3 * sizeof(double), dl, "the forces",
                                e)) != XC_OK ||
        (r = recv_all(c, virial, sizeof virial, dl, "the virial", e)) !=
            XC_OK ||
        (r = recv_all(c, &n_extra, sizeof n_extra, dl, "the extra string "
                      "length", e)) != XC_OK)
        return r;
    if (n_extra < 0 || n_extra > EXTRA_MAX)
        return mbe_failc(e, XC_BROKEN, "the engine sent an extra string of "
                         "%d bytes after the forces (garbled?)", (int)n_extra);
    if ((r = recv_skip(c, (size_t)n_extra, dl, "the extra string", e)) !=
        XC_OK)
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

/* ----------------------------------------------------------------- ase
 * Our engine (libexec/mbe-ase-engine.py, whose docstring is the protocol)
 * is told each frame's species, cell and periodicity, and works in the
 * calculator's own eV and Å: nothing is converted either way. */

#define ASE_VERSION 1
#define ASE_MSG_MAX 4096

/* An int32 length, then that many bytes into buf (NUL-terminated, at most
 * n - 1 kept, the rest dropped). */
static int recv_text(mbe_calc *c, char *buf, size_t n, double dl,
                     const char *what, mbe_err *e)
{
    int32_t len = 0;
    int r = recv_all(c, &len, sizeof len, dl, what, e);
    if (r != XC_OK)
        return r;
    if (len < 0 || len > ASE_MSG_MAX)
        return mbe_failc(e, XC_BROKEN, "the engine sent %s of %d bytes "
                         "(garbled?)", what, (int)len);
    size_t keep = (size_t)len < n ? (size_t)len : n - 1;
    if ((r = recv_all(c, buf, keep, dl, what, e)) != XC_OK ||
        (r = recv_skip(c, (size_t)len - keep, dl, what, e)) != XC_OK)
        return r;
    buf[keep] = '\0';
    return XC_OK;
}

/* MBEHELLO: the engine made its calculator (and tells its level of
 * theory), or says why it could not.  No time limit but the engine's
 * life: loading a model may take minutes. */
static int ase_greet(mbe_calc *c, mbe_err *e)
{
    ipi_state *s = c->state;
    char h[HDR], text[1024];
    int32_t head[2] = {0, 0};
    text[0] = '\0';
    int r = recv_header(c, h, 0, "MBEHELLO", e);
    if (r == XC_OK && !is_hdr(h, "MBEHELLO"))
        r = unexpected(h, "the connection", e);
    if (r == XC_OK)
        r = recv_all(c, head, sizeof head, 0, "MBEHELLO", e);
    if (r == XC_OK && head[0] != ASE_VERSION)
        r = mbe_failc(e, XC_BROKEN, "the engine speaks version %d of our "
                      "protocol, we %d (an mbe-ase-engine of another "
                      "mbe-shard?)", (int)head[0], ASE_VERSION);
    if (r == XC_OK)
        r = recv_text(c, text, sizeof text, 0, "MBEHELLO", e);
    if (r == XC_OK && !head[1])
        r = mbe_failc(e, XC_BROKEN, "%s", text);
    if (r == XC_STOP)
        return r;
    if (r != XC_OK) {
        s->dead = 1;
        snprintf(s->dead_msg, sizeof s->dead_msg, "%s", e->msg);
        return r;
    }
    s->greeted = 1;
    if (!s->level_known) {
        s->level_known = 1;
        if (*text && !(s->level = mbe_strdup(text)))
            return mbe_failc(e, XC_BROKEN, "out of memory");
    }
    return XC_OK;
}

/* MBEFRAME: n, flags, pbc, cell (Å), numbers, positions (Å). */
static char *ase_frame_msg(const mbe_frame_view *f, int want_forces,
                           size_t *len)
{
    size_t n = (size_t)f->n_atoms;
    *len = HDR + 5 * sizeof(int32_t) + 9 * sizeof(double) +
           n * sizeof(int32_t) + 3 * n * sizeof(double);
    char *msg = malloc(*len);
    if (!msg)
        return NULL;
    memset(msg, ' ', HDR);
    memcpy(msg, "MBEFRAME", 8);
    int32_t head[5] = {(int32_t)n, want_forces, !!f->cell, !!f->cell,
                       !!f->cell};
    double cell[9] = {0};
    if (f->cell)
        memcpy(cell, f->cell, sizeof cell);
    char *p = msg + HDR;
    memcpy(p, head, sizeof head);
    p += sizeof head;
    memcpy(p, cell, sizeof cell);
    p += sizeof cell;
    for (size_t i = 0; i < n; i++, p += sizeof(int32_t)) {
        int32_t z = (int32_t)f->atomic_numbers[i];
        memcpy(p, &z, sizeof z);
    }
    memcpy(p, f->positions, 3 * n * sizeof(double));
    return msg;
}

/* One frame: MBEFRAME out, MBERESULT in.  XC_OK, MBE_SCF_NOT_CONVERGED
 * or XC_FRAME (the calculator's exception, in e) leave the connection
 * usable. */
static int ase_exchange(mbe_calc *c, const mbe_frame_view *f, double *energy,
                        double *forces, mbe_err *e)
{
    ipi_state *s = c->state;
    double dl = frame_deadline(c, mbe_now());
    size_t len, n3 = 3 * (size_t)f->n_atoms;
    char *msg = ase_frame_msg(f, forces != NULL, &len);
    if (!msg)
        return mbe_fail(e, "out of memory");
    int r = send_all(c, msg, len, dl, "MBEFRAME", e);
    free(msg);
    if (r != XC_OK)
        return r;
    s->busy = 1;
    char h[HDR];
    int32_t st = 0, nf = 0;
    double en = NAN;
    if ((r = recv_header(c, h, dl, "MBERESULT", e)) != XC_OK)
        return r;
    if (!is_hdr(h, "MBERESULT"))
        return unexpected(h, "MBEFRAME", e);
    if ((r = recv_all(c, &st, sizeof st, dl, "the status", e)) != XC_OK ||
        (r = recv_all(c, &en, sizeof en, dl, "the energy", e)) != XC_OK ||
        (r = recv_all(c, &nf, sizeof nf, dl, "the force count", e)) != XC_OK)
        return r;
    if ((nf != 0 && (size_t)nf != (size_t)f->n_atoms) ||
        (st == MBE_COMPLETED && forces && !nf))
        return mbe_failc(e, XC_BROKEN, "the engine sent %d forces for %lld "
                         "atoms", (int)nf, (long long)f->n_atoms);
    if (nf && (r = forces ? recv_all(c, forces, n3 * sizeof(double), dl,
                                     "the forces", e)
                          : recv_skip(c, n3 * sizeof(double), dl,
                                      "the forces", e)) != XC_OK)
        return r;
    char text[MBE_ERR_LEN - 64];
    text[0] = '\0';
    if ((r = recv_text(c, text, sizeof text, dl, "the message", e)) != XC_OK)
        return r;
    s->busy = 0;
    *energy = en;
    if (st == MBE_COMPLETED)
        return XC_OK;
    if (st == MBE_SCF_NOT_CONVERGED)
        return mbe_failc(e, MBE_SCF_NOT_CONVERGED, "%s", text);
    if (st == MBE_FAILED)
        return mbe_failc(e, XC_FRAME, "%s", text);
    return mbe_failc(e, XC_BROKEN, "the engine sent status %d", (int)st);
}

static int ipi_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                       double *forces, mbe_err *e)
{
    ipi_state *s = c->state;
    if (s->dead)
        return mbe_fail(e, "%s", s->dead_msg);
    int st = s->ase ? MBE_COMPLETED : check_atoms(s, f, e);
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
        int r = connect_engine(c, e);
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
    if (s->ase && !s->greeted && (st = ase_greet(c, e)) != XC_OK)
        return st == XC_STOP ? mbe_failc(e, MBE_EINTR, "interrupted while "
                                         "the engine started")
                             : MBE_EFAIL;
    st = s->ase ? ase_exchange(c, f, energy, forces, e)
                : exchange(c, f, energy, forces, e);
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

/* ---------------------------------------------------------------- calc */

static int ipi_setup(mbe_calc *c, mbe_err *e)
{
    ipi_state *s = calloc(1, sizeof *s);
    if (!s)
        return mbe_fail(e, "out of memory");
    s->lfd = s->cfd = -1;
    c->state = s;
    if (c->opts.engine && strchr(c->opts.engine, '\n'))
        return mbe_fail(e, "the engine command must be one line");
    if (c->opts.engine && *c->opts.engine &&
        !(s->engine = mbe_strdup(c->opts.engine)))
        return mbe_fail(e, "out of memory");
    if (c->opts.engine_log && *c->opts.engine_log &&
        !(s->log = mbe_strdup(c->opts.engine_log)))
        return mbe_fail(e, "out of memory");
    if (c->opts.engine_atoms && c->opts.n_engine_atoms > 0) {
        int64_t n = c->opts.n_engine_atoms;
        if (!(s->z = malloc((size_t)n * sizeof *s->z)))
            return mbe_fail(e, "out of memory");
        for (int64_t i = 0; i < n; i++) {
            s->z[i] = c->opts.engine_atoms[i];
            if (s->z[i] < 1 || s->z[i] > 118)
                return mbe_fail(e, "engine atom %lld: invalid atomic number "
                                "%lld", (long long)i, (long long)s->z[i]);
        }
        s->n_atoms = n;
        s->atoms_given = 1;
    }
    if (parse_address(c, c->arg, e) < 0)
        return MBE_EFAIL;
    if ((s->tcp ? bind_tcp(c, e) : bind_unix(s, e)) < 0)
        return MBE_EFAIL;
    if (listen(s->lfd, 4) < 0)
        return mbe_fail(e, "listen on %s: %s", s->where, strerror(errno));
    return 0;
}

static void ipi_teardown(mbe_calc *c)
{
    ipi_state *s = c->state;
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
        free(s->ase_env[i]);
    free(s->level);
    free(s);
    c->state = NULL;
}

static char *ipi_settings(const mbe_calc *c)
{
    const ipi_state *s = c->state;
    char box[32], ft[32];
    /* The given atoms as symbols, "O,H,H"; a frame's when not given. */
    size_t len = s->atoms_given ? 4 * (size_t)s->n_atoms + 1 : 16;
    char *atoms = malloc(len);
    if (!atoms)
        return NULL;
    if (s->atoms_given) {
        size_t k = 0;
        for (int64_t i = 0; i < s->n_atoms; i++)
            k += (size_t)snprintf(atoms + k, len - k, "%s%s", i ? "," : "",
                                  mbe_element_symbol((int)s->z[i]));
    } else {
        snprintf(atoms, len, "first frame");
    }
    /* Only a CODATA other than the default is written: shards of older
     * versions, which had none, stay resumable and mergeable. */
    char *out = mbe_asprintf("address=%s%s\nengine=%s\nengine_atoms=%s\n"
                             "ipi_box=%s\nframe_timeout=%s\n%s",
                             s->tcp ? "tcp:" : "unix:", s->where,
                             s->engine ? s->engine : "", atoms,
                             mbe_calc_fmt_double(box, c->opts.ipi_box),
                             mbe_calc_fmt_double(ft, c->opts.frame_timeout),
                             c->opts.ipi_codata == 2014 ? "codata=2014\n"
                                                        : "");
    free(atoms);
    return out;
}

static const char *const ipi_operational[] = {
    "address", "engine", "engine_atoms", "frame_timeout", "connect_timeout",
    NULL};

/* check_opts refuses other years too, but names the setting: this names
 * the option as it was typed. */
static int codata_check(const char *value, const mbe_calc_opts *o,
                        mbe_err *e)
{
    if (o->ipi_codata != 2014 && o->ipi_codata != 2018)
        return mbe_fail(e, "'%s' is not 2014 or 2018", value);
    return 0;
}

static const mbe_calc_option ipi_options[] = {
    {"engine", MBE_CALC_OPT_STRING, offsetof(mbe_calc_opts, engine),
     "COMMAND", "ipi: start the engine with COMMAND (output to\n"
     "SHARD's name with .engine.log)", NULL},
    MBE_CALC_OPTION_CONNECT_TIMEOUT,
    MBE_CALC_OPTION_FRAME_TIMEOUT,
    {"ipi-box", MBE_CALC_OPT_NUMBER, offsetof(mbe_calc_opts, ipi_box), "A",
     "ipi: cube edge sent for molecules (default 50)", NULL},
    {"engine-atoms", MBE_CALC_OPT_FILE, 0, "XYZ",
     "ipi: the engine's atoms, in order, are those of\n"
     "the file's first frame (default: first frame\ncomputed)", NULL},
    {"ipi-remote", MBE_CALC_OPT_FLAG, offsetof(mbe_calc_opts, ipi_remote),
     NULL, "ipi:HOST:PORT may listen beyond loopback and\n"
     "accept engines of other hosts", NULL},
    {"ipi-codata", MBE_CALC_OPT_INTEGER, offsetof(mbe_calc_opts, ipi_codata),
     "Y", "ipi: the engine's Bohr and Hartree, CODATA 2018\n"
     "(default) or 2014 (ASE 3.22's SocketClient)", codata_check},
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_ipi_ops = {
    .name = "ipi",
    .takes_arg = 1,
    .synopsis = "ipi:NAME, ipi:HOST:PORT",
    .operational = ipi_operational,
    .options = ipi_options,
    .check_arg = ipi_check_arg,
    .setup = ipi_setup,
    .compute = ipi_compute,
    .settings = ipi_settings,
    .teardown = ipi_teardown,
};

/* ------------------------------------------------------------ ase: calc */

/* "MODULE:CALL": MODULE a dotted Python name, CALL one line. */
/* "MODULE:CALL" as written: a usage error when not (mbe_calc_check). */
static int ase_check_arg(const char *arg, const mbe_calc_opts *o, mbe_err *e)
{
    (void)o;
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg || !colon[1])
        return mbe_fail(e, "'ase:%s': give ase:MODULE:CALL, e.g. "
                        "ase:ase.calculators.emt:EMT()", arg);
    for (const char *p = arg; p < colon; p++)
        if (!(*p == '_' || *p == '.' || (*p >= '0' && *p <= '9') ||
              (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
            return mbe_fail(e, "'%.*s' is not a Python module name "
                            "(ase:MODULE:CALL)", (int)(colon - arg), arg);
    if (strchr(colon, '\n'))
        return mbe_fail(e, "the calculator's CALL must be one line");
    return 0;
}

static int ase_parse(ipi_state *s, const char *arg, const char *program,
                     mbe_err *e)
{
    const char *colon = strchr(arg, ':'); /* ase_check_arg passed it */
    if (!program || !*program)
        return mbe_fail(e, "the engine program mbe-ase-engine was not found "
                        "(set MBE_ASE_ENGINE)");
    if (access(program, R_OK) < 0)
        return mbe_fail(e, "cannot read the engine program %s: %s", program,
                        strerror(errno));
    s->ase_env[0] = mbe_asprintf("MBE_ASE_MODULE=%.*s", (int)(colon - arg),
                                 arg);
    s->ase_env[1] = mbe_asprintf("MBE_ASE_CALL=%s", colon + 1);
    s->ase_env[2] = mbe_asprintf("MBE_ASE_ENGINE=%s", program);
    /* The user's python3 (or $MBE_PYTHON): the one their calculator is
     * installed for. */
    s->engine = mbe_strdup("exec \"${MBE_PYTHON:-python3}\" "
                           "\"$MBE_ASE_ENGINE\"");
    if (!s->ase_env[0] || !s->ase_env[1] || !s->ase_env[2] || !s->engine)
        return mbe_fail(e, "out of memory");
    return 0;
}

static int ase_setup(mbe_calc *c, mbe_err *e)
{
    ipi_state *s = calloc(1, sizeof *s);
    if (!s)
        return mbe_fail(e, "out of memory");
    s->lfd = s->cfd = -1;
    s->ase = 1;
    c->state = s;
    if (c->opts.engine)
        return mbe_fail(e, "ase: starts its own engine (no --engine)");
    if (ase_parse(s, c->arg, c->opts.ase_engine, e) < 0)
        return MBE_EFAIL;
    if (c->opts.engine_log && *c->opts.engine_log &&
        !(s->log = mbe_strdup(c->opts.engine_log)))
        return mbe_fail(e, "out of memory");
    /* A private socket of this calculator: pid and address make it
     * unique on the host. */
    char name[64];
    snprintf(name, sizeof name, "mbe-ase-%ld-%lx", (long)getpid(),
             (unsigned long)(uintptr_t)c);
    if (parse_address(c, name, e) < 0 || bind_unix(s, e) < 0)
        return MBE_EFAIL;
    if (listen(s->lfd, 4) < 0)
        return mbe_fail(e, "listen on %s: %s", s->where, strerror(errno));
    return 0;
}

/* The calculator's level_of_theory: the engine is started to learn it. */
static int ase_level(mbe_calc *c, char **level, mbe_err *e)
{
    ipi_state *s = c->state;
    *level = NULL;
    if (!s->level_known && !s->dead) {
        int r = s->cfd < 0 ? connect_engine(c, e) : 0;
        if (r == 0)
            r = ase_greet(c, e);
        if (r == MBE_EINTR || r == XC_STOP)
            return mbe_failc(e, MBE_EINTR, "interrupted while the engine "
                             "started");
        if (r != 0)
            return MBE_EFAIL;
    }
    if (s->dead)
        return mbe_fail(e, "%s", s->dead_msg);
    if (s->level && !(*level = mbe_strdup(s->level)))
        return mbe_fail(e, "out of memory");
    return 0;
}

static char *ase_settings(const mbe_calc *c)
{
    const ipi_state *s = c->state;
    char ft[32];
    return mbe_asprintf("module=%s\ncall=%s\naddress=unix:%s\n"
                        "frame_timeout=%s\n",
                        strchr(s->ase_env[0], '=') + 1,
                        strchr(s->ase_env[1], '=') + 1, s->where,
                        mbe_calc_fmt_double(ft, c->opts.frame_timeout));
}

static const char *const ase_operational[] = {
    "address", "frame_timeout", "connect_timeout", NULL};

static const mbe_calc_option ase_options[] = {
    MBE_CALC_OPTION_CONNECT_TIMEOUT,
    MBE_CALC_OPTION_FRAME_TIMEOUT,
    {NULL, 0, 0, NULL, NULL, NULL}};

const mbe_calc_ops mbe_calc_ase_ops = {
    .name = "ase",
    .takes_arg = 1,
    .synopsis = "ase:MODULE:CALL",
    .operational = ase_operational,
    .options = ase_options,
    .check_arg = ase_check_arg,
    .setup = ase_setup,
    .compute = ipi_compute,
    .settings = ase_settings,
    .level = ase_level,
    .teardown = ipi_teardown,
};
