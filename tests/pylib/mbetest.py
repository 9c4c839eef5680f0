"""Test helpers: write and read masters exactly as mbe_automation.storage
does (h5py, master-format.md), and report results in the PASS/FAIL lines
that tests/run counts."""
import fcntl
import os
import socket
import subprocess
import sys
import time
import traceback
import zlib

import h5py
import numpy as np

# The package's bytes (storage/core.py): U+2215 DIVISION SLASH in units and
# U+212B ANGSTROM SIGN for the Angstrom.  mbe-shard 0.2 and older wrote
# U+00C5 instead (ANGSTROM_0_2), which the package does not read.
DIVSLASH = b"\xe2\x88\x95".decode()
ANGSTROM = b"\xe2\x84\xab".decode()
ANGSTROM_0_2 = b"\xc3\x85".decode()
CUBED = b"\xc2\xb3".decode()
POS = f"positions ({ANGSTROM})"
CELL = f"cell_vectors ({ANGSTROM})"
ATOMIC_NUMBERS = "atomic_numbers"
MASSES = "masses (u)"
FEATURE_VECTORS = "feature_vectors"
# The generating model's results in a Structure or Trajectory group.
E_POT = f"E_pot (eV{DIVSLASH}atom)"
FORCES = f"forces (eV{DIVSLASH}{ANGSTROM})"
# What save_trajectory adds: MD time series (p and V in NPT only,
# E_rot_drift for molecules only).
TIME = "time (fs)"
TEMPERATURE = "T (K)"
PRESSURE = "p (GPa)"
VOLUME = f"V ({ANGSTROM}{CUBED}{DIVSLASH}atom)"
VELOCITIES = f"velocities ({ANGSTROM}{DIVSLASH}fs)"
E_KIN = f"E_kin (eV{DIVSLASH}atom)"
E_TRANS_DRIFT = f"E_trans_drift (eV{DIVSLASH}atom)"
E_ROT_DRIFT = f"E_rot_drift (eV{DIVSLASH}atom)"
GT = "ground_truth"
LEVELS = "levels_of_theory"
CLUSTER = "cluster_of_molecules"
MOLECULE_INDICES = "molecule_indices"
# Ours, in ground_truth: not a level, so the package never reads it.
MERGE_LOG = "mbe_merge_log"
STATUS = {"COMPLETED": 0, "UNDEFINED": 1, "SCF_NOT_CONVERGED": 2, "FAILED": 3}

ROOT = os.environ.get("MBE_ROOT", os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("MBE_BIN", os.path.join(ROOT, "build", "bin"))
# CODATA 2018, as the i-PI server converts (written here, not taken from
# lib/, so that the tests check lib's constants).
BOHR = 0.529177210903
HARTREE = 27.211386245988


def sanitize(level):
    return level.replace("/", DIVSLASH)


def e_name(level):
    return f"E_{sanitize(level)} (eV{DIVSLASH}atom)"


def f_name(level):
    return f"forces_{sanitize(level)} (eV{DIVSLASH}{ANGSTROM})"


def spelt_0_2(name):
    """A name as mbe-shard 0.2 and older wrote it."""
    return name.replace(ANGSTROM, ANGSTROM_0_2)


def s_name(level):
    return f"status_{sanitize(level)}"


def write_structure(path, key, positions, atomic_numbers, masses=None,
                    cell=None, dataclass="Structure", level_of_theory=None,
                    mode="a"):
    """A Structure (or Trajectory) group as the package writes it
    (pkgfmt.save_structure, save_trajectory: a Trajectory gets the MD
    series and attributes of save_trajectory).  Without the lock: callers
    that need it hold it.  mode "w" starts a new file."""
    import pkgfmt
    positions = np.asarray(positions, dtype=np.float64)
    atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
    if masses is None:
        masses = atomic_numbers.astype(np.float64) * 2.0
    masses = np.asarray(masses, np.float64)
    cell = None if cell is None else np.asarray(cell, np.float64)
    if mode == "w":
        h5py.File(path, "w").close()
    if dataclass == "Trajectory":
        pkgfmt.save_trajectory(path, key, pkgfmt.md_trajectory(
            positions, atomic_numbers, masses, cell,
            level_of_theory=level_of_theory), lock=False)
    else:
        pkgfmt.save_structure(path, key, positions, atomic_numbers, masses,
                              cell_vectors=cell,
                              level_of_theory=level_of_theory, lock=False)


def write_finite_subsystem(path, key, positions, atomic_numbers,
                           n_molecules=2, **kw):
    """A FiniteSubsystem as save_finite_subsystem writes it: n_molecules,
    molecule_indices, and its cluster_of_molecules (write_structure)."""
    with h5py.File(path, "a") as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g.attrs["dataclass"] = "FiniteSubsystem"
        g.attrs["n_molecules"] = n_molecules
        g.create_dataset(MOLECULE_INDICES, data=np.arange(n_molecules))
    write_structure(path, f"{key}/{CLUSTER}", positions,
                    atomic_numbers, **kw)


def update_ground_truth(path, key, level, energies, forces, status,
                        with_status=True):
    """Store one level as the package does (pkgfmt.save_ground_truth, the
    update rule), from full-size arrays: results as its calculators leave
    them (NaN where not COMPLETED), energies or forces None for a run
    with energies=False or forces=False, with_status=False for the older
    files without a status dataset.  Missing datasets of a level that
    exists are created whole, as the package does.  Without the lock."""
    import pkgfmt
    status = np.asarray(status, np.int64)
    done = status == STATUS["COMPLETED"]
    gt = pkgfmt.GroundTruth()
    if energies is not None:
        gt.energies[level] = np.where(done, np.asarray(energies, np.float64),
                                      np.nan)
    if forces is not None:
        forces = np.asarray(forces, np.float64)
        gt.forces[level] = np.where(done[:, None, None], forces, np.nan)
    if with_status:
        gt.status[level] = status
    with h5py.File(path, "a") as f:
        pkgfmt.save_ground_truth(f, f"{key}/{GT}", gt)


def read_ground_truth(path, key, level):
    with h5py.File(path, "r") as f:
        g = f[key]["ground_truth"]
        e = g[e_name(level)][()]
        fo = g[f_name(level)][()]
        s = g[s_name(level)][()] if s_name(level) in g else None
        return e, fo, s


def read_shard(path):
    """frames, status, energy, forces and root attributes of a shard."""
    with h5py.File(path, "r") as f:
        return (f["frames"][()], f["status"][()], f["energy"][()],
                f["forces"][()], shard_attrs(f))


def reference(before, shards, n_frames, n_atoms, prefer="last"):
    """The package's update rule, numpy only: each shard stored in turn
    (command-line order) as full-size arrays, results NaN and status
    UNDEFINED where the shard has no frame.  before: (E, F, S) stored,
    None for a new level; S None for a legacy level, E or F None for a
    level without energies or forces (the dataset is created NaN).
    prefer='first': the first COMPLETED result of a frame wins instead of
    the last."""
    C, U = STATUS["COMPLETED"], STATUS["UNDEFINED"]
    E, F, S = (None if a is None else np.array(a)
               for a in (before or (None, None, None)))
    if E is None:
        E = np.full(n_frames, np.nan)
    if F is None:
        F = np.full((n_frames, n_atoms, 3), np.nan)
    if S is None:
        # A new level is UNDEFINED everywhere; a legacy level (results, no
        # status): the package reads every frame as COMPLETED and saves
        # that status with its new results.
        S = np.full(n_frames, U if before is None else C, np.int64)
    full = []
    for path in shards:
        fr, st, en, fo, _ = read_shard(path)
        s = np.full(n_frames, U, np.int64)
        e = np.full(n_frames, np.nan)
        f = np.full((n_frames, n_atoms, 3), np.nan)
        s[fr], e[fr], f[fr] = st, en, fo
        full.append((s, e, f))
    for s, _, _ in full:
        idx = (s != U) & (S != C)
        S[idx] = s[idx]
    for s, e, f in (full[::-1] if prefer == "first" else full):
        done = s == C
        E[done] = e[done]
        F[done] = f[done]
    return E, F, S


def random_cluster(n_frames, n_atoms, seed=0, spacing=2.5):
    """Positions on a jittered cubic grid, so atoms never overlap."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side)
                     for k in range(side)][:n_atoms], np.float64) * spacing
    return grid[None] + rng.normal(0, 0.1, (n_frames, n_atoms, 3))


# A calculator slow enough for tests that must catch a job in the middle
# of its frames: GFN2-xTB on four copies of the water cluster (48 atoms;
# 12 atoms take 3 ms a frame on an idle core, lj microseconds).
SLOW_CALC = "gfn2-xtb"
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8}


def read_example_xyz(name="water-cluster.xyz"):
    """Positions (frames, atoms, 3) and atomic numbers of an example."""
    frames, z = [], None
    with open(os.path.join(ROOT, "examples", name)) as fh:
        lines = fh.read().splitlines()
    i = 0
    while i < len(lines) and lines[i].strip():
        n = int(lines[i])
        rows = [ln.split() for ln in lines[i + 2:i + 2 + n]]
        z = [ELEMENTS[r[0]] for r in rows]
        frames.append([[float(v) for v in r[1:4]] for r in rows])
        i += 2 + n
    return np.array(frames, np.float64), np.array(z, np.int64)


def slow_master(d, key="big"):
    """Four copies of the example water cluster on a square of 7 Å: 250
    frames of 48 atoms."""
    path = os.path.join(d, "master.h5")
    pos, z = read_example_xyz()
    shifts = [(0, 0, 0), (7, 0, 0), (0, 7, 0), (7, 7, 0)]
    pos = np.concatenate([pos + np.array(s, np.float64) for s in shifts],
                         axis=1)
    write_structure(path, key, pos, np.concatenate([z] * len(shifts)))
    return path


def wait_for_frames(part, want, timeout=60):
    """Until a running mbe-compute's .part holds want finished frames."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with h5py.File(part, "r") as f:
                if int((f["status"][()] != STATUS["UNDEFINED"]).sum()) >= want:
                    return
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{part}: fewer than {want} frames after {timeout}s")


_sock_count = [0]


def sock_name():
    """A fresh i-PI socket name (/tmp/ipi_NAME) for this process."""
    _sock_count[0] += 1
    return f"mbet{os.getpid()}_{_sock_count[0]}"


def free_port():
    """A TCP port of loopback that nobody listens on now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def compute(*args, **kw):
    """Run mbe-compute."""
    return run("mbe-compute", *args, **kw)


def lj_shard(d, master, name, *args, code=0):
    """mbe-compute -c lj of master into d/name, which it returns."""
    out = os.path.join(d, name)
    assert_ok(compute(master, "-c", "lj", "-q", *args, "-o", out), code)
    return out


def merge(*args):
    """Run mbe-merge."""
    return run("mbe-merge", *args)


def merge_paused_at_lock(d, master, *args):
    """An mbe-merge that has validated its shards (under a shared lock,
    like every reader) and waits for the exclusive lock: stopped there
    with SIGSTOP, so that others can change the master meanwhile.  Go on
    with resume_merge."""
    import signal
    err = open(os.path.join(d, "paused.err"), "w+")
    with open(master + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        proc = subprocess.Popen([os.path.join(BIN, "mbe-merge"), "--timeout",
                                 "60", master, *args],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        t0 = time.time()
        while "waiting for the lock" not in open(err.name).read():
            assert proc.poll() is None, open(err.name).read()
            assert time.time() - t0 < 30, "mbe-merge never waited"
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)
        # Stopped for sure before the shared lock goes.
        while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1] \
                .split()[0] != "T":
            time.sleep(0.005)
    return proc, err


def resume_merge(proc, err):
    """Go on with a merge_paused_at_lock: (exit status, stdout, stderr)."""
    import signal
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=60)
    err.seek(0)
    return proc.returncode, out, err.read()


def assert_ok(p, code=0):
    assert p.returncode == code, \
        f"exit {p.returncode}, expected {code}: {p.stderr.strip()[-800:]}"


def shard_attrs(f):
    """The root attributes of an open shard, strings as str: format 2
    stores them fixed-length, which h5py reads as bytes (mbe-shard(5))."""
    return {k: (v.decode() if isinstance(v, bytes) else v)
            for k, v in f.attrs.items()}


def shard_arrays(path):
    """frames, status, energy, forces, crc32 of a shard (mbe-shard(5))."""
    with h5py.File(path, "r") as f:
        return (f["frames"][()], f["status"][()], f["energy"][()],
                f["forces"][()], f["crc32"][()])


def check_crc_rows(status, energy, forces, crc, what="shard"):
    """Every row's crc32 over its documented bytes, with Python's zlib."""
    for k in range(len(status)):
        data = (np.int64(status[k]).tobytes() +
                np.float64(energy[k]).tobytes() +
                np.ascontiguousarray(forces[k], np.float64).tobytes())
        assert zlib.crc32(data) == int(crc[k]), f"{what}: crc of row {k}"


def check_crc(path):
    """Every row of the shard at path verifies: the shard is valid."""
    _, status, energy, forces, crc = shard_arrays(path)
    check_crc_rows(status, energy, forces, crc, path)


class PythonLock:
    """The package's lock: exclusive flock on <master>.lock."""

    def __init__(self, master):
        self.path = str(master) + ".lock"
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def run(prog, *args, env=None, input=None, timeout=600, cwd=None):
    """Run a built program; returns CompletedProcess with text output."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([os.path.join(os.path.abspath(BIN), prog),
                           *map(str, args)], capture_output=True, text=True,
                          env=e, input=input, timeout=timeout, cwd=cwd)


class Tests:
    """Collects test functions and prints PASS/FAIL/SKIP lines."""

    def __init__(self):
        self.tests = []

    def __call__(self, fn):
        self.tests.append(fn)
        return fn

    def main(self):
        import tempfile
        failed = 0
        for fn in self.tests:
            with tempfile.TemporaryDirectory(prefix="mbe-test-") as d:
                t0 = time.time()
                try:
                    fn(d)
                except Skip as s:
                    print(f"SKIP {fn.__name__}: {s}")
                    continue
                except Exception as ex:  # noqa: BLE001 - report any failure
                    failed += 1
                    print(f"FAIL {fn.__name__}: {type(ex).__name__}: {ex}")
                    traceback.print_exc(file=sys.stdout)
                    continue
                print(f"PASS {fn.__name__} ({time.time() - t0:.2f}s)")
        sys.exit(1 if failed else 0)


class Skip(Exception):
    pass
