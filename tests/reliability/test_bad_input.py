"""A catalogue of bad inputs for every program.  For each case: the exit
code, a one-line message on stderr that names the problem, and the
master's bytes unchanged (a master that did not exist is not created).
Edge cases that may be valid (a '/' or a very long level name) must either
work end to end, read back in h5py, or be refused the same clean way."""
import os
import shutil
import subprocess
import zlib

from rel import *  # noqa: F401,F403
from rel import (Findings, PythonLock, Tests, err_lines, figure, make_argon,
                 diff_snap, log_ids, snapshot,
                 row_crc, run_prog, sha, e_name, s_name, f_name, STATUS,
                 random_cluster, write_structure)

import h5py
import numpy as np

T = Tests()
ROOT_USER = os.geteuid() == 0


def chattr(path, flag):
    return subprocess.run(["chattr", flag, path],
                          capture_output=True).returncode == 0


# ------------------------------------------------------------- fixtures

def fixture(d):
    """master.h5 (10 frames of 4 argon atoms) and s.h5, all its frames."""
    m = os.path.join(d, "master.h5")
    make_argon(m, n_frames=10)
    s = os.path.join(d, "s.h5")
    p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", s)
    assert p.returncode == 0, p.stderr
    os.unlink(m + ".lock")
    return m, s


def index_crc(frames, geom):
    c = zlib.crc32(np.asarray(frames, "<i8").tobytes())
    return zlib.crc32(np.asarray(geom, "<u4").tobytes(), c)


def forge(shard, fn):
    """Edit a shard with h5py, then fix its crcs the way a careful forger
    would, so that only the edited property is wrong."""
    with h5py.File(shard, "r+") as f:
        fn(f)
        if "crc32" in f and "status" in f and f["energy"].dtype.kind == "f" \
                and f["forces"].ndim == 3:
            st, en, fo = f["status"][()], f["energy"][()], f["forces"][()]
            f["crc32"][...] = np.array([row_crc(st[k], en[k], fo[k])
                                        for k in range(len(st))], np.uint32)
        if "frames" in f and "geometry_crc32" in f:
            f.attrs["index_crc32"] = np.int64(index_crc(
                f["frames"][()], f["geometry_crc32"][()]))


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def truncate_copy(src, dst, frac=0.5):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:int(len(data) * frac)])


def replace_ds(f, name, data):
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=data)
    for k, v in attrs.items():
        f[name].attrs[k] = v


KEY = "md/argon"
POSN = "positions (\u212b)"


# ---------------------------------------------------------------- cases
# Each case: (name, setup(d, m, s) -> (prog, args, extra dict)), expected
# exit code(s), words of which one must be in the message.

CASES = []
# Cases where the shards are fine: no message may call them invalid.
SHARDS_FINE = {"merge: master is not HDF5", "merge: missing master",
               "merge: symlinked lock file",
               "merge: damaged undo journal beside the master",
               "merge: unwritable master",
               "merge: master in a read-only directory",
               "merge: lock held past the time-out"}


def case(name, code, words):
    def deco(fn):
        CASES.append((name, fn, code if isinstance(code, (set, tuple))
                      else {code}, words))
        return fn
    return deco


# ---- mbe-compute: the master

@case("compute: master is not HDF5", 1, ["HDF5"])
def _c1(d, m, s):
    write_text(m, "this is not an HDF5 file\n" * 20)
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: truncated HDF5 master", 1, ["master.h5"])
def _c2(d, m, s):
    truncate_copy(m, m + ".t")
    os.replace(m + ".t", m)
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: empty master file", 1, ["master.h5"])
def _c3(d, m, s):
    write_text(m, "")
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: missing master", 1, ["missing.h5"])
def _c4(d, m, s):
    return "mbe-compute", [f"{d}/missing.h5", "-c", "lj", "-o",
                           f"{d}/o.h5"], {"master": f"{d}/missing.h5"}


@case("compute: missing key", 1, ["nope"])
def _c5(d, m, s):
    return "mbe-compute", [m, "-k", "nope", "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: group without positions", 1, ["positions"])
def _c6(d, m, s):
    with h5py.File(m, "a") as f:
        del f[KEY][POSN]
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: positions of wrong dtype (strings)", 1, ["positions"])
def _c7(d, m, s):
    # (integers are accepted on purpose: lib/master.c check_type)
    with h5py.File(m, "a") as f:
        replace_ds(f[KEY], POSN, np.full((10, 4, 3), b"1.0", "S8"))
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: positions of wrong rank (10, 12)", 1, ["positions"])
def _c8(d, m, s):
    with h5py.File(m, "a") as f:
        replace_ds(f[KEY], POSN, np.zeros((10, 12)))
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: n_atoms attribute 5, positions of 4 atoms", 1,
      ["n_atoms", "atoms"])
def _c9(d, m, s):
    with h5py.File(m, "a") as f:
        f[KEY].attrs["n_atoms"] = 5
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: n_frames attribute 12, positions of 10 frames", 1,
      ["n_frames", "frames"])
def _c10(d, m, s):
    with h5py.File(m, "a") as f:
        f[KEY].attrs["n_frames"] = 12
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: atomic_numbers of wrong dtype (float64)", 1,
      ["atomic_numbers"])
def _c11(d, m, s):
    with h5py.File(m, "a") as f:
        replace_ds(f[KEY], "atomic_numbers", np.full(4, 18.0))
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: status_ of the level is float64", 1, ["status"])
def _c12(d, m, s):
    with h5py.File(m, "a") as f:
        g = f[KEY].require_group("ground_truth")
        g.create_dataset(e_name("lj"), data=np.full(10, np.nan))
        g.create_dataset(f_name("lj"), data=np.full((10, 4, 3), np.nan))
        g.create_dataset(s_name("lj"), data=np.ones(10))
        g.attrs["levels_of_theory"] = np.array(["lj"],
                                               dtype=h5py.string_dtype())
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: key of a group that holds no frames", 1, ["crystal"])
def _c13(d, m, s):
    with h5py.File(m, "a") as f:
        g = f.require_group("crystal")
        g.attrs["dataclass"] = "MolecularCrystal"
    return "mbe-compute", [m, "-k", "crystal", "-c", "lj", "-o",
                           f"{d}/o.h5"], {}


# ---- mbe-compute: the command line

@case("compute: frames out of range", 1, ["20"])
def _c20(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "-f", "5-20", "-o", f"{d}/o.h5"], {}


@case("compute: malformed frame spec '1-'", 2, ["1-"])
def _c21(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "-f", "1-", "-o", f"{d}/o.h5"], {}


@case("compute: malformed frame spec '-3'", 2, ["-3"])
def _c22(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "-f=-3", "-o", f"{d}/o.h5"], {}


@case("compute: malformed chunk '0/4'", 2, ["0/4"])
def _c23(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "--chunk", "0/4", "-o",
                           f"{d}/o.h5"], {}


@case("compute: malformed chunk '3/x'", 2, ["3/x"])
def _c24(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "--chunk", "3/x", "-o",
                           f"{d}/o.h5"], {}


@case("compute: empty level name", 2, ["level"])
def _c25(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "-l", "", "-o", f"{d}/o.h5"], {}


@case("compute: -o names a directory", 1, ["odir"])
def _c26(d, m, s):
    os.mkdir(f"{d}/odir")
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/odir"], {}


@case("compute: output in a read-only directory", 1, ["ro"])
def _c27(d, m, s):
    ro = f"{d}/ro"
    os.mkdir(ro)
    if ROOT_USER:
        if not chattr(ro, "+i"):
            raise Skip("chattr +i not supported here")
    else:
        os.chmod(ro, 0o555)
    return "mbe-compute", [m, "-c", "lj", "-o", f"{ro}/o.h5"], {
        "undo": lambda: chattr(ro, "-i") if ROOT_USER else None}


@case("compute: lock held past the time-out", 4, ["lock"])
def _c28(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "--timeout", "0.5", "-o",
                           f"{d}/o.h5"], {"hold_lock": True}


@case("compute: symlinked lock file", 1, ["symbolic link"])
def _c29(d, m, s):
    write_text(f"{d}/elsewhere", "")
    os.symlink(f"{d}/elsewhere", m + ".lock")
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: lock path is a directory", 1, ["lock"])
def _c30(d, m, s):
    os.mkdir(m + ".lock")
    return "mbe-compute", [m, "-c", "lj", "-o", f"{d}/o.h5"], {}


@case("compute: unknown calculator", 2, ["nosuch"])
def _c31(d, m, s):
    return "mbe-compute", [m, "-c", "nosuch", "-o", f"{d}/o.h5"], {}


@case("compute: resume a shard of another job", 1, ["another job"])
def _c32(d, m, s):
    return "mbe-compute", [m, "-c", "lj", "-f", "0-3", "-o", s], {
        "also": [s]}


# ---- mbe-merge: shards

@case("merge: shard is not HDF5", 1, ["not an HDF5"])
def _m1(d, m, s):
    write_text(s, "garbage\n" * 100)
    return "mbe-merge", [m, s], {}


@case("merge: truncated shard", 1, ["s.h5"])
def _m2(d, m, s):
    truncate_copy(s, s + ".t", 0.6)
    os.replace(s + ".t", s)
    return "mbe-merge", [m, s], {}


@case("merge: empty shard file", 1, ["s.h5"])
def _m3(d, m, s):
    write_text(s, "")
    return "mbe-merge", [m, s], {}


@case("merge: shard of another master (other file name)", 1,
      ["other.h5", "master.h5"])
def _m4(d, m, s):
    o = f"{d}/other.h5"
    shutil.copyfile(m, o)
    return "mbe-merge", [o, s], {"master": o}


@case("merge: shard of another master (same name, other geometry)", 1,
      ["geometry"])
def _m5(d, m, s):
    os.mkdir(f"{d}/b")
    o = f"{d}/b/master.h5"
    make_argon(o, n_frames=10, seed=99)
    return "mbe-merge", [o, s], {"master": o}


@case("merge: shard of a master with other n_atoms", 1, ["atoms"])
def _m6(d, m, s):
    os.mkdir(f"{d}/b")
    o = f"{d}/b/master.h5"
    make_argon(o, n_frames=10, n_atoms=5)
    return "mbe-merge", [o, s], {"master": o}


@case("merge: key of the shard missing in the master", 1, ["md/argon"])
def _m7(d, m, s):
    os.mkdir(f"{d}/b")
    o = f"{d}/b/master.h5"
    make_argon(o, key="other/key", n_frames=10)
    return "mbe-merge", [o, s], {"master": o}


@case("merge: conflicting shards (same level, other results)", 1,
      ["different results"])
def _m8(d, m, s):
    s2 = f"{d}/s2.h5"
    shutil.copy(s, s2)
    # Another run of the same method, other results: a new id, new energies.
    with h5py.File(s2, "r+") as f:
        f.attrs["shard_id"] = np.bytes_(b"f" * 32)
    forge(s2, lambda f: f["energy"].write_direct(f["energy"][()] * 1.001))
    return "mbe-merge", [m, s, s2], {}


@case("merge: shards of one level with other settings", 1,
      ["would mix methods", "--allow-mixed-settings"])
def _m8b(d, m, s):
    s2 = f"{d}/s2.h5"
    p = run_prog("mbe-compute", m, "-c", "lj", "--lj-sigma", "3.0", "-q",
                 "-o", s2)
    assert p.returncode == 0, p.stderr
    return "mbe-merge", [m, s, s2], {}


@case("merge: one shard at two stages (same id, other content)", 1,
      ["same shard id"])
def _m9(d, m, s):
    s2 = f"{d}/s_early.h5"
    shutil.copyfile(s, s2)

    def early(f):
        f["status"][0] = STATUS["UNDEFINED"]
        f["energy"][0] = np.nan
        f["forces"][0] = np.nan
    forge(s2, early)
    return "mbe-merge", [m, s2, s], {}


@case("merge: NaN energy marked COMPLETED (crc made to match)", 1,
      ["NaN", "finite", "nan"])
def _m10(d, m, s):
    def nan(f):
        f["energy"][3] = np.nan
    forge(s, nan)
    return "mbe-merge", [m, s], {}


@case("merge: infinite force marked COMPLETED (crc made to match)", 1,
      ["finite", "inf"])
def _m11(d, m, s):
    def inf(f):
        f["forces"][2, 1, 0] = np.inf
    forge(s, inf)
    return "mbe-merge", [m, s], {"partial": s}


@case("merge: shard frame out of range (index crc made to match)", 1,
      ["outside", "range"])
def _m12(d, m, s):
    def oor(f):
        f["frames"][-1] = 99
    forge(s, oor)
    return "mbe-merge", [m, s], {}


@case("merge: shard status value 7 (crc made to match)", 1, ["status"])
def _m13(d, m, s):
    def bad(f):
        f["status"][1] = 7
    forge(s, bad)
    return "mbe-merge", [m, s], {}


@case("merge: shard row fails its crc", 1, ["crc32"])
def _m14(d, m, s):
    with h5py.File(s, "r+") as f:
        f["energy"][4] = f["energy"][4] * 1.0000001
    return "mbe-merge", [m, s], {"partial": s}


@case("merge: shard without its crc32 dataset", 1, ["crc32"])
def _m15(d, m, s):
    with h5py.File(s, "r+") as f:
        del f["crc32"]
    return "mbe-merge", [m, s], {}


@case("merge: shard energy of wrong dtype (int64)", 1, ["energy"])
def _m16(d, m, s):
    forge(s, lambda f: replace_ds(f, "energy", np.zeros(10, np.int64)))
    return "mbe-merge", [m, s], {}


@case("merge: shard forces of wrong rank", 1, ["forces"])
def _m17(d, m, s):
    forge(s, lambda f: replace_ds(f, "forces", np.zeros((10, 12))))
    return "mbe-merge", [m, s], {}


@case("merge: the master given as a shard", 1, ["not a shard"])
def _m18(d, m, s):
    c = f"{d}/copy.h5"
    shutil.copyfile(m, c)
    return "mbe-merge", [m, c], {}


@case("merge: missing shard", 1, ["nothere.h5"])
def _m19(d, m, s):
    return "mbe-merge", [m, f"{d}/nothere.h5"], {}


@case("merge: master is not HDF5", 1, ["master.h5"])
def _m20(d, m, s):
    write_text(m, "plain text\n" * 50)
    return "mbe-merge", [m, s], {}


@case("merge: missing master", 1, ["gone.h5"])
def _m21(d, m, s):
    return "mbe-merge", [f"{d}/gone.h5", s], {"master": f"{d}/gone.h5"}


@case("merge: unwritable master", 1, ["master.h5"])
def _m22(d, m, s):
    if ROOT_USER:
        if not chattr(m, "+i"):
            raise Skip("chattr +i not supported here")
        open(m + ".lock", "a").close()
    else:
        os.chmod(m, 0o444)
    return "mbe-merge", [m, s], {
        "undo": lambda: chattr(m, "-i") if ROOT_USER else None}


@case("merge: master in a read-only directory", 1, ["master.h5", "ro"])
def _m23(d, m, s):
    ro = f"{d}/ro"
    os.mkdir(ro)
    mm = f"{ro}/master.h5"
    shutil.copyfile(m, mm)
    open(mm + ".lock", "a").close()
    if ROOT_USER:
        if not chattr(ro, "+i"):
            raise Skip("chattr +i not supported here")
    else:
        os.chmod(ro, 0o555)
    return "mbe-merge", [mm, s], {
        "master": mm, "undo": lambda: chattr(ro, "-i") if ROOT_USER
        else os.chmod(ro, 0o755)}


@case("merge: lock held past the time-out", 4, ["lock"])
def _m24(d, m, s):
    return "mbe-merge", ["--timeout", "0.5", m, s], {"hold_lock": True}


@case("merge: symlinked lock file", 1, ["symbolic link"])
def _m25(d, m, s):
    write_text(f"{d}/elsewhere", "")
    os.symlink(f"{d}/elsewhere", m + ".lock")
    return "mbe-merge", [m, s], {}


@case("merge: damaged undo journal beside the master", 1, ["journal"])
def _m26(d, m, s):
    with open(m + ".mbe-journal", "wb") as f:
        f.write(b"MBE-JRNL" + os.urandom(200))
    return "mbe-merge", [m, s], {}


@case("merge: --prefer sideways", 2, ["sideways"])
def _m27(d, m, s):
    return "mbe-merge", ["--prefer", "sideways", m, s], {}


@case("merge: no shard given", 2, ["shard"])
def _m28(d, m, s):
    return "mbe-merge", [m], {}


@case("merge: --buffer 0", 2, ["buffer"])
def _m29(d, m, s):
    return "mbe-merge", ["--buffer", "0", m, s], {}


# ---- mbe-import

XYZ_OK = "2\n\nAr 0 0 0\nAr 3.6 0 0\n2\n\nAr 0 0 0.1\nAr 3.7 0 0\n"


@case("import: missing XYZ file", 1, ["nofile.xyz"])
def _i1(d, m, s):
    return "mbe-import", [f"{d}/nofile.xyz", m], {}


@case("import: empty XYZ file", 1, ["empty.xyz"])
def _i2(d, m, s):
    write_text(f"{d}/empty.xyz", "")
    return "mbe-import", ["-k", "x", f"{d}/empty.xyz", m], {}


@case("import: XYZ atom count not a number", 1, ["bad.xyz"])
def _i3(d, m, s):
    write_text(f"{d}/bad.xyz", "two\n\nAr 0 0 0\nAr 1 0 0\n")
    return "mbe-import", ["-k", "x", f"{d}/bad.xyz", m], {}


@case("import: XYZ frames with different atom counts", 1, ["bad.xyz"])
def _i4(d, m, s):
    write_text(f"{d}/bad.xyz", XYZ_OK + "3\n\nAr 0 0 0\nAr 3 0 0\nAr 6 0 0\n")
    return "mbe-import", ["-k", "x", f"{d}/bad.xyz", m], {}


@case("import: XYZ with an unknown element", 1, ["Xq"])
def _i5(d, m, s):
    write_text(f"{d}/bad.xyz", "2\n\nAr 0 0 0\nXq 3.6 0 0\n")
    return "mbe-import", ["-k", "x", f"{d}/bad.xyz", m], {}


@case("import: XYZ truncated in a frame", 1, ["bad.xyz"])
def _i6(d, m, s):
    write_text(f"{d}/bad.xyz", XYZ_OK + "2\n\nAr 0 0 0\n")
    return "mbe-import", ["-k", "x", f"{d}/bad.xyz", m], {}


@case("import: key exists, no --overwrite", 1, ["md/argon"])
def _i7(d, m, s):
    write_text(f"{d}/ok.xyz", XYZ_OK)
    return "mbe-import", ["-k", KEY, f"{d}/ok.xyz", m], {}


@case("import: master is not HDF5", 1, ["master.h5"])
def _i8(d, m, s):
    write_text(f"{d}/ok.xyz", XYZ_OK)
    write_text(m, "text\n" * 40)
    return "mbe-import", ["-k", "x", f"{d}/ok.xyz", m], {}


@case("import: lock held past the time-out", {1, 4}, ["lock"])
def _i9(d, m, s):
    write_text(f"{d}/ok.xyz", XYZ_OK)
    return "mbe-import", ["--timeout", "0.5", "-k", "x", f"{d}/ok.xyz", m], \
        {"hold_lock": True}


@case("import: new master in a read-only directory", 1, ["ro"])
def _i10(d, m, s):
    write_text(f"{d}/ok.xyz", XYZ_OK)
    ro = f"{d}/ro"
    os.mkdir(ro)
    if ROOT_USER:
        if not chattr(ro, "+i"):
            raise Skip("chattr +i not supported here")
    else:
        os.chmod(ro, 0o555)
    return "mbe-import", ["-k", "x", f"{d}/ok.xyz", f"{ro}/new.h5"], {
        "master": f"{ro}/new.h5",
        "undo": lambda: chattr(ro, "-i") if ROOT_USER else None}


# ---- mbe-status

@case("status: file is not HDF5", 1, ["junk.h5"])
def _s1(d, m, s):
    write_text(f"{d}/junk.h5", "junk\n" * 30)
    return "mbe-status", [f"{d}/junk.h5"], {}


@case("status: missing file", 1, ["none.h5"])
def _s2(d, m, s):
    return "mbe-status", [f"{d}/none.h5"], {}


@case("status: shard row fails its crc", 3, ["crc"])
def _s3(d, m, s):
    with h5py.File(s, "r+") as f:
        f["energy"][4] = 1.0
    return "mbe-status", [s], {"report": True}


@case("status: --missing without a level", 2, ["-l"])
def _s4(d, m, s):
    return "mbe-status", ["--missing", m], {}


@case("status: lock held past the time-out", 4, ["lock"])
def _s5(d, m, s):
    return "mbe-status", ["--timeout", "0.3", m], {"hold_lock": True}


# ------------------------------------------------------------- the test

def run_case(base, d, name, setup, codes, words):
    shutil.copytree(base, d)
    m, s = os.path.join(d, "master.h5"), os.path.join(d, "s.h5")
    progname, args, extra = setup(d, m, s)
    master = extra.get("master", m)
    watched = [master] + extra.get("also", [])
    before = {p: (sha(p) if os.path.lexists(p) and os.path.isfile(p)
                  else None) for p in watched}
    lock = None
    if extra.get("hold_lock"):
        lock = PythonLock(master).__enter__()
    try:
        quiet = ["-q"] if progname != "mbe-status" else []
        p = run_prog(progname, *quiet, *args)
    finally:
        if lock:
            lock.__exit__(None, None, None)
        if extra.get("undo"):
            extra["undo"]()
    problems = []
    if p.returncode not in codes:
        problems.append(f"exit {p.returncode}, expected "
                        f"{'/'.join(map(str, sorted(codes)))}")
    lines = err_lines(p)
    if extra.get("report") and p.returncode in codes:
        # An attention status: the report on stdout says why.
        if not any(w in p.stdout for w in words):
            problems.append(f"report names none of {words}")
    elif p.returncode != 0:
        if len(lines) != 1:
            problems.append(f"{len(lines)}-line message")
        if lines and not lines[0].startswith(progname + ": "):
            problems.append("message without the program name")
        if not any(w in p.stderr for w in words):
            problems.append(f"message names none of {words}")
        if name in SHARDS_FINE and ("invalid" in p.stderr or
                                    "cannot apply" in p.stderr):
            problems.append("a valid shard is called invalid")
    for path, h in before.items():
        now = sha(path) if os.path.lexists(path) and os.path.isfile(path) \
            else None
        if now != h and path == master and extra.get("partial"):
            problems += only_verified_rows(master, os.path.join(base, "s.h5"))
        elif now != h:
            problems.append(f"{os.path.basename(path)} changed" if h else
                            f"{os.path.basename(path)} created")
    return p, problems


def only_verified_rows(master, pristine):
    """A shard whose damage shows only when its forces are read (each shard
    is read once, under the lock): the merge may have written verified
    rows before the damaged one, never a status; every frame holds nothing
    or the undamaged shard's energy and forces."""
    with h5py.File(pristine, "r") as f:
        fr, en, fo = f["frames"][()], f["energy"][()], f["forces"][()]
    with h5py.File(master, "r") as f:
        g = f["md/argon"]["ground_truth"]
        E, F, S = (g[n][()] for n in (e_name("lj"), f_name("lj"),
                                      s_name("lj")))
    problems = []
    if (S != STATUS["UNDEFINED"]).any():
        problems.append("a status was written")
    for k, i in enumerate(fr):
        untouched = np.isnan(E[i]) and np.isnan(F[i]).all()
        verified = E[i] == en[k] and np.array_equal(F[i], fo[k])
        if not (untouched or verified):
            problems.append(f"frame {i} holds other values")
    return problems


@T
def bad_input_catalogue(d):
    base = os.path.join(d, "base")
    os.mkdir(base)
    fixture(base)
    found = Findings()
    n = ok = 0
    skipped = []
    for i, (name, setup, codes, words) in enumerate(CASES):
        cd = os.path.join(d, f"case{i:02d}")
        try:
            p, problems = run_case(base, cd, name, setup, codes, words)
        except Skip as ex:
            skipped.append(f"{name}: {ex}")
            continue
        n += 1
        msg = " | ".join(err_lines(p))[:300]
        if problems:
            found.add("; ".join(problems), f"{name}: exit {p.returncode}: "
                      f"{msg}")
            print(f"  BAD  {name}: {'; '.join(problems)} -- {msg}")
        else:
            ok += 1
            print(f"  ok   {name}: exit {p.returncode}: {msg[:160]}")
    figure("bad inputs", f"{n} cases ({len(skipped)} skipped): {ok} clean, "
           f"{n - ok} with findings")
    for sk in skipped:
        print(f"  skipped: {sk}")
    found.report(examples=1)
    assert n >= 30, n
    assert ok == n, f"{n - ok} of {n} cases with findings"


@T
def duplicated_and_reapplied_shards(d):
    """The same shard twice, a copy under another name, a shard applied
    before: exit 0, applied once; the re-applied merge leaves the master's
    bytes as they were."""
    m, s = fixture(d)
    ref = os.path.join(d, "ref")
    os.mkdir(ref)
    shutil.copyfile(m, os.path.join(ref, "master.h5"))
    assert run_prog("mbe-merge", "-q", os.path.join(ref, "master.h5"),
                    s).returncode == 0
    want = snapshot(os.path.join(ref, "master.h5"))
    copy = os.path.join(d, "copy.h5")
    shutil.copyfile(s, copy)
    p = run_prog("mbe-merge", "-q", m, s, s, copy)
    assert p.returncode == 0, p.stderr
    assert not diff_snap(snapshot(m), want), diff_snap(snapshot(m), want)
    assert log_ids(m, KEY).count(
        shard_attrs(h5py.File(s, "r"))["shard_id"]) == 1, log_ids(m, KEY)
    before = sha(m)
    p = run_prog("mbe-merge", "-q", m, copy)
    assert p.returncode == 0, p.stderr
    assert sha(m) == before, "re-applying an applied shard changed the master"
    figure("duplicated and re-applied shards", "applied once, exit 0, "
           "master bytes unchanged by the re-application")


# ----------------------------------------------- valid but unusual inputs

def level_round_trip(d, level):
    """compute -l LEVEL, merge; either both work and h5py sees the level,
    or a clean one-line refusal with the master unchanged."""
    m, _ = fixture(d)
    out = os.path.join(d, "lvl.h5")
    before = sha(m)
    p = run_prog("mbe-compute", m, "-c", "lj", "-l", level, "-q", "-o", out)
    if p.returncode != 0:
        assert len(err_lines(p)) == 1, p.stderr
        assert sha(m) == before
        return f"compute refused: {p.stderr.strip()[:120]}"
    p = run_prog("mbe-merge", "-q", m, out)
    if p.returncode != 0:
        assert len(err_lines(p)) == 1, f"{len(err_lines(p))}-line " \
            f"message: {p.stderr!r}"[:400]
        assert sha(m) == before, "master changed by a refused merge"
        return f"merge refused: {p.stderr.strip()[:120]}"
    e, fo, st = read_ground_truth(m, KEY, level)
    with h5py.File(m, "r") as f:
        levels = [x.decode() if isinstance(x, bytes) else x for x in
                  f[KEY]["ground_truth"].attrs["levels_of_theory"]]
    assert level in levels, levels
    assert (st == 0).all() and np.isfinite(e).all()
    return "works"


@T
def level_name_with_slashes(d):
    r = level_round_trip(d, "r2scan-d4/def2-tzvpp/tight")
    figure("level name with '/'", r)
    assert r == "works", r


@T
def level_name_non_ascii(d):
    r = level_round_trip(d, "\u03c9B97X-D/def2-SVP \u212b")
    figure("level name with non-ASCII", r)
    assert r == "works", r


@T
def level_name_very_long(d):
    for n in (1000, 70000):
        sub = os.path.join(d, f"n{n}")
        os.mkdir(sub)
        r = level_round_trip(sub, "L" * n)
        figure(f"level name of {n} characters", r)


if __name__ == "__main__":
    T.main()
