/*
 * ipi.h - the i-PI socket server (ipi.c) that the ipi: calculator
 * (calc_ipi.c) and the ase: calculator (calc_ase.c) share.  Private to
 * those three files.
 *
 * The two differ only in their engine and in the messages of a frame: the
 * socket, the framing, the engine's start and restart, and what a broken
 * connection means are the server's.  So a calculator's state begins with
 * an ipi_server, and an ipi_proto names its messages.
 */
#ifndef MBE_IPI_H
#define MBE_IPI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "calc_impl.h"

/* Bytes of a message header: a name padded with spaces. */
#define IPI_HDR 12

/* Outcomes of one exchange: ok, a broken frame (e filled, the connection
 * should be dropped), or an interruption. */
enum { XC_OK = 0, XC_BROKEN = MBE_FAILED, XC_STOP = MBE_EINTR };
/* ase: the calculator failed the frame and said so; the connection is
 * fine. */
enum { XC_FRAME = 100 };

typedef struct ipi_proto ipi_proto;

typedef struct ipi_server {
    const ipi_proto *proto;
    int tcp;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char *host, *port;      /* tcp */
    char *where;            /* "/tmp/ipi_x" or "host:port", for messages */
    int lfd, cfd;           /* listening and connected sockets, -1 */
    int bound;              /* we created path */
    char *engine, *log;
    char *env[3];           /* the engine's environment beside
                               MBE_IPI_ADDRESS, up to the first NULL */
    pid_t child;            /* 0: none running */
    int starts;
    int connections;
    int64_t results;        /* on the current connection */
    size_t bytes_in;        /* received on the current connection */
    int hung_up;            /* the peer closed or reset it */
    int busy;               /* frame sent, result not read */
    int greeted;            /* proto's greet done on this connection */
    int dead;               /* unusable: dead_msg */
    char dead_msg[MBE_ERR_LEN];
    /* i-PI's messages never name the atoms: the engine's, 0 until the
     * first frame or given (calc_ipi.c). */
    int64_t n_atoms;
    int64_t *z;
    int atoms_given;        /* by opts.engine_atoms, not the first frame */
} ipi_server;

/* The messages of a frame: i-PI's (ipi_messages) or ase:'s own
 * (calc_ase.c). */
struct ipi_proto {
    /* Whether the frame may be sent, before any engine is started or
     * asked (NULL: any): MBE_COMPLETED, else an rc with e filled. */
    int (*check)(ipi_server *s, const mbe_frame_view *f, mbe_err *e);
    /* Once on each connection, before its first frame (NULL: none): sets
     * s->greeted; XC_OK, XC_STOP, or else with e filled. */
    int (*greet)(mbe_calc *c, mbe_err *e);
    /* One frame on the open connection: XC_OK, MBE_SCF_NOT_CONVERGED or
     * XC_FRAME keep the connection, XC_BROKEN or XC_STOP drop it. */
    int (*exchange)(mbe_calc *c, const mbe_frame_view *f, double *energy,
                    double *forces, mbe_err *e);
};

/* i-PI's STATUS, INIT, POSDATA and GETFORCE. */
extern const ipi_proto ipi_messages;

/* Whether arg is "NAME" or "HOST:PORT" as written (the check_arg of
 * ipi:). */
int ipi_check_address(const char *arg, const mbe_calc_opts *o, mbe_err *e);

/* A zeroed state of size bytes (at least an ipi_server, which begins it)
 * speaking proto, in c->state; NULL with e filled. */
void *ipi_new(mbe_calc *c, size_t size, const ipi_proto *proto, mbe_err *e);
/* Bind and listen on "NAME" or "HOST:PORT" (ipi_check_address passed). */
int ipi_listen(mbe_calc *c, const char *arg, mbe_err *e);
/* Until the engine is connected: start it when it is ours and not
 * running, then accept.  0, MBE_EINTR, or MBE_EFAIL with e filled. */
int ipi_connect(mbe_calc *c, mbe_err *e);
/* The compute hook: connect, greet, proto's exchange, and what a failure
 * means for the next frame. */
int ipi_compute(mbe_calc *c, const mbe_frame_view *f, double *energy,
                double *forces, mbe_err *e);
/* Stop the engine, close and remove the socket, free the server and the
 * whole state of ipi_new. */
void ipi_teardown(mbe_calc *c);

/* The deadline of a frame begun at t0 (mbe_now): opts.frame_timeout
 * later, 0 (none) without one. */
double ipi_frame_deadline(const mbe_calc *c, double t0);
/* Framing on the open connection, in XC_ outcomes.  dl: a deadline as
 * above; what names the message in errors. */
int ipi_send_all(mbe_calc *c, const void *buf, size_t n, double dl,
                 const char *what, mbe_err *e);
int ipi_recv_all(mbe_calc *c, void *buf, size_t n, double dl,
                 const char *what, mbe_err *e);
/* Receive n bytes and drop them. */
int ipi_recv_skip(mbe_calc *c, size_t n, double dl, const char *what,
                  mbe_err *e);
int ipi_recv_header(mbe_calc *c, char out[IPI_HDR], double dl,
                    const char *what, mbe_err *e);
/* Whether raw is exactly want padded with spaces (or NULs). */
int ipi_is_hdr(const char raw[IPI_HDR], const char *want);
/* XC_BROKEN: the header h was not expected after what we sent. */
int ipi_unexpected(const char *h, const char *after, mbe_err *e);

#endif
