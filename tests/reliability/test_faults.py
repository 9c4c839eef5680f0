"""ENOSPC and EIO during mbe-merge and mbe-compute: injected by the shim
at every counted call (write, fsync, ...; sticky like a full disk, or once
like a transient I/O error; short writes), and a real full file system (a
small tmpfs).  Each time: a one-line error, a non-zero exit, the master
either unchanged or finished by running the same merge again, never a shard
that claims frames it does not hold; the resumed job then finishes with the
uninterrupted results."""
import glob
import os
import shutil
import subprocess

from rel import *  # noqa: F401,F403
from rel import (Findings, error_verdict, Skip, Tests, claimed_rows_ok,
                 clean_dir, diff_snap, figure,
                 make_argon, compute_shards, one_line_error, read_trace,
                 run_prog, same_shard, sha, shard_arrays, snapshot)
from test_crash_merge import Scenario, scen_fresh, scen_multi, scen_chunked
from test_crash_compute import Job, no_log

T = Tests()
TOTAL = {"merge": 0, "compute": 0, "failed": 0}
WORDS = {"ENOSPC": "No space left on device", "EIO": "Input/output error"}

# (label, shim settings without SHIM_FAIL_AT, classes the points run over)
MODES = [
    ("ENOSPC on every write from the k-th on",
     {"SHIM_ERRNO": "ENOSPC", "SHIM_CLASSES": "write",
      "SHIM_FAIL_COUNT": -1}, "write"),
    ("EIO once at the k-th call",
     {"SHIM_ERRNO": "EIO", "SHIM_FAIL_COUNT": 1}, None),
    ("EIO on every fsync from the k-th on",
     {"SHIM_ERRNO": "EIO", "SHIM_CLASSES": "sync", "SHIM_FAIL_COUNT": -1},
     "sync"),
    ("short write, then ENOSPC",
     {"SHIM_ERRNO": "ENOSPC", "SHIM_CLASSES": "write", "SHIM_SHORT": 1,
      "SHIM_FAIL_COUNT": -1}, "write"),
]


def points_of(calls, cls):
    """Indices 1..n among the calls of that class (the shim numbers only
    the counted classes)."""
    sel = [c for c in calls if cls is None or c[2] == cls]
    return list(range(1, len(sel) + 1))


def named_figure(what, tot, unnamed):
    """How many errors name the errno (strerror text); not a failure."""
    figure(f"{what} fault errors naming the cause",
           f"{tot['named']} of {tot['runs']}")
    seen = set()
    for u in unnamed:
        key = u.split(": ", 1)[1][:60] if ": " in u else u
        if key not in seen and len(seen) < 3:
            seen.add(key)
            print(f"  e.g. {u[:220]}")


def merge_fault_check(sc, shim, label, stats, found, unnamed):
    sc.reset()
    before = sha(sc.master)
    p = sc.merge(shim=shim)
    stats["runs"] += 1
    where = f"{label}, k={shim['SHIM_FAIL_AT']}: {p.stderr.strip()}"
    bad = error_verdict(p, "mbe-merge")
    mode = label.split(": ", 1)[-1]
    if bad:
        found.add(f"{bad} [{mode}]", where)
    elif WORDS[shim["SHIM_ERRNO"]] in p.stderr:
        stats["named"] += 1
    else:
        unnamed.append(p.stderr.strip())
    unchanged = sha(sc.master) == before and not os.path.exists(
        sc.master + ".mbe-journal")
    stats["unchanged" if unchanged else "rerun"] += 1
    try:
        sc.verify()
    except AssertionError as ex:
        found.add("the re-run does not finish the merge", f"{where}: {ex}")


@T
def merge_faults_at_every_call(d):
    found, unnamed = Findings(), []
    tot = {"runs": 0, "unchanged": 0, "rerun": 0, "named": 0}
    for name, build in (("fresh", scen_fresh), ("multi", scen_multi),
                        ("chunked", scen_chunked)):
        sc = Scenario(d, "f-" + name, build)
        for label, shim, cls in MODES:
            for k in points_of(sc.calls, cls):
                s = dict(sc.shim_base, **shim, SHIM_FAIL_AT=k)
                merge_fault_check(sc, s, f"{name}: {label}", tot, found,
                                  unnamed)
    TOTAL["merge"] += tot["runs"]
    TOTAL["failed"] += found.count()
    figure("merge injected faults",
           f"{tot['runs']} runs, {tot['unchanged']} left the master "
           f"unchanged, {tot['rerun']} changed it and the re-run finished "
           f"it, {found.count()} findings")
    named_figure("merge", tot, unnamed)
    found.report()
    assert not found.count(), f"{found.count()} findings"


def compute_fault_check(job, shim, label, stats, found, unnamed):
    clean_dir(job.work)
    p = job.compute(shim=shim)
    stats["runs"] += 1
    where = f"{label}, k={shim['SHIM_FAIL_AT']}: {p.stderr.strip()}"
    bad = error_verdict(p, "mbe-compute")
    if bad:
        found.add(f"{bad} [{label}]", where)
    elif WORDS[shim["SHIM_ERRNO"]] in p.stderr:
        stats["named"] += 1
    else:
        unnamed.append(p.stderr.strip())
    try:
        for left in (job.part, job.shard):
            if os.path.exists(left):
                claimed_rows_ok(left, job.ref)
    except AssertionError as ex:
        found.add("a shard claims frames it does not hold", f"{where}: {ex}")
    if glob.glob(os.path.join(job.work, "*.new-*")):
        stats["stray"] += 1
    try:
        r = job.compute()
        assert r.returncode == 0, f"re-run exit {r.returncode}: " \
            f"{r.stderr.strip()[:200]}"
        same_shard(job.shard, job.ref)
        got = no_log(job.merged(job.shard))
        dd = diff_snap(got, job.ref_merged)
        assert not dd, f"merged result differs in {dd}"
    except AssertionError as ex:
        found.add("the re-run does not finish the job", f"{where}: {ex}")


@T
def compute_faults_at_every_call(d):
    job = Job(d, "cf", 12, 4, ["--sync-interval", "0"])
    found, unnamed = Findings(), []
    tot = {"runs": 0, "stray": 0, "named": 0}
    for label, shim, cls in MODES:
        for k in points_of(job.calls, cls):
            s = dict(shim, SHIM_MATCH=job.work, SHIM_FAIL_AT=k)
            compute_fault_check(job, s, label, tot, found, unnamed)
    TOTAL["compute"] += tot["runs"]
    TOTAL["failed"] += found.count()
    figure("compute injected faults",
           f"{tot['runs']} runs, {found.count()} findings"
           + (f", {tot['stray']} left a stray .part.new-* file"
              if tot["stray"] else ""))
    named_figure("compute", tot, unnamed)
    found.report()
    assert not found.count(), f"{found.count()} findings"


@T
def merge_fault_during_roll_back(d):
    """A killed merge left a journal; the next run meets EIO in its
    roll-back (the k-th call); then a run without faults finishes."""
    sc = Scenario(d, "rb", scen_fresh)
    found, runs = Findings(), 0
    journal = sc.master + ".mbe-journal"
    for k1 in range(2, len(sc.calls) + 1, 3):
        sc.reset()
        sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k1))
        if not os.path.exists(journal):
            continue
        for k in range(1, 7):
            sc.reset()
            sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k1))
            p = sc.merge(shim=dict(sc.shim_base, SHIM_FAIL_AT=k,
                                   SHIM_ERRNO="EIO"))
            runs += 1
            where = f"killed at {k1}, EIO at {k}: {p.stderr.strip()}"
            if p.returncode == 0:
                continue    # the fault hit after the roll-back: fine
            bad = error_verdict(p, "mbe-merge")
            if bad:
                found.add(bad, where)
            try:
                sc.verify()
            except AssertionError as ex:
                found.add("the re-run does not finish the merge",
                          f"{where}: {ex}")
    figure("merge faults during the roll-back of a killed merge",
           f"{runs} runs, {found.count()} findings")
    found.report()
    assert not found.count(), f"{found.count()} findings"


# ------------------------------------------------- a real full file system

class Tmpfs:
    def __init__(self, path, size):
        self.path = path
        os.makedirs(path)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            f"size={size},mode=0755", "tmpfs", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount a small tmpfs: {r.stderr.strip()}")

    def free(self):
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave):
        """A filler file so that about `leave` bytes stay free."""
        f = os.path.join(self.path, "filler")
        if os.path.exists(f):
            os.unlink(f)
        n = self.free() - leave
        if n > 0:
            with open(f, "wb") as fh:
                fh.write(b"\0" * n)

    def unfill(self):
        f = os.path.join(self.path, "filler")
        if os.path.exists(f):
            os.unlink(f)

    def close(self):
        subprocess.run(["umount", "-l", self.path], capture_output=True)


@T
def full_file_system_merge_and_compute(d):
    fs = Tmpfs(os.path.join(d, "small"), "2m")
    try:
        base = os.path.join(d, "in")
        os.makedirs(base)
        pristine = os.path.join(base, "master.h5")
        make_argon(pristine, n_frames=300, n_atoms=6)
        shards = compute_shards(pristine, base, 3)
        ref_dir = os.path.join(d, "ref")
        os.makedirs(ref_dir)
        ref_m = os.path.join(ref_dir, "master.h5")
        shutil.copyfile(pristine, ref_m)
        assert run_prog("mbe-merge", "-q", ref_m, *shards).returncode == 0
        ref = snapshot(ref_m)
        ref_shard = shard_arrays(shards[0])
        m = os.path.join(fs.path, "master.h5")
        out = os.path.join(fs.path, "s1.h5")
        runs = refused = done = named = 0
        found = Findings()
        for leave in range(0, 64 * 1024 + 1, 4096):
            # merge
            for x in os.listdir(fs.path):
                os.unlink(os.path.join(fs.path, x))
            shutil.copyfile(pristine, m)
            fs.fill(leave)
            p = run_prog("mbe-merge", "-q", m, *shards)
            runs += 1
            where = f"merge, {leave} bytes free: {p.stderr.strip()}"
            if p.returncode == 0:
                done += 1
                if diff_snap(snapshot(m), ref):
                    found.add("merge exit 0 with a wrong result", where)
            else:
                refused += 1
                bad = error_verdict(p, "mbe-merge")
                if bad:
                    found.add("merge: " + bad, where)
                named += WORDS["ENOSPC"] in p.stderr
                fs.unfill()
                r = run_prog("mbe-merge", "-q", m, *shards)
                if r.returncode != 0 or diff_snap(snapshot(m), ref):
                    found.add("the re-run does not finish the merge",
                              f"{where}; re-run: {r.stderr.strip()}")
            # compute: the shard is laid out whole at creation
            for x in os.listdir(fs.path):
                os.unlink(os.path.join(fs.path, x))
            fs.fill(leave)
            args = [pristine, "-c", "lj", "--chunk", "1/3", "-q", "-o", out]
            p = run_prog("mbe-compute", *args)
            runs += 1
            where = f"compute, {leave} bytes free: {p.stderr.strip()}"
            try:
                if p.returncode == 0:
                    done += 1
                    same_shard(out, ref_shard)
                else:
                    refused += 1
                    bad = error_verdict(p, "mbe-compute")
                    if bad:
                        found.add("compute: " + bad, where)
                    named += WORDS["ENOSPC"] in p.stderr
                    for left in (out + ".part", out):
                        if os.path.exists(left):
                            claimed_rows_ok(left, ref_shard)
                    fs.unfill()
                    r = run_prog("mbe-compute", *args)
                    assert r.returncode == 0, r.stderr
                    same_shard(out, ref_shard)
            except AssertionError as ex:
                found.add("compute: wrong shard or failed re-run",
                          f"{where}: {ex}")
        figure("full file system (tmpfs)",
               f"{runs} runs with 0..64 KiB free: {refused} refused "
               f"({named} naming ENOSPC), {done} fitted, "
               f"{found.count()} findings")
        found.report()
        assert not found.count(), f"{found.count()} findings"
    finally:
        fs.close()


@T
def fault_totals(d):
    figure("injected fault runs, total",
           f"{TOTAL['merge']} merge, {TOTAL['compute']} compute, "
           f"{TOTAL['failed']} findings")


if __name__ == "__main__":
    T.main()
