"""mbe-import seen from h5py: the group it writes must have exactly the
layout of mbe_automation (master-format.md), with the HDF5 types h5py gives
numpy data, and the values of the XYZ file; where ASE is installed, the
values must equal what ase.io.read makes of the same file."""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

try:
    import ase  # noqa: F401
    import ase.data
    import ase.io
    HAVE_ASE = True
except ImportError:
    HAVE_ASE = False

T = Tests()
EXAMPLE = os.path.join(ROOT, "examples", "water-cluster.xyz")
ATTRS = {"dataclass", "n_frames", "n_atoms", "periodic",
         "feature_vectors_type"}
MASSES = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "Na": 22.98976928,
          "Si": 28.085, "Cl": 35.45, "Ar": 39.948, "Cu": 63.546}
Z = {"H": 1, "C": 6, "N": 7, "O": 8, "Na": 11, "Si": 14, "Cl": 17, "Ar": 18,
     "Cu": 29}


def need_ase():
    if not HAVE_ASE:
        raise Skip("ase is not installed (apt-get install python3-ase)")


def imp(*args, ok=True):
    p = run("mbe-import", *args)
    if ok and p.returncode != 0:
        raise AssertionError(f"mbe-import {args} exited {p.returncode}: "
                             f"{p.stderr}")
    return p


def put(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def xyz_text(frames, cells=None, symbols=None):
    """Extended XYZ of frames [n][atoms][3] with %.10f coordinates."""
    out = []
    for k, pos in enumerate(frames):
        syms = symbols[k] if symbols is not None and \
            isinstance(symbols[0], list) else symbols
        out.append(f"{len(pos)}\n")
        if cells is not None:
            c = cells[k] if np.ndim(cells) == 3 else cells
            flat = " ".join(f"{v:.10f}" for v in np.ravel(c))
            out.append(f'Lattice="{flat}" Properties=species:S:1:pos:R:3 '
                       f'pbc="T T T"\n')
        else:
            out.append(f"frame {k}\n")
        for s, p in zip(syms, pos):
            out.append(f"{s} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}\n")
    return "".join(out)


def parse_xyz(path):
    """A minimal plain-XYZ reader of our own, for the files here."""
    lines = open(path).read().splitlines()
    i, pos, syms = 0, [], []
    while i < len(lines) and lines[i].strip():
        n = int(lines[i])
        rows = [ln.split() for ln in lines[i + 2:i + 2 + n]]
        syms.append([r[0] for r in rows])
        pos.append([[float(x) for x in r[1:4]] for r in rows])
        i += 2 + n
    return np.array(pos), syms


def check_layout(path, key, n_frames, n_atoms, periodic, per_frame_atoms=False,
                 per_frame_cell=False):
    """Exactly the package's group: names, HDF5 types, shapes, layout."""
    with h5py.File(path, "r") as f:
        g = f[key]
        assert set(g.attrs.keys()) == ATTRS, sorted(g.attrs.keys())
        for name in ("dataclass", "feature_vectors_type"):
            aid = g.attrs.get_id(name)
            info = h5py.check_string_dtype(aid.dtype)
            assert info is not None and info.length is None, name
            assert info.encoding == "utf-8", name
            assert aid.shape == (), name
        assert g.attrs["dataclass"] == "Structure"
        assert g.attrs["feature_vectors_type"] == "none"
        for name in ("n_frames", "n_atoms"):
            aid = g.attrs.get_id(name)
            assert aid.dtype == np.dtype("<i8") and aid.shape == (), name
        assert g.attrs.get_id("periodic").dtype == np.dtype(bool)
        assert type(g.attrs["periodic"]) is np.bool_
        assert bool(g.attrs["periodic"]) == periodic
        assert g.attrs["n_frames"] == n_frames
        assert g.attrs["n_atoms"] == n_atoms

        want = {POS, "atomic_numbers", "masses (u)"}
        if periodic:
            want.add(CELL)
        assert set(g.keys()) == want, sorted(g.keys())
        atoms_shape = (n_frames, n_atoms) if per_frame_atoms else (n_atoms,)
        shapes = {POS: (n_frames, n_atoms, 3), "atomic_numbers": atoms_shape,
                  "masses (u)": atoms_shape,
                  CELL: (n_frames, 3, 3) if per_frame_cell else (3, 3)}
        for name in want:
            ds = g[name]
            dt = "<i8" if name == "atomic_numbers" else "<f8"
            assert ds.dtype == np.dtype(dt), (name, ds.dtype)
            assert ds.shape == shapes[name], (name, ds.shape)
            assert ds.chunks is None and ds.compression is None, name
            assert ds.maxshape == ds.shape, name
            assert ds.id.get_create_plist().get_layout() == \
                h5py.h5d.CONTIGUOUS, name


@T
def example_layout_and_values(d):
    master = os.path.join(d, "master.h5")
    p = imp(EXAMPLE, master)
    assert p.stderr == ("mbe-import: wrote 250 frames of 12 atoms "
                        f"(non-periodic) to {master}:water-cluster\n"), \
        p.stderr
    check_layout(master, "water-cluster", 250, 12, False)
    pos, syms = parse_xyz(EXAMPLE)
    with h5py.File(master, "r") as f:
        g = f["water-cluster"]
        assert np.array_equal(g[POS][()], pos)
        assert list(g["atomic_numbers"][()]) == [Z[s] for s in syms[0]]
        assert list(g["masses (u)"][()]) == [MASSES[s] for s in syms[0]]


@T
def periodic_fixed_cell(d):
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 5, (4, 2, 3))
    cell = np.array([[5.0, 0, 0], [0.5, 5.5, 0], [0.1, 0.2, 6.0]])
    xyz = put(d, "nacl.xyz", xyz_text(pos, cell, ["Na", "Cl"]))
    master = os.path.join(d, "m.h5")
    p = imp(xyz, master)
    assert "(periodic)" in p.stderr and ":nacl\n" in p.stderr, p.stderr
    check_layout(master, "nacl", 4, 2, True)
    with h5py.File(master, "r") as f:
        g = f["nacl"]
        assert np.allclose(g[POS][()], pos, rtol=0, atol=1e-10)
        assert np.allclose(g[CELL][()], cell, rtol=0, atol=1e-10)
        assert list(g["atomic_numbers"][()]) == [11, 17]


@T
def periodic_variable_cell(d):
    pos = np.zeros((3, 1, 3))
    cells = np.array([np.eye(3) * (4 + 0.1 * k) for k in range(3)])
    xyz = put(d, "si.xyz", xyz_text(pos, cells, ["Si"]))
    master = os.path.join(d, "m.h5")
    imp("-k", "bulk/si", xyz, master)
    check_layout(master, "bulk/si", 3, 1, True, per_frame_cell=True)
    with h5py.File(master, "r") as f:
        assert np.allclose(f["bulk/si"][CELL][()], cells, rtol=0, atol=1e-10)


@T
def permuted_atoms_per_frame(d):
    pos = np.arange(12, dtype=float).reshape(2, 2, 3)
    xyz = put(d, "perm.xyz", xyz_text(pos, symbols=[["O", "H"], ["H", "O"]]))
    master = os.path.join(d, "m.h5")
    imp(xyz, master)
    check_layout(master, "perm", 2, 2, False, per_frame_atoms=True)
    with h5py.File(master, "r") as f:
        g = f["perm"]
        assert g["atomic_numbers"][()].tolist() == [[8, 1], [1, 8]]
        assert g["masses (u)"][()].tolist() == [[15.999, 1.008],
                                                [1.008, 15.999]]


@T
def single_frame_stays_3d(d):
    xyz = put(d, "one.xyz", "1\n\nAr 1 2 3\n")
    master = os.path.join(d, "m.h5")
    p = imp(xyz, master)
    assert "wrote 1 frame of 1 atoms" in p.stderr, p.stderr
    check_layout(master, "one", 1, 1, False)
    with h5py.File(master, "r") as f:
        assert f["one"][POS][()].tolist() == [[[1.0, 2.0, 3.0]]]


@T
def same_layout_as_h5py_writer(d):
    """Against mbetest.write_structure (h5py, as the package writes):
    attribute and dataset types, shapes, link name encodings."""
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 5, (3, 2, 3))
    cell = np.eye(3) * 6
    xyz = put(d, "s.xyz", xyz_text(pos, cell, ["Cu", "Cu"]))
    ours, theirs = os.path.join(d, "ours.h5"), os.path.join(d, "theirs.h5")
    imp("-k", "a/s", xyz, ours)
    write_structure(theirs, "a/s", pos, [29, 29], masses=[63.546, 63.546],
                    cell=cell)

    def describe(path):
        out = {}
        with h5py.File(path, "r") as f:
            g = f["a/s"]
            for name in g.attrs:
                aid = g.attrs.get_id(name)
                out["@" + name] = (aid.dtype, aid.shape,
                                   aid.get_type().get_class(),
                                   aid.get_type().get_size())
            for name in g:
                ds = g[name]
                out[name] = (ds.dtype, ds.shape, ds.chunks, ds.compression,
                             ds.id.get_type().get_order(),
                             g.id.links.get_info(name.encode()).cset)
            parent = f["a"]
            out["link a/s"] = parent.id.links.get_info(b"s").cset
            out["periodic"] = g.attrs["periodic"]
        return out
    a, b = describe(ours), describe(theirs)
    assert a == b, f"\nours:   {a}\nh5py:   {b}"


@T
def adds_to_existing_master(d):
    master = os.path.join(d, "m.h5")
    pos = random_cluster(5, 4, seed=2)
    write_structure(master, "first/urea", pos, [6, 8, 7, 7],
                    level_of_theory="gfn2-xtb")
    update_ground_truth(master, "first/urea", "gfn2-xtb", np.arange(5.0),
                        np.ones((5, 4, 3)), np.zeros(5, np.int64))
    imp("-k", "second", EXAMPLE, master)
    check_layout(master, "second", 250, 12, False)
    with h5py.File(master, "r") as f:
        assert set(f.keys()) == {"first", "second"}
        g = f["first/urea"]
        assert np.array_equal(g[POS][()], pos)
        assert g.attrs["level_of_theory"] == "gfn2-xtb"
    e, fo, s = read_ground_truth(master, "first/urea", "gfn2-xtb")
    assert e.tolist() == list(np.arange(5.0)) and s.tolist() == [0] * 5
    # The package appends to a file we wrote, too.
    write_structure(master, "third", pos, [6, 8, 7, 7])
    with h5py.File(master, "r") as f:
        assert set(f.keys()) == {"first", "second", "third"}


@T
def overwrite_replaces_group(d):
    master = os.path.join(d, "m.h5")
    pos = random_cluster(2, 3, seed=4)
    write_structure(master, "w", pos, [8, 1, 1])
    update_ground_truth(master, "w", "lj", [1.0, 2.0], np.ones((2, 3, 3)),
                        [0, 0])
    p = imp(EXAMPLE, master, "-k", "w", ok=False)
    assert p.returncode == 1 and "already exists" in p.stderr, p.stderr
    imp("--overwrite", "-k", "w", EXAMPLE, master)
    check_layout(master, "w", 250, 12, False)


@T
def waits_for_python_lock(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "x", random_cluster(1, 2), [1, 1])
    before = open(master, "rb").read()
    with PythonLock(master):
        p = imp("--timeout", "0", EXAMPLE, master, ok=False)
    assert p.returncode == 1 and "lock" in p.stderr, p.stderr
    assert open(master, "rb").read() == before
    imp(EXAMPLE, master)


@T
def ase_water_cluster(d):
    need_ase()
    master = os.path.join(d, "m.h5")
    imp(EXAMPLE, master)
    frames = ase.io.read(EXAMPLE, index=":")
    with h5py.File(master, "r") as f:
        g = f["water-cluster"]
        assert len(frames) == g.attrs["n_frames"]
        assert not any(a.pbc.any() for a in frames)
        pos = g[POS][()]
        for k, a in enumerate(frames):
            assert np.array_equal(pos[k], a.positions), k
            assert np.array_equal(g["atomic_numbers"][()], a.numbers)
            assert np.array_equal(g["masses (u)"][()], a.get_masses())


@T
def ase_written_extxyz(d):
    """Frames written by ase.io.write (extxyz with energies, forces,
    variable cells) read the same by ASE and by us."""
    need_ase()
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    rng = np.random.default_rng(7)
    frames = []
    for k in range(6):
        cell = np.diag([5.0, 6.0, 7.0]) + rng.normal(0, 0.1, (3, 3))
        a = Atoms("NaClCH4", positions=rng.uniform(0, 5, (7, 3)), cell=cell,
                  pbc=True)
        a.calc = SinglePointCalculator(a, energy=-1.5 * k,
                                       forces=rng.normal(0, 1, (7, 3)))
        frames.append(a)
    path = os.path.join(d, "ase.extxyz")
    ase.io.write(path, frames, format="extxyz")
    master = os.path.join(d, "m.h5")
    imp(path, master)
    check_layout(master, "ase", 6, 7, True, per_frame_cell=True)
    back = ase.io.read(path, index=":")
    with h5py.File(master, "r") as f:
        g = f["ase"]
        assert np.array_equal(g[POS][()], [a.positions for a in back])
        assert np.array_equal(g[CELL][()], [a.cell.array for a in back])
        assert np.array_equal(g["atomic_numbers"][()], back[0].numbers)
        assert np.array_equal(g["masses (u)"][()], back[0].get_masses())


@T
def ase_molecule_in_box(d):
    """ASE writes a Lattice for a molecule in a box, with pbc F F F."""
    need_ase()
    from ase.build import molecule
    a = molecule("CH3CH2OH")
    a.center(vacuum=5.0)
    path = os.path.join(d, "ethanol.xyz")
    ase.io.write(path, [a, a], format="extxyz")
    assert "Lattice=" in open(path).read()
    master = os.path.join(d, "m.h5")
    imp(path, master)
    check_layout(master, "ethanol", 2, 9, False)
    back = ase.io.read(path, index=":")
    assert not back[0].pbc.any() and back[0].cell.any()
    with h5py.File(master, "r") as f:
        assert np.array_equal(f["ethanol"][POS][()],
                              [b.positions for b in back])


@T
def ase_every_element(d):
    """The whole element table: symbols and masses equal ase.data's."""
    need_ase()
    syms = ase.data.chemical_symbols[1:119]
    text = f"{len(syms)}\n\n" + "".join(
        f"{s} {i * 3.0} 0 0\n" for i, s in enumerate(syms))
    path = put(d, "table.xyz", text)
    master = os.path.join(d, "m.h5")
    imp(path, master)
    with h5py.File(master, "r") as f:
        g = f["table"]
        assert g["atomic_numbers"][()].tolist() == list(range(1, 119))
        got = g["masses (u)"][()]
        want = ase.data.atomic_masses[1:119]
        bad = [(syms[i], got[i], want[i]) for i in range(118)
               if got[i] != want[i]]
        assert not bad, bad


@T
def master_readable_after_failed_import(d):
    """A bad trajectory never creates or changes the master."""
    master = os.path.join(d, "m.h5")
    bad = put(d, "bad.xyz", "2\n\nO 0 0 0\nH 0 0\n")
    p = imp(bad, master, ok=False)
    assert p.returncode == 1 and not os.path.exists(master), p.stderr
    assert p.stderr == f"mbe-import: {bad}:4: expected 3 coordinates, " \
        "found 2\n", p.stderr
    shutil.copy(EXAMPLE, os.path.join(d, "ok.xyz"))
    imp(os.path.join(d, "ok.xyz"), master)
    check_layout(master, "ok", 250, 12, False)


T.main()
