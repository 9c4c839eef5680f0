"""mbe-compute killed with SIGKILL at every counted file-changing system
call (the shim's trace tells which frames were finished, i.e. had their
status row written, before the kill), then resumed: the shard left by the
kill holds every finished frame, with its crc and the uninterrupted run's
values, and claims no other; the resumed shard equals the uninterrupted
one; merged, it gives the master of an uninterrupted run."""
import glob
import os
import random
import shutil

from rel import *  # noqa: F401,F403
from rel import (SHIM, Tests, UNDEF, claimed_rows_ok, clean_dir, diff_snap,
                 figure, killed, make_argon, read_trace, run_prog, same_shard,
                 shard_arrays, snapshot, LOG)

import h5py
import numpy as np

T = Tests()
TOTAL = {"points": 0, "verified": 0, "failed": 0}
UNDEF_HEX = np.int64(UNDEF).tobytes().hex()


def no_log(snap):
    return {k: v for k, v in snap.items() if not k.endswith("/" + LOG)}


class Job:
    """A master, a compute command, and its uninterrupted results."""

    def __init__(self, d, name, n_frames, n_atoms, args):
        self.name = name
        self.base = os.path.join(d, name, "in")
        self.work = os.path.join(d, name, "work")
        os.makedirs(self.base)
        os.makedirs(self.work)
        self.master = os.path.join(self.base, "master.h5")
        make_argon(self.master, n_frames=n_frames, n_atoms=n_atoms)
        self.args = args
        self.shard = os.path.join(self.work, "s.h5")
        self.part = self.shard + ".part"
        self.mwork = os.path.join(self.base, "merged", "master.h5")
        os.makedirs(os.path.dirname(self.mwork))
        clean_dir(self.work)
        tr = os.path.join(self.base, "count.trace")
        p = self.compute(shim={"SHIM_MATCH": self.work, "SHIM_TRACE": tr})
        assert p.returncode == 0, p.stderr
        self.calls = read_trace(tr)
        self.ref = shard_arrays(self.shard)
        self.ref_merged = no_log(self.merged(self.shard))

    def compute(self, shim=None):
        return run_prog("mbe-compute", self.master, "-c", "lj", "-q",
                        *self.args, "-o", self.shard, shim=shim)

    def merged(self, shard):
        shutil.copyfile(self.master, self.mwork)
        for x in (".lock", ".mbe-journal"):
            if os.path.exists(self.mwork + x):
                os.unlink(self.mwork + x)
        p = run_prog("mbe-merge", "-q", self.mwork, shard)
        assert p.returncode == 0, f"merge: {p.stderr.strip()[:300]}"
        return snapshot(self.mwork)


def finished_frames(trace, left):
    """Frames whose status row (non-UNDEFINED value) was written before the
    kill, from the killed run's own trace."""
    with h5py.File(left, "r") as f:
        off = f["status"].id.get_offset()
        frames = f["frames"][()]
    n = len(frames)
    done = set()
    for (_, _call, cls, path, o, ln, hx, res) in trace:
        if cls != "write" or ln != 8 or res != 8 or off is None:
            continue
        if not (path.endswith(".part") or path.endswith("s.h5")):
            continue
        if off <= o < off + 8 * n and (o - off) % 8 == 0 and \
                hx != UNDEF_HEX:
            done.add(int(frames[(o - off) // 8]))
    return done


def check_point(job, k, tr, extra_kill=None):
    """After a kill: what is left, then resume, then merge."""
    left = job.part if os.path.exists(job.part) else (
        job.shard if os.path.exists(job.shard) else None)
    if left is not None:
        done = finished_frames(read_trace(tr), left)
        claimed = claimed_rows_ok(left, job.ref)
        lost = done - claimed
        assert not lost, f"frames {sorted(lost)[:5]} finished before the " \
            f"kill are missing from {os.path.basename(left)}"
    if extra_kill is not None:
        p = job.compute(shim={"SHIM_MATCH": job.work,
                              "SHIM_KILL_AT": extra_kill})
        if not killed(p) and p.returncode != 0:
            raise AssertionError(f"second run (kill at {extra_kill}) exit "
                                 f"{p.returncode}: {p.stderr.strip()[:200]}")
        left2 = job.part if os.path.exists(job.part) else None
        if left2 is not None and left is not None:
            claimed2 = claimed_rows_ok(left2, job.ref)
            assert claimed <= claimed2, "the second kill lost frames " \
                f"{sorted(claimed - claimed2)[:5]}"
    p = job.compute()
    assert p.returncode == 0, f"resume exit {p.returncode}: " \
        f"{p.stderr.strip()[:300]}"
    assert not os.path.exists(job.part), ".part left after the resume"
    same_shard(job.shard, job.ref)
    got = no_log(job.merged(job.shard))
    d = diff_snap(got, job.ref_merged)
    assert not d, f"merged result differs in {d}"


def run_job(job, points, label, stats, fails, second=None, torn=False):
    strays = 0
    for k in points:
        clean_dir(job.work)
        tr = os.path.join(job.base, "kill.trace")
        if os.path.exists(tr):
            os.unlink(tr)
        shim = {"SHIM_MATCH": job.work, "SHIM_KILL_AT": k, "SHIM_TRACE": tr}
        if torn:
            shim["SHIM_TORN"] = 1
        p = job.compute(shim=shim)
        stats["points"] += 1
        if not killed(p):
            stats["failed"] += 1
            fails.append(f"{label} k={k}: not killed (exit {p.returncode})")
            continue
        strays += bool(glob.glob(os.path.join(job.work, "*.new-*")))
        try:
            check_point(job, k, tr, second(k) if second else None)
            stats["verified"] += 1
        except AssertionError as ex:
            stats["failed"] += 1
            c = next((c for c in job.calls if c[0] == k), None)
            where = f"{c[1]} {os.path.basename(c[3])} off={c[4]} " \
                f"len={c[5]}" if c else "?"
            fails.append(f"{label} k={k} ({where}): {ex}")
    return strays


def account(name, stats, fails, strays=None):
    for key in ("points", "verified", "failed"):
        TOTAL[key] += stats[key]
    figure(f"compute kill points [{name}]",
           f"{stats['points']} killed, {stats['verified']} verified, "
           f"{stats['failed']} failed" +
           (f"; {strays} left a stray .part.new-* file" if strays else ""))
    for f in fails[:8]:
        print("  " + f)
    assert not fails, f"{len(fails)} kill points failed, first: {fails[0]}"


@T
def compute_killed_at_every_call_sync_each_frame(d):
    job = Job(d, "sync0", 30, 4, ["--sync-interval", "0"])
    figure("compute calls [sync each frame]", f"{len(job.calls)}")
    stats, fails = {"points": 0, "verified": 0, "failed": 0}, []
    strays = run_job(job, range(1, len(job.calls) + 1), "sync0", stats,
                     fails)
    account("sync each frame, 30 frames", stats, fails, strays)


@T
def compute_killed_at_every_call_batched_sync(d):
    job = Job(d, "batched", 30, 5, ["-f", "2-25"])
    figure("compute calls [batched sync]", f"{len(job.calls)}")
    stats, fails = {"points": 0, "verified": 0, "failed": 0}, []
    strays = run_job(job, range(1, len(job.calls) + 1), "batched", stats,
                     fails)
    account("default sync interval, 24 frames", stats, fails, strays)


@T
def compute_killed_again_while_resuming(d):
    job = Job(d, "twice", 20, 4, ["--sync-interval", "0"])
    rng = random.Random(5)
    n = len(job.calls)
    firsts = sorted(rng.sample(range(1, n + 1), 30))
    stats, fails = {"points": 0, "verified": 0, "failed": 0}, []
    # The resumed run makes fewer calls; kill it early in its life (its
    # crc scan and torn-frame reset, then its first frames).
    strays = run_job(job, firsts, "twice", stats, fails,
                     second=lambda k: rng.randint(1, 12))
    account("second kill while resuming", stats, fails, strays)


@T
def compute_torn_write_at_kill(d):
    """The kill tears the write it interrupts (half of its bytes land):
    a torn row is never claimed, or is claimed whole and right."""
    job = Job(d, "torn", 12, 4, ["--sync-interval", "0"])
    pts = [c[0] for c in job.calls if c[2] == "write"]
    stats, fails = {"points": 0, "verified": 0, "failed": 0}, []
    strays = run_job(job, pts, "torn", stats, fails, torn=True)
    account("torn writes, 12 frames", stats, fails, strays)


@T
def compute_totals(d):
    figure("compute kill points, total",
           f"{TOTAL['points']} killed, {TOTAL['verified']} verified, "
           f"{TOTAL['failed']} failed")
    assert TOTAL["points"] >= 200, TOTAL


if __name__ == "__main__":
    T.main()
