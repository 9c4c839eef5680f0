#!/usr/bin/python3
"""Energies-only levels (mbe-compute --no-forces), as the package's
Structure.run(calculator, forces=False) stores them: E_<level> and
status_<level>, no forces dataset.  Shard format 3 without forces, merged
alone, together with full shards of the same level, and into levels that
hold forces already (left as they are)."""
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "md/argon"
C, U = STATUS["COMPLETED"], STATUS["UNDEFINED"]


def master(d, n=8, name="m.h5"):
    path = os.path.join(d, name)
    write_structure(path, KEY, random_cluster(n, 4, seed=2, spacing=3.6),
                    [18] * 4)
    return path


shard = lj_shard  # noqa: F405


def gt(path, level="lj"):
    with h5py.File(path, "r") as f:
        g = f[KEY]["ground_truth"]
        return {n: (g[n][()] if n in g else None)
                for n in (e_name(level), f_name(level), s_name(level))}


@T
def shard_without_forces(d):
    """Format 3, has_forces 0, no forces dataset; each row's crc32 covers
    status and energy only; mbe-status says so."""
    m = master(d)
    s = shard(d, m, "s.h5", "--no-forces")
    with h5py.File(s, "r") as f:
        assert f.attrs["mbe_shard_format_version"] == 3
        assert f.attrs["has_forces"] == 0
        assert "forces" not in f
        st, en, crc = f["status"][()], f["energy"][()], f["crc32"][()]
    assert (st == C).all()
    for k in range(len(st)):
        data = np.int64(st[k]).tobytes() + np.float64(en[k]).tobytes()
        assert zlib.crc32(data) == int(crc[k]), k
    full = shard(d, m, "full.h5")
    with h5py.File(full, "r") as f:
        assert f.attrs["mbe_shard_format_version"] == 2
        assert "has_forces" not in f.attrs
        assert np.array_equal(f["energy"][()], en), "energies differ"
    p = run("mbe-status", s)
    assert_ok(p)
    assert "energies only" in p.stdout, p.stdout
    o = json.loads(run("mbe-status", "--json", s).stdout)["files"][0]
    assert o["has_forces"] is False and o["checksums"] == "ok", o


@T
def merged_alone_creates_no_forces(d):
    """Energies and status created and written, no forces dataset; the
    package's reader sees the energies; mbe-status shows E,S."""
    m = master(d)
    s = shard(d, m, "s.h5", "--no-forces")
    p = merge(m, s)
    assert_ok(p)
    assert "forces_" not in p.stdout, p.stdout
    g = gt(m)
    assert g[f_name("lj")] is None
    _, _, en, _, _ = read_shard_arrays(s)
    assert np.array_equal(g[e_name("lj")], en)
    assert (g[s_name("lj")] == C).all()
    lv = json.loads(run("mbe-status", "--json", m).stdout)[
        "files"][0]["groups"][0]["levels"][0]
    assert lv["datasets"] == ["energies", "status"], lv
    assert " E,S " in run("mbe-status", m).stdout
    # A second run: already applied, nothing written.
    p = merge(m, s)
    assert_ok(p)
    assert "already applied" in p.stdout, p.stdout


@T
def forces_in_the_master_left_alone(d):
    """A level with forces already: an energies-only shard recomputed with
    --overwrite writes energies and leaves every force as it was."""
    m = master(d)
    assert_ok(merge("-q", m, shard(d, m, "full.h5", "-f", "0-3")))
    before = gt(m)
    s = shard(d, m, "e.h5", "--no-forces", "--overwrite", "--lj-sigma",
              "3.3", "-f", "2-7")
    p = merge("-q", m, s)
    assert p.returncode == 1 and "would mix methods" in p.stderr, p.stderr
    assert_ok(merge("-q", "--allow-mixed-settings", m, s))
    after = gt(m)
    assert same_bits(after[f_name("lj")], before[f_name("lj")])
    assert not np.array_equal(after[e_name("lj")][2:4],
                              before[e_name("lj")][2:4])
    assert (after[s_name("lj")] == C).all()


@T
def energies_only_and_full_shards_together(d):
    """One level, two kinds of shard in one merge: the same energies are no
    conflict, forces come from the full shard whichever comes last, and
    frames only the energies-only shard holds keep NaN forces."""
    m = master(d)
    full = shard(d, m, "full.h5", "-f", "0-3")
    eonly = shard(d, m, "e.h5", "--no-forces", "-f", "2-7")
    p = merge(m, full, eonly)
    assert_ok(p)
    g = gt(m)
    _, _, en_f, fo_f, _ = read_shard_arrays(full)
    assert same_bits(g[f_name("lj")][:4], fo_f)
    assert np.isnan(g[f_name("lj")][4:]).all()
    assert np.isfinite(g[e_name("lj")]).all()
    assert (g[s_name("lj")] == C).all()
    # Different energies for a frame in both: a conflict, as ever.
    m2 = master(d, name="m2.h5")
    full = shard(d, m2, "full2.h5", "-f", "0-3")
    other = shard(d, m2, "e2.h5", "--no-forces", "--lj-sigma", "3.3",
                  "-f", "3-5")
    p = merge("--allow-mixed-settings", m2, full, other)
    assert p.returncode == 1 and "different results" in p.stderr, p.stderr


@T
def exec_engine_need_not_print_forces(d):
    """An exec: command run with --no-forces is told MBE_FORCES=0 and may
    print the count and comment lines only."""
    m = master(d, n=3)
    cmd = ("exec:test \"$MBE_FORCES\" = 0 || exit 7; "
           "printf '%s\\nenergy=-1.5\\n' \"$MBE_NATOMS\"")
    out = os.path.join(d, "x.h5")
    p = compute(m, "-c", cmd, "-l", "fake", "--no-forces", "-q", "-o", out)
    assert_ok(p)
    with h5py.File(out, "r") as f:
        assert np.allclose(f["energy"][()], -1.5 / 4)
    p = compute(m, "-c", cmd, "-l", "fake", "-q", "-o",
                os.path.join(d, "y.h5"))
    assert p.returncode == 3, p.stderr


@T
def xtb_energies_equal_full_run(d):
    """GFN-FF with --no-forces gives the energies of the full run, bit for
    bit (libxtb computes the same single point; the gradient is only not
    read)."""
    xyz = os.path.join(ROOT, "examples", "water-cluster.xyz")
    m = os.path.join(d, "w.h5")
    assert_ok(run("mbe-import", "-q", "-k", KEY, xyz, m))
    a = os.path.join(d, "a.h5")
    b = os.path.join(d, "b.h5")
    env = {"OMP_NUM_THREADS": "1"}
    assert_ok(run("mbe-compute", m, "-c", "gfn-ff", "-f", "0-4", "-q",
                  "-o", a, env=env))
    assert_ok(run("mbe-compute", m, "-c", "gfn-ff", "-f", "0-4", "-q",
                  "--no-forces", "-o", b, env=env))
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert same_bits(fa["energy"][()], fb["energy"][()])


@T
def resume_needs_the_same_quantities(d):
    """A shard is continued only with the same --no-forces choice."""
    m = master(d)
    s = shard(d, m, "s.h5", "--no-forces", "-f", "0-3")
    os.rename(s, s + ".part")
    p = compute(m, "-c", "lj", "-q", "-f", "0-3", "-o", s)
    assert p.returncode == 1 and "with --no-forces" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert_ok(compute(m, "-c", "lj", "-q", "--no-forces", "-f", "0-3",
                      "-o", s))


@T
def newer_format_refused_in_one_line(d):
    """A shard of a format this build does not know (as mbe-shard 0.2 sees
    version 3) is refused in one line by mbe-merge and mbe-status."""
    m = master(d)
    s = shard(d, m, "s.h5", "--no-forces")
    with h5py.File(s, "r+") as f:
        f.attrs["mbe_shard_format_version"] = np.int64(5)
    for args in (("mbe-status", s), ("mbe-merge", m, s)):
        p = run(*args)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert any("format version 5" in ln for ln in lines), p.stderr


def read_shard_arrays(path):
    with h5py.File(path, "r") as f:
        forces = f["forces"][()] if "forces" in f else None
        return (f["frames"][()], f["status"][()], f["energy"][()], forces,
                None)


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


if __name__ == "__main__":
    T.main()
