"""Files across HDF5 versions (make check-hdf5-1.14, tests/hdf5-1.14/run).

    cross.py write DIR    this build and this h5py write the files below
    cross.py read DIR     this build and this h5py read, merge and report
                          on the files another version wrote in DIR

The runner writes with the HDF5 1.14 build in the Debian 13 chroot and
reads with the 1.10 build on the host, then the other way round: our users
run both, and the package writes masters with h5py wheels of 1.14.

Written: master.h5 (mbe-import of the example), shard.h5 (mbe-compute -c
lj, frames 0-9), merged/master.h5 (master.h5 with shard.h5 merged),
shard2.h5 (frames 10-19), py/master.h5 (a master written by h5py as the
package writes it) and the writer's HDF5 version in VERSION.  A shard
names its master's file, so every copy of a master keeps the name."""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "reliability"))
from rel import *  # noqa: E402,F401,F403
from rel import diff_snap, snapshot  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "water-cluster"
LEVEL = "lj"
DIR = sys.argv[2] if len(sys.argv) > 2 else ""


def src(name):
    return os.path.join(DIR, name)


def copy(name, d, sub="copy"):
    """name copied to a directory of its own in d."""
    out = os.path.join(d, sub, os.path.basename(name))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copyfile(src(name), out)
    return out


def ok(prog, *args):
    p = run(prog, *args)
    assert_ok(p)
    return p


def lj(master, frames, out):
    return ok("mbe-compute", master, "-k", KEY, "-c", LEVEL, "-f", frames,
              "-q", "-o", out)


def write_every_file(d):
    """Every file the other version reads."""
    xyz = os.path.join(ROOT, "examples", "water-cluster.xyz")
    ok("mbe-import", xyz, src("master.h5"))
    lj(src("master.h5"), "0-9", src("shard.h5"))
    lj(src("master.h5"), "10-19", src("shard2.h5"))
    ok("mbe-merge", "-q", copy("master.h5", DIR, "merged"), src("shard.h5"))
    os.mkdir(src("py"))
    write_structure(src("py/master.h5"), "md/argon", random_cluster(6, 4),
                    [18] * 4)
    with open(src("VERSION"), "w") as fh:
        fh.write(h5py.version.hdf5_version)


def same(a, b):
    d = diff_snap(snapshot(a), snapshot(b))
    assert not d, f"{a} and {b} differ in {d}"


def other():
    with open(src("VERSION")) as fh:
        return fh.read().strip()


@T
def status_reads_every_file(d):
    p = ok("mbe-status", src("master.h5"), src("merged/master.h5"),
           src("py/master.h5"))
    assert "COMPLETED" in p.stdout or "completed" in p.stdout, p.stdout
    p = ok("mbe-status", "--master", src("merged/master.h5"),
           src("shard.h5"))
    assert "checksums   ok" in p.stdout, p.stdout
    assert "merged      yes" in p.stdout, p.stdout
    p = ok("mbe-status", "--master", src("merged/master.h5"),
           src("shard2.h5"))
    assert "merged      no" in p.stdout, p.stdout


@T
def h5py_reads_every_file(d):
    for name in ("master.h5", "shard.h5", "shard2.h5", "merged/master.h5",
                 "py/master.h5"):
        assert snapshot(src(name)), name
    check_crc(src("shard.h5"))
    _, status, _, _, _ = shard_arrays(src("shard.h5"))
    with h5py.File(src("merged/master.h5"), "r") as f:
        gt = f[KEY]["ground_truth"]
        assert list(gt.attrs["levels_of_theory"]) in ([LEVEL],
                                                      [LEVEL.encode()])
        s = gt[s_name(LEVEL)][()]
    assert (s[:10] == status).all() and (s[10:] == STATUS["UNDEFINED"]).all()


@T
def merge_gives_the_writers_master(d):
    m = copy("master.h5", d)
    ok("mbe-merge", "-q", m, src("shard.h5"))
    same(m, src("merged/master.h5"))


@T
def merge_into_the_writers_merged_master(d):
    """A master that both versions changed equals one of this version."""
    m = copy("merged/master.h5", d)
    p = ok("mbe-merge", m, src("shard.h5"))
    assert "already applied" in p.stdout + p.stderr, p.stdout
    ok("mbe-merge", "-q", m, src("shard2.h5"))
    ref = copy("master.h5", d, "ref")
    ok("mbe-merge", "-q", ref, src("shard.h5"), src("shard2.h5"))
    same(m, ref)


@T
def compute_from_the_writers_master(d):
    s = os.path.join(d, "s.h5")
    lj(src("master.h5"), "0-9", s)
    mine, theirs = shard_arrays(s), shard_arrays(src("shard.h5"))
    for a, b in zip(mine[:4], theirs[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
    m = copy("master.h5", d)
    ok("mbe-merge", "-q", m, s)
    with h5py.File(m, "r") as f:
        assert (f[KEY]["ground_truth"][s_name(LEVEL)][:10] ==
                STATUS["COMPLETED"]).all()


@T
def package_master_of_the_other_h5py(d):
    m = copy("py/master.h5", d)
    s = os.path.join(d, "s.h5")
    ok("mbe-compute", m, "-c", LEVEL, "-q", "-o", s)
    ok("mbe-merge", "-q", m, s)
    e, _, st = read_ground_truth(m, "md/argon", LEVEL)
    assert (st == STATUS["COMPLETED"]).all() and np.isfinite(e).all()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "read"):
        sys.exit("usage: cross.py write|read DIR")
    if sys.argv[1] == "write":
        T.tests = [write_every_file]
    print(f"cross-version {sys.argv[1]}: HDF5 {h5py.version.hdf5_version}"
          + (f" reads files of HDF5 {other()}" if sys.argv[1] == "read"
             else ""))
    T.main()
