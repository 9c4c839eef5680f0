"""mbe-merge killed with SIGKILL at every counted file-changing system call
(write, pwrite, fsync, fdatasync, ftruncate, unlink, rename through the
LD_PRELOAD shim), then run again: every time the master opens in h5py and
holds exactly what an uninterrupted merge gives.  Also torn writes at the
kill, a second kill during the re-run (in the roll-back), and kills at
random delays."""
import os
import random
import shutil
import signal
import subprocess
import time

from rel import *  # noqa: F401,F403
from rel import (GT, SHIM, Tests, clean_dir, compute_shards, diff_snap,
                 figure, killed, make_argon, prog, read_trace, run_prog,
                 snapshot, update_ground_truth, write_finite_subsystem,
                 random_cluster, e_name, f_name, s_name, STATUS, POS,
                 spelt_0_2)

import h5py
import numpy as np

T = Tests()
TOTAL = {"points": 0, "verified": 0, "failed": 0}


# -------------------------------------------------------------- scenarios

def scen_fresh(base):
    """A new level: structure (journal), rows, log."""
    m = os.path.join(base, "master.h5")
    make_argon(m)
    return m, compute_shards(m, base, 3), []


def scen_partial(base):
    """The level exists with frames COMPLETED and FAILED; raw rows only,
    written in many small runs (--buffer of 512 bytes)."""
    m = os.path.join(base, "master.h5")
    make_argon(m)
    seed = compute_shards(m, base, 1, "-f", "0-9", prefix="seed")[0]
    with h5py.File(seed, "r") as f:
        e, fo = f["energy"][()], f["forces"][()]
    n = 40
    E, F = np.zeros(n), np.zeros((n, 4, 3))
    E[:10], F[:10] = e, fo
    st = np.full(n, STATUS["UNDEFINED"])
    st[:10] = STATUS["COMPLETED"]
    st[[12, 13, 20]] = STATUS["FAILED"]
    update_ground_truth(m, "md/argon", "lj", E, F, st)
    os.unlink(seed)
    return m, compute_shards(m, base, 2), ["--buffer", "0.0005"]


def scen_multi(base):
    """Two keys (a Structure and a FiniteSubsystem), three targets, one
    level with '/' in its name, seven shards in one merge."""
    m = os.path.join(base, "master.h5")
    make_argon(m)
    pos = random_cluster(20, 5, seed=3, spacing=3.6)
    write_finite_subsystem(m, "clusters/c1", pos, np.full(5, 18))
    s = compute_shards(m, base, 3, "-k", "md/argon", prefix="a")
    s += compute_shards(m, base, 2, "-k", "md/argon", "-l", "lj/cut6",
                        "--lj-cutoff", "6", prefix="b")
    s += compute_shards(m, base, 2, "-k", "clusters/c1", prefix="c")
    return m, s, []


def scen_chunked(base):
    """Datasets that h5py made chunked (written through HDF5 inside the
    journal) and a legacy level without status_ (readers: COMPLETED)."""
    m = os.path.join(base, "master.h5")
    make_argon(m)
    n = 40
    with h5py.File(m, "a") as f:
        g = f["md/argon"].require_group(GT)
        e = np.full(n, np.nan)
        fo = np.full((n, 4, 3), np.nan)
        st = np.full(n, STATUS["UNDEFINED"], np.int64)
        e[:6], fo[:6], st[:6] = -0.001, 0.0, STATUS["COMPLETED"]
        g.create_dataset(e_name("lj"), data=e, chunks=(8,))
        g.create_dataset(f_name("lj"), data=fo, chunks=(8, 4, 3))
        g.create_dataset(s_name("lj"), data=st, chunks=(8,))
        g.create_dataset(e_name("old"), data=np.full(n, -0.002))
        g.create_dataset(f_name("old"), data=np.zeros((n, 4, 3)))
        g.attrs["levels_of_theory"] = np.array(["lj", "old"],
                                               dtype=h5py.string_dtype())
    s = compute_shards(m, base, 2)
    s += compute_shards(m, base, 1, "-l", "old", "--overwrite",
                        "-f", "0-19", prefix="o")
    return m, s, []


def scen_old_names(base):
    """A master of mbe-shard 0.2 (U+00C5 names): positions renamed, and
    the forces of level lj in both spellings joined into the package's
    dataset, inside the journal, before the rows are written."""
    m = os.path.join(base, "master.h5")
    make_argon(m)
    seed = compute_shards(m, base, 1, "-f", "0-9", prefix="seed")[0]
    with h5py.File(seed, "r") as f:
        e, fo = f["energy"][()], f["forces"][()]
    os.unlink(seed)
    n = 40
    E, F = np.full(n, np.nan), np.full((n, 4, 3), np.nan)
    E[:10], F[:10] = e, fo
    st = np.full(n, STATUS["UNDEFINED"])
    st[:10] = STATUS["COMPLETED"]
    update_ground_truth(m, "md/argon", "lj", E, F, st)
    with h5py.File(m, "a") as f:
        g = f["md/argon"]
        g.move(POS, spelt_0_2(POS))
        gt = g[GT]
        gt.move(f_name("lj"), spelt_0_2(f_name("lj")))
        half = np.full((n, 4, 3), np.nan)
        half[5:10] = F[5:10]
        gt[spelt_0_2(f_name("lj"))][5:10] = np.nan
        gt.create_dataset(f_name("lj"), data=half)
    return m, compute_shards(m, base, 2, "-f", "10-39"), []


SCENARIOS = [("fresh", scen_fresh), ("partial", scen_partial),
             ("multi", scen_multi), ("chunked", scen_chunked),
             ("old_names", scen_old_names)]


class Scenario:
    def __init__(self, d, name, build):
        self.name = name
        self.base = os.path.join(d, name, "in")
        self.work = os.path.join(d, name, "work")
        os.makedirs(self.base)
        os.makedirs(self.work)
        self.pristine, self.shards, self.args = build(self.base)
        self.master = os.path.join(self.work, "master.h5")
        self.shim_base = {"SHIM_MATCH": self.work}
        # The uninterrupted merge, and how many calls it makes.
        self.reset()
        tr = os.path.join(self.base, "count.trace")
        p = self.merge(shim=dict(self.shim_base, SHIM_TRACE=tr))
        assert p.returncode == 0, p.stderr
        self.calls = read_trace(tr)
        self.ref = snapshot(self.master)
        self.ref_bytes = open(self.master, "rb").read()

    def reset(self):
        clean_dir(self.work)
        shutil.copyfile(self.pristine, self.master)

    def merge(self, shim=None, extra=()):
        return run_prog("mbe-merge", "-q", *self.args, *extra, self.master,
                        *self.shards, shim=shim)

    def verify(self):
        """The same merge again finishes; the master is the reference."""
        p = self.merge()
        assert p.returncode == 0, f"re-run exit {p.returncode}: " \
            f"{p.stderr.strip()[:300]}"
        assert not os.path.exists(self.master + ".mbe-journal"), \
            "journal left after the re-run"
        got = snapshot(self.master)
        d = diff_snap(got, self.ref)
        assert not d, f"master differs from the uninterrupted merge in {d}"


def run_points(sc, points, label, fails, stats, torn=False):
    """Kill at each point k, re-run, verify."""
    for k in points:
        sc.reset()
        shim = dict(sc.shim_base, SHIM_KILL_AT=k)
        if torn:
            shim["SHIM_TORN"] = 1
        p = sc.merge(shim=shim)
        stats["points"] += 1
        if not killed(p):
            fails.append(f"{label} k={k}: not killed (exit {p.returncode}:"
                         f" {p.stderr.strip()[:200]})")
            stats["failed"] += 1
            continue
        if os.path.exists(sc.master + ".mbe-journal"):
            stats["journal"] = stats.get("journal", 0) + 1
        try:    # before the re-run: does a plain h5py reader get in?
            h5py.File(sc.master, "r").close()
        except OSError:
            stats["unopenable"] = stats.get("unopenable", 0) + 1
        try:
            sc.verify()
            stats["verified"] += 1
        except AssertionError as ex:
            stats["failed"] += 1
            fails.append(f"{label} k={k} ({describe(sc.calls, k)}): {ex}")


def describe(calls, k):
    for c in calls:
        if c[0] == k:
            return f"{c[1]} {os.path.basename(c[3])} off={c[4]} len={c[5]}"
    return "?"


def account(name, stats, fails, noun="killed"):
    TOTAL["points"] += stats["points"]
    TOTAL["verified"] += stats["verified"]
    TOTAL["failed"] += stats["failed"]
    figure(f"merge kill points [{name}]",
           f"{stats['points']} {noun}, {stats['verified']} verified, "
           f"{stats['failed']} failed"
           + (f", {stats['journal']} left a journal" if "journal" in stats
              else "")
           + (f", {stats.get('unopenable', 0)} left a master that h5py "
              "could not open before the re-run" if "journal" in stats
              else ""))
    for f in fails[:8]:
        print("  " + f)
    assert not fails, f"{len(fails)} kill points failed, first: {fails[0]}"


def scenario_test(name, build):
    def fn(d):
        sc = Scenario(d, name, build)
        fails, stats = [], {"points": 0, "verified": 0, "failed": 0}
        n = len(sc.calls)
        run_points(sc, range(1, n + 1), name, fails, stats)
        figure(f"merge calls [{name}]", f"{n} counted calls per merge")
        account(name, stats, fails)
    fn.__name__ = f"merge_killed_at_every_call_{name}"
    return fn


for _n, _b in SCENARIOS:
    T(scenario_test(_n, _b))


@T
def merge_torn_write_at_kill(d):
    """The kill tears the write it interrupts: half of its bytes land."""
    sc = Scenario(d, "torn", scen_fresh)
    pts = [c[0] for c in sc.calls if c[2] == "write"]
    fails, stats = [], {"points": 0, "verified": 0, "failed": 0}
    run_points(sc, pts, "torn", fails, stats, torn=True)
    account("torn writes, fresh", stats, fails)


@T
def merge_killed_again_during_rerun(d):
    """Kill, then kill the re-run (in its roll-back or redo), then run."""
    fails, stats = [], {"points": 0, "verified": 0, "failed": 0}
    rng = random.Random(7)
    for name, build in (("fresh", scen_fresh), ("multi", scen_multi)):
        sc = Scenario(d, "twice-" + name, build)
        n = len(sc.calls)
        firsts = list(range(2, n + 1, 3))
        for k1 in firsts:
            sc.reset()
            p = sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k1))
            if not killed(p):
                continue
            # The re-run's own calls (the journal names the master's inode,
            # so the state is made again by the same kill, not copied).
            tr = os.path.join(sc.base, "rerun.trace")
            if os.path.exists(tr):
                os.unlink(tr)
            p = sc.merge(shim=dict(sc.shim_base, SHIM_TRACE=tr))
            m = len(read_trace(tr))
            if p.returncode != 0:
                fails.append(f"{name} k1={k1}: re-run exit {p.returncode}")
                continue
            if m == 0:      # all was done: the re-run changes nothing
                continue
            for k2 in sorted(set(rng.sample(range(1, m + 1),
                                            min(3, m)))):
                sc.reset()
                p = sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k1))
                assert killed(p)
                p = sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k2))
                stats["points"] += 1
                if not killed(p):
                    stats["failed"] += 1
                    fails.append(f"{name} k1={k1} k2={k2}: not killed "
                                 f"(exit {p.returncode}: "
                                 f"{p.stderr.strip()[:200]})")
                    continue
                try:
                    sc.verify()
                    stats["verified"] += 1
                except AssertionError as ex:
                    stats["failed"] += 1
                    fails.append(f"{name} k1={k1} k2={k2}: {ex}")
    account("second kill during the re-run", stats, fails)


@T
def merge_killed_at_random_delays(d):
    """SIGKILL from outside at random moments of a slower merge (a master
    of 400 frames, 8 shards, 64 KiB buffer)."""
    def build(base):
        m = os.path.join(base, "master.h5")
        make_argon(m, n_frames=400, n_atoms=8)
        return m, compute_shards(m, base, 8), ["--buffer", "0.0625"]
    sc = Scenario(d, "delay", build)
    t0 = time.time()
    sc.reset()
    assert sc.merge().returncode == 0
    dur = time.time() - t0
    rng = random.Random(11)
    fails, stats = [], {"points": 0, "verified": 0, "failed": 0}
    n_killed = 0
    for i in range(40):
        sc.reset()
        delay = rng.uniform(0, dur)
        proc = subprocess.Popen([prog("mbe-merge"), "-q", *sc.args,
                                 sc.master, *sc.shards],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        stats["points"] += 1
        n_killed += proc.returncode == -signal.SIGKILL
        try:
            sc.verify()
            stats["verified"] += 1
        except AssertionError as ex:
            stats["failed"] += 1
            fails.append(f"delay {delay:.4f}s: {ex}")
    figure("merge random-delay kills",
           f"{stats['points']} runs, {n_killed} of them killed before the "
           f"end (an uninterrupted merge took {dur * 1000:.0f} ms)")
    account("random delays", stats, fails, noun="runs")


@T
def rerun_while_readers_hold_the_master(d):
    """After a kill, the re-run meets (a) a package-style reader holding the
    lock and the file for a while: it waits, then finishes; (b) a bare h5py
    reader (HDF5's own file lock, no package lock): it fails cleanly or
    finishes, and finishes once the reader is gone."""
    import threading
    from rel import PythonLock, err_lines
    sc = Scenario(d, "readers", scen_fresh)
    journal_points = []
    for k in range(1, len(sc.calls) + 1, 5):
        sc.reset()
        sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k))
        journal_points.append((k, os.path.exists(sc.master + ".mbe-journal")))
    fails, waited, clean, direct = [], 0, 0, 0
    for k, _ in journal_points:
        # (a)
        sc.reset()
        sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k))
        held = threading.Event()

        def hold():
            with PythonLock(sc.master):
                held.set()
                time.sleep(1.0)
        th = threading.Thread(target=hold)
        th.start()
        held.wait()
        t0 = time.time()
        p = sc.merge(extra=("--timeout", "30"))
        th.join()
        if p.returncode != 0:
            fails.append(f"(a) k={k}: exit {p.returncode}: {p.stderr!r}")
        elif time.time() - t0 < 0.5:
            fails.append(f"(a) k={k}: did not wait for the lock")
        else:
            waited += 1
            try:
                sc.verify()
            except AssertionError as ex:
                fails.append(f"(a) k={k}: {ex}")
        # (b)
        sc.reset()
        sc.merge(shim=dict(sc.shim_base, SHIM_KILL_AT=k))
        try:
            f = h5py.File(sc.master, "r")
        except OSError:
            f = None    # half-changed structure: only the roll-back helps
        try:
            p = sc.merge(extra=("--timeout", "2"))
        finally:
            if f is not None:
                f.close()
        if p.returncode == 0:
            direct += 1
        elif len(err_lines(p)) != 1:
            fails.append(f"(b) k={k}: exit {p.returncode}, "
                         f"{len(err_lines(p))}-line error: {p.stderr!r}")
        else:
            clean += 1
        try:
            sc.verify()
        except AssertionError as ex:
            fails.append(f"(b) k={k}: after the reader left: {ex}")
    figure("re-runs beside readers",
           f"{len(journal_points)} kill points: {waited} re-runs waited for "
           f"a package reader and finished; beside a bare h5py reader "
           f"{direct} finished at once, {clean} refused cleanly and "
           f"finished later; {len(fails)} failed")
    for f in fails[:6]:
        print("  " + f)
    assert not fails, fails[0]


@T
def merge_totals(d):
    figure("merge kill points, total",
           f"{TOTAL['points']} killed, {TOTAL['verified']} verified, "
           f"{TOTAL['failed']} failed")
    assert TOTAL["points"] >= 200, TOTAL


if __name__ == "__main__":
    T.main()
