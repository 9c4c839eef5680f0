"""mbe-compute with -c exec:COMMAND: a command per frame, extended XYZ in
and out.  A plain-Python script calculator against numpy, an ASE script
against ASE's direct results, exact round trip of positions and cells,
time-out, failing and missing commands, garbage output, and SIGTERM while a
command runs (the command is killed, the shard stays valid)."""
import os
import signal
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
EPS, SIG, RC = 0.0103, 3.40, 10.0


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# A calculator in plain Python: reads the extended XYZ we write, returns
# Lennard-Jones energy and forces (no cut-off shift here: rc huge).
LJ_SCRIPT = r'''
import sys
eps, sig = 0.0103, 3.40
lines = sys.stdin.read().splitlines()
n = int(lines[0])
assert "Properties=species:S:1:pos:R:3" in lines[1], lines[1]
atoms = [l.split() for l in lines[2:2 + n]]
pos = [[float(v) for v in a[1:4]] for a in atoms]
e, f = 0.0, [[0.0] * 3 for _ in range(n)]
for i in range(n):
    for j in range(i + 1, n):
        d = [pos[i][k] - pos[j][k] for k in range(3)]
        r2 = sum(x * x for x in d)
        s6 = (sig * sig / r2) ** 3
        e += 4 * eps * (s6 * s6 - s6)
        g = 24 * eps * (2 * s6 * s6 - s6) / r2
        for k in range(3):
            f[i][k] += g * d[k]
            f[j][k] -= g * d[k]
print(n)
print(f'Properties=species:S:1:pos:R:3:forces:R:3 energy={e!r} pbc="F F F"')
for a, p, fo in zip(atoms, pos, f):
    print(a[0], *map(repr, p), *map(repr, fo))
'''


def lj_reference(pos):
    n = len(pos)
    e = 0.0
    f = np.zeros_like(pos)
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[i] - pos[j]
            r = np.linalg.norm(d)
            sr6 = (SIG / r) ** 6
            e += 4 * EPS * (sr6 * sr6 - sr6)
            fmag = 24 * EPS * (2 * sr6 * sr6 - sr6) / r
            f[i] += fmag * d / r
            f[j] -= fmag * d / r
    return e, f


def master_of(d, n_frames=4, n_atoms=5, cell=None, z=18, seed=1):
    path = os.path.join(d, "m.h5")
    pos = random_cluster(n_frames, n_atoms, seed=seed, spacing=3.6)
    write_structure(path, "s", pos, np.full(n_atoms, z), cell=cell)
    return path, pos


def script(d, name, text):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


@T
def script_calculator_matches_numpy(d):
    master, pos = master_of(d)
    lj = script(d, "lj.py", LJ_SCRIPT)
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", f"exec:{PY} {lj}", "-l", "lj/exec", "-o",
                shard)
    assert_ok(p)
    frames, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all(), status
    check_crc(shard)
    for k in range(len(pos)):
        e, f = lj_reference(pos[k])
        assert abs(energy[k] - e / 5) < 1e-13, (energy[k], e / 5)
        assert np.allclose(forces[k], f, rtol=0, atol=1e-13)
    assert np.abs(forces).max() > 1e-4
    with h5py.File(shard, "r") as f:
        prov = " ".join(str(v) for v in f.attrs.values())
    assert "exec" in prov and "lj.py" in prov, prov


# Echo: energy = cell volume + sum of coordinates, forces = positions, as
# ASE reads and writes them: the cell and positions must reach the command
# exactly (the energy is written in full; ASE 3.22 writes per-atom columns
# with 8 decimals).
ASE_ECHO = r'''
import sys, io
import numpy as np
import ase.io
from ase.calculators.singlepoint import SinglePointCalculator
a = ase.io.read(io.StringIO(sys.stdin.read()), format="extxyz")
import os
assert a.pbc.all()
e = a.get_volume() + float(a.positions.sum())
e += 1000 * int(os.environ["MBE_FRAME"])
a.calc = SinglePointCalculator(a, energy=e, forces=a.positions.copy())
ase.io.write(sys.stdout, a, format="extxyz")
'''


@T
def ase_roundtrip_exact_positions_and_triclinic_cell(d):
    try:
        import ase  # noqa: F401
    except ImportError:
        raise Skip("python3-ase is not installed (apt-get install "
                   "python3-ase)")
    cells = np.array([[[7.1, 0.3, -0.2], [0.4, 8.3, 0.5], [-0.6, 0.7, 9.2]]]
                     * 3) + np.arange(3)[:, None, None] * 0.01
    master, pos = master_of(d, n_frames=3, cell=cells)
    echo = script(d, "echo.py", ASE_ECHO)
    shard = os.path.join(d, "s.h5")
    assert_ok(compute(master, "-c", f"exec:{PY} {echo}", "-l", "echo", "-o",
                      shard))
    frames, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all()
    for k in range(3):
        want = abs(np.linalg.det(cells[k])) + pos[k].sum() + 1000 * k
        assert abs(energy[k] * 5 - want) < 1e-9, (energy[k] * 5, want)
        assert np.abs(forces[k] - pos[k]).max() <= 5.1e-9, "positions"


ASE_EMT = r'''
import sys, io
import ase.io
from ase.calculators.emt import EMT
a = ase.io.read(io.StringIO(sys.stdin.read()), format="extxyz")
a.calc = EMT()
a.get_forces()
ase.io.write(sys.stdout, a, format="extxyz")
'''


@T
def ase_emt_script_equals_ase(d):
    try:
        from ase.build import molecule
        from ase.calculators.emt import EMT
    except ImportError:
        raise Skip("python3-ase is not installed (apt-get install "
                   "python3-ase)")
    a = molecule("CH3CH2OH")
    rng = np.random.default_rng(2)
    pos = a.positions[None] + rng.normal(0, 0.05, (3, len(a), 3))
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", pos, a.numbers)
    emt = script(d, "emt.py", ASE_EMT)
    shard = os.path.join(d, "s.h5")
    assert_ok(compute(master, "-c", f"exec:{PY} {emt}", "-l", "emt", "-o",
                      shard))
    _, status, energy, forces, _ = shard_arrays(shard)
    for k in range(3):
        a.positions = pos[k]
        a.calc = EMT()
        assert abs(energy[k] - a.get_potential_energy() / len(a)) < 1e-12
        # ASE 3.22's extxyz writer prints forces with 8 decimals.
        assert np.allclose(forces[k], a.get_forces(), rtol=0, atol=5.1e-9)
    assert np.abs(forces).max() > 1e-2


@T
def frame_timeout_kills_the_command(d):
    master, _ = master_of(d, n_frames=2)
    pidfile = os.path.join(d, "pids")
    shard = os.path.join(d, "s.h5")
    t0 = time.time()
    p = compute(master, "-c", f"exec:echo $$ >> {pidfile}; sleep 30",
                "-l", "x", "--frame-timeout", "0.5", "-o", shard)
    took = time.time() - t0
    assert p.returncode == 3, p
    assert took < 10, f"took {took:.1f}s"
    assert p.stderr.count("frame time-out of 0.5 s") == 2, p.stderr
    assert list(shard_arrays(shard)[1]) == [3, 3]
    for pid in open(pidfile).read().split():
        assert not running(int(pid)), f"command {pid} still running"


@T
def failing_command_gives_its_error_text(d):
    master, _ = master_of(d, n_frames=2)
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", "exec:cat >/dev/null; echo 'SCF failed to "
                "converge' >&2; exit 3", "-l", "x", "-o", shard)
    assert p.returncode == 3, p
    lines = [ln for ln in p.stderr.splitlines() if "FAILED" in ln and
             "frame 0" in ln]
    assert lines and "exited with status 3" in lines[0] and \
        "SCF failed to converge" in lines[0], p.stderr
    assert (shard_arrays(shard)[1] == STATUS["FAILED"]).all()
    check_crc(shard)
    p = compute(master, "-c", "exec:/nonexistent/engine", "-l", "y", "-o",
                os.path.join(d, "t.h5"))
    assert p.returncode == 3 and "status 127" in p.stderr, p.stderr


@T
def garbage_output_is_failed(d):
    master, _ = master_of(d, n_frames=1, n_atoms=2)
    cases = [
        ("echo hello", "not an atom count"),
        ("true", "wrote nothing"),
        ("echo 3; echo x", "output has 3 atoms"),
        ("printf '2\\nProperties=species:S:1:pos:R:3:forces:R:3\\n'",
         "no energy="),
        ("printf '2\\nenergy=1.0 Properties=species:S:1:pos:R:3\\n'",
         "no forces property"),
        ("printf '2\\nenergy=nan Properties=species:S:1:pos:R:3:forces:R:3"
         "\\n'", "not a finite number"),
        ("printf '2\\nenergy=1 Properties=species:S:1:pos:R:3:forces:R:3\\n"
         "Ar 0 0 0 1 2 3\\n'", "ends after 1 of 2 atoms"),
        ("printf '2\\nenergy=1 Properties=species:S:1:pos:R:3:forces:R:3\\n"
         "Ar 0 0 0 1 2 3\\nAr 0 0 0 1 x 3\\n'", "force 'x'"),
        ("printf '2\\nenergy=1 Properties=species:S:1:pos:R:3:forces:R:3\\n"
         "Ar 0 0 0 1 2 3\\nKr 0 0 0 1 2 3\\n'", "atom 1 is 'Kr'"),
        ("echo partial >&2; printf '2\\nenergy=1\\n'", "stderr: partial"),
    ]
    for k, (cmd, word) in enumerate(cases):
        shard = os.path.join(d, f"s{k}.h5")
        p = compute(master, "-c", f"exec:cat >/dev/null; {cmd}", "-l", "x",
                    "-o", shard)
        assert p.returncode == 3, (cmd, p.returncode, p.stderr)
        assert word in p.stderr, (cmd, word, p.stderr)
        assert list(shard_arrays(shard)[1]) == [STATUS["FAILED"]], cmd
    # The same output with everything right is accepted: the cases fail
    # for the reason they name.
    ok = ("printf '2\\nenergy=1.5 Properties=species:S:1:pos:R:3:forces:R:3"
          "\\nAr 0 0 0 1 2 3\\nAr 0 0 0 4 5 6\\n'")
    shard = os.path.join(d, "ok.h5")
    assert_ok(compute(master, "-c", f"exec:{ok}", "-l", "x", "-o", shard))
    _, _, energy, forces, _ = shard_arrays(shard)
    assert energy[0] == 0.75 and forces[0].ravel().tolist() == [1, 2, 3, 4, 5,
                                                                6]


@T
def sigterm_kills_a_running_command(d):
    master, _ = master_of(d, n_frames=3)
    lj = script(d, "lj.py", LJ_SCRIPT)
    pidfile = os.path.join(d, "pid")
    shard = os.path.join(d, "s.h5")
    # Frame 1 hangs the first time only, so that the same command resumes.
    cmd = (f"if [ $MBE_FRAME = 1 ] && [ ! -e {pidfile} ]; then "
           f"echo $$ > {pidfile}; exec sleep 300; fi; {PY} {lj}")
    proc = subprocess.Popen([os.path.join(BIN, "mbe-compute"), master, "-c",
                             f"exec:{cmd}", "-l", "x", "-o", shard],
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists(pidfile) or not open(pidfile).read().strip():
        assert time.time() - t0 < 30, "frame 1 never started"
        time.sleep(0.05)
    pid = int(open(pidfile).read())
    t1 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, (proc.returncode, err)
    assert time.time() - t1 < 10
    assert not running(pid), "the command survived the job"
    part = shard + ".part"
    check_crc(part)
    assert list(shard_arrays(part)[1]) == [0, 1, 1], shard_arrays(part)[1]
    # Continuing with the same command computes the rest; another command
    # would mix results of two calculators in one shard.
    p = compute(master, "-c", f"exec:{PY} {lj}", "-l", "x", "-o", shard)
    assert p.returncode == 1 and "calculator" in p.stderr, p.stderr
    p = compute(master, "-c", f"exec:{cmd}", "-l", "x", "-o", shard)
    assert_ok(p)
    assert (shard_arrays(shard)[1] == 0).all()


if __name__ == "__main__":
    T.main()
