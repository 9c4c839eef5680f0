/*
 * calc_peer.c - who is at the other end of an engine's connection.
 *
 * Results that arrive over an i-PI socket are stored as COMPLETED, so the
 * first client to connect writes ground truth: only a process of our own
 * user, and with a started engine only that engine or its descendants, may
 * be it.  UNIX sockets tell the peer's uid and pid (SO_PEERCRED).  TCP
 * does not: on Linux the peer's socket, when it is on this host, is a line
 * of /proc/net/tcp or tcp6 (addresses swapped) carrying its uid and inode,
 * and the process holding that inode has it among its /proc/PID/fd.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "calc_impl.h"

/* Parent and process group of pid from /proc/PID/stat; -1 when gone. */
static int proc_parent(pid_t pid, pid_t *ppid, pid_t *pgrp)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: skip to the last
     * ')'. */
    const char *p = strrchr(buf, ')');
    int pp = 0, pg = 0;
    if (!p || sscanf(p + 1, " %*c %d %d", &pp, &pg) != 2)
        return -1;
    *ppid = pp;
    *pgrp = pg;
    return 0;
}

/* Whether pid is anc or descends from it.  The engine's own process group
 * counts too: a descendant whose parent exited is re-parented to init, but
 * keeps the group mbe_child_start gave the engine. */
static int descends(pid_t pid, pid_t anc)
{
    for (int depth = 0; depth < 4096 && pid > 1; depth++) {
        if (pid == anc)
            return 1;
        pid_t ppid = 0, pgrp = 0;
        if (proc_parent(pid, &ppid, &pgrp) < 0)
            return 0;
        if (pgrp == anc)
            return 1;
        pid = ppid;
    }
    return 0;
}

/* IPv4 peers of a dual-stack socket come as ::ffff:a.b.c.d, but their own
 * socket is an IPv4 one in /proc/net/tcp. */
static void unmap_v4(struct sockaddr_storage *a)
{
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)a;
    if (a->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
        return;
    struct sockaddr_in s4;
    memset(&s4, 0, sizeof s4);
    s4.sin_family = AF_INET;
    s4.sin_port = s6->sin6_port;
    memcpy(&s4.sin_addr, s6->sin6_addr.s6_addr + 12, 4);
    memset(a, 0, sizeof *a);
    memcpy(a, &s4, sizeof s4);
}

/* "0100007F:1F90" as /proc/net/tcp prints an address: the raw 32-bit
 * words in host order, the port in host order. */
static void proc_addr(const struct sockaddr_storage *a, char *buf, size_t n)
{
    const unsigned char *raw;
    int words;
    unsigned port;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)a;
        raw = (const unsigned char *)&s->sin_addr;
        words = 1;
        port = ntohs(s->sin_port);
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)a;
        raw = s->sin6_addr.s6_addr;
        words = 4;
        port = ntohs(s->sin6_port);
    }
    size_t k = 0;
    for (int w = 0; w < words && k + 9 < n; w++) {
        uint32_t v;
        memcpy(&v, raw + 4 * w, 4);
        k += (size_t)snprintf(buf + k, n - k, "%08X", (unsigned)v);
    }
    snprintf(buf + k, n - k, ":%04X", port);
}

/* The uid and inode of the local socket whose own address is peer and
 * whose remote one is us.  0 found, -1 not on this host. */
static int tcp_owner(const struct sockaddr_storage *peer,
                     const struct sockaddr_storage *us, unsigned *uid,
                     unsigned long *inode)
{
    char want_local[64], want_rem[64];
    proc_addr(peer, want_local, sizeof want_local);
    proc_addr(us, want_rem, sizeof want_rem);
    FILE *f = fopen(peer->ss_family == AF_INET ? "/proc/net/tcp"
                                               : "/proc/net/tcp6", "re");
    if (!f)
        return -1;
    char line[512], loc[64], rem[64];
    int found = -1;
    while (found < 0 && fgets(line, sizeof line, f)) {
        unsigned u = 0;
        unsigned long ino = 0;
        if (sscanf(line, " %*d: %63s %63s %*x %*s %*s %*s %u %*d %lu", loc,
                   rem, &u, &ino) == 4 &&
            strcasecmp(loc, want_local) == 0 &&
            strcasecmp(rem, want_rem) == 0) {
            *uid = u;
            *inode = ino;
            found = 0;
        }
    }
    fclose(f);
    return found;
}

/* Whether process pid holds the socket inode among its descriptors. */
static int holds_inode(const char *pid, const char *want)
{
    char dir[300];
    snprintf(dir, sizeof dir, "/proc/%.256s/fd", pid);
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int found = 0;
    for (struct dirent *fd; !found && (fd = readdir(d));) {
        char path[sizeof dir + sizeof fd->d_name + 1], link[64];
        snprintf(path, sizeof path, "%s/%s", dir, fd->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n > 0) {
            link[n] = '\0';
            found = strcmp(link, want) == 0;
        }
    }
    closedir(d);
    return found;
}

/* Whether some process holding the socket inode descends from anc;
 * *holder: one that holds it (0: none found). */
static int inode_descends(unsigned long inode, pid_t anc, pid_t *holder)
{
    char want[48];
    snprintf(want, sizeof want, "socket:[%lu]", inode);
    *holder = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int ok = 0;
    for (struct dirent *p; !ok && (p = readdir(d));) {
        char *end;
        long pid = strtol(p->d_name, &end, 10);
        if (*end || pid <= 0 || !holds_inode(p->d_name, want))
            continue;
        *holder = (pid_t)pid;
        ok = descends((pid_t)pid, anc);
    }
    closedir(d);
    return ok;
}

static int refuse(char *why, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return 0;
}

static int check_unix(int fd, pid_t engine, char *why, size_t n)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return refuse(why, n, "its credentials are unknown: %s",
                      strerror(errno));
    if (cr.uid != geteuid())
        return refuse(why, n, "it runs as uid %ld, we as uid %ld",
                      (long)cr.uid, (long)geteuid());
    if (engine > 0 && !descends(cr.pid, engine))
        return refuse(why, n, "its pid %ld is not the engine we started "
                      "(pid %ld) nor one of its descendants", (long)cr.pid,
                      (long)engine);
    return 1;
}

static int check_tcp(int fd, pid_t engine, int allow_remote, char *why,
                     size_t n)
{
    struct sockaddr_storage peer, us;
    socklen_t lp = sizeof peer, lu = sizeof us;
    if (getpeername(fd, (struct sockaddr *)&peer, &lp) < 0 ||
        getsockname(fd, (struct sockaddr *)&us, &lu) < 0)
        return refuse(why, n, "its address is unknown: %s",
                      strerror(errno));
    unmap_v4(&peer);
    unmap_v4(&us);
    unsigned uid = 0;
    unsigned long inode = 0;
    if (tcp_owner(&peer, &us, &uid, &inode) < 0) {
        /* Not a socket of this host: only --ipi-remote lets it in. */
        if (allow_remote)
            return 1;
        return refuse(why, n, "it is not a process of this host "
                      "(--ipi-remote lets other hosts in)");
    }
    if (uid != (unsigned)geteuid())
        return refuse(why, n, "its socket belongs to uid %ld, we run as "
                      "uid %ld", (long)uid, (long)geteuid());
    pid_t holder = 0;
    if (engine > 0 && !inode_descends(inode, engine, &holder)) {
        if (!holder)
            return refuse(why, n, "no process holds its socket (inode %lu) "
                          "any more", inode);
        return refuse(why, n, "its pid %ld is not the engine we started "
                      "(pid %ld) nor one of its descendants", (long)holder,
                      (long)engine);
    }
    return 1;
}

int mbe_peer_allowed(int fd, int tcp, pid_t engine, int allow_remote,
                     char *why, size_t n)
{
    return tcp ? check_tcp(fd, engine, allow_remote, why, n)
               : check_unix(fd, engine, why, n);
}
