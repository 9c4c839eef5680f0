#!/usr/bin/python3
"""mbe-merge under races and with what its merge log records: the geometry
checked under the lock that writes, later stages of a shard, one method
per level, a damaged log and its way out, logs of the older record type."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "md/argon"
C, U = STATUS["COMPLETED"], STATUS["UNDEFINED"]
LOG = "mbe_merge_log"


def master(d, n=12, name="master.h5", seed=3):
    path = os.path.join(d, name)
    write_structure(path, KEY, random_cluster(n, 4, seed=seed, spacing=3.6),
                    np.full(4, 18))
    return path


shard = lj_shard  # noqa: F405


def gt(path, level="lj"):
    with h5py.File(path, "r") as f:
        g = f[KEY]["ground_truth"]
        return tuple(g[n][()] for n in (e_name(level), f_name(level),
                                        s_name(level)))


def log_records(path):
    with h5py.File(path, "r") as f:
        g = f[KEY]["ground_truth"]
        return g[LOG][()] if LOG in g else []


def text(v):
    return v.decode() if isinstance(v, bytes) else v


# ----------------------------------------------------------------- races

@T
def group_replaced_while_waiting_gets_nothing(d):
    """The package's save_structure(update_mode="replace") between the
    merge's start and its lock (del f[key], write it again, positions
    + 0.5 A): the geometry is checked under the lock that writes, so the
    merge refuses the shard and writes nothing."""
    m = master(d)
    s = shard(d, m, "s.h5")
    proc, err = merge_paused_at_lock(d, m, s)
    try:
        with PythonLock(m):
            with h5py.File(m, "r") as f:
                pos = f[KEY][POS][()]
            with h5py.File(m, "a") as f:
                del f[KEY]
            write_structure(m, KEY, pos + 0.5, np.full(4, 18))
        digest = sha_of(m)
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == 1, (rc, out, errs)
    assert "geometry of 12 of 12 frames differs" in errs, errs
    assert sha_of(m) == digest
    with h5py.File(m, "r") as f:
        assert "ground_truth" not in f[KEY]


# ---------------------------------------------------------------- stages

@T
def later_stage_applies_only_what_is_new(d):
    """A .part merged while its job ran (frames 0-5 done), frames 0-2
    recomputed with --overwrite into another shard and merged, then the
    finished shard merged: frames 0-2 keep the recomputation, 6-11 come
    from the finished shard, 0-5 are not applied again."""
    m = master(d)
    full = shard(d, m, "job.h5")
    fr, st, en, fo, crc = shard_arrays(full)
    part = os.path.join(d, "job-stage1.h5.part")
    import shutil
    shutil.copy(full, part)
    with h5py.File(part, "r+") as f:   # the job had done frames 0-5
        s = f["status"][()]
        s[6:] = U
        f["status"][...] = s
        e = f["energy"][()]
        e[6:] = np.nan
        f["energy"][...] = e
        fo2 = f["forces"][()]
        fo2[6:] = np.nan
        f["forces"][...] = fo2
        c = f["crc32"][()]
        for k in range(6, 12):
            c[k] = result_crc(U, np.nan, fo2[k])
        f["crc32"][...] = c
    assert_ok(merge("-q", m, part))
    redo = shard(d, m, "redo.h5", "--overwrite", "-f", "0-2")
    with h5py.File(redo, "r+") as f:   # another run, other results
        e = f["energy"][()] + 1e-3
        f["energy"][...] = e
        c = f["crc32"][()]
        for k in range(3):
            c[k] = result_crc(C, e[k], f["forces"][k])
        f["crc32"][...] = c
        redo_e = e
    assert_ok(merge("-q", m, redo))
    p = merge(m, full)
    assert_ok(p)
    assert "6 frames taken by an earlier merge" in p.stdout, (p.stdout, [(text(r["shard_id"]), text(r["frame_set"]), text(r["frame_digest"])) for r in log_records(m)])
    E, F, S = gt(m)
    assert np.array_equal(E[:3], redo_e), "the old stage overwrote newer"
    assert np.array_equal(E[3:], en[3:]) and (S == C).all()
    recs = log_records(m)
    sets = [text(r["frame_set"]) for r in recs]
    assert sets == ["0-5", "0-2", "6-11"], sets
    # The same finished shard again: applied already.
    p = merge(m, full)
    assert_ok(p)
    assert "already applied" in p.stdout, p.stdout


@T
def changed_rows_of_an_earlier_stage_are_applied(d):
    """A shard whose rows changed since an earlier merge of it (same id,
    other crcs): the record's digest no longer matches, so its frames are
    applied again by the update rule."""
    m = master(d, n=6)
    s = shard(d, m, "s.h5")
    assert_ok(merge("-q", m, s))
    with h5py.File(s, "r+") as f:
        e = f["energy"][()] + 1e-3
        f["energy"][...] = e
        c = f["crc32"][()]
        for k in range(6):
            c[k] = result_crc(C, e[k], f["forces"][k])
        f["crc32"][...] = c
    p = merge(m, s)
    assert_ok(p)
    assert "earlier merge" not in p.stdout, p.stdout
    assert np.array_equal(gt(m)[0], e)


# ------------------------------------------------------------ one method

@T
def one_level_one_method(d):
    """Shards of one level with other settings, or another calculator
    under the same level, are refused in one line naming both and their
    settings, unless --allow-mixed-settings; the method recorded by
    earlier merges counts too; how an engine is reached does not."""
    m = master(d)
    a = shard(d, m, "a.h5", "-f", "0-5")
    b = shard(d, m, "b.h5", "-f", "6-11", "--lj-sigma", "3.0")
    digest = sha_of(m)
    p = merge(m, a, b)
    assert p.returncode == 1, p.stderr
    line = one_line(p)
    for want in (a, b, "lj_sigma=3.4", "lj_sigma=3", "level 'lj'",
                 "--allow-mixed-settings"):
        assert want in line, (want, line)
    assert sha_of(m) == digest
    cmd = ("exec:printf '%s\\nenergy=-1.0 Properties=species:S:1:pos:R:3:"
           "forces:R:3\\n' \"$MBE_NATOMS\"; sed -n '3,$p' | "
           "awk '{print $1, $2, $3, $4, 0, 0, 0}'")
    x = os.path.join(d, "x.h5")
    assert_ok(compute(m, "-c", cmd, "-l", "lj", "-q", "-f", "6-11", "-o", x))
    p = merge(m, a, x)
    assert p.returncode == 1 and "would mix methods" in p.stderr, p.stderr
    # One method: fine; then the level's method is the recorded one.
    assert_ok(merge("-q", m, a))
    p = merge(m, b)
    assert p.returncode == 1, p.stderr
    assert "the master's results, merged from" in p.stderr, p.stderr
    assert_ok(merge("-q", "--allow-mixed-settings", m, b))
    # A time-out is how long to wait, not what is computed.
    m2 = master(d, name="m2.h5")
    e1 = os.path.join(d, "e1.h5")
    e2 = os.path.join(d, "e2.h5")
    assert_ok(compute(m2, "-c", cmd, "-l", "fake", "-q", "-f", "0-5",
                      "-o", e1))
    assert_ok(compute(m2, "-c", cmd, "-l", "fake", "-q", "-f", "6-11",
                      "--frame-timeout", "30", "-o", e2))
    assert_ok(merge("-q", m2, e1, e2))


# -------------------------------------------------------- damaged log

@T
def damaged_log_has_a_way_out(d):
    """A merge log nobody can read (written beside the lock): mbe-merge
    fails in one line naming --reset-log, mbe-status still reports the
    group (exit 0) with the error, --reset-log -n lists, --reset-log drops
    it, and merging again rebuilds it without changing the results."""
    m = master(d)
    s = shard(d, m, "s.h5")
    assert_ok(merge("-q", m, s))
    want = gt(m)
    with h5py.File(m, "a") as f:   # what no mbe-merge wrote
        g = f[KEY]["ground_truth"]
        del g[LOG]
        g.create_dataset(LOG, data=np.arange(3.0))
    p = merge(m, s)
    assert p.returncode == 1, p.stderr
    line = one_line(p)
    assert "--reset-log " + m in line and "merge log" in line, line
    p = run("mbe-status", m)
    assert_ok(p)
    assert "merge log cannot be read" in p.stdout, p.stdout
    o = json.loads(run("mbe-status", "--json", m).stdout)
    g = o["files"][0]["groups"][0]
    assert "--reset-log" in g["merge_log_error"], g
    assert g["levels"][0]["counts"]["COMPLETED"] == 12
    p = merge("--reset-log", "-n", m)
    assert_ok(p)
    assert f"would drop {KEY}/ground_truth/{LOG}" in p.stdout, p.stdout
    with h5py.File(m, "r") as f:
        assert LOG in f[KEY]["ground_truth"]
    p = merge("--reset-log", m)
    assert_ok(p)
    assert "1 merge log dropped" in p.stderr, p.stderr
    with h5py.File(m, "r") as f:
        assert LOG not in f[KEY]["ground_truth"]
    assert_ok(merge("-q", m, s))
    got = gt(m)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in
               zip(got, want))
    assert len(log_records(m)) == 1
    p = merge("--reset-log", m, s)
    assert p.returncode == 2, p.stderr


@T
def old_log_records_are_kept_and_upgraded(d):
    """A log of mbe-shard 0.2 (records without frame_set, frame_digest,
    calculator, calc_settings): read, its shards recognised as applied,
    and rewritten in the current record type when a merge appends."""
    m = master(d)
    a = shard(d, m, "a.h5", "-f", "0-5")
    b = shard(d, m, "b.h5", "-f", "6-11")
    assert_ok(merge("-q", m, a))
    with h5py.File(m, "a") as f:
        g = f[KEY]["ground_truth"]
        old = g[LOG][()]
        keep = ["shard_id", "key", "level", "time", "path", "frames",
                "completed", "applied", "digest"]
        dt = np.dtype([(k, old.dtype[k]) for k in keep])
        rows = np.array([tuple(r[k] for k in keep) for r in old], dtype=dt)
        del g[LOG]
        g.create_dataset(LOG, data=rows, maxshape=(None,), chunks=(16,))
    p = merge(m, a)
    assert_ok(p)
    assert "already applied" in p.stdout, p.stdout
    assert_ok(merge("-q", m, b))
    recs = log_records(m)
    assert len(recs) == 2 and "frame_set" in recs.dtype.names
    assert text(recs[0]["frame_set"]) == "" and \
        text(recs[1]["frame_set"]) == "6-11"
    assert text(recs[0]["shard_id"]) == read_shard(a)[4]["shard_id"]


# ---------------------------------------------------------------- helpers

def one_line(p):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


def sha_of(path):
    import hashlib
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def result_crc(st, en, fo):
    import zlib
    return zlib.crc32(np.int64(st).tobytes() + np.float64(en).tobytes() +
                      np.ascontiguousarray(fo, np.float64).tobytes())


if __name__ == "__main__":
    T.main()
