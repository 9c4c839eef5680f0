"""Damaged shards handed to the programs: format 2 shards (checksummed
metadata, opened directly) and format 1 shards (superblock 0, opened in a
child process first, lib/isolate.c), each mutated many times: bytes
flipped, blocks overwritten, files cut short.  Whatever the damage,
mbe-status and mbe-merge never die of a signal, never hang past the
time-out, and either refuse the file with a one-line error and exit 1
(the master's bytes unchanged) or accept it and merge exactly the
undamaged results (the damage hit unused space)."""
import os
import random
import shutil
import time

from rel import *  # noqa: F401,F403
from rel import (Findings, Tests, err_lines, figure, make_argon, mutate,
                 run_prog, sha)

import h5py
import numpy as np

T = Tests()
KEY = "md/argon"
ROOT = os.environ.get("MBE_ROOT", ".")
# The child that opens an older file is stopped after this long; the
# damaged files that make libhdf5 loop take it every time.
PROBE = 3
ENV = {"MBE_PROBE_TIMEOUT": str(PROBE)}
MUTANTS = int(os.environ.get("MBE_DAMAGE_MUTANTS", "1000"))


def to_version1(src, dst):
    """The shard as mbe-shard 0.1.0 wrote it: superblock 0, variable-length
    strings (h5py's defaults)."""
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for k, v in a.attrs.items():
            b.attrs[k] = v.decode() if isinstance(v, bytes) else v
        b.attrs["mbe_shard_format_version"] = np.int64(1)
        for name, ds in a.items():
            b.create_dataset(name, data=ds[()], dtype=ds.dtype)
            for k, v in ds.attrs.items():
                b[name].attrs[k] = v.decode()


def gt_of(master):
    with h5py.File(master, "r") as f:
        g = f[KEY]["ground_truth"]
        return {n: g[n][()] for n in g if n != "mbe_merge_log"}


def same_gt(a, b):
    if sorted(a) != sorted(b):
        return False
    return all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def only_verified_rows(got, clean):
    """Every status UNDEFINED, every frame's energy and forces NaN or those
    of the clean merge."""
    e, f, st = (next(v for k, v in got.items() if k.startswith(p))
                for p in ("E_", "forces_", "status_"))
    ce, cf = (next(v for k, v in clean.items() if k.startswith(p))
              for p in ("E_", "forces_"))
    if (st != STATUS["UNDEFINED"]).any():
        return False
    for i in range(len(e)):
        if not ((np.isnan(e[i]) and np.isnan(f[i]).all()) or
                (e[i] == ce[i] and np.array_equal(f[i], cf[i]))):
            return False
    return True


def run_timed(*args, **kw):
    t0 = time.monotonic()
    p = run_prog(*args, env=ENV, timeout=PROBE + 60, **kw)
    return p, time.monotonic() - t0


def names_of(status_out):
    """The key and level lines of mbe-status's text output."""
    return [ln for ln in status_out.splitlines()
            if ln.startswith(("  key ", "  level "))]


def check_one(d, master, clean, path, what, stats, found):
    """mbe-status, and a real merge into a fresh copy of the master."""
    clean_gt, clean_names, fmt = clean
    p, took = run_timed("mbe-status", path)
    verdict = None
    if p.returncode < 0:
        verdict = f"mbe-status killed by signal {-p.returncode}"
    elif p.returncode not in (0, 1, 3):
        verdict = f"mbe-status exit {p.returncode}"
    elif p.returncode == 3 and "checksums   ok" in p.stdout:
        verdict = "mbe-status exit 3 without a failed checksum"
    elif p.returncode == 1 and (len(err_lines(p)) != 1 or
                                not p.stderr.startswith("mbe-status: ")):
        verdict = f"mbe-status error of {len(err_lines(p))} lines"
    if verdict:
        found.add(verdict, f"{what}: {p.stderr.strip()[:300]}")
        return
    # Exit 3: read, but frames fail their checksums (raw data damaged).
    stats["refused" if p.returncode else "accepted"] += 1
    status_out = p.stdout
    if "libhdf5 crashed" in p.stderr:
        stats["crashed in the child"] += 1
    if "did not finish" in p.stderr:
        stats["stopped at the time-out"] += 1
    stats["slowest"] = max(stats["slowest"], took)
    # Another directory: a master keeps its file name.
    os.makedirs(os.path.join(d, "work"), exist_ok=True)
    m = os.path.join(d, "work", "master.h5")
    shutil.copyfile(master, m)
    before = sha(m)
    p, took = run_timed("mbe-merge", "-q", m, path)
    if p.returncode < 0:
        found.add(f"mbe-merge killed by signal {-p.returncode}", what)
    elif p.returncode == 0:
        # Format 1 metadata has no checksum: a damaged level or key string
        # goes unnoticed (mbe-shard(5)); the results themselves never.
        if same_gt(gt_of(m), clean_gt):
            stats["merged as the undamaged shard"] += 1
        elif fmt == 1 and names_of(status_out) != clean_names:
            stats["merged under a damaged key or level"] += 1
        else:
            found.add("mbe-merge accepted damage and merged other values",
                      what)
    elif len(err_lines(p)) != 1:
        found.add("mbe-merge refused with more than one line",
                  f"{what}: {p.stderr.strip()[:300]}")
    elif sha(m) != before:
        # Damage of a row's forces, energy or crc shows when its forces
        # are read under the lock (each shard is read once): rows before
        # it may have been written, verified, and no status.
        if only_verified_rows(gt_of(m), clean_gt):
            stats["refused after verified rows"] += 1
        else:
            found.add("mbe-merge refused but wrote a status or other "
                      "values", f"{what}: {p.stderr.strip()[:300]}")
    stats["slowest"] = max(stats["slowest"], took)


def campaign(d, fmt, shard, master, clean_gt, seed):
    rng = random.Random(seed)
    data = open(shard, "rb").read()
    clean = (clean_gt, names_of(run_prog("mbe-status", shard).stdout), fmt)
    stats = {"refused": 0, "accepted": 0, "crashed in the child": 0,
             "stopped at the time-out": 0, "slowest": 0.0,
             "merged under a damaged key or level": 0,
             "merged as the undamaged shard": 0,
             "refused after verified rows": 0}
    found = Findings()
    path = os.path.join(d, "damaged.h5")
    for i in range(MUTANTS):
        bad, what = mutate(data, rng)
        with open(path, "wb") as f:
            f.write(bad)
        check_one(d, master, clean, path, f"{fmt} #{i}: {what}", stats,
                  found)
    figure(f"damaged format {fmt} shards",
           f"{MUTANTS} mutants: {stats['refused']} refused "
           f"({stats['crashed in the child']} crashed libhdf5 in the "
           f"child, {stats['stopped at the time-out']} stopped at the "
           f"{PROBE} s time-out), {stats['accepted']} read; mbe-merge "
           f"merged {stats['merged as the undamaged shard']} as the "
           f"undamaged shard, "
           f"{stats['merged under a damaged key or level']} under a "
           f"damaged level name, refused the others "
           f"({stats['refused after verified rows']} of them after "
           f"writing verified rows, no status); "
           f"slowest run {stats['slowest']:.1f} s, {found.count()} findings")
    found.report()
    assert not found.count(), f"{found.count()} findings"
    return stats


def setup(d):
    master = os.path.join(d, "master.h5")
    make_argon(master, n_frames=6, n_atoms=3)
    shard = os.path.join(d, "s2.h5")
    p = run_prog("mbe-compute", master, "-c", "lj", "-q", "-o", shard)
    assert p.returncode == 0, p.stderr
    os.makedirs(os.path.join(d, "ref"))
    ref = os.path.join(d, "ref", "master.h5")
    shutil.copyfile(master, ref)
    p = run_prog("mbe-merge", "-q", ref, shard)
    assert p.returncode == 0, p.stderr
    return master, shard, gt_of(ref)


@T
def format2_damage_refused_or_harmless(d):
    master, shard, clean = setup(d)
    with open(shard, "rb") as f:
        assert f.read(9)[8] == 2, "mbe-compute wrote no superblock 2"
    s = campaign(d, 2, shard, master, clean, seed=2)
    # Checksummed metadata is never handed to the child.
    assert s["crashed in the child"] == 0 and \
        s["stopped at the time-out"] == 0, s
    assert s["merged under a damaged key or level"] == 0, s


@T
def format1_damage_contained(d):
    master, shard, clean = setup(d)
    old = os.path.join(d, "s1.h5")
    to_version1(shard, old)
    with open(old, "rb") as f:
        assert f.read(9)[8] == 0
    p = run_prog("mbe-status", old)
    assert p.returncode == 0 and "checksums   ok" in p.stdout, p.stderr
    campaign(d, 1, old, master, clean, seed=1)


@T
def found_crashes_are_one_line(d):
    """The files of tests/data that made libhdf5 crash, and our reader
    allocate 2 TB, before the child process and the bounds existed."""
    master = os.path.join(d, "master.h5")
    make_argon(master, n_frames=6, n_atoms=3)
    before = sha(master)
    want = {"shard-v1-damaged-global-heap.h5": "libhdf5 crashed reading it",
            "shard-v1-huge-frames.h5": "holds 274877906944 frames"}
    for name, why in want.items():
        src = os.path.join(ROOT, "tests", "data", name)
        for args in (("mbe-status", src), ("mbe-merge", "-q", master, src)):
            p, _ = run_timed(*args)
            assert p.returncode == 1, (args, p.returncode, p.stderr)
            assert len(err_lines(p)) == 1 and why in p.stderr, p.stderr
    assert sha(master) == before


if __name__ == "__main__":
    T.main()
