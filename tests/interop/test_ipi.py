"""mbe-compute as an i-PI server: against ASE's SocketClient (EMT and
LennardJones, a molecule and a triclinic crystal, UNIX and TCP sockets),
against CP2K's GFN1-xTB and NWChem's SCF compared with the engines' own
standalone output, and
against fake clients that break the protocol (the shard must stay valid).
Needs Debian's python3-ase (and cp2k, nwchem for those tests; they are
skipped with a message naming the package when it is missing)."""
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
PY = "/usr/bin/python3"
CP2K = "/usr/bin/cp2k"


def need_ase():
    try:
        import ase  # noqa: F401
    except ImportError:
        raise Skip("python3-ase is not installed (apt-get install "
                   "python3-ase)")


def running(pid):
    """Alive and not a zombie (PID 1 of a container may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


ASE_CLIENT = r'''
import sys
import ase.io
from ase.calculators.socketio import SocketClient
calc, addr, xyz = sys.argv[1:4]
atoms = ase.io.read(xyz)
if calc == "emt":
    from ase.calculators.emt import EMT
    atoms.calc = EMT()
else:
    from ase.calculators.lj import LennardJones
    atoms.calc = LennardJones(epsilon=0.0103, sigma=3.4, rc=6.0)
if ":" in addr:
    host, port = addr.rsplit(":", 1)
    SocketClient(host=host, port=int(port)).run(atoms)
else:
    SocketClient(unixsocket=addr).run(atoms)
'''


def ase_calc(name):
    if name == "emt":
        from ase.calculators.emt import EMT
        return EMT()
    from ase.calculators.lj import LennardJones
    return LennardJones(epsilon=0.0103, sigma=3.4, rc=6.0)


def molecule_frames(name):
    from ase.build import molecule
    rng = np.random.default_rng(3)
    if name == "emt":
        a = molecule("CH3CH2OH")
        pos = a.positions[None] + rng.normal(0, 0.05, (4, len(a), 3))
    else:
        a = molecule("CH3CH2OH")
        a.numbers[:] = 18
        pos = random_cluster(4, len(a), seed=4, spacing=3.7)
    return pos, a.numbers.copy(), None


def triclinic_frames(name):
    """A fully triclinic cell (no right angles), different in every frame."""
    from ase.build import bulk
    rng = np.random.default_rng(5)
    if name == "emt":
        prim = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    else:
        prim = bulk("Ar", "fcc", a=5.3) * (2, 2, 2)
    base = np.array(prim.cell) @ np.array([[1.0, 0.08, -0.05],
                                           [0.03, 1.0, 0.11],
                                           [-0.07, 0.02, 1.0]])
    frac = prim.get_scaled_positions()
    pos, cells = [], []
    for _ in range(3):
        cell = base + rng.normal(0, 0.03, (3, 3))
        pos.append(frac @ cell + rng.normal(0, 0.04, (len(prim), 3)))
        cells.append(cell)
    return np.array(pos), prim.numbers.copy(), np.array(cells)


def ase_reference(name, pos, z, cells):
    from ase import Atoms
    energies, forces = [], []
    for k in range(len(pos)):
        if cells is None:
            a = Atoms(numbers=z, positions=pos[k])
        else:
            a = Atoms(numbers=z, positions=pos[k], cell=cells[k], pbc=True)
        a.calc = ase_calc(name)
        energies.append(a.get_potential_energy())
        forces.append(a.get_forces())
    return np.array(energies), np.array(forces)


def write_first_xyz(d, pos, z, cells):
    from ase import Atoms
    import ase.io
    if cells is None:
        a = Atoms(numbers=z, positions=pos[0])
    else:
        a = Atoms(numbers=z, positions=pos[0], cell=cells[0], pbc=True)
    path = os.path.join(d, "first.xyz")
    ase.io.write(path, a, format="extxyz")
    return path


def against_ase(d, name, periodic, tcp, codata=None):
    need_ase()
    pos, z, cells = (triclinic_frames if periodic else molecule_frames)(name)
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", pos, z, cell=cells)
    client = os.path.join(d, "client.py")
    with open(client, "w") as f:
        f.write(ASE_CLIENT)
    xyz = write_first_xyz(d, pos, z, cells)
    if tcp:
        addr = f"127.0.0.1:{free_port()}"
    else:
        addr = sock_name()
    shard = os.path.join(d, "s.h5")
    more = ["--ipi-codata", str(codata)] if codata else []
    p = compute(master, "-c", f"ipi:{addr}", "-l", f"ase/{name}",
                "--connect-timeout", "30", *more,
                "--engine", f"{PY} {client} {name} {addr} {xyz}", "-o", shard)
    assert_ok(p)
    frames, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all(), status
    check_crc(shard)
    ref_e, ref_f = ase_reference(name, pos, z, cells)
    n = len(z)
    # ASE 3.22 converts with CODATA 2014 (Bohr, Hartree), we with CODATA
    # 2018: the round trip differs by a few parts in 1e9.  With
    # --ipi-codata 2014 only rounding is left.
    tol = 1e-13 if codata == 2014 else 1e-7
    scale = max(1.0, np.abs(ref_e / n).max())
    assert np.allclose(energy, ref_e / n, rtol=0, atol=tol * scale), \
        (energy, ref_e / n)
    fscale = max(1e-3, np.abs(ref_f).max())
    err = np.abs(forces - ref_f).max()
    assert err <= tol * fscale, f"forces differ by {err} (scale {fscale})"
    assert np.abs(ref_f).max() > 1e-3, "forces too small to test anything"
    if periodic:
        # The test can see a transposed cell: ASE's energy with the cell
        # rows and columns swapped is far from the one we got.
        bad_e, _ = ase_reference(name, pos, z, np.transpose(cells, (0, 2, 1)))
        assert np.abs(bad_e / n - energy).max() > 1e-4, \
            "a transposed cell gives the same energy: test is blind"
    log = os.path.splitext(shard)[0] + ".engine.log"
    assert os.path.exists(log), "no engine log"
    if not tcp:
        assert not os.path.exists("/tmp/ipi_" + addr), "socket left behind"
    with h5py.File(shard, "r") as f:
        prov = " ".join(str(v) for v in f.attrs.values())
    assert "ipi" in prov and addr in prov, prov


@T
def ase_emt_molecule_unix(d):
    against_ase(d, "emt", periodic=False, tcp=False)


@T
def ase_lj_molecule_tcp(d):
    against_ase(d, "lj", periodic=False, tcp=True)


@T
def ase_emt_triclinic_unix(d):
    against_ase(d, "emt", periodic=True, tcp=False)


@T
def ase_lj_triclinic_tcp(d):
    against_ase(d, "lj", periodic=True, tcp=True)


@T
def ase_lj_codata_2014(d):
    """ASE's own constants: its results come back but for rounding."""
    against_ase(d, "lj", periodic=False, tcp=False, codata=2014)


@T
def engine_started_by_hand(d):
    """Without --engine: the engine connects on its own, after we bind."""
    need_ase()
    pos, z, cells = molecule_frames("emt")
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", pos, z)
    client = os.path.join(d, "client.py")
    with open(client, "w") as f:
        f.write(ASE_CLIENT)
    xyz = write_first_xyz(d, pos, z, None)
    name = sock_name()
    shard = os.path.join(d, "s.h5")
    srv = subprocess.Popen([os.path.join(BIN, "mbe-compute"), master, "-c",
                            f"ipi:{name}", "-l", "emt", "-o", shard],
                           stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists("/tmp/ipi_" + name):
        assert time.time() - t0 < 20, "socket never bound"
        time.sleep(0.02)
    cl = subprocess.Popen([PY, client, "emt", name, xyz])
    _, err = srv.communicate(timeout=60)
    assert srv.returncode == 0, err
    assert cl.wait(timeout=30) == 0, "the client did not exit after EXIT"
    ref_e, _ = ase_reference("emt", pos, z, None)
    assert np.allclose(shard_arrays(shard)[2], ref_e / len(z), atol=1e-7)


@T
def no_engine_connects(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", random_cluster(3, 4), np.full(4, 18))
    shard = os.path.join(d, "s.h5")
    name = sock_name()
    t0 = time.time()
    p = compute(master, "-c", f"ipi:{name}", "-l", "x", "--connect-timeout",
                "1", "-o", shard)
    assert p.returncode == 1, p
    assert "no engine connected" in p.stderr and name in p.stderr, p.stderr
    assert time.time() - t0 < 15
    check_crc(shard + ".part")
    assert (shard_arrays(shard + ".part")[1] == STATUS["UNDEFINED"]).all()
    assert not os.path.exists("/tmp/ipi_" + name)
    # An engine that dies at start: said at once, with the log named.
    p = compute(master, "-c", f"ipi:{name}", "-l", "x", "--engine",
                "echo bad input >&2; exit 7", "-o", shard)
    assert p.returncode == 1, p
    assert "exited with status 7" in p.stderr, p.stderr
    assert "s.engine.log" in p.stderr, p.stderr
    assert "bad input" in open(os.path.join(d, "s.engine.log")).read()


@T
def usage_errors(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", random_cluster(2, 3), np.full(3, 18))
    out = os.path.join(d, "s.h5")
    for args, code, word in [
            (("-c", "ipi:x", "-o", out), 2, "-l"),
            (("-c", "lj", "--engine", "true", "-o", out), 2, "--engine"),
            (("-c", "ipi:", "-l", "x", "-o", out), 2, "ipi:NAME"),
            (("-c", "ipi:a/b", "-l", "x", "-o", out), 2, "/"),
            (("-c", "ipi:" + "n" * 120, "-l", "x", "-o", out), 2, "too long"),
            (("-c", "ipi:localhost:99999", "-l", "x", "-o", out), 2, "port"),
            (("-c", "ipi:x", "-l", "x", "--ipi-box", "-1", "-o", out), 2,
             "ipi_box")]:
        p = compute(master, *args)
        assert p.returncode == code, (args, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and word in lines[0], (args, p.stderr)
        assert not os.path.exists(out + ".part"), args


# ---------------------------------------------------------- fake clients

FAKE = r"""
import os, socket, struct, sys, time
# mode path good_first marker [reconnect]: the first good_first frames are
# answered right, then the client misbehaves as mode says (once: marker
# records it; a client started again behaves).
mode, path, good_first, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
again = len(sys.argv) > 5
def hdr(s): return s.ljust(12).encode()
def recvall(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x: raise SystemExit(0)
        b += x
    return b
def session():
    c = socket.socket(socket.AF_UNIX)
    for _ in range(400):
        try:
            c.connect(path); break
        except OSError: time.sleep(0.05)
    state, done = "NEEDINIT", 0
    while True:
        bad = not os.path.exists(marker) and done >= good_first
        m = recvall(c, 12).decode().strip()
        if m == "EXIT": raise SystemExit(0)
        if m == "STATUS":
            if bad and mode == "badheader":
                open(marker, "w").close()
                c.sendall(b"HELLO\x00WORLD!"); c.close(); return
            if mode == "slowstatus" and state == "HAVEDATA":
                time.sleep(1.5)
            c.sendall(hdr(state))
        elif m == "INIT":
            _, n = struct.unpack("<ii", recvall(c, 8)); recvall(c, n)
            state = "READY"
        elif m == "POSDATA":
            h = struct.unpack("<9d", recvall(c, 72)); recvall(c, 72)
            n = struct.unpack("<i", recvall(c, 4))[0]
            pos = struct.unpack(f"<{3*n}d", recvall(c, 24 * n))
            state = "HAVEDATA"
        elif m == "GETFORCE":
            e = sum(pos) + h[1]       # Hartree; h[1] is b_x in Bohr
            f = [-x for x in pos]     # Hartree/Bohr
            n_out = n + 1 if (bad and mode == "natoms") else n
            body = struct.pack("<di", e, n_out) + struct.pack(f"<{3*n}d", *f)
            body += struct.pack("<9d", *[0.0] * 9)
            extra = b"x" * (5 if mode == "slowstatus" else 0)
            body += struct.pack("<i", len(extra)) + extra
            if bad and mode == "disconnect":
                open(marker, "w").close()
                c.sendall(hdr("FORCEREADY") + body[:len(body) // 2])
                c.close(); return
            if bad and mode == "natoms":
                open(marker, "w").close()
            c.sendall(hdr("FORCEREADY") + body)
            state = "NEEDINIT"
            done += 1
session()
if again:
    session()
"""


def fake_setup(d, n_frames=4, natoms=3):
    master = os.path.join(d, "m.h5")
    pos = random_cluster(n_frames, natoms, seed=9)
    if os.path.exists(master):
        os.unlink(master)
    write_structure(master, "s", pos, np.full(natoms, 18))
    fake = os.path.join(d, "fake.py")
    with open(fake, "w") as f:
        f.write(FAKE)
    return master, fake, pos


def fake_cmd(d, fake, mode, name, good_first, again=False):
    marker = os.path.join(d, f"marker-{name}")
    return (f"{PY} {fake} {mode} /tmp/ipi_{name} {good_first} {marker}" +
            (" again" if again else ""))


def fake_run(d, mode, good_first, n_frames=4):
    master, fake, pos = fake_setup(d, n_frames)
    name = sock_name()
    shard = os.path.join(d, f"s-{name}.h5")
    p = compute(master, "-c", f"ipi:{name}", "-l", "fake", "--engine",
                fake_cmd(d, fake, mode, name, good_first),
                "--connect-timeout", "5", "-o", shard, timeout=120)
    return p, shard, pos


def fake_expected(pos):
    """Energy per atom (eV) and forces the fake client's answers give."""
    e = (pos.reshape(len(pos), -1).sum(axis=1) / BOHR) * HARTREE
    return e / pos.shape[1], -pos / BOHR * HARTREE / BOHR


@T
def fake_client_good_with_needinit_slow_status_and_extra(d):
    p, shard, pos = fake_run(d, "slowstatus", 0, n_frames=2)
    assert_ok(p)
    _, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all()
    e, f = fake_expected(pos)
    # h[1] (b_x) is 0 in the cubic box sent for molecules.
    assert np.allclose(energy, e, rtol=1e-13), (energy, e)
    assert np.allclose(forces, f, rtol=1e-13)


def broken_client(d, mode, word):
    # Broken at once: frame 0 FAILED with a clear message, the engine is
    # not asked again, the .part is valid and the rest stays UNDEFINED.
    p, shard, pos = fake_run(d, mode, 0)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert word in p.stderr, p.stderr
    assert "not asking the engine again" in p.stderr or mode == "natoms", \
        p.stderr
    part = shard + ".part"
    check_crc(part)
    status = shard_arrays(part)[1]
    assert status[0] == STATUS["FAILED"], status
    assert (status[1:] == STATUS["UNDEFINED"]).all(), status
    st = run("mbe-status", part)
    assert st.returncode == 0, st.stderr
    # Broken after a result: that frame FAILED, the engine is started
    # again for the others.
    p, shard, pos = fake_run(d, mode, 1)
    if mode == "natoms":
        # Another atom count is fatal: no point asking again.
        assert p.returncode == 1 and "same atoms" in p.stderr, p.stderr
        assert list(shard_arrays(shard + ".part")[1]) == [0, 3, 1, 1]
        return
    assert p.returncode == 3, (p.returncode, p.stderr)
    _, status, energy, _, _ = shard_arrays(shard)
    check_crc(shard)
    assert list(status) == [0, 3, 0, 0], status
    keep = [0, 2, 3]
    assert np.allclose(energy[keep], fake_expected(pos)[0][keep], rtol=1e-13)
    log = open(os.path.splitext(shard)[0] + ".engine.log").read()
    assert log.count("starting the engine") == 2, log


@T
def fake_client_disconnects_mid_message(d):
    broken_client(d, "disconnect", "closed the connection")


@T
def fake_client_wrong_header(d):
    broken_client(d, "badheader", "HELLO\\x00WORLD!")


@T
def fake_client_wrong_atom_count(d):
    broken_client(d, "natoms", "computes 4 atoms")


@T
def external_engine_reconnects(d):
    """An engine we did not start breaks after a result and connects again:
    the job waits for it and goes on."""
    master, fake, pos = fake_setup(d)
    name = sock_name()
    shard = os.path.join(d, "s.h5")
    srv = subprocess.Popen([os.path.join(BIN, "mbe-compute"), master, "-c",
                            f"ipi:{name}", "-l", "fake", "--connect-timeout",
                            "20", "-o", shard],
                           stderr=subprocess.PIPE, text=True)
    cl = subprocess.Popen(fake_cmd(d, fake, "disconnect", name, 1, True),
                          shell=True)
    _, err = srv.communicate(timeout=60)
    cl.wait(timeout=30)
    assert srv.returncode == 3, err
    assert list(shard_arrays(shard)[1]) == [0, 3, 0, 0], err


@T
def species_differ_refused_before_sending(d):
    need_ase()
    master = os.path.join(d, "m.h5")
    pos = random_cluster(3, 3, seed=2, spacing=3.7)
    z = np.array([[18, 18, 18], [18, 36, 18], [18, 18, 18]])
    write_structure(master, "s", pos, z)
    client = os.path.join(d, "client.py")
    with open(client, "w") as f:
        f.write(ASE_CLIENT)
    from ase import Atoms
    import ase.io
    xyz = os.path.join(d, "first.xyz")
    ase.io.write(xyz, Atoms(numbers=z[0], positions=pos[0]))
    name = sock_name()
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", f"ipi:{name}", "-l", "lj", "--engine",
                f"{PY} {client} lj {name} {xyz}", "-o", shard)
    assert p.returncode == 3, p.stderr
    assert "atom 1 of the frame is Kr, the engine's is Ar" in p.stderr, \
        p.stderr
    status = shard_arrays(shard)[1]
    assert list(status) == [0, 3, 0], status
    # --engine-atoms fixes them from a file instead: then the first frame
    # is checked as well.
    given = os.path.join(d, "given.xyz")
    with open(given, "w") as f:
        f.write("3\n\nAr 0 0 0\nKr 0 0 3\nAr 0 3 0\n")
    shard = os.path.join(d, "t.h5")
    p = compute(master, "-c", f"ipi:{name}", "-l", "lj", "--engine",
                f"{PY} {client} lj {name} {xyz}", "--engine-atoms", given,
                "-o", shard)
    assert p.returncode == 3, p.stderr
    assert "atom 1 of the frame is Ar, the engine's is Kr" in p.stderr, \
        p.stderr
    assert list(shard_arrays(shard)[1]) == [3, 0, 3]
    with h5py.File(shard, "r") as f:
        prov = " ".join(str(v) for v in f.attrs.values())
    assert "engine_atoms=Ar,Kr,Ar" in prov, prov
    p = compute(master, "-c", f"ipi:{name}", "-l", "lj", "--engine-atoms",
                os.path.join(d, "missing.xyz"), "-o", shard)
    assert p.returncode == 1 and "missing.xyz" in p.stderr, p.stderr


@T
def sigterm_while_engine_computes(d):
    """A blocked read of a slow engine does not hang an interrupted job; the
    engine is stopped and reaped, the frame stays UNDEFINED."""
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", random_cluster(3, 3), np.full(3, 18))
    slow = os.path.join(d, "slow.py")
    pidfile = os.path.join(d, "pid")
    src = FAKE.replace("time.sleep(1.5)", "time.sleep(600)")
    src = src.replace("    state, done = ", "    open(%r, 'w').write(str("
                      "os.getpid()))\n    state, done = " % pidfile)
    assert src != FAKE
    with open(slow, "w") as f:
        f.write(src)
    name = sock_name()
    shard = os.path.join(d, "s.h5")
    proc = subprocess.Popen(
        [os.path.join(BIN, "mbe-compute"), master, "-c", f"ipi:{name}",
         "-l", "slow", "--engine",
         f"{PY} {slow} slowstatus /tmp/ipi_{name} 0 {d}/marker",
         "-o", shard], stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists(pidfile) or not open(pidfile).read():
        assert time.time() - t0 < 30, "engine never started"
        time.sleep(0.05)
    time.sleep(0.5)
    pid = int(open(pidfile).read())
    t1 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, (proc.returncode, err)
    assert time.time() - t1 < 10, "interrupted job took too long"
    # Signalled by the job before it ended (the engine runs under sh, so
    # the job cannot reap it); on a loaded machine it may take a moment
    # to die.
    t2 = time.time()
    while running(pid) and time.time() - t2 < 5:
        time.sleep(0.02)
    assert not running(pid), "engine still running 5 s after the job ended"
    check_crc(shard + ".part")
    assert (shard_arrays(shard + ".part")[1] == STATUS["UNDEFINED"]).all()
    assert not os.path.exists("/tmp/ipi_" + name)


@T
def sigterm_while_waiting_for_the_engine(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", random_cluster(2, 3), np.full(3, 18))
    name = sock_name()
    shard = os.path.join(d, "s.h5")
    proc = subprocess.Popen(
        [os.path.join(BIN, "mbe-compute"), master, "-c", f"ipi:{name}",
         "-l", "x", "-o", shard], stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists("/tmp/ipi_" + name):
        assert time.time() - t0 < 20, "socket never bound"
        time.sleep(0.02)
    time.sleep(0.3)
    t1 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, (proc.returncode, err)
    assert time.time() - t1 < 5
    check_crc(shard + ".part")
    assert not os.path.exists("/tmp/ipi_" + name)


# ------------------------------------------------------------------ CP2K

CP2K_INPUT = """&GLOBAL
  PROJECT {project}
  RUN_TYPE {run_type}
  PRINT_LEVEL LOW
&END GLOBAL
{motion}
&FORCE_EVAL
  METHOD QS
  &DFT
    &QS
      METHOD xTB
      &xTB
        DO_EWALD F
      &END xTB
    &END QS
    &SCF
      SCF_GUESS MOPAC
      EPS_SCF 1.0E-9
    &END SCF
    &POISSON
      PERIODIC NONE
      POISSON_SOLVER ANALYTIC
    &END POISSON
  &END DFT
  &SUBSYS
    &CELL
      ABC 20 20 20
      PERIODIC NONE
    &END CELL
    &COORD
{coords}
    &END COORD
  &END SUBSYS
  &PRINT
    &FORCES ON
    &END FORCES
  &END PRINT
&END FORCE_EVAL
"""


def cp2k_coords(sym, pos):
    return "\n".join(f"{s} {x:.12f} {y:.12f} {z:.12f}"
                     for s, (x, y, z) in zip(sym, pos))


def cp2k_standalone(d, k, sym, pos):
    inp = os.path.join(d, f"sa{k}.inp")
    with open(inp, "w") as f:
        f.write(CP2K_INPUT.format(project=f"sa{k}", run_type="ENERGY_FORCE",
                                  motion="", coords=cp2k_coords(sym, pos)))
    out = subprocess.run([CP2K, "-i", inp], capture_output=True, text=True,
                         cwd=d, timeout=120).stdout
    m = re.search(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:"
                  r"\s+(\S+)", out)
    assert m, out[-2000:]
    block = out[out.index("ATOMIC FORCES in [a.u.]"):]
    rows = re.findall(r"^\s+\d+\s+\d+\s+\w+\s+(\S+)\s+(\S+)\s+(\S+)\s*$",
                      block, re.M)[:len(sym)]
    return float(m.group(1)), np.array(rows, float)


@T
def cp2k_gfn1_xtb_equals_standalone(d):
    if not os.path.exists(CP2K):
        raise Skip("cp2k is not installed (apt-get install cp2k cp2k-data)")
    sym = ["O", "H", "H", "O", "H", "H"]
    base = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467],
                     [0.0, -0.757, -0.467], [2.9, 0.1, 0.0],
                     [3.3, 0.9, 0.3], [3.4, -0.6, 0.4]])
    rng = np.random.default_rng(11)
    pos = base[None] + rng.normal(0, 0.04, (3, 6, 3))
    master = os.path.join(d, "m.h5")
    write_structure(master, "w", pos, [8, 1, 1, 8, 1, 1])
    name = sock_name()
    inp = os.path.join(d, "drv.inp")
    with open(inp, "w") as f:
        f.write(CP2K_INPUT.format(
            project="drv", run_type="DRIVER",
            motion=f"&MOTION\n  &DRIVER\n    HOST {name}\n    UNIX T\n"
                   "  &END DRIVER\n&END MOTION",
            coords=cp2k_coords(sym, base)))
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", f"ipi:{name}", "-l", "cp2k/gfn1-xtb",
                "--ipi-box", "20", "--engine", f"cd {d} && {CP2K} -i {inp}",
                "-o", shard, timeout=120)
    assert_ok(p)
    _, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all()
    check_crc(shard)
    for k in range(len(pos)):
        e_ha, f_au = cp2k_standalone(d, k, sym, pos[k])
        assert abs(energy[k] - e_ha * HARTREE / 6) < 1e-8, \
            (k, energy[k], e_ha * HARTREE / 6)
        # CP2K prints forces with 8 decimals (a.u.).
        assert np.abs(forces[k] - f_au * HARTREE / BOHR).max() < 2e-6, k
        assert np.abs(f_au).max() > 1e-3
    log = open(os.path.join(d, "s.engine.log")).read()
    assert "PROGRAM ENDED" in log and "exited with status 0" in log, log[-500:]


# --------------------------------------------------------------- NWChem

NWCHEM = "/usr/bin/nwchem"
NW_INPUT = """start {name}
geometry noautosym nocenter noautoz
{coords}
end
basis
  * library 6-31g*
end
scf
  thresh 1e-8
end
{tail}
"""


def nw_standalone(d, k, sym, pos):
    wd = os.path.join(d, f"sa{k}")
    os.mkdir(wd)
    with open(os.path.join(wd, "sa.nw"), "w") as f:
        f.write(NW_INPUT.format(name=f"sa{k}", coords=cp2k_coords(sym, pos),
                                tail="task scf gradient"))
    out = subprocess.run([NWCHEM, "sa.nw"], capture_output=True, text=True,
                         cwd=wd, timeout=120).stdout
    m = re.search(r"Total SCF energy =\s+(\S+)", out)
    assert m, out[-2000:]
    block = out[out.index("ENERGY GRADIENTS"):]
    rows = re.findall(r"^\s+\d+\s+\w+(?:\s+\S+){3}\s+(\S+)\s+(\S+)\s+"
                      r"(\S+)\s*$", block, re.M)[:len(sym)]
    return float(m.group(1)), -np.array(rows, float)


@T
def nwchem_scf_equals_standalone(d):
    if not os.path.exists(NWCHEM):
        raise Skip("nwchem is not installed (apt-get install nwchem "
                   "nwchem-data)")
    sym = ["O", "H", "H"]
    base = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467],
                     [0.0, -0.757, -0.467]])
    rng = np.random.default_rng(12)
    pos = base[None] + rng.normal(0, 0.04, (3, 3, 3))
    master = os.path.join(d, "m.h5")
    write_structure(master, "w", pos, [8, 1, 1])
    name = sock_name()
    wd = os.path.join(d, "engine")
    os.mkdir(wd)
    with open(os.path.join(wd, "nw.nw"), "w") as f:
        f.write(NW_INPUT.format(
            name="drv", coords=cp2k_coords(sym, base),
            tail=f"driver\n  socket unix {name}\nend\ntask scf optimize"))
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", f"ipi:{name}", "-l", "nwchem/scf-6-31gs",
                "--engine", f"cd {wd} && {NWCHEM} nw.nw", "-o", shard,
                timeout=120)
    assert_ok(p)
    _, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all()
    for k in range(len(pos)):
        e_ha, f_au = nw_standalone(d, k, sym, pos[k])
        # NWChem's optimiser sets its own SCF convergence for each step:
        # total energies agree to about 1e-8 Hartree.
        assert abs(energy[k] - e_ha * HARTREE / 3) < 1e-6, \
            (k, energy[k], e_ha * HARTREE / 3)
        # NWChem prints gradients with 6 decimals (a.u.).
        assert np.abs(forces[k] - f_au * HARTREE / BOHR).max() < 1e-4, k
        assert np.abs(f_au).max() > 1e-3


if __name__ == "__main__":
    T.main()
