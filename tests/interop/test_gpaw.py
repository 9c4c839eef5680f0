"""A real electronic-structure code through -c ase: GPAW (Debian's gpaw
and gpaw-data), LCAO PBE on a water molecule in a periodic box: what
mbe-compute stores equals GPAW run directly on the same frames (one
calculator object, the same order) within its SCF convergence.  Short
by default (three frames, a coarse grid: seconds); MBE_GPAW_FULL=1
(make check-gpaw) takes eight frames with a dzp basis on a finer grid.
Missing GPAW is a visible SKIP."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import numpy as np  # noqa: E402

T = Tests()
PY = "/usr/bin/python3"
FULL = os.environ.get("MBE_GPAW_FULL") == "1"
# Tight SCF, so that "within convergence" means something.
ARGS = (f'mode="lcao", basis="{"dzp" if FULL else "szp(dzp)"}", xc="PBE", '
        f'h={0.2 if FULL else 0.3}, symmetry="off", txt=None, '
        'convergence={"energy": 1e-7, "density": 1e-6}')


def need_gpaw():
    try:
        import gpaw  # noqa: F401
    except ImportError:
        raise Skip("GPAW is not installed (apt-get install gpaw gpaw-data)")


def frames(n):
    from ase.build import molecule
    w = molecule("H2O")
    rng = np.random.default_rng(8)
    box = 6.0
    pos = w.positions[None] + box / 2 + rng.normal(0, 0.04, (n, len(w), 3))
    return pos, w.numbers.copy(), np.array([np.eye(3) * box] * n)


@T
def gpaw_lcao_water_equals_direct(d):
    need_gpaw()
    from ase import Atoms
    from gpaw import GPAW
    n = 8 if FULL else 3
    pos, z, cells = frames(n)
    master = os.path.join(d, "m.h5")
    write_structure(master, "w", pos, z, cell=cells)
    shard = os.path.join(d, "s.h5")
    t0 = time.time()
    p = compute(master, "-c", f"ase:gpaw:GPAW({ARGS})", "-l", "gpaw/pbe",
                "-o", shard, env={"MBE_PYTHON": PY}, timeout=1200)
    t_ours = time.time() - t0
    assert_ok(p)
    _, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all(), status
    calc = eval(f"GPAW({ARGS})")
    t0 = time.time()
    ref_e, ref_f = [], []
    for k in range(n):
        a = Atoms(numbers=z, positions=pos[k], cell=cells[k], pbc=True)
        a.calc = calc
        ref_e.append(a.get_potential_energy() / len(z))
        ref_f.append(a.get_forces())
    t_direct = time.time() - t0
    ref_e, ref_f = np.array(ref_e), np.array(ref_f)
    de = np.abs(energy - ref_e).max()
    df = np.abs(forces - ref_f).max()
    # SCF converged to 1e-7 eV per valence electron (8 of them).
    assert de <= 1e-6, f"energies differ by {de} eV/atom"
    assert df <= 1e-4, f"forces differ by {df} eV/Å"
    assert np.abs(ref_f).max() > 0.1, "forces too small to test anything"
    assert np.ptp(ref_e) > 1e-4, "frames too alike to test anything"
    print(f"gpaw: {n} frames, |dE| {de:.1e} eV/atom, |dF| {df:.1e} eV/Å, "
          f"bit-identical {energy.tobytes() == ref_e.tobytes()}; "
          f"{t_ours:.1f} s through mbe-compute, {t_direct:.1f} s direct")


if __name__ == "__main__":
    T.main()
