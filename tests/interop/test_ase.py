"""mbe-compute -c ase:MODULE:CALL: ASE's own calculators (EMT,
LennardJones, Morse) through our engine give the bytes the same
calculator object gives run directly over the same frames; frames of two
compositions go through one engine; periodic and non-periodic frames;
the level defaults to the calculator's level_of_theory; exceptions fail
their frame only (SCF errors as SCF_NOT_CONVERGED); --no-forces never
asks for forces; an engine killed mid-job is started again.  Needs
Debian's python3-ase."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
PY = "/usr/bin/python3"
EMT = "ase:ase.calculators.emt:EMT()"
LJ = "ase:ase.calculators.lj:LennardJones(epsilon=0.0103, sigma=3.4, rc=6.0)"
MORSE = "ase:ase.calculators.morse:MorsePotential(epsilon=0.3, r0=1.6, rho0=5.0)"

# Calculators of the tests, importable as module "mbetestcalc" from the
# test's directory (PYTHONPATH).
TESTCALC = r'''
import os, signal, time
from ase.calculators.emt import EMT
from ase.calculators.calculator import SCFError


class LevelEMT(EMT):
    level_of_theory = "emt/with-level"


class SCFNotConverged(Exception):
    pass


class Moody(EMT):
    """Fails frames by the x of the first atom: > 0.3 RuntimeError,
    < -0.3 ASE's SCFError, within 0.05 of 0.2 SCFNotConverged."""
    def calculate(self, atoms=None, properties=None, system_changes=None):
        x = atoms.positions[0, 0]
        if x > 0.3:
            raise RuntimeError(f"boom at x={x:.3f}\nsecond line")
        if x < -0.3:
            raise SCFError("did not converge in 50 iterations")
        if abs(x - 0.2) < 0.05:
            raise SCFNotConverged("nope")
        super().calculate(atoms, properties, system_changes)


class EnergyOnly(EMT):
    def get_forces(self, atoms=None):
        raise AssertionError("forces asked for")


class DiesOnce(EMT):
    """Kills its engine (SIGKILL) at the third frame, once."""
    def __init__(self, marker):
        super().__init__()
        self.marker, self.n = marker, 0

    def calculate(self, atoms=None, properties=None, system_changes=None):
        self.n += 1
        if self.n == 3 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(atoms, properties, system_changes)
'''


def need_ase():
    try:
        import ase  # noqa: F401
    except ImportError:
        raise Skip("python3-ase is not installed (apt-get install "
                   "python3-ase)")


def env(d):
    with open(os.path.join(d, "mbetestcalc.py"), "w") as f:
        f.write(TESTCALC)
    return {"MBE_PYTHON": PY, "PYTHONPATH": d}


def direct(calc, pos, z, cells):
    """The calculator object run over the frames in a plain loop: energies
    per atom as the package stores them, and forces."""
    from ase import Atoms
    es, fs = [], []
    for k in range(len(pos)):
        zk = z[k] if z.ndim == 2 else z
        if cells is None:
            a = Atoms(numbers=zk, positions=pos[k])
        else:
            a = Atoms(numbers=zk, positions=pos[k], cell=cells[k], pbc=True)
        a.calc = calc
        es.append(a.get_potential_energy() / len(a))
        fs.append(a.get_forces())
    return np.array(es), np.array(fs)


def run_ase(d, calc, pos, z, cells=None, args=(), code=0, level="x"):
    master = os.path.join(d, "m.h5")
    write_structure(master, "s", pos, z, cell=cells)
    shard = os.path.join(d, "s.h5")
    lv = ["-l", level] if level else []
    p = compute(master, "-c", calc, *lv, *args, "-o", shard, env=env(d))
    assert_ok(p, code)
    return shard, p


def same_bytes(shard, want_e, want_f):
    _, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all(), status
    assert energy.tobytes() == want_e.tobytes(), (energy, want_e)
    assert forces.tobytes() == want_f.tobytes(), \
        np.abs(forces - want_f).max()
    check_crc(shard)


def crystal(n_frames=4, seed=1):
    from ase.build import bulk
    prim = bulk("Cu", "fcc", a=3.61) * (2, 2, 2)
    rng = np.random.default_rng(seed)
    base = np.array(prim.cell) @ np.array([[1.0, 0.06, -0.04],
                                           [0.02, 1.0, 0.09],
                                           [-0.05, 0.03, 1.0]])
    frac = prim.get_scaled_positions()
    cells = base[None] + rng.normal(0, 0.03, (n_frames, 3, 3))
    pos = np.einsum("aj,kji->kai", frac, cells) + \
        rng.normal(0, 0.05, (n_frames, len(prim), 3))
    return pos, prim.numbers.copy(), cells


@T
def emt_crystal_equal_bytes(d):
    need_ase()
    from ase.calculators.emt import EMT as E
    pos, z, cells = crystal()
    shard, p = run_ase(d, EMT, pos, z, cells)
    same_bytes(shard, *direct(E(), pos, z, cells))
    assert " ms]" in p.stderr, p.stderr  # per-frame time in progress
    with h5py.File(shard, "r") as f:
        a = shard_attrs(f)
    assert "module=ase.calculators.emt" in a["calc_settings"], a
    assert "call=EMT()" in a["calc_settings"], a


@T
def lj_molecule_equal_bytes(d):
    need_ase()
    from ase.calculators.lj import LennardJones
    pos = random_cluster(4, 7, seed=2, spacing=3.7)
    z = np.full(7, 18)
    shard, _ = run_ase(d, LJ, pos, z)
    same_bytes(shard, *direct(LennardJones(epsilon=0.0103, sigma=3.4,
                                           rc=6.0), pos, z, None))


@T
def morse_periodic_and_molecule(d):
    need_ase()
    from ase.calculators.morse import MorsePotential
    pos, z, cells = crystal(3, seed=4)
    for sub, c in (("p", cells), ("m", None)):
        os.mkdir(os.path.join(d, sub))
        shard, _ = run_ase(os.path.join(d, sub), MORSE, pos, z, c)
        same_bytes(shard, *direct(MorsePotential(epsilon=0.3, r0=1.6,
                                                 rho0=5.0), pos, z, c))
    a = shard_arrays(os.path.join(d, "p", "s.h5"))[2]
    b = shard_arrays(os.path.join(d, "m", "s.h5"))[2]
    assert np.abs(a - b).max() > 1e-3, "periodicity made no difference"


@T
def two_compositions_one_engine(d):
    """Cu4 and AgAuAgAu frames in one job: the engine is told the species
    of each frame."""
    need_ase()
    from ase.calculators.emt import EMT as E
    pos = random_cluster(6, 4, seed=5, spacing=2.6)
    z = np.array([[29] * 4] * 3 + [[47, 79, 47, 79]] * 3)
    shard, _ = run_ase(d, EMT, pos, z)
    want = direct(E(), pos, z, None)
    same_bytes(shard, *want)
    log = open(os.path.join(d, "s.engine.log")).read()
    assert log.count("starting the engine") == 1, log
    # Blind test guard: the species matter.
    other = direct(E(), pos, np.array([[29] * 4] * 6), None)[0]
    assert np.abs(other[3:] - want[0][3:]).min() > 1e-3


@T
def level_from_calculator(d):
    need_ase()
    pos, z, cells = crystal(2)
    shard, _ = run_ase(d, "ase:mbetestcalc:LevelEMT()", pos, z, cells,
                       level=None)
    with h5py.File(shard, "r") as f:
        assert shard_attrs(f)["level"] == "emt/with-level"
    # No attribute and no -l: refused in one line.
    p = compute(os.path.join(d, "m.h5"), "-c", EMT, "-o",
                os.path.join(d, "t.h5"), env=env(d))
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert "level_of_theory" in lines[-1] and "-l" in lines[-1], p.stderr


@T
def exceptions_fail_their_frames(d):
    need_ase()
    pos = random_cluster(6, 4, seed=6, spacing=2.6)
    pos[:, 0, 0] = [0.0, 0.5, -0.5, 0.21, 0.0, 0.6]
    shard, p = run_ase(d, "ase:mbetestcalc:Moody()", pos, np.full(4, 29),
                       code=3)
    st = STATUS
    want = [st["COMPLETED"], st["FAILED"], st["SCF_NOT_CONVERGED"],
            st["SCF_NOT_CONVERGED"], st["COMPLETED"], st["FAILED"]]
    _, status, energy, _, _ = shard_arrays(shard)
    assert list(status) == want, (status, p.stderr)
    assert np.isfinite(energy[[0, 4]]).all() and np.isnan(energy[1:4]).all()
    err = p.stderr
    assert "frame 1: FAILED: RuntimeError: boom at x=0.500 second line" in \
        err, err
    assert "frame 2: SCF_NOT_CONVERGED: SCFError: did not converge" in err
    assert "frame 3: SCF_NOT_CONVERGED: SCFNotConverged: nope" in err
    log = open(os.path.join(d, "s.engine.log")).read()
    assert log.count("starting the engine") == 1, log


@T
def no_forces_asks_energy_only(d):
    need_ase()
    from ase.calculators.emt import EMT as E
    pos, z, cells = crystal(3)
    shard, _ = run_ase(d, "ase:mbetestcalc:EnergyOnly()", pos, z, cells,
                       args=("--no-forces",))
    with h5py.File(shard, "r") as f:
        energy, status = f["energy"][()], f["status"][()]
        assert "forces" not in f or f["forces"].size == 0
    assert (status == 0).all()
    assert energy.tobytes() == direct(E(), pos, z, cells)[0].tobytes()
    # Without --no-forces the same calculator fails every frame: the test
    # sees whether forces were asked for.
    os.remove(os.path.join(d, "m.h5"))
    os.remove(shard)
    shard, p = run_ase(d, "ase:mbetestcalc:EnergyOnly()", pos, z, cells,
                       code=3)
    assert "forces asked for" in p.stderr, p.stderr


@T
def engine_killed_mid_job(d):
    """The engine dies (SIGKILL) in frame 2: that frame FAILED, the engine
    is started again for frame 3, and the rest equals the direct run."""
    need_ase()
    from ase.calculators.emt import EMT as E
    pos, z, cells = crystal(6)
    marker = os.path.join(d, "died")
    shard, p = run_ase(d, f"ase:mbetestcalc:DiesOnce({marker!r})", pos, z,
                       cells, code=3)
    assert os.path.exists(marker)
    _, status, energy, forces, _ = shard_arrays(shard)
    assert list(status) == [0, 0, 3, 0, 0, 0], (status, p.stderr)
    assert "frame 2: FAILED" in p.stderr, p.stderr
    log = open(os.path.join(d, "s.engine.log")).read()
    assert log.count("starting the engine") == 2, log
    want_e, want_f = direct(E(), pos, z, cells)
    ok = status == 0
    assert np.allclose(energy[ok], want_e[ok], rtol=0, atol=1e-12)
    assert np.allclose(forces[ok], want_f[ok], rtol=0, atol=1e-12)


@T
def bad_calculators(d):
    need_ase()
    pos, z, cells = crystal(2)
    for calc, code, words in [
            ("ase:no_such_module_x:EMT()", 1, "No module named"),
            ("ase:ase.calculators.emt:Nope()", 1, "NameError"),
            # Malformed as written: usage errors.
            ("ase:ase.calculators.emt", 2, "ase:MODULE:CALL"),
            ("ase:a-b:EMT()", 2, "module name")]:
        p = compute_master(d, pos, z, cells, calc)
        assert p.returncode == code, (calc, p.returncode, p.stderr)
        assert words in p.stderr.strip().splitlines()[-1], (calc, p.stderr)
        part = os.path.join(d, "s.h5.part")
        if os.path.exists(part):
            assert (shard_arrays(part)[1] == STATUS["UNDEFINED"]).all()
            os.remove(part)
    p = compute_master(d, pos, z, cells, EMT, "--engine", "true")
    assert p.returncode == 2 and "--engine" in p.stderr, p.stderr


def compute_master(d, pos, z, cells, calc, *args):
    master = os.path.join(d, "m.h5")
    if not os.path.exists(master):
        write_structure(master, "s", pos, z, cell=cells)
    return compute(master, "-c", calc, "-l", "x", *args, "-o",
                   os.path.join(d, "s.h5"), env=env(d))


if __name__ == "__main__":
    T.main()
