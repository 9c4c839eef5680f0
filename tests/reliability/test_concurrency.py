"""Four mbe-compute jobs, an mbe-merge and a Python writer that takes the
package's lock, all at once, round after round.  The writer checks, while
it holds the lock, that no byte of the master changes under it and that no
merge is half-way (no undo journal), and that every COMPLETED frame it can
read holds the right values; at the end no frame is lost, every level reads
back exactly, and the master opens in h5py."""
import json
import os
import subprocess
import sys
import time

from rel import *  # noqa: F401,F403
from rel import (HERE, Tests, figure, make_argon, prog, read_ground_truth,
                 run_prog, shard_arrays, e_name)

import h5py
import numpy as np

T = Tests()
N_FRAMES, N_ATOMS, ROUNDS, JOBS = 400, 6, 20, 4

WRITER = r'''
import fcntl, hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from rel import PythonLock, update_ground_truth, e_name, f_name, s_name
import h5py, numpy as np
master, stop, ref_path, out = sys.argv[2:6]
ref = np.load(ref_path)
E, F = ref["E"], ref["F"]
n, na = len(E), F.shape[1]
res = {"holds": 0, "contended": 0, "changed": 0, "journal": 0, "bad_rows": 0,
       "py_levels": 0, "unreadable": 0, "waited_max": 0.0}
j = 0
def digest(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
def busy():
    """Whether someone else holds the lock right now."""
    with open(master + ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
while not os.path.exists(stop):
    t0 = time.time()
    res["contended"] += busy()
    with PythonLock(master):
        res["waited_max"] = max(res["waited_max"], time.time() - t0)
        res["holds"] += 1
        if os.path.exists(master + ".mbe-journal"):
            res["journal"] += 1
        a = digest(master)
        try:
            with h5py.File(master, "r") as f:
                g = f["md/argon"].get("ground_truth")
                levels = [] if g is None else [
                    x.decode() if isinstance(x, bytes) else x
                    for x in g.attrs.get("levels_of_theory", [])]
                for lv in levels:
                    if not lv.startswith("lj-"):
                        continue
                    st = g[s_name(lv)][()]
                    done = st == 0
                    e = g[e_name(lv)][()]
                    fo = g[f_name(lv)][()]
                    if not (np.array_equal(e[done], E[done]) and
                            np.array_equal(fo[done], F[done])):
                        res["bad_rows"] += 1
        except Exception as ex:
            res["unreadable"] += 1
            res["error"] = repr(ex)
        time.sleep(0.025)
        if digest(master) != a:
            res["changed"] += 1
        if res["holds"] % 5 == 0:
            lv = f"py-{j}"
            st = np.zeros(n, np.int64)
            update_ground_truth(master, "md/argon", lv, np.full(n, -1.0 - j),
                                np.full((n, na, 3), float(j)), st)
            res["py_levels"] += 1
            j += 1
    time.sleep(0.025)
with open(out, "w") as f:
    json.dump(res, f)
'''


def loop(d, rounds, via_link):
    """rounds of the jobs and a merge beside the writer; via_link: our
    programs are given link.h5 -> master.h5, the writer the real name."""
    master = os.path.join(d, "master.h5")
    make_argon(master, n_frames=N_FRAMES, n_atoms=N_ATOMS)
    ours = master
    if via_link:
        ours = os.path.join(d, "link.h5")
        os.symlink("master.h5", ours)
    ref_shard = os.path.join(d, "ref.h5")
    assert run_prog("mbe-compute", master, "-c", "lj", "-q", "-o",
                    ref_shard).returncode == 0
    _, _, E, F, _ = shard_arrays(ref_shard)
    np.savez(os.path.join(d, "ref.npz"), E=E, F=F)
    script = os.path.join(d, "writer.py")
    with open(script, "w") as f:
        f.write(WRITER)
    stop, out = os.path.join(d, "stop"), os.path.join(d, "writer.json")
    writer = subprocess.Popen([sys.executable, script, HERE, master, stop,
                               os.path.join(d, "ref.npz"), out])
    t0 = time.time()
    failures = []
    merges = []
    try:
        for r in range(rounds):
            level = f"lj-r{r}"
            jobs, shards = [], []
            for i in range(1, JOBS + 1):
                s = os.path.join(d, f"r{r}-{i}.h5")
                shards.append(s)
                jobs.append(subprocess.Popen(
                    [prog("mbe-compute"), ours, "-c", "lj", "-l", level,
                     "--chunk", f"{i}/{JOBS}", "-q", "-o", s],
                    stderr=subprocess.PIPE, text=True))
            # The previous round's merge runs beside this round's jobs.
            for j in jobs:
                _, err = j.communicate(timeout=120)
                if j.returncode != 0:
                    failures.append(f"round {r}: compute exit "
                                    f"{j.returncode}: {err.strip()[:200]}")
            for m in merges:
                _, err = m.communicate(timeout=120)
                if m.returncode != 0:
                    failures.append(f"merge exit {m.returncode}: "
                                    f"{err.strip()[:200]}")
            merges = [subprocess.Popen([prog("mbe-merge"), "-q", ours,
                                        *shards], stderr=subprocess.PIPE,
                                       text=True)]
        for m in merges:
            _, err = m.communicate(timeout=120)
            if m.returncode != 0:
                failures.append(f"merge exit {m.returncode}: "
                                f"{err.strip()[:200]}")
    finally:
        open(stop, "w").close()
        writer.wait(timeout=60)
    took = time.time() - t0
    res = json.load(open(out))
    lost = 0
    with h5py.File(master, "r") as f:
        levels = [x.decode() if isinstance(x, bytes) else x for x in
                  f["md/argon/ground_truth"].attrs["levels_of_theory"]]
    for r in range(rounds):
        e, fo, st = read_ground_truth(master, "md/argon", f"lj-r{r}")
        lost += int((st != 0).sum())
        if not (np.array_equal(e, E) and np.array_equal(fo, F)):
            failures.append(f"level lj-r{r}: values differ")
    for j in range(res["py_levels"]):
        e, fo, st = read_ground_truth(master, "md/argon", f"py-{j}")
        if not (e == -1.0 - j).all() or not (st == 0).all():
            failures.append(f"python level py-{j} damaged")
    want = sorted([f"lj-r{r}" for r in range(rounds)] +
                  [f"py-{j}" for j in range(res["py_levels"])])
    if levels != want:
        failures.append(f"levels_of_theory {levels} != {want}")
    for k in ("changed", "journal", "bad_rows", "unreadable"):
        if res[k]:
            failures.append(f"writer saw {res[k]} x {k}"
                            + (f" ({res.get('error')})" if k ==
                               "unreadable" else ""))
    if lost:
        failures.append(f"{lost} frames lost")
    figure("concurrency" + (" through a link" if via_link else ""),
           f"{rounds} rounds of {JOBS} mbe-compute + 1 mbe-merge "
           + ("given link.h5 -> master.h5 " if via_link else "")
           + "beside a Python writer given master.h5 "
           f"({res['holds']} lock holds, {res['contended']} of "
           f"them found the lock taken by an mbe job, {res['py_levels']} "
           f"levels written by Python): {rounds * N_FRAMES} frames merged, "
           f"{lost} lost, {res['changed']} byte changes and "
           f"{res['journal']} journals seen under the Python lock, "
           f"{res['bad_rows']} bad rows; longest Python lock wait "
           f"{res['waited_max']:.2f} s; {took:.1f} s")
    for f in failures[:10]:
        print("  " + f)
    assert not failures, failures[0]


@T
def computes_merge_and_python_writer_in_a_loop(d):
    loop(d, ROUNDS, via_link=False)


@T
def through_a_link_beside_python_on_the_real_name(d):
    """The package locks the name it is given: our programs given a link
    must take the real name's lock too."""
    loop(d, ROUNDS // 2, via_link=True)


if __name__ == "__main__":
    T.main()
