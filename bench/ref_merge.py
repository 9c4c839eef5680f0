#!/usr/bin/python3
"""The reference for bench/run: what the Python package does today.

    ref_merge.py [--fsync] MASTER SHARD...

Each shard stands for one job of mbe_automation.  A job holds its results
as full-size arrays (structure.ground_truth: n_frames energies, forces and
status, NaN / UNDEFINED where it computed nothing), and stores them under
the exclusive lock on MASTER.lock with the package's update rule
(_update_dataset, ../../shared/docs/master-format.md):

    dset[indices] = new_data[indices]

for energies and forces at the frames the job COMPLETED, and for status
where the new status is not UNDEFINED and the stored one is not COMPLETED.
The jobs store one after the other, as jobs that queue for the lock do.

The package does not fsync; with --fsync the master is fsync'ed once at
the end, timed separately, so that bench/run can compare with mbe-merge
(which makes the master durable) on equal terms too.

Prints a JSON line as each job starts storing ({"job": i, "store_at": t},
t in seconds since the script started), so that a run stopped at a time
cap still tells how long the stores took, and finally one JSON line:
t_load (building the full-size arrays from the shards: the job has them in
memory already, so not part of the storage time), t_store (per job: lock,
open, the three updates, close, unlock), t_fsync, frames (energy/forces
rows written) and status_rows.
"""
import fcntl
import json
import os
import sys
import time

import h5py
import numpy as np

DIVSLASH = "\u2215"
COMPLETED, UNDEFINED = 0, 1


def names(level):
    s = level.replace("/", DIVSLASH)
    return (f"E_{s} (eV{DIVSLASH}atom)", f"forces_{s} (eV{DIVSLASH}\u212b)",
            f"status_{s}")


def attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def load_job(shard):
    """The job's in-memory state: full-size arrays, as _run_model has."""
    with h5py.File(shard, "r") as f:
        n = int(f.attrs["n_frames"])
        na = int(f.attrs["n_atoms"])
        key = attr_str(f.attrs["key"])
        level = attr_str(f.attrs["level"])
        idx = f["frames"][()]
        energy = np.full(n, np.nan)
        forces = np.full((n, na, 3), np.nan)
        status = np.full(n, UNDEFINED, np.int64)
        energy[idx] = f["energy"][()]
        forces[idx] = f["forces"][()]
        status[idx] = f["status"][()]
    return key, level, energy, forces, status


class Lock:
    """mbe_automation.storage.file_lock: exclusive flock on <path>.lock."""

    def __init__(self, master):
        self.path = master + ".lock"

    def __enter__(self):
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *a):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def store(master, key, level, energy, forces, status):
    """_update_dataset for an existing level: partial writes in place."""
    e_name, f_name, s_name = names(level)
    with Lock(master), h5py.File(master, "a") as f:
        g = f[key]["ground_truth"]
        completed = np.flatnonzero(status == COMPLETED)
        if len(completed):
            g[e_name][completed] = energy[completed]
            g[f_name][completed] = forces[completed]
        old = g[s_name][()]
        idx = np.flatnonzero((status != UNDEFINED) & (old != COMPLETED))
        if len(idx):
            g[s_name][idx] = status[idx]
        levels = sorted({attr_str(s) for s in
                         g.attrs.get("levels_of_theory", [])} | {level})
        g.attrs["levels_of_theory"] = np.array(levels,
                                               dtype=h5py.string_dtype())
    return len(completed), len(idx)


def main(argv):
    do_fsync = "--fsync" in argv
    args = [a for a in argv if a != "--fsync"]
    if len(args) < 2:
        sys.exit("usage: ref_merge.py [--fsync] MASTER SHARD...")
    master, shards = args[0], args[1:]
    out = {"t_load": 0.0, "t_store": [], "t_fsync": 0.0, "frames": 0,
           "status_rows": 0}
    start = time.perf_counter()
    for i, sh in enumerate(shards):
        t0 = time.perf_counter()
        key, level, energy, forces, status = load_job(sh)
        t1 = time.perf_counter()
        print(json.dumps({"job": i, "store_at": t1 - start,
                          "t_store_before": sum(out["t_store"])}),
              flush=True)
        nf, ns = store(master, key, level, energy, forces, status)
        t2 = time.perf_counter()
        del energy, forces, status
        out["t_load"] += t1 - t0
        out["t_store"].append(t2 - t1)
        out["frames"] += nf
        out["status_rows"] += ns
    if do_fsync:
        t0 = time.perf_counter()
        fd = os.open(master, os.O_RDWR)
        os.fsync(fd)
        os.close(fd)
        out["t_fsync"] = time.perf_counter() - t0
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
