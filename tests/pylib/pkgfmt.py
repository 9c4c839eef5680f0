"""mbe_automation.storage as the tests need it: masters written and read
with h5py the way the package's storage/core.py does it.

Written from what the package leaves in a file, not from its code (it has
no licence, and CI cannot reach it): the names, the HDF5 types h5py makes
of the Python values the package holds (str: vlen UTF-8; bool: numpy's
bool enum; int: int64; a list of str: a 1-D vlen string array, an empty
list a float64 array of length 0), which datasets each kind of group has
and in which order they are written, and its update rule.

Writers: save_structure, save_trajectory, save_finite_subsystem and
save_ground_truth.  Readers: read_any, by the dataclass attribute, and
read_ground_truth, which like the package sees a level only through
levels_of_theory.  package_job: what a package job that computed a
shard's frames stores in the file (read the object, broadcast the
results into its in-memory ground truth as Structure.run does, save).
Every file access holds the package's lock (file_lock.dataset_file)."""
import contextlib
import types

import h5py
import numpy as np

from mbetest import (ATOMIC_NUMBERS, CELL, CLUSTER, E_KIN, E_POT,
                     E_ROT_DRIFT, E_TRANS_DRIFT, FEATURE_VECTORS, FORCES, GT,
                     LEVELS, MASSES, MOLECULE_INDICES, POS, PRESSURE, STATUS,
                     TEMPERATURE, TIME, VELOCITIES, VOLUME, PythonLock,
                     e_name, f_name, s_name)

C, U = STATUS["COMPLETED"], STATUS["UNDEFINED"]


@contextlib.contextmanager
def locked(path, mode, lock=True):
    """h5py.File under the package's exclusive flock on <path>.lock.
    lock=False for callers that hold it already (flock would wait for
    them: each open of the lock file is a lock of its own)."""
    with PythonLock(path) if lock else contextlib.nullcontext():
        with h5py.File(path, mode) as f:
            yield f


class GroundTruth:
    """The package's in-memory ground truth: per level of theory, energies
    (eV/atom), forces and calculation status, each optional."""

    def __init__(self, energies=None, forces=None, status=None):
        self.energies = dict(energies or {})
        self.forces = dict(forces or {})
        self.status = dict(status or {})

    def levels(self):
        return set(self.energies) | set(self.forces) | set(self.status)


def obj(**kw):
    return types.SimpleNamespace(**kw)


# ------------------------------------------------------------- writing

@contextlib.contextmanager
def saved_group(path, key, update_mode, lock):
    """(file, group at key, whether it is new) for a save; "replace"
    deletes an old group first."""
    with locked(path, "a", lock) as f:
        if update_mode == "replace" and key in f:
            del f[key]
        new = key not in f
        yield f, f.require_group(key), new


def create_datasets(g, arrays):
    """The (name, data) pairs in order, those with data."""
    for name, data in arrays:
        if data is not None:
            g.create_dataset(name, data=data)


def save_structure(path, key, positions, atomic_numbers, masses,
                   cell_vectors=None, E_pot=None, forces=None,
                   feature_vectors=None, feature_vectors_type="none",
                   ground_truth=None, level_of_theory=None,
                   update_mode="update_properties", lock=True, **_ignored):
    """storage.save_structure: a new key gets its datasets, then its
    attributes; an existing one only what is missing of feature vectors
    and the ground truth.  Positions (n_atoms, 3) are a single frame.
    Extra fields of a Structure read back (dataclass, ...) are ignored,
    as the package's save takes only these."""
    positions = np.asarray(positions)
    if positions.ndim not in (2, 3):
        raise ValueError(f"positions of rank {positions.ndim}")
    # Python ints, which h5py stores as int64.
    n_frames = 1 if positions.ndim == 2 else positions.shape[0]
    n_atoms = positions.shape[-2]
    with saved_group(path, key, update_mode, lock) as (f, g, new):
        if new:
            arrays = [(POS, positions), (ATOMIC_NUMBERS, atomic_numbers),
                      (MASSES, masses), (CELL, cell_vectors),
                      (FEATURE_VECTORS, feature_vectors
                       if feature_vectors_type != "none" else None),
                      (E_POT, E_pot), (FORCES, forces)]
            create_datasets(g, arrays)
            g.attrs["dataclass"] = "Structure"
            g.attrs["n_frames"] = n_frames
            g.attrs["n_atoms"] = n_atoms
            g.attrs["periodic"] = cell_vectors is not None
            g.attrs["feature_vectors_type"] = feature_vectors_type
            if level_of_theory is not None:
                g.attrs["level_of_theory"] = level_of_theory
        elif update_mode == "update_properties":
            add_feature_vectors(g, feature_vectors, feature_vectors_type)
        if ground_truth is not None:
            save_ground_truth(f, f"{key}/{GT}", ground_truth, update_mode)


def add_feature_vectors(g, feature_vectors, feature_vectors_type):
    """Feature vectors computed after the group was saved."""
    if feature_vectors is not None and feature_vectors_type != "none" \
            and FEATURE_VECTORS not in g:
        g.create_dataset(FEATURE_VECTORS, data=feature_vectors)
        g.attrs["feature_vectors_type"] = feature_vectors_type


def md_trajectory(positions, atomic_numbers, masses, cell_vectors=None,
                  ensemble="NVT", level_of_theory=None, seed=0):
    """A Trajectory as the package's MD leaves it in memory (its fields,
    with the Python and numpy types they have there), made-up values."""
    rng = np.random.default_rng(seed)
    positions = np.asarray(positions, np.float64)
    n, na = positions.shape[0], positions.shape[1]
    periodic = cell_vectors is not None
    npt = ensemble == "NPT"

    def series(mean):
        return mean + rng.normal(0, 0.01, n)

    return obj(
        dataclass="Trajectory", ensemble=ensemble, n_frames=n, n_atoms=na,
        periodic=periodic, positions=positions,
        atomic_numbers=np.asarray(atomic_numbers, np.int64),
        masses=np.asarray(masses, np.float64), cell_vectors=cell_vectors,
        time=np.arange(n) * 10.0, temperature=series(298.0),
        pressure=series(1e-4) if npt else None,
        volume=series(20.0) if npt else None,
        forces=rng.normal(0, 0.1, (n, na, 3)),
        velocities=rng.normal(0, 0.01, (n, na, 3)),
        E_kin=series(0.04), E_pot=series(-3.0), E_trans_drift=series(0.0),
        E_rot_drift=None if periodic else series(0.0),
        feature_vectors=None, feature_vectors_type="none",
        target_temperature=298.15, time_equilibration=1000.0,
        target_pressure=1e-4 if npt else None,
        n_removed_trans_dof=3, n_removed_rot_dof=0 if periodic else 3,
        ground_truth=None, level_of_theory=level_of_theory)


def save_trajectory(path, key, t, update_mode="update_properties",
                    lock=True):
    """storage.save_trajectory: attributes first, then the MD series,
    then the geometry; on an existing key only feature vectors and the
    ground truth."""
    with saved_group(path, key, update_mode, lock) as (f, g, new):
        if new:
            attrs = [("dataclass", "Trajectory"), ("ensemble", t.ensemble),
                     ("n_frames", t.n_frames), ("n_atoms", t.n_atoms),
                     ("periodic", t.periodic),
                     ("feature_vectors_type", t.feature_vectors_type),
                     ("target_temperature (K)", t.target_temperature),
                     ("time_equilibration (fs)", t.time_equilibration),
                     ("n_removed_trans_dof", t.n_removed_trans_dof),
                     ("n_removed_rot_dof", t.n_removed_rot_dof)]
            if t.ensemble == "NPT":
                attrs.append(("target_pressure (GPa)", t.target_pressure))
            if t.level_of_theory is not None:
                attrs.append(("level_of_theory", t.level_of_theory))
            for name, value in attrs:
                g.attrs[name] = value
            npt = t.ensemble == "NPT"
            arrays = [(TIME, t.time), (TEMPERATURE, t.temperature),
                      (PRESSURE, t.pressure if npt else None),
                      (VOLUME, t.volume if npt else None),
                      (FORCES, t.forces), (VELOCITIES, t.velocities),
                      (E_KIN, t.E_kin), (E_POT, t.E_pot),
                      (E_TRANS_DRIFT, t.E_trans_drift),
                      (E_ROT_DRIFT, None if t.periodic else t.E_rot_drift),
                      (POS, t.positions), (ATOMIC_NUMBERS, t.atomic_numbers),
                      (MASSES, t.masses),
                      (CELL, t.cell_vectors if t.periodic else None),
                      (FEATURE_VECTORS, t.feature_vectors
                       if t.feature_vectors_type != "none" else None)]
            create_datasets(g, arrays)
        elif update_mode == "update_properties":
            add_feature_vectors(g, t.feature_vectors, t.feature_vectors_type)
        if t.ground_truth is not None:
            save_ground_truth(f, f"{key}/{GT}", t.ground_truth, update_mode)


def save_finite_subsystem(path, key, n_molecules, molecule_indices,
                          lock=True, **cluster):
    """storage.save_finite_subsystem: the key is made anew (an old one is
    deleted), then its cluster_of_molecules is saved as a Structure."""
    with locked(path, "a", lock) as f:
        if key in f:
            del f[key]
        g = f.create_group(key)
        g.attrs["dataclass"] = "FiniteSubsystem"
        g.attrs["n_molecules"] = n_molecules
        g.create_dataset(MOLECULE_INDICES, data=molecule_indices)
    save_structure(path, f"{key}/{CLUSTER}", lock=lock, **cluster)


def _store(g, name, data, level, gt, update_mode, is_status):
    """One dataset of _save_ground_truth: created whole (replacing) when
    missing or not updating; otherwise rows written where the in-memory
    status allows: results where it is COMPLETED, the status where it is
    not UNDEFINED and the stored one is not COMPLETED."""
    if update_mode != "update_properties" or name not in g:
        if name in g:
            del g[name]
        g.create_dataset(name, data=data)
        return
    ds = g[name]
    if ds.shape != data.shape:
        raise ValueError(f"{name}: shape {ds.shape}, new {data.shape}")
    new = gt.status.get(level)
    if new is None:
        ds[...] = data
        return
    if is_status:
        stored = g[name][...]
        rows = np.flatnonzero((new != U) & (stored != C))
    else:
        rows = np.flatnonzero(new == C)
    if len(rows):
        ds[rows] = data[rows]


def save_ground_truth(f, key, gt, update_mode="update_properties"):
    """_save_ground_truth: every level in memory, energies of all levels
    first, then forces, then statuses; levels_of_theory is then the sorted
    list of the levels that were there and those with energies or forces
    (a list of str: h5py makes a float64 array of length 0 of an empty
    one)."""
    g = f.require_group(key)
    levels = set(g.attrs.get(LEVELS, []))
    for level, e in gt.energies.items():
        _store(g, e_name(level), e, level, gt, update_mode, False)
        levels.add(level)
    for level, fo in gt.forces.items():
        _store(g, f_name(level), fo, level, gt, update_mode, False)
        levels.add(level)
    for level, st in gt.status.items():
        _store(g, s_name(level), st, level, gt, update_mode, True)
    g.attrs[LEVELS] = sorted(levels)


# ------------------------------------------------------------- reading

def read_ground_truth(f, key):
    """_read_ground_truth: None without the group; only the levels in
    levels_of_theory (as h5py returns them: a bytes level fails on '/'
    as in the package); a level without status reads COMPLETED."""
    if key not in f:
        return None
    g = f[key]
    gt = GroundTruth()
    for level in g.attrs.get(LEVELS, []):
        for names, store in ((e_name, gt.energies), (f_name, gt.forces),
                             (s_name, gt.status)):
            if names(level) in g:
                store[level] = g[names(level)][...]
        if level not in gt.status:
            some = gt.energies.get(level, gt.forces.get(level))
            if some is not None and len(some):
                gt.status[level] = np.full(len(some), C, np.int64)
    return gt


def _read_frames(f, key, g):
    """The fields read_structure and read_trajectory share."""
    periodic = g.attrs["periodic"]
    fv_type = g.attrs["feature_vectors_type"]

    def opt(name):
        return g[name][...] if name in g else None

    s = obj(positions=g[POS][...], atomic_numbers=g[ATOMIC_NUMBERS][...],
            masses=g[MASSES][...],
            cell_vectors=g[CELL][...] if periodic else None,
            n_frames=g.attrs["n_frames"], n_atoms=g.attrs["n_atoms"],
            feature_vectors_type=fv_type,
            feature_vectors=(g[FEATURE_VECTORS][...]
                             if fv_type != "none" else None),
            E_pot=opt(E_POT), forces=opt(FORCES),
            ground_truth=read_ground_truth(f, f"{key}/{GT}"),
            level_of_theory=g.attrs.get("level_of_theory"))
    # Structure.__post_init__: periodic means a cell was read.
    s.periodic = s.cell_vectors is not None
    return s


def read_structure(path, key):
    with locked(path, "r") as f:
        s = _read_frames(f, key, f[key])
    s.dataclass = "Structure"
    return s


def read_trajectory(path, key):
    """read_trajectory: a Structure's fields and every MD field, all of
    them required (p, V and the target pressure in NPT only, E_rot_drift
    for molecules only)."""
    with locked(path, "r") as f:
        g = f[key]
        t = _read_frames(f, key, g)
        npt = g.attrs["ensemble"] == "NPT"
        t.dataclass = "Trajectory"
        t.ensemble = g.attrs["ensemble"]
        t.time = g[TIME][...]
        t.temperature = g[TEMPERATURE][...]
        t.pressure = g[PRESSURE][...] if npt else None
        t.volume = g[VOLUME][...] if npt else None
        t.forces = g[FORCES][...]
        t.velocities = g[VELOCITIES][...]
        t.E_kin = g[E_KIN][...]
        t.E_pot = g[E_POT][...]
        t.E_trans_drift = g[E_TRANS_DRIFT][...]
        t.E_rot_drift = g[E_ROT_DRIFT][...] if not t.periodic else None
        t.target_temperature = g.attrs["target_temperature (K)"]
        t.target_pressure = g.attrs["target_pressure (GPa)"] if npt else None
        t.time_equilibration = g.attrs["time_equilibration (fs)"]
        t.n_removed_trans_dof = g.attrs["n_removed_trans_dof"]
        t.n_removed_rot_dof = g.attrs["n_removed_rot_dof"]
    return t


def read_finite_subsystem(path, key):
    cluster = read_structure(path, f"{key}/{CLUSTER}")
    with locked(path, "r") as f:
        g = f[key]
        return obj(dataclass="FiniteSubsystem", cluster_of_molecules=cluster,
                   n_molecules=g.attrs["n_molecules"],
                   molecule_indices=g[MOLECULE_INDICES][...])


READERS = {"Structure": read_structure, "Trajectory": read_trajectory,
           "FiniteSubsystem": read_finite_subsystem}


def read_any(path, key):
    """api AnySystem.read: the reader named by the dataclass attribute,
    which must read back as the str the package wrote (a fixed-length
    string reads as bytes and names no class)."""
    with locked(path, "r") as f:
        dc = f[key].attrs["dataclass"]
    reader = READERS.get(dc) if isinstance(dc, str) else None
    if reader is None:
        raise ValueError(f"{key}: dataclass {dc!r} is no class the package "
                         "reads")
    return reader(path, key)


def frames_of(o):
    """The Structure that holds an object's frames."""
    return o.cluster_of_molecules if o.dataclass == "FiniteSubsystem" else o


def completed_frames(s, level):
    """_completed_frames for one level: every frame for the model that
    made the geometries, the COMPLETED ones of a level in the ground
    truth, none otherwise."""
    if s.level_of_theory is not None and level == s.level_of_theory:
        return np.arange(s.n_frames)
    if s.ground_truth is not None and level in s.ground_truth.status:
        return np.flatnonzero(s.ground_truth.status[level] == C)
    return np.array([], np.int64)


# -------------------------------------------------- a job of the package

def package_job(path, key, level, frames, status, energies=None,
                forces=None):
    """What the package stores when a job reads the object at key, runs a
    calculator on frames (Structure.run: the results broadcast into full
    arrays, NaN and UNDEFINED elsewhere when the level is new) and saves
    it.  energies or forces None: run with energies=False or
    forces=False.  The save is the object's own: Structure.save and
    Trajectory.save on an existing key write only the ground truth,
    FiniteSubsystem.save(only="ground_truth") that of its cluster."""
    o = read_any(path, key)
    s = frames_of(o)
    if s.ground_truth is None:
        s.ground_truth = GroundTruth()
    gt, n, na = s.ground_truth, int(s.n_frames), int(s.n_atoms)
    frames = np.asarray(frames, np.int64)
    if energies is not None:
        gt.energies.setdefault(level, np.full(n, np.nan))[frames] = energies
    if forces is not None:
        gt.forces.setdefault(level, np.full((n, na, 3), np.nan))[frames] = \
            forces
    gt.status.setdefault(level, np.full(n, U, np.int64))[frames] = status
    if o.dataclass == "FiniteSubsystem":
        with locked(path, "r+") as f:
            cluster = f"{key}/{CLUSTER}"
            if f[cluster].attrs["n_frames"] != s.n_frames:
                raise ValueError("frame count mismatch")
            save_ground_truth(f, f"{cluster}/{GT}", gt)
    elif o.dataclass == "Trajectory":
        save_trajectory(path, key, o)
    else:
        save_structure(path, key, **vars(o))
