#!/usr/bin/python3
"""Masters written with h5py exactly as mbe_automation writes them
(tests/pylib/pkgfmt.py: every variant of master-format.md), taken through
mbe-import, mbe-compute, mbe-merge and mbe-status, and read back the way
the package reads them: by its names only, levels through
levels_of_theory.

Each merge is checked three ways against the package:
- the package's update rule in numpy (mbetest.reference), level by level;
- a copy of the master on which package jobs stored the same shards'
  results (pkgfmt.package_job: read, run, save, one shard after the
  other): both read back identically, and the merged master holds no
  object or attribute, of any other HDF5 type, than the package's copy
  but our merge log, which levels_of_theory does not list;
- mbe-status: its counts are the package's, and --missing lists exactly
  the frames the package does not count as COMPLETED.
And the reverse direction: what mbe-import writes reads through the
package's reader with the HDF5 types the package gives the same arrays."""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "pylib"))
from mbetest import *  # noqa: E402,F401,F403
import pkgfmt  # noqa: E402
from pkgfmt import GroundTruth  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
C, U, SCF, FAIL = (STATUS[k] for k in ("COMPLETED", "UNDEFINED",
                                       "SCF_NOT_CONVERGED", "FAILED"))
SLASHED = "r2scan-d4/def2-tzvpp"
AR_MASS = 39.948
# Shifted LJ with a cut-off the boxes below allow (half their width).
LJ = ("-c", "lj", "--lj-cutoff", "5")


# ---------------------------------------------------------- fixtures

def argon(n_frames, n_atoms, seed=0):
    """Positions, atomic numbers and masses as the package holds them
    (float64, int64, float64): argon 3.6 Å apart."""
    return (random_cluster(n_frames, n_atoms, seed=seed, spacing=3.6),
            np.full(n_atoms, 18, np.int64), np.full(n_atoms, AR_MASS))


def stored_level(n_frames, n_atoms, status, seed=1, energies=True,
                 forces=True):
    """A ground truth of one level as a package run left it: results where
    COMPLETED, NaN elsewhere (its calculators' arrays)."""
    rng = np.random.default_rng(seed)
    status = np.asarray(status, np.int64)
    done = status == C
    gt = GroundTruth(status={"?": status})
    if energies:
        gt.energies["?"] = np.where(done, rng.normal(-1, 0.1, n_frames),
                                    np.nan)
    if forces:
        gt.forces["?"] = np.where(done[:, None, None],
                                  rng.normal(0, 0.1, (n_frames, n_atoms, 3)),
                                  np.nan)
    return gt


def levels(**by_level):
    """GroundTruth of several stored_level()s: levels(lj=gt, ...) with
    '/' in a name given as '__'."""
    out = GroundTruth()
    for name, gt in by_level.items():
        level = name.replace("__", "/")
        for src, dst in ((gt.energies, out.energies),
                         (gt.forces, out.forces), (gt.status, out.status)):
            if "?" in src:
                dst[level] = src["?"]
    return out


def exec_calc(fail):
    """-c exec: a per-frame shell command that fails frames in fail and
    otherwise answers energy and forces made from the positions."""
    refuse = " || ".join(f'[ "$MBE_FRAME" = {k} ]' for k in fail) or "false"
    awk = ("awk 'NR==1{n=$1;print;next} NR==2{printf \"Properties=species:"
           "S:1:pos:R:3:forces:R:3 energy=%.17g pbc=\\\"F F F\\\"\\n\", "
           "-0.1*n-0.01*ENVIRON[\"MBE_FRAME\"];next} NR<=n+2{printf "
           "\"%s %s %s %s %.17g %.17g %.17g\\n\",$1,$2,$3,$4,-0.01*$2,"
           "-0.01*$3,-0.01*$4}'")
    return ("-c", f"exec:if {refuse}; then echo refused >&2; exit 1; fi; "
            f"{awk}")


# ------------------------------------------------------------ helpers

def identical(a, b, what):
    """Same type, dtype, shape and bytes (NaN included)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), \
            f"{what}: {type(a).__name__} against {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{what}: {a.dtype}{a.shape} against {b.dtype}{b.shape}"
        assert np.ascontiguousarray(a).tobytes() == \
            np.ascontiguousarray(b).tobytes(), f"{what}: values differ"
        return
    assert type(a) is type(b) and a == b, f"{what}: {a!r} against {b!r}"


def same_ground_truth(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, f"{what}: {a} against {b}"
        return
    for field in ("energies", "forces", "status"):
        x, y = getattr(a, field), getattr(b, field)
        assert set(x) == set(y), f"{what} {field}: {sorted(x)} {sorted(y)}"
        for level in x:
            identical(x[level], y[level], f"{what} {field}[{level!r}]")


def same_object(a, b, what="object"):
    """Everything the package's reader gives, field by field."""
    va, vb = vars(a), vars(b)
    assert set(va) == set(vb), f"{what}: {sorted(va)} against {sorted(vb)}"
    for k in va:
        if k == "ground_truth":
            same_ground_truth(va[k], vb[k], f"{what}.{k}")
        elif k == "cluster_of_molecules":
            same_object(va[k], vb[k], f"{what}.{k}")
        elif va[k] is None or vb[k] is None:
            assert va[k] is None and vb[k] is None, f"{what}.{k}"
        else:
            identical(va[k], vb[k], f"{what}.{k}")


def attr_type(a):
    """What h5py can see of an attribute's HDF5 type and space."""
    t = a.get_type()
    out = [a.shape, t.get_class(), str(h5py.check_string_dtype(a.dtype)),
           str(h5py.check_enum_dtype(a.dtype))]
    if isinstance(t, h5py.h5t.TypeStringID):
        out += [t.get_cset(), t.get_strpad(), t.is_variable_str()]
    if not (isinstance(t, h5py.h5t.TypeStringID) and t.is_variable_str()):
        out += [a.dtype.str, t.get_size()]
    return tuple(out)


def describe(path, key):
    """Every object below key and every attribute, with how it was made
    as far as h5py sees: types, shapes, layout, creation properties, the
    encoding flag of its link."""
    out = {}
    with h5py.File(path, "r") as f:
        top = f[key]

        def attrs(prefix, o):
            for name in o.attrs:
                out[f"{prefix}@{name}"] = attr_type(o.attrs.get_id(name))

        def visit(name, o):
            parent = top[os.path.dirname(name)] if "/" in name else top
            cset = parent.id.links.get_info(
                os.path.basename(name).encode()).cset
            if isinstance(o, h5py.Dataset):
                pl = o.id.get_create_plist()
                out[name] = ("dataset", o.dtype.str, o.shape, o.maxshape,
                             o.chunks, o.compression, pl.get_layout(),
                             pl.get_obj_track_times(), pl.get_nfilters(),
                             pl.get_alloc_time(), pl.get_fill_time(),
                             cset)
            else:
                out[name] = ("group", cset)
            attrs(name, o)

        attrs("", top)
        top.visititems(visit)
    return out


def check_tree(ours, theirs, key, frames_key, allowed_missing):
    """Nothing in ours the package does not write but the merge log, and
    of the same make; theirs may hold more only where allowed_missing
    says (datasets the package's whole-ground-truth save adds)."""
    a, b = describe(ours, key), describe(theirs, key)
    log = f"{frames_key[len(key) + 1:] + '/' if frames_key != key else ''}" \
          f"{GT}/{MERGE_LOG}"
    extra = {k for k in set(a) - set(b)
             if k != log and not k.startswith(log + "@")}
    assert not extra, f"not written by the package: {sorted(extra)}"
    assert log in a, f"no merge log at {log}: {sorted(a)}"
    missing = set(b) - set(a) - set(allowed_missing)
    assert not missing, f"the package writes, we do not: {sorted(missing)}"
    for k in set(a) & set(b):
        assert a[k] == b[k], f"{k}:\nours    {a[k]}\npackage {b[k]}"


def status_json(master, key):
    p = run("mbe-status", "--json", "-k", key, master)
    assert_ok(p)
    groups = json.loads(p.stdout)["files"][0]["groups"]
    assert len(groups) == 1, groups
    return groups[0]


def missing_frames(master, key, level):
    """mbe-status --missing as a set of frames."""
    p = run("mbe-status", "--missing", "-k", key, "-l", level, master)
    assert_ok(p)
    out = set()
    for part in filter(None, p.stdout.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def check_status(master, key, s, extra_levels=()):
    """mbe-status against the package's reading s of the frames: the
    listed levels and their counts, and --missing per level."""
    g = status_json(master, key)
    gt = s.ground_truth or GroundTruth()
    listed = {lv["level"]: lv for lv in g["levels"] if lv["listed"]}
    assert set(listed) == gt.levels(), (sorted(listed), sorted(gt.levels()))
    for level, st in gt.status.items():
        want = {name: int((st == code).sum()) for name, code in
                STATUS.items()}
        assert listed[level]["counts"] == want, \
            (level, listed[level]["counts"], want)
    n = int(s.n_frames)
    for level in gt.levels() | set(extra_levels):
        done = set(pkgfmt.completed_frames(s, level).tolist())
        assert missing_frames(master, key, level) == set(range(n)) - done, \
            level


def level_before(s, level):
    """(E, F, S) of a level as the package reads it, None when absent."""
    gt = s.ground_truth
    if gt is None or level not in gt.levels():
        return None
    return (gt.energies.get(level), gt.forces.get(level),
            gt.status.get(level))


def flow(d, master, plans):
    """plans: [(key, level, [(mbe-compute args, exit code), ...])].  Every
    job's shard is made first, then one mbe-merge applies them all; a copy
    of the master gets the same results from package jobs.  Returns the
    package's reading of each key after the merge."""
    pkg = os.path.join(d, "package.h5")
    shutil.copy(master, pkg)
    shards, before, jobs = [], {}, []
    for key, level, runs in plans:
        o = pkgfmt.read_any(master, key)
        before[key, level] = level_before(pkgfmt.frames_of(o), level)
        for args, code in runs:
            out = os.path.join(d, f"s{len(shards)}.h5")
            assert_ok(compute(master, "-q", "-k", key, "-l", level, *args,
                              "-o", out), code)
            shards.append(out)
            jobs.append((key, level, out))
    assert_ok(run("mbe-merge", "-q", master, *shards))
    for key, level, shard in jobs:
        fr, st, en, fo, _ = read_shard(shard)
        # Frames a job did not finish are frames a package job did not
        # compute.
        ran = st != U
        if ran.any():
            pkgfmt.package_job(pkg, key, level, fr[ran], st[ran], en[ran],
                               fo[ran])
    result = {}
    for key, level, _ in plans:
        ours, theirs = pkgfmt.read_any(master, key), pkgfmt.read_any(pkg, key)
        same_object(ours, theirs, key)
        s = pkgfmt.frames_of(ours)
        n, na = int(s.n_frames), int(s.n_atoms)
        want = reference(before[key, level],
                         [sh for k, lv, sh in jobs if (k, lv) == (key, level)],
                         n, na)
        gt = s.ground_truth
        for name, got, w in zip(("energies", "forces", "status"),
                                (gt.energies[level], gt.forces[level],
                                 gt.status[level]), want):
            identical(got, w, f"{key} {level} {name} against the rule")
        frames_key = key if ours.dataclass != "FiniteSubsystem" \
            else f"{key}/{CLUSTER}"
        # The package's whole-ground-truth save also gives every legacy
        # level it read the status it read (COMPLETED): the same reading.
        legacy = [lv for lv in gt.levels() if lv != level and
                  before_legacy(master, frames_key, lv)]
        prefix = frames_key[len(key) + 1:] + "/" if frames_key != key else ""
        check_tree(master, pkg, key, frames_key,
                   [f"{prefix}{GT}/{s_name(lv)}" for lv in legacy])
        check_status(master, key, s, [level])
        check_log_invisible(master, frames_key, s)
        result[key] = ours
    return result


def before_legacy(path, frames_key, level):
    with h5py.File(path, "r") as f:
        return s_name(level) not in f[frames_key][GT]


def check_log_invisible(master, frames_key, s):
    """The merge log is in ground_truth, the package's index does not
    list it, and its reading holds only the listed levels."""
    with h5py.File(master, "r") as f:
        g = f[frames_key][GT]
        assert MERGE_LOG in g
        listed = list(g.attrs[LEVELS])
    assert MERGE_LOG not in listed
    assert s.ground_truth.levels() <= set(listed), listed


def new_master(d):
    return os.path.join(d, "master.h5")


# ------------------------------------------------------------- Structure

@T
def structure_molecule_new_level(d):
    master = new_master(d)
    pos, z, m = argon(9, 3)
    pkgfmt.save_structure(master, "md/argon", pos, z, m)
    out = flow(d, master, [("md/argon", "lj",
                            [(("-c", "lj", "--chunk", f"{i}/3"), 0)
                             for i in (1, 2, 3)])])
    s = out["md/argon"]
    assert s.periodic is False and s.cell_vectors is None
    assert (s.ground_truth.status["lj"] == C).all()


@T
def structure_fixed_cell_slashed_level(d):
    """A crystal (cell (3, 3)) with two levels stored; a level with '/'
    merged from two chunks."""
    master = new_master(d)
    pos, z, m = argon(6, 4)
    gt = levels(a=stored_level(6, 4, [C] * 6),
                zzz__last=stored_level(6, 4, [C, U, C, FAIL, C, SCF]))
    pkgfmt.save_structure(master, "crystal", pos, z, m,
                          cell_vectors=np.eye(3) * 12.0, ground_truth=gt)
    out = flow(d, master, [("crystal", SLASHED,
                            [((*LJ, "--chunk", "1/2"), 0),
                             ((*LJ, "--chunk", "2/2"), 0)])])
    s = out["crystal"]
    assert sorted(s.ground_truth.levels()) == ["a", SLASHED, "zzz/last"]
    with h5py.File(master, "r") as f:
        assert e_name(SLASHED) in f["crystal"][GT]


@T
def structure_variable_cell_mixed_statuses(d):
    """Cells per frame, two of them too small for the cut-off (lj fails
    those frames); the level stored with every status.  One job skips the
    COMPLETED frames, an --overwrite one recomputes them and fails one:
    COMPLETED is never downgraded."""
    master = new_master(d)
    pos, z, m = argon(10, 2)
    cells = np.array([np.eye(3) * (8.0 if k in (3, 7) else 12.0)
                      for k in range(10)])
    st = [C, FAIL, SCF, U, C, FAIL, U, C, SCF, U]
    pkgfmt.save_structure(master, "npt", pos, z, m, cell_vectors=cells,
                          ground_truth=levels(lj=stored_level(10, 2, st)))
    e7 = pkgfmt.read_any(master, "npt").ground_truth.energies["lj"][7]
    out = flow(d, master, [("npt", "lj", [(LJ, 3),
                                          ((*LJ, "--overwrite", "-f", "4-9"),
                                           3)])])
    gt = out["npt"].ground_truth
    # Never computed and failed now: FAILED; FAILED and SCF_NOT_CONVERGED
    # retried: COMPLETED; frame 7 failed by the retry: still COMPLETED,
    # with its stored energy.
    assert list(gt.status["lj"]) == [C, C, C, FAIL, C, C, C, C, C, C], \
        gt.status["lj"]
    assert gt.energies["lj"][7] == e7


@T
def structure_permuted_atoms_exec(d):
    """Atoms permuted between frames ((n_frames, n_atoms) atomic numbers
    and masses); an external command that fails two frames."""
    master = new_master(d)
    pos, _, _ = argon(6, 3)
    z = np.array([[8, 1, 1], [1, 8, 1], [1, 1, 8]] * 2, np.int64)
    m = np.where(z == 8, 15.999, 1.008)
    pkgfmt.save_structure(master, "perm", pos, z, m)
    out = flow(d, master, [("perm", "awk/none",
                            [(exec_calc([2, 5]), 3)])])
    s = out["perm"]
    assert s.atomic_numbers.shape == (6, 3)
    assert list(s.ground_truth.status["awk/none"]) == \
        [C, C, FAIL, C, C, FAIL]


@T
def structure_single_frame_2d(d):
    """One frame stored (n_atoms, 3), as the package saves a structure
    read from a file (from_xyz_file)."""
    master = new_master(d)
    pos, z, m = argon(1, 4)
    pkgfmt.save_structure(master, "one", pos[0], z, m,
                          cell_vectors=np.eye(3) * 12.0)
    with h5py.File(master, "r") as f:
        assert f["one"][POS].shape == (4, 3)
    out = flow(d, master, [("one", "lj", [(LJ, 0)])])
    assert int(out["one"].n_frames) == 1


@T
def structure_level_of_theory(d):
    """The model that made the geometries (level_of_theory, its E_pot and
    forces): every frame COMPLETED for it, in our selection and status
    too; another level merged beside it."""
    master = new_master(d)
    pos, z, m = argon(5, 3)
    pkgfmt.save_structure(master, "relaxed", pos, z, m,
                          E_pot=np.linspace(-1, -2, 5),
                          forces=np.zeros((5, 3, 3)),
                          level_of_theory="mace-mp-0")
    out = flow(d, master, [("relaxed", "lj", [(("-c", "lj"), 0)])])
    s = out["relaxed"]
    assert s.level_of_theory == "mace-mp-0"
    assert missing_frames(master, "relaxed", "mace-mp-0") == set()
    assert len(pkgfmt.completed_frames(s, "mace-mp-0")) == 5


# ------------------------------------------------------------ Trajectory

@T
def trajectory_nvt_molecule(d):
    """save_trajectory of a molecule: NVT, E_rot_drift, no cell."""
    master = new_master(d)
    pos, z, m = argon(8, 3)
    pkgfmt.save_trajectory(master, "md/nvt",
                           pkgfmt.md_trajectory(pos, z, m, seed=2))
    out = flow(d, master, [("md/nvt", "lj",
                            [(("-c", "lj", "--chunk", "1/2"), 0),
                             (("-c", "lj", "--chunk", "2/2"), 0)])])
    t = out["md/nvt"]
    assert t.ensemble == "NVT" and t.E_rot_drift is not None
    assert t.velocities.shape == (8, 3, 3)


@T
def trajectory_npt_crystal(d):
    """save_trajectory of a crystal: NPT (p, V, target pressure), a cell
    per frame, the MD model's level_of_theory; a level half computed."""
    master = new_master(d)
    pos, z, m = argon(8, 4)
    cells = np.array([np.eye(3) * (12.0 + 0.1 * k) for k in range(8)])
    t = pkgfmt.md_trajectory(pos, z, m, cells, ensemble="NPT",
                             level_of_theory="mace-mp-0", seed=3)
    t.ground_truth = levels(lj=stored_level(8, 4, [C] * 4 + [U] * 4))
    pkgfmt.save_trajectory(master, "md/npt", t)
    out = flow(d, master, [("md/npt", "lj", [(LJ, 0)])])
    t = out["md/npt"]
    assert t.ensemble == "NPT" and t.pressure.shape == (8,)
    assert t.cell_vectors.shape == (8, 3, 3)
    assert missing_frames(master, "md/npt", "mace-mp-0") == set()


# ------------------------------------------------------- FiniteSubsystem

@T
def finite_subsystem(d):
    """A FiniteSubsystem: n_molecules, molecule_indices and the frames in
    cluster_of_molecules, which holds a level already (the package's
    FiniteSubsystem.run keeps its results only then)."""
    master = new_master(d)
    pos, z, m = argon(6, 4)
    pkgfmt.save_finite_subsystem(
        master, "clusters/dimer", 2, np.array([0, 5]), positions=pos,
        atomic_numbers=z, masses=m,
        ground_truth=levels(lj=stored_level(6, 4, [C, U, FAIL, C, U, U])))
    out = flow(d, master, [("clusters/dimer", "lj",
                            [(("-c", "lj", "--chunk", "1/2"), 0),
                             (("-c", "lj", "--chunk", "2/2"), 0)])])
    fs = out["clusters/dimer"]
    assert fs.dataclass == "FiniteSubsystem" and fs.n_molecules == 2
    assert (fs.cluster_of_molecules.ground_truth.status["lj"] == C).all()


# ----------------------------------------------------- kinds of levels

@T
def legacy_levels(d):
    """Levels of older files (results, no status): every frame COMPLETED
    for the package and for us; --overwrite recomputes them."""
    master = new_master(d)
    pos, z, m = argon(8, 3)
    old = levels(lj=stored_level(8, 3, [C] * 8),
                 old=stored_level(8, 3, [C] * 8, seed=2))
    old.status.clear()
    pkgfmt.save_structure(master, "s", pos, z, m, ground_truth=old)
    assert missing_frames(master, "s", "lj") == set()
    flow(d, master, [("s", "lj",
                      [(("-c", "lj", "--overwrite", "-f", "0-3"), 0),
                       (("-c", "lj", "--overwrite", "-f", "4-7"), 0)])])
    with h5py.File(master, "r") as f:
        # "old" was not merged into: still legacy.
        assert s_name("old") not in f["s"][GT]
        assert s_name("lj") in f["s"][GT]


@T
def energies_only_level(d):
    """A level the package ran with forces=False (E_ and status_, no
    forces_): our results with forces complete it."""
    master = new_master(d)
    pos, z, m = argon(6, 3)
    gt = levels(ccsd__cbs=stored_level(6, 3, [C, FAIL, U, C, SCF, U],
                                       forces=False))
    pkgfmt.save_structure(master, "s", pos, z, m, ground_truth=gt)
    with h5py.File(master, "r") as f:
        assert f_name("ccsd/cbs") not in f["s"][GT]
    out = flow(d, master, [("s", "ccsd/cbs", [(("-c", "lj"), 0)])])
    gt = out["s"].ground_truth
    assert np.isnan(gt.forces["ccsd/cbs"][[0, 3]]).all()
    assert not np.isnan(gt.forces["ccsd/cbs"][[1, 2, 4, 5]]).any()


@T
def forces_only_level(d):
    """A level the package ran with energies=False (forces_ and status_)."""
    master = new_master(d)
    pos, z, m = argon(6, 3)
    gt = levels(lj=stored_level(6, 3, [U, C, U, FAIL, C, U],
                                energies=False))
    pkgfmt.save_structure(master, "s", pos, z, m, ground_truth=gt)
    out = flow(d, master, [("s", "lj", [(("-c", "lj"), 0)])])
    e = out["s"].ground_truth.energies["lj"]
    assert list(np.isnan(e)) == [False, True, False, False, True, False]


@T
def empty_levels_of_theory(d):
    """A structure the package saved with an empty ground truth: its
    levels_of_theory is the empty list, which h5py stores as float64 of
    length 0."""
    master = new_master(d)
    pos, z, m = argon(4, 3)
    pkgfmt.save_structure(master, "s", pos, z, m, ground_truth=GroundTruth())
    with h5py.File(master, "r") as f:
        a = f["s"][GT].attrs.get_id(LEVELS)
        assert a.dtype == np.float64 and a.shape == (0,)
    flow(d, master, [("s", "lj", [(("-c", "lj"), 0)])])


@T
def every_kind_in_one_merge(d):
    """Structure, Trajectory and FiniteSubsystem of one master, shards of
    all three in one mbe-merge."""
    master = new_master(d)
    pos, z, m = argon(5, 3)
    pkgfmt.save_structure(master, "a/structure", pos, z, m,
                          cell_vectors=np.eye(3) * 12.0)
    pkgfmt.save_trajectory(master, "a/traj",
                           pkgfmt.md_trajectory(pos, z, m, seed=4))
    pkgfmt.save_finite_subsystem(
        master, "a/fs", 1, np.array([3]), positions=pos, atomic_numbers=z,
        masses=m, ground_truth=levels(x=stored_level(5, 3, [C] * 5)))
    flow(d, master, [("a/structure", SLASHED, [(LJ, 0)]),
                     ("a/traj", SLASHED, [(("-c", "lj"), 0)]),
                     ("a/fs", SLASHED, [(("-c", "lj"), 0)])])


# ------------------------------------------------ mbe-import, both ways

def xyz(path, frames, symbols, cells=None):
    with open(path, "w") as f:
        for k, pos in enumerate(frames):
            syms = symbols[k] if isinstance(symbols[0], list) else symbols
            f.write(f"{len(pos)}\n")
            if cells is None:
                f.write(f"frame {k}\n")
            else:
                c = cells[k] if np.ndim(cells) == 3 else cells
                f.write('Lattice="' + " ".join(repr(float(v))
                                              for v in np.ravel(c)) +
                        '" Properties=species:S:1:pos:R:3 pbc="T T T"\n')
            for s, p in zip(syms, pos):
                # repr of a Python float: shortest round trip (numpy 2's
                # repr of np.float64 would be "np.float64(...)").
                f.write(f"{s} " + " ".join(repr(float(v)) for v in p) + "\n")


IMPORTS = {
    # key: (frames, symbols, cells)
    "mol": (argon(6, 3)[0], ["Ar"] * 3, None),
    "crystal": (argon(4, 4, seed=1)[0], ["Ar"] * 4, np.eye(3) * 12.0),
    "npt": (argon(4, 2, seed=2)[0], ["Ar", "Ar"],
            np.array([np.eye(3) * (12 + 0.5 * k) for k in range(4)])),
    "perm": (argon(4, 3, seed=3)[0], [["O", "H", "H"], ["H", "O", "H"]] * 2,
             None),
    "one": (argon(1, 3, seed=4)[0], ["Ar"] * 3, np.eye(3) * 12.0),
}


def imported(d):
    master = new_master(d)
    for key, (frames, syms, cells) in IMPORTS.items():
        src = os.path.join(d, f"{key}.xyz")
        xyz(src, frames, syms, cells)
        assert_ok(run("mbe-import", "-k", key, src, master))
    return master


@T
def imported_reads_as_package_writes(d):
    """What mbe-import writes is what the package writes of the same
    arrays: the package's reader reads it, and every attribute and
    dataset has the HDF5 type, shape and make of the package's."""
    master = imported(d)
    ref = os.path.join(d, "package.h5")
    for key, (frames, _, cells) in IMPORTS.items():
        s = pkgfmt.read_any(master, key)
        assert s.dataclass == "Structure"
        assert type(s.n_frames) is np.int64 and s.n_frames == len(frames)
        assert type(s.periodic) is bool and s.periodic == (cells is not None)
        assert s.feature_vectors_type == "none" and s.ground_truth is None
        identical(s.positions, np.asarray(frames, np.float64),
                  f"{key} positions")
        if cells is not None:
            assert np.array_equal(s.cell_vectors, cells), key
        with h5py.File(master, "r") as f:
            got = type(f[key].attrs["periodic"])
            assert got is np.bool_, f"{key}: periodic reads as {got}"
        pkgfmt.save_structure(ref, key, s.positions, s.atomic_numbers,
                              s.masses, cell_vectors=s.cell_vectors)
        a, b = describe(master, key), describe(ref, key)
        assert a == b, f"{key}:\nours    {a}\npackage {b}"
        same_object(s, pkgfmt.read_any(ref, key), key)


@T
def imported_through_the_flow(d):
    master = imported(d)
    flow(d, master, [(key, "lj", [((*LJ, "--chunk", "1/2"), 0),
                                  ((*LJ, "--chunk", "2/2"), 0)])
                     for key in IMPORTS])


if __name__ == "__main__":
    T.main()
