"""Only our engine gets in: the i-PI server refuses clients of other users
(UNIX sockets made 0600, SO_PEERCRED; on TCP loopback the uid of the
peer's socket in /proc/net/tcp), binds TCP to loopback unless
--ipi-remote, and with --engine accepts only the process it started or
its descendants.  Each refusal is one line on stderr and the server goes
on waiting for the real engine, whose results alone are stored.  The
other user is nobody (setpriv); we run as root."""
import os
import pwd
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import numpy as np  # noqa: E402

T = Tests()
PY = "/usr/bin/python3"

# A raw i-PI client.  good: the energy is the first atom's x (Bohr) in
# Hartree, so that its results are known; evil: 42 Hartree for every
# frame, what an intruder would store as ground truth.
CLIENT = r"""
import socket, struct, sys
mode, addr = sys.argv[1], sys.argv[2]
if ":" in addr:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
else:
    s = socket.socket(socket.AF_UNIX)
    s.connect(addr)
sys.stderr.write("connected\n")
sys.stderr.flush()
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            sys.exit(9)
        b += c
    return b
def hdr(t):
    s.sendall(t.ljust(12).encode())
have = None
while True:
    h = recv(12).strip()
    if h == b"STATUS":
        hdr("HAVEDATA" if have is not None else "READY")
    elif h == b"POSDATA":
        recv(144)
        n = struct.unpack("i", recv(4))[0]
        pos = struct.unpack("%dd" % (3 * n), recv(24 * n))
        have = (n, pos[0] if mode == "good" else 42.0)
    elif h == b"GETFORCE":
        n, en = have
        hdr("FORCEREADY")
        s.sendall(struct.pack("d", en) + struct.pack("i", n) +
                  b"\0" * (24 * n + 72) + struct.pack("i", 0))
        have = None
    elif h == b"EXIT":
        sys.exit(0)
    else:
        sys.exit(8)
"""


def nobody():
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        raise Skip("no user nobody")
    if os.geteuid() != 0:
        raise Skip("needs root to run a client as nobody")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup",
            "--clear-groups"]


def setup(d):
    master = os.path.join(d, "m.h5")
    pos = random_cluster(3, 4, seed=7, spacing=3.0)
    write_structure(master, "s", pos, np.full(4, 18))
    client = os.path.join(d, "client.py")
    with open(client, "w") as f:
        f.write(CLIENT)
    return master, pos, client


def server(master, d, addr, *extra):
    shard = os.path.join(d, "s.h5")
    p = subprocess.Popen([os.path.join(BIN, "mbe-compute"), master, "-c",
                          f"ipi:{addr}", "-l", "fake", "--connect-timeout",
                          "30", *extra, "-o", shard],
                         stderr=subprocess.PIPE, text=True)
    return p, shard


def wait_listening(addr, srv):
    t0 = time.time()
    while True:
        assert srv.poll() is None, srv.communicate()[1]
        assert time.time() - t0 < 20, "the server never listened"
        if ":" not in addr:
            if os.path.exists("/tmp/ipi_" + addr):
                return
        else:
            with open("/proc/net/tcp") as f:
                port = "%04X" % int(addr.rsplit(":", 1)[1])
                if any(ln.split()[1].endswith(":" + port) and
                       ln.split()[3] == "0A" for ln in f.readlines()[1:]):
                    return
        time.sleep(0.02)


def intrude(addr, prefix=()):
    """The evil client, run to its end: refused, it exits non-zero;
    let in, it computes every frame and exits 0 after EXIT."""
    p = subprocess.run([*prefix, PY, "-c", CLIENT, "evil",
                        addr if ":" in addr else "/tmp/ipi_" + addr],
                       capture_output=True, text=True, timeout=60)
    return p


def intrude_refused(addr, prefix=()):
    """The evil client got a connection, and lost it unanswered."""
    p = intrude(addr, prefix)
    assert "connected" in p.stderr, f"never connected: {p.stderr}"
    assert p.returncode != 0, "the intruder was let in"


def check_good(srv, shard, pos, refusals):
    _, err = srv.communicate(timeout=60)
    assert srv.returncode == 0, err
    _, status, energy, _, _ = shard_arrays(shard)
    assert (status == 0).all(), status
    want = pos[:, 0, 0] / BOHR * HARTREE / pos.shape[1]
    assert np.allclose(energy, want, rtol=1e-12), (energy, want)
    lines = [ln for ln in err.splitlines() if "refused a client" in ln]
    assert len(lines) == refusals, err
    for ln in lines:
        assert ln.startswith("mbe-compute: ") and len(ln) < 300, ln
    return lines


@T
def unix_socket_is_0600(d):
    """Made 0600 whatever the umask: another user cannot even connect."""
    pre = nobody()
    master, pos, client = setup(d)
    name = sock_name()
    old = os.umask(0)
    try:
        srv, shard = server(master, d, name)
    finally:
        os.umask(old)
    wait_listening(name, srv)
    mode = stat.S_IMODE(os.stat("/tmp/ipi_" + name).st_mode)
    assert mode == 0o600, oct(mode)
    p = intrude(name, pre)
    assert p.returncode != 0 and "Permission denied" in p.stderr, p.stderr
    subprocess.run([PY, client, "good", "/tmp/ipi_" + name], timeout=60)
    check_good(srv, shard, pos, 0)


@T
def unix_other_uid_refused(d):
    """SO_PEERCRED: a client of another uid is refused even when the
    socket file lets it connect (made 0777 here by hand)."""
    pre = nobody()
    master, pos, client = setup(d)
    name = sock_name()
    srv, shard = server(master, d, name)
    wait_listening(name, srv)
    os.chmod("/tmp/ipi_" + name, 0o777)
    intrude_refused(name, pre)
    subprocess.run([PY, client, "good", "/tmp/ipi_" + name], timeout=60)
    ln = check_good(srv, shard, pos, 1)[0]
    assert "uid 65534" in ln and name in ln, ln


@T
def tcp_loopback_other_uid_refused(d):
    """On loopback the peer's socket is owned by nobody (/proc/net/tcp)."""
    pre = nobody()
    master, pos, client = setup(d)
    addr = f"127.0.0.1:{free_port()}"
    srv, shard = server(master, d, addr)
    wait_listening(addr, srv)
    intrude_refused(addr, pre)
    subprocess.run([PY, client, "good", addr], timeout=60)
    ln = check_good(srv, shard, pos, 1)[0]
    assert "uid 65534" in ln, ln


@T
def tcp_binds_loopback_unless_asked(d):
    master, pos, client = setup(d)
    port = free_port()
    # "*" and "" say so as written (a usage error); 0.0.0.0 once resolved.
    for host, code in (("*", 2), ("0.0.0.0", 1), ("", 2)):
        p = compute(master, "-c", f"ipi:{host}:{port}", "-l", "x", "-o",
                    os.path.join(d, "x.h5"))
        assert p.returncode == code, (host, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "--ipi-remote" in lines[0], p.stderr
    # Asked for: every address, and the engine may come over any of them.
    srv, shard = server(master, d, f"*:{port}", "--ipi-remote")
    wait_listening(f"*:{port}", srv)
    with open("/proc/net/tcp6") as f6, open("/proc/net/tcp") as f4:
        listen = [ln.split()[1] for ln in f6.readlines()[1:] + f4.readlines()[1:]
                  if ln.split()[3] == "0A" and
                  ln.split()[1].endswith(":%04X" % port)]
    assert any(a.startswith("00000000") for a in listen), listen
    subprocess.run([PY, client, "good", f"127.0.0.1:{port}"], timeout=60)
    check_good(srv, shard, pos, 0)


def engine_only(d, tcp, direct):
    """With --engine, a client of our own uid that is not the engine (nor
    its descendant) is refused; the engine, started a moment later, is
    accepted, also as the shell's child (direct False)."""
    master, pos, client = setup(d)
    addr = f"127.0.0.1:{free_port()}" if tcp else sock_name()
    where = addr if tcp else "/tmp/ipi_" + addr
    run_client = f"{PY} {client} good {where}"
    cmd = f"sleep 1.5; {'exec ' if direct else ''}{run_client}"
    srv, shard = server(master, d, addr, "--engine", cmd)
    wait_listening(addr, srv)
    intrude_refused(addr)
    ln = check_good(srv, shard, pos, 1)[0]
    assert "not the engine we started" in ln, ln
    log = open(os.path.join(d, "s.engine.log")).read()
    assert "refused a client" in log, log


@T
def engine_only_unix(d):
    engine_only(d, tcp=False, direct=True)


@T
def engine_only_tcp_descendant(d):
    engine_only(d, tcp=True, direct=False)


@T
def engine_only_tcp(d):
    engine_only(d, tcp=True, direct=True)


if __name__ == "__main__":
    T.main()
