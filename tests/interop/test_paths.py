#!/usr/bin/python3
"""Masters by path: reached through a symbolic link (both lock files,
as the package locks the name it is given), renamed or copied
(--allow-renamed), and missing or not a file (no stray lock file)."""
import fcntl
import os
import shutil
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
KEY = "argon"
EXIT_TIMEOUT = 4


def master(d, name="real.h5", seed=3):
    path = os.path.join(d, name)
    write_structure(path, KEY, random_cluster(8, 4, seed=seed, spacing=3.6),
                    np.full(4, 18))
    return path


def linked(d):
    """real.h5 and link.h5 -> real.h5 (a relative link, as users make)."""
    real = master(d)
    link = os.path.join(d, "link.h5")
    os.symlink("real.h5", link)
    return real, link


def xyz(d):
    path = os.path.join(d, "more.xyz")
    with open(path, "w") as f:
        f.write("2\n\nAr 0 0 0\nAr 3.8 0 0\n")
    return path


def locks(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".lock"))


@T
def link_blocked_by_python_on_real_name(d):
    """The package given real.h5 locks real.h5.lock only: every program
    given link.h5 must wait for it (and time out)."""
    real, link = linked(d)
    done = lj_shard(d, real, "s.h5")
    runs = [
        ("mbe-compute", link, "-c", "lj", "-o", os.path.join(d, "t.h5")),
        ("mbe-merge", link, done),
        ("mbe-merge", "--dry-run", link, done),
        ("mbe-merge", "--convert-names", link),
        ("mbe-status", link),
        ("mbe-status", "--missing", "-l", "lj", link),
        ("mbe-import", "-k", "more", xyz(d), link),
    ]
    with PythonLock(real):
        for prog, *args in runs:
            t0 = time.time()
            p = run(prog, "--timeout", "0.5", *args)
            assert p.returncode in (1, EXIT_TIMEOUT), (prog, args, p.stderr)
            assert "real.h5.lock" in p.stderr and "held" in p.stderr, \
                (prog, args, p.stderr)
            assert time.time() - t0 >= 0.4, (prog, args, "did not wait")
    assert not os.path.exists(os.path.join(d, "t.h5.part"))


@T
def merge_through_link_accepted(d):
    """A shard records the resolved path; the same master given through
    its link (or the link's shard given the real name) is the same file."""
    real, link = linked(d)
    a = lj_shard(d, link, "a.h5", "-f", "0-3")
    b = lj_shard(d, real, "b.h5", "-f", "4-7")
    assert_ok(merge(link, a, b))
    assert_ok(merge(real, a, b))  # logged: applied once, nothing new
    e, f, s = read_ground_truth(real, KEY, "lj")
    assert (s == STATUS["COMPLETED"]).all()
    assert locks(d) == ["link.h5.lock", "real.h5.lock"], locks(d)


@T
def continue_shard_through_link(d):
    """mbe-compute given link.h5 again continues its own shard."""
    _, link = linked(d)
    lj_shard(d, link, "a.h5", "-f", "0-3")
    p = compute(link, "-c", "lj", "-q", "-f", "0-3", "-o",
                os.path.join(d, "a.h5"))
    assert_ok(p)


@T
def renamed_master_needs_option(d):
    real = master(d)
    a = lj_shard(d, real, "a.h5")
    copy = os.path.join(d, "master_v2.h5")
    shutil.copyfile(real, copy)
    p = merge(copy, a)
    assert p.returncode == 1, p.stderr
    assert "--allow-renamed" in p.stderr and "real.h5" in p.stderr, p.stderr
    assert read_ground_truth_or_none(copy) is None
    p = merge("--allow-renamed", copy, a)
    assert_ok(p)
    assert f"computed for master {real}, merged into {copy} " \
           "(--allow-renamed)" in p.stdout, p.stdout
    e, f, s = read_ground_truth(copy, KEY, "lj")
    assert (s == STATUS["COMPLETED"]).all()
    assert read_ground_truth_or_none(real) is None


@T
def renamed_master_other_geometry_refused(d):
    real = master(d)
    a = lj_shard(d, real, "a.h5")
    other = master(d, "other.h5", seed=4)
    before = open(other, "rb").read()
    p = merge("--allow-renamed", other, a)
    assert p.returncode == 1, p.stderr
    assert "geometry" in p.stderr, p.stderr
    assert open(other, "rb").read() == before
    # Another shape is refused as well.
    small = os.path.join(d, "small.h5")
    write_structure(small, KEY, random_cluster(3, 4, seed=3, spacing=3.6),
                    np.full(4, 18))
    p = merge("--allow-renamed", small, a)
    assert p.returncode == 1 and "frames" in p.stderr, p.stderr


# A calculator for -c exec: energy 0 and zero forces; frame 1 hangs the
# first time (until the job is stopped), so that the job stops midway.
ZERO = r'''
import sys
lines = sys.stdin.read().splitlines()
n = int(lines[0])
print(n)
print('Properties=species:S:1:pos:R:3:forces:R:3 energy=0.0 pbc="F F F"')
for line in lines[2:2 + n]:
    print(*line.split()[:4], 0.0, 0.0, 0.0)
'''


def interrupted_shard(d, m, out):
    """A shard of m stopped by SIGTERM at frame 1; returns its -c."""
    zero = os.path.join(d, "zero.py")
    with open(zero, "w") as f:
        f.write(ZERO)
    mark = os.path.join(d, "started")
    calc = (f"exec:if [ $MBE_FRAME = 1 ] && [ ! -e {mark} ]; then "
            f"touch {mark}; exec sleep 300; fi; {sys.executable} {zero}")
    proc = subprocess.Popen([os.path.join(BIN, "mbe-compute"), m, "-c", calc,
                             "-l", "zero", "-o", out],
                            stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not os.path.exists(mark):
        assert time.time() - t0 < 30, "frame 1 never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, (proc.returncode, err)
    return calc


@T
def continue_shard_of_renamed_master(d):
    """A job interrupted before its master was renamed continues with
    --allow-renamed; the frames still to compute are checked against the
    renamed master's geometry."""
    real = master(d)
    out = os.path.join(d, "s.h5")
    calc = interrupted_shard(d, real, out)
    args = ["-c", calc, "-l", "zero", "-q", "-o", out]
    copy = os.path.join(d, "master_v2.h5")
    os.rename(real, copy)
    p = compute(copy, *args)
    assert p.returncode == 1, p.stderr
    assert "--allow-renamed" in p.stderr and "real.h5" in p.stderr, p.stderr
    other = os.path.join(d, "other.h5")
    shutil.copyfile(copy, other)
    with h5py.File(other, "r+") as f:
        f[KEY][POS][7, 0, 0] += 0.5
    p = compute(other, "--allow-renamed", *args)
    assert p.returncode == 1 and "geometry" in p.stderr, p.stderr
    assert_ok(compute(copy, "--allow-renamed", *args))
    assert (shard_arrays(out)[1] == STATUS["COMPLETED"]).all()
    assert_ok(merge("--allow-renamed", copy, out))


def read_ground_truth_or_none(path):
    try:
        return read_ground_truth(path, KEY, "lj")
    except KeyError:
        return None


@T
def no_stray_lock_file(d):
    """Refused runs on a missing master, a dangling link or a directory
    leave no lock file."""
    real = master(d)
    a = lj_shard(d, real, "a.h5")
    os.mkdir(os.path.join(d, "dir.h5"))
    os.symlink("nothing.h5", os.path.join(d, "dangling.h5"))
    before = locks(d)
    for name in ("missing.h5", "dangling.h5", "dir.h5"):
        m = os.path.join(d, name)
        for prog, *args in [
                ("mbe-compute", m, "-c", "lj", "-o", os.path.join(d, "t.h5")),
                ("mbe-merge", m, a),
                ("mbe-merge", "--dry-run", m, a),
                ("mbe-merge", "--reset-log", m),
                ("mbe-status", m),
                ("mbe-status", "--master", m, a),
                ("mbe-status", "--missing", "-l", "lj", m)]:
            p = run(prog, *args)
            assert p.returncode == 1, (prog, args, p.returncode, p.stderr)
            assert locks(d) == before, (prog, args, locks(d))
    p = run("mbe-import", xyz(d), os.path.join(d, "dangling.h5"))
    assert p.returncode == 1 and "missing file" in p.stderr, p.stderr
    p = run("mbe-import", xyz(d), os.path.join(d, "dir.h5"))
    assert p.returncode == 1, p.stderr
    assert locks(d) == before, locks(d)


@T
def master_removed_while_waiting(d):
    """The package holds real.h5's lock and removes real.h5: mbe-compute
    given link.h5 fails and leaves no link.h5.lock behind."""
    real, link = linked(d)
    fh = open(real + ".lock", "a")
    fcntl.flock(fh, fcntl.LOCK_EX)
    p = subprocess.Popen([os.path.join(BIN, "mbe-compute"), link, "-c",
                          "lj", "-o", os.path.join(d, "t.h5")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        line = p.stderr.readline()
        assert "waiting for the lock on" in line, line
        os.unlink(real)
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 1, err
    assert "gone while its lock was awaited" in err, err
    assert locks(d) == ["real.h5.lock"], locks(d)


if __name__ == "__main__":
    T.main()
