#!/usr/bin/python3
"""Names byte for byte as the package writes them, and the files of
mbe-shard 0.2 and older, which spelt the Angstrom sign U+00C5 where the
package writes U+212B (master-format.md): read, merged, converted, nothing
lost.  The expected names are written here as UTF-8 bytes, not built with
the helpers, so that a wrong character in mbetest.py cannot hide a wrong
character in lib/."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "md/argon"
C, U, FAIL = STATUS["COMPLETED"], STATUS["UNDEFINED"], STATUS["FAILED"]

# The package's bytes (storage/core.py at its HEAD of 2026-06-02).
PKG_NAMES = {
    b"positions (\xe2\x84\xab)",
    b"cell_vectors (\xe2\x84\xab)",
    b"masses (u)",
    b"atomic_numbers",
    b"E_lj (eV\xe2\x88\x95atom)",
    b"forces_lj (eV\xe2\x88\x95\xe2\x84\xab)",
    b"status_lj",
    b"ground_truth",
    b"mbe_merge_log",
}
OLD_POS = b"positions (\xc3\x85)".decode()
OLD_CELL = b"cell_vectors (\xc3\x85)".decode()
OLD_F_LJ = b"forces_lj (eV\xe2\x88\x95\xc3\x85)".decode()
PKG_POS = b"positions (\xe2\x84\xab)".decode()
PKG_F_LJ = b"forces_lj (eV\xe2\x88\x95\xe2\x84\xab)".decode()


def names_in(path):
    """Every link name below the root, as UTF-8 bytes."""
    out = set()
    with h5py.File(path, "r") as f:
        f.visit(lambda n: out.add(n.split("/")[-1].encode()))
    return out


def lj_shard(d, master, name, *args):
    out = os.path.join(d, name)
    assert_ok(compute(master, "-k", KEY, "-c", "lj", "-q", *args, "-o", out))
    return out


def merge(*args):
    return run("mbe-merge", *args)


def write_0_2_master(path, n=10, cell=True):
    """A master as mbe-import and mbe-merge of mbe-shard 0.2 wrote it:
    positions, cell and forces spelt with U+00C5; frames 0-4 of level lj
    computed."""
    pos = random_cluster(n, 4, seed=5, spacing=3.6)
    with h5py.File(path, "w") as f:
        g = f.create_group(KEY)
        g.attrs["dataclass"] = "Structure"
        g.attrs["n_frames"] = n
        g.attrs["n_atoms"] = 4
        g.attrs["periodic"] = cell
        g.attrs["feature_vectors_type"] = "none"
        g.create_dataset(OLD_POS, data=pos)
        g.create_dataset("atomic_numbers", data=np.full(4, 18, np.int64))
        g.create_dataset("masses (u)", data=np.full(4, 39.948))
        if cell:
            g.create_dataset(OLD_CELL, data=np.eye(3) * 40.0)
    return pos


def lj_results_0_2(master, d, frames):
    """Frames computed with lj and stored under the 0.2 forces name."""
    tmp = os.path.join(d, "tmp-0.2.h5")
    with h5py.File(master, "r") as f, h5py.File(tmp, "w") as t:
        f.copy(f[KEY], t, name=KEY)
        g = t[KEY]
        g.move(OLD_POS, PKG_POS)
        if OLD_CELL in g:
            g.move(OLD_CELL, b"cell_vectors (\xe2\x84\xab)".decode())
    s = lj_shard(d, tmp, "tmp-0.2-shard.h5", "-f", frames)
    fr, st, en, fo, _ = shard_arrays(s)
    return fr, st, en, fo


def put_0_2_level(master, n, fr, en, fo, st, old_forces=True):
    with h5py.File(master, "a") as f:
        g = f[KEY].require_group("ground_truth")
        e = np.full(n, np.nan)
        F = np.full((n, 4, 3), np.nan)
        s = np.full(n, U, np.int64)
        e[fr], F[fr], s[fr] = en, fo, st
        g.create_dataset(e_name("lj"), data=e)
        g.create_dataset(OLD_F_LJ if old_forces else PKG_F_LJ, data=F)
        g.create_dataset(s_name("lj"), data=s)
        g.attrs["levels_of_theory"] = np.array(["lj"],
                                               dtype=h5py.string_dtype())
    return e, F, s


def read_as_package(path):
    """What the package's read_structure and _read_ground_truth see: its
    own names only."""
    with h5py.File(path, "r") as f:
        g = f[KEY]
        gt = g["ground_truth"]
        levels = list(gt.attrs["levels_of_theory"])
        out = {"positions": g[PKG_POS][()], "levels": levels}
        for lv in levels:
            lv = lv.decode() if isinstance(lv, bytes) else lv
            out[lv] = tuple(gt[n][()] if n in gt else None
                            for n in (e_name(lv), f_name(lv), s_name(lv)))
        return out


# --------------------------------------------------------------- tests

@T
def names_we_write_are_the_packages(d):
    """mbe-import, mbe-compute and mbe-merge write no non-ASCII name that
    is not byte-equal to the package's."""
    xyz = os.path.join(d, "a.xyz")
    with open(xyz, "w") as fh:
        for k in range(3):
            fh.write('2\nLattice="25 0 0 0 25 0 0 0 25" pbc="T T T"\n')
            fh.write(f"Ar 0 0 0\nAr {3.7 + 0.1 * k} 0 0\n")
    master = os.path.join(d, "m.h5")
    assert_ok(run("mbe-import", "-q", "-k", KEY, xyz, master))
    s = lj_shard(d, master, "s.h5")
    assert_ok(merge("-q", master, s))
    got = names_in(master)
    wrong = {n for n in got if n not in PKG_NAMES and not n.isascii()}
    assert not wrong, wrong
    assert PKG_NAMES <= got, PKG_NAMES - got
    with h5py.File(s, "r") as f:
        assert f["forces"].attrs["units"] == b"eV/\xe2\x84\xab"
    # The package reads what we merged, under its names.
    pk = read_as_package(master)
    assert (pk["lj"][2] == C).all()
    assert np.isfinite(pk["lj"][1]).all()


@T
def creation_properties_are_h5pys(d):
    """Datasets mbe-import and mbe-merge create carry h5py's creation
    properties: contiguous, allocation LATE, fill time IFSET, the default
    fill value, no time stamps."""
    master = os.path.join(d, "m.h5")
    write_structure(master, KEY, random_cluster(4, 3, seed=1, spacing=3.6),
                    [18] * 3)
    assert_ok(merge("-q", master, lj_shard(d, master, "s.h5")))
    xyz = os.path.join(d, "a.xyz")
    with open(xyz, "w") as fh:
        fh.write("2\n\nAr 0 0 0\nAr 3.7 0 0\n")
    assert_ok(run("mbe-import", "-q", "-k", "imported", xyz, master))
    # Read back from a closed file, as ours are: HDF5 reports some
    # properties differently while the creating handle is open.
    ref_path = os.path.join(d, "ref.h5")
    with h5py.File(ref_path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with h5py.File(ref_path, "r") as f:
        ref = f["x"].id.get_create_plist()
        want = (ref.get_layout(), ref.get_alloc_time(), ref.get_fill_time(),
                ref.fill_value_defined())
    with h5py.File(master, "r") as f:
        dsets = []
        f.visititems(lambda n, o: dsets.append(n)
                     if isinstance(o, h5py.Dataset) and "merge_log" not in n
                     else None)
        assert len(dsets) >= 8, dsets
        for n in dsets:
            p = f[n].id.get_create_plist()
            got = (p.get_layout(), p.get_alloc_time(), p.get_fill_time(),
                   p.fill_value_defined())
            assert got == want, (n, got, want)
            assert f[n].fillvalue == 0, (n, f[n].fillvalue)
        # The NaN / UNDEFINED contents are written, not filled.
        gt = f[KEY]["ground_truth"]
        assert (gt[s_name("lj")][()] == C).all()
    # No object times (h5py's track_times=False): no modification time
    # message in any object header (h5debug shows the header's messages).
    import subprocess
    with h5py.File(master, "r") as f:
        addrs = {n: h5py.h5o.get_info(f[n].id).addr for n in dsets}
    for n, a in addrs.items():
        hd = subprocess.run(["h5debug", master, str(a)], capture_output=True,
                            text=True)
        assert hd.returncode == 0 and "Message" in hd.stdout, hd.stderr
        assert "mtime" not in hd.stdout, f"{n} has a time stamp"


@T
def old_master_read_computed_merged_converted(d):
    """A 0.2 master (U+00C5 positions, cell, forces): mbe-status names the
    spelling, mbe-compute computes the frames not COMPLETED, mbe-merge
    gives every name the package's spelling and the package then sees
    every result, old and new, in one dataset per quantity."""
    n = 10
    master = os.path.join(d, "m.h5")
    write_0_2_master(master, n)
    fr, st, en, fo = lj_results_0_2(master, d, "0-4")
    e0, f0, _ = put_0_2_level(master, n, fr, en, fo, st)
    p = run("mbe-status", master)
    assert_ok(p)
    assert "U+00C5" in p.stdout and "--convert-names" in p.stdout, p.stdout
    p = run("mbe-status", "--json", master)
    import json
    g = json.loads(p.stdout)["files"][0]["groups"][0]
    assert g["angstrom"] == "U+00C5", g
    assert g["levels"][0]["datasets"] == ["energies", "forces", "status"]
    p = run("mbe-status", "--missing", "-l", "lj", master)
    assert_ok(p)
    assert p.stdout.strip() == "5-9", p.stdout
    s = lj_shard(d, master, "s.h5")
    with h5py.File(s, "r") as f:
        assert list(f["frames"][()]) == [5, 6, 7, 8, 9]
    p = merge(master, s)
    assert_ok(p)
    for want in (f"renamed {KEY}: {PKG_POS}",
                 f"renamed {KEY}: cell_vectors (\u212b)",
                 f"renamed {KEY}: ground_truth/{PKG_F_LJ}"):
        assert want in p.stdout, p.stdout
    got = names_in(master)
    assert not any(b"\xc3\x85" in x for x in got), got
    pk = read_as_package(master)
    E, F, S = pk["lj"]
    assert (S == C).all(), S
    assert np.array_equal(E[:5], e0[:5]) and np.array_equal(F[:5], f0[:5])
    _, _, en2, fo2, _ = shard_arrays(s)
    assert np.array_equal(E[5:], en2) and np.array_equal(F[5:], fo2)
    p = run("mbe-status", "--json", master)
    g = json.loads(p.stdout)["files"][0]["groups"][0]
    assert g["angstrom"] == "U+212B", g


@T
def both_spellings_of_forces_joined(d):
    """0.2 merged frames 0-4 (U+00C5 forces); the package then computed
    frames 5-9 and, not seeing those forces, created its own dataset with
    NaN rows 0-4.  The next merge keeps one dataset: the package's, rows
    0-4 filled from the 0.2 one, nothing lost."""
    n = 10
    master = os.path.join(d, "m.h5")
    write_0_2_master(master, n, cell=False)
    fr, st, en, fo = lj_results_0_2(master, d, "0-9")
    with h5py.File(master, "a") as f:
        f[KEY].move(OLD_POS, PKG_POS)
    e_all, f_all, _ = put_0_2_level(master, n, fr, en, fo, st)
    with h5py.File(master, "a") as f:
        gt = f[KEY]["ground_truth"]
        old = gt[OLD_F_LJ][()]
        new = np.full_like(old, np.nan)
        new[5:] = old[5:]
        old[5:] = np.nan
        gt[OLD_F_LJ][...] = old
        gt.create_dataset(PKG_F_LJ, data=new)
    other = lj_shard(d, master, "other.h5", "-l", "lj-again", "-f", "0-1")
    p = merge(master, other)
    assert_ok(p)
    assert f"renamed {KEY}: ground_truth/{PKG_F_LJ}" in p.stdout, p.stdout
    pk = read_as_package(master)
    E, F, S = pk["lj"]
    assert np.array_equal(F, f_all), "forces lost in the join"
    with h5py.File(master, "r") as f:
        assert OLD_F_LJ not in f[KEY]["ground_truth"]


@T
def convert_names_command(d):
    """mbe-merge --convert-names: -n lists and writes nothing; the real
    run renames every group's 0.2 names; a second run has nothing to do;
    usage errors exit 2."""
    master = os.path.join(d, "m.h5")
    write_0_2_master(master, 4)
    write_structure(master, "pkg", random_cluster(2, 2, seed=2), [18, 18])
    before = sha_of(master)
    p = merge("--convert-names", "-n", master)
    assert_ok(p)
    assert f"would rename {KEY}: {PKG_POS}" in p.stdout, p.stdout
    assert "pkg:" not in p.stdout, p.stdout
    assert sha_of(master) == before
    p = merge("--convert-names", master)
    assert_ok(p)
    assert f"renamed {KEY}: {PKG_POS}" in p.stdout, p.stdout
    assert "2 names converted" in p.stderr, p.stderr
    assert not any(b"\xc3\x85" in x for x in names_in(master))
    p = merge("--convert-names", master)
    assert_ok(p)
    assert "0 names converted" in p.stderr, p.stderr
    p = merge("--convert-names", master, "x.h5")
    assert p.returncode == 2 and "takes the master only" in p.stderr
    p = merge("--convert-names", os.path.join(d, "nope.h5"))
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert not os.path.exists(os.path.join(d, "nope.h5.lock"))


@T
def old_shard_merged(d):
    """A format 2 shard of mbe-shard 0.1/0.2 (forces units U+00C5, written
    by the old code: tests/data) merges into a master with the package's
    names, which its geometry fingerprints match."""
    src = os.path.join(ROOT, "tests", "data", "shard-v2-u00c5-lj-molecule.h5")
    with h5py.File(src, "r") as f:
        assert f["forces"].attrs["units"] == b"eV/\xc3\x85"
        want_e = f["energy"][()]
    master = os.path.join(d, "m.h5")
    # The master fuzz/make-shard-seeds made the shard from.
    write_structure(master, "mol", random_cluster(3, 4, seed=1, spacing=3.5),
                    [18, 18, 18, 18], mode="w")
    p = merge(master, src)
    assert_ok(p)
    with h5py.File(master, "r") as f:
        gt = f["mol"]["ground_truth"]
        assert np.array_equal(gt[e_name("lj")][()], want_e)
        assert PKG_F_LJ in gt


def sha_of(path):
    import hashlib
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


if __name__ == "__main__":
    T.main()
