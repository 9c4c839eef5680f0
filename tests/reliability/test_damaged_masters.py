"""Damaged masters handed to every program.  Masters have superblock 0 (as
h5py and mbe-import write them): libhdf5 checks none of their metadata,
and some damage crashes it or makes it loop.  tests/data/master-v0-*.h5
are h5py masters (md/argon, 10 frames of 4 atoms) with bytes changed in
the global heap collection of the string attributes (crash-1 to 4,
hang-1, hang-2) or in attribute messages of md/argon's object header
(crash-5: the bool enum type of 'periodic', which H5Tget_native_type
crashed on; hang-3: the name length of 'dataclass'), which made
mbe-status and mbe-compute die of SIGSEGV or loop in process before
masters were probed in a child (lib/master_probe.c).  mbe-status, mbe-compute, mbe-merge and mbe-import
must each end with one line on stderr naming the master and exit 1,
within the probe's time-out, leaving its bytes as they were.  Then
mutants of a fresh master go through mbe-status and mbe-compute: never a
signal, a hang, or more than one line; and healthy masters, fresh and
merged, are read by every program."""
import glob
import os
import random
import subprocess
import time

from rel import *  # noqa: F401,F403
from rel import (Findings, Tests, err_lines, figure, make_argon, mutate,
                 run_prog, sha)

T = Tests()
KEY = "md/argon"
ROOT = os.environ.get("MBE_ROOT", ".")
PROBE = 3
ENV = {"MBE_PROBE_TIMEOUT": str(PROBE)}
MUTANTS = int(os.environ.get("MBE_DAMAGE_MUTANTS", "300"))
DAMAGED = sorted(glob.glob(os.path.join(ROOT, "tests", "data",
                                        "master-v0-*.h5")))
XYZ = "2\nargon pair\nAr 0 0 0\nAr 3.6 0 0\n"


def healthy(d):
    """The master the damaged ones were made of, and a shard of it."""
    m = os.path.join(d, "healthy.h5")
    make_argon(m, n_frames=10, n_atoms=4)
    shard = os.path.join(d, "s.h5")
    p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", shard)
    assert p.returncode == 0, p.stderr
    return shard


def programs(d, master, shard):
    """(name, arguments) of each program run on master."""
    xyz = os.path.join(d, "pair.xyz")
    with open(xyz, "w") as f:
        f.write(XYZ)
    out = os.path.join(d, "out.h5")
    if os.path.exists(out):
        os.unlink(out)
    return [("mbe-status", [master]),
            ("mbe-compute", [master, "-c", "lj", "-q", "-o", out]),
            ("mbe-merge", ["-q", master, shard]),
            ("mbe-import", ["-q", "-k", "pair", xyz, master])]


def verdict(p, name, master, took):
    """What is wrong with a run on a damaged master (None: nothing)."""
    if p is None:
        return "hung"
    if p.returncode < 0:
        return f"killed by signal {-p.returncode}"
    lines = err_lines(p)
    if p.returncode != 1:
        return f"exit {p.returncode}"
    if len(lines) != 1 or not lines[0].startswith(name + ": "):
        return f"{len(lines)} lines on stderr: {p.stderr[:300]!r}"
    if os.path.basename(master) not in lines[0]:
        return f"the line does not name the master: {lines[0]}"
    if took > PROBE + 20:
        return f"took {took:.0f} s"
    return None


def run_timed(name, args):
    t0 = time.monotonic()
    try:
        p = run_prog(name, *args, env=ENV, timeout=PROBE + 30)
    except subprocess.TimeoutExpired:
        p = None
    return p, time.monotonic() - t0


@T
def every_program_refuses_damaged_masters(d):
    """And reads the healthy masters (the probe refuses no good one)."""
    assert DAMAGED, "no tests/data/master-v0-*.h5"
    healthy_masters_are_read(d)
    shard = os.path.join(d, "s.h5")
    found = Findings()
    slowest = 0.0
    for src in DAMAGED:
        master = os.path.join(d, "damaged.h5")
        with open(src, "rb") as f, open(master, "wb") as g:
            g.write(f.read())
        before = sha(master)
        for name, args in programs(d, master, shard):
            p, took = run_timed(name, args)
            slowest = max(slowest, took)
            why = verdict(p, name, master, took)
            if why:
                found.add(f"{name}: {why}", os.path.basename(src))
            if sha(master) != before:
                found.add(f"{name} changed the master",
                          os.path.basename(src))
    figure("damaged masters (stored)",
           f"{len(DAMAGED)} files x 4 programs: {found.count()} findings, "
           f"slowest run {slowest:.1f} s")
    found.report()
    assert not found.count(), f"{found.count()} findings"


def merged(d):
    """A master after a merge: ground truth and a merge log (a compound
    of variable-length strings, read whole by the probe)."""
    src = os.path.join(d, "clean.h5")
    make_argon(src, n_frames=10, n_atoms=4)
    shard = os.path.join(d, "c.h5")
    for args in ((src, "-c", "lj", "-q", "-o", shard), ("-q", src, shard)):
        p = run_prog("mbe-compute" if len(args) > 3 else "mbe-merge", *args)
        assert p.returncode == 0, p.stderr
    return src, shard


def healthy_masters_are_read(d):
    """A fresh master and a merged one pass the probe in every program."""
    for master, shard in ((os.path.join(d, "healthy.h5"), healthy(d)),
                          merged(d)):
        for name, args in programs(d, master, shard):
            p = run_prog(name, *args, env=ENV)
            assert p.returncode == 0, f"{name}: {p.stderr}"


@T
def mutants_end_in_one_line(d):
    src, _ = merged(d)
    data = open(src, "rb").read()
    rng = random.Random(14)
    master = os.path.join(d, "damaged.h5")
    out = os.path.join(d, "out.h5")
    found = Findings()
    counts = {"read": 0, "refused": 0, "crashed in the child": 0,
              "stopped at the time-out": 0}
    for i in range(MUTANTS):
        bad, what = mutate(data, rng)
        with open(master, "wb") as f:
            f.write(bad)
        for name, args in (("mbe-status", [master]),
                           ("mbe-compute", [master, "-c", "lj", "-q",
                                            "-o", out])):
            if os.path.exists(out):
                os.unlink(out)
            p, took = run_timed(name, args)
            if p is not None and p.returncode in (0, 3):
                counts["read"] += 1
                continue
            why = verdict(p, name, master, took)
            if why:
                found.add(f"{name}: {why}", f"#{i}: {what}")
                continue
            counts["refused"] += 1
            if "libhdf5 crashed" in p.stderr:
                counts["crashed in the child"] += 1
            if "did not finish" in p.stderr:
                counts["stopped at the time-out"] += 1
    figure("damaged masters (mutants)",
           f"{MUTANTS} mutants x 2 programs: {counts['read']} runs read "
           f"the master, {counts['refused']} refused it "
           f"({counts['crashed in the child']} crashed libhdf5 in the "
           f"child, {counts['stopped at the time-out']} stopped at the "
           f"{PROBE} s time-out), {found.count()} findings")
    found.report()
    assert not found.count(), f"{found.count()} findings"


if __name__ == "__main__":
    T.main()
