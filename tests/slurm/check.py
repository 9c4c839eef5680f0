"""h5py checks of tests/slurm/run-slurm.sh: what the SLURM jobs left in the
shards and in the master, read as the Python package reads them.

  check.py part PATH MIN MAX      a shard of an interrupted task: every row's
                                  crc32 verifies, the finished frames are
                                  COMPLETED, the first ones of its piece, and
                                  between MIN and MAX of them
  check.py missing SPEC N SHARD...
                                  SPEC is exactly the frames 0..N-1 that
                                  none of the shards holds COMPLETED
  check.py covers SPEC SHARD...   the shards are finished and hold exactly
                                  the frames of SPEC, all COMPLETED
  check.py final MASTER KEY LEVEL REF
                                  the master, read under the package's lock,
                                  holds every frame COMPLETED with exactly
                                  the energies and forces of the shard REF
                                  computed outside SLURM
  check.py same MASTER REF LEVEL  every group of MASTER holds every frame
                                  COMPLETED for LEVEL with exactly the
                                  energies and forces of the master REF
  check.py keys MASTER            makes MASTER: six argon clusters of 2 to
                                  7 atoms, Structures, a Trajectory and a
                                  FiniteSubsystem, 10 frames each

Exit status 0 when the check holds; otherwise 1 with one line saying why.
"""
import os
import sys
import zlib

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import (STATUS, PythonLock, e_name, f_name,  # noqa: E402
                     s_name)

import h5py  # noqa: E402
import numpy as np  # noqa: E402


class Fail(Exception):
    pass


def need(cond, why):
    if not cond:
        raise Fail(why)


def parse_spec(spec):
    out = []
    for part in filter(None, spec.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def spec_of(frames):
    frames = sorted(frames)
    parts, i = [], 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        parts.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(parts)


def shard(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("frames", "status", "energy", "forces",
                                      "crc32")}


def check_crc(path, s):
    for k in range(len(s["status"])):
        data = (np.int64(s["status"][k]).tobytes() +
                np.float64(s["energy"][k]).tobytes() +
                np.ascontiguousarray(s["forces"][k], np.float64).tobytes())
        need(zlib.crc32(data) == int(s["crc32"][k]),
             f"{path}: crc32 of row {k} does not verify")


def completed(path):
    s = shard(path)
    return set(s["frames"][s["status"] == STATUS["COMPLETED"]].tolist())


def cmd_part(path, lo, hi):
    need(path.endswith(".part"), f"{path}: not an unfinished shard")
    s = shard(path)
    check_crc(path, s)
    done = np.flatnonzero(s["status"] != STATUS["UNDEFINED"])
    n = len(done)
    need(int(lo) <= n <= int(hi),
         f"{path}: {n} frames done, expected {lo} to {hi}")
    need(np.array_equal(done, np.arange(n)),
         f"{path}: the finished rows {done.tolist()} are not the first ones")
    need((s["status"][done] == STATUS["COMPLETED"]).all(),
         f"{path}: finished frames not COMPLETED: {s['status'][done]}")
    need(np.isfinite(s["energy"][done]).all(),
         f"{path}: COMPLETED frames without a finite energy")
    print(f"{path}: {n} of {len(s['status'])} frames, first "
          f"{spec_of(s['frames'][done].tolist())}")


def cmd_missing(spec, n_frames, *paths):
    have = set()
    for p in paths:
        have |= completed(p)
    want = spec_of(sorted(set(range(int(n_frames))) - have))
    need(spec == want, f"missing spec '{spec}', the shards leave '{want}'")


def cmd_covers(spec, *paths):
    frames = []
    for p in paths:
        need(not p.endswith(".part"), f"{p}: unfinished")
        s = shard(p)
        check_crc(p, s)
        need((s["status"] == STATUS["COMPLETED"]).all(),
             f"{p}: not every frame COMPLETED")
        frames.extend(s["frames"].tolist())
    need(sorted(frames) == parse_spec(spec),
         f"the shards hold {spec_of(frames)} (with {len(frames)} rows), "
         f"not {spec}")


def cmd_final(master, key, level, ref):
    r = shard(ref)
    need((r["status"] == STATUS["COMPLETED"]).all(), f"{ref}: not complete")
    with PythonLock(master), h5py.File(master, "r") as f:
        g = f[key]
        n = int(g.attrs["n_frames"])
        gt = g["ground_truth"]
        levels = [x.decode() if isinstance(x, bytes) else x
                  for x in gt.attrs["levels_of_theory"]]
        need(levels == [level], f"levels_of_theory {levels}")
        e, fo, st = (gt[e_name(level)], gt[f_name(level)], gt[s_name(level)])
        need(e.dtype == np.float64 and e.shape == (n,), f"energy {e}")
        need(fo.dtype == np.float64 and fo.shape == (n, g.attrs["n_atoms"], 3),
             f"forces {fo}")
        need(st.dtype == np.int64 and st.shape == (n,), f"status {st}")
        e, fo, st = e[()], fo[()], st[()]
    bad = np.flatnonzero(st != STATUS["COMPLETED"])
    need(len(bad) == 0, f"frames not COMPLETED: {spec_of(bad.tolist())}")
    need(np.array_equal(r["frames"], np.arange(n)), f"{ref}: not all frames")
    diff = np.flatnonzero(e != r["energy"])
    need(len(diff) == 0, f"energies differ from the reference at frames "
         f"{spec_of(diff.tolist())}")
    need(np.array_equal(fo, r["forces"]), "forces differ from the reference")


def level_of(f, key, level):
    gt = f[key]["ground_truth"]
    return tuple(gt[n(level)][()] for n in (e_name, f_name, s_name))


def cmd_same(master, ref, level):
    from mbetest import CLUSTER
    with PythonLock(master), h5py.File(master, "r") as f, \
            h5py.File(ref, "r") as r:
        keys = []
        f.visititems(lambda name, o: keys.append(name) if isinstance(
            o, h5py.Group) and o.attrs.get("dataclass") in (
                "Structure", "Trajectory") else None)
        need(len(keys) == 6, f"groups {keys}")
        for k in keys:
            e, fo, st = level_of(f, k, level)
            re_, rf, rs = level_of(r, k, level)
            bad = np.flatnonzero(st != STATUS["COMPLETED"])
            need(len(bad) == 0, f"{k}: not COMPLETED: {spec_of(bad.tolist())}")
            need(np.array_equal(st, rs), f"{k}: status differs")
            need(np.array_equal(e, re_), f"{k}: energies differ")
            need(np.array_equal(fo, rf), f"{k}: forces differ")
    print(f"{len(keys)} groups ({', '.join(keys)}) equal, {CLUSTER} included")


def cmd_keys(master):
    from mbetest import (random_cluster, write_finite_subsystem,
                         write_structure)
    for i in range(6):
        na = 2 + i
        pos, z = random_cluster(10, na, seed=i, spacing=3.6), [18] * na
        if i == 4:
            write_finite_subsystem(master, "fs", pos, z)
        else:
            write_structure(master, f"md/{i}" if i < 3 else f"traj{i}", pos,
                            z, mode="w" if i == 0 else "a",
                            dataclass="Trajectory" if i == 5 else "Structure")


def main():
    cmds = {"part": cmd_part, "missing": cmd_missing, "covers": cmd_covers,
            "final": cmd_final, "same": cmd_same, "keys": cmd_keys}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        cmds[sys.argv[1]](*sys.argv[2:])
    except Fail as ex:
        print(ex)
        sys.exit(1)


main()
