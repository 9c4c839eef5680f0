#!/usr/bin/python3
"""mbe-merge of a job array's worth of shards: a list file (@LIST, @-),
a bounded number of descriptors (ulimit -n 64 for 1000 shards) and of
memory.  The short variant for make check; bench/merge-scale runs 1 to
10^4 shards."""
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "md/argon"
N_SHARDS = int(os.environ.get("MBE_MANY_SHARDS", "1000"))
FRAMES_EACH = 2


def limited(n):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return set_limit


def make_shards(d, m, n):
    def one(i):
        out = os.path.join(d, f"s{i:05d}.h5")
        p = compute(m, "-c", "lj", "-q", "--chunk", f"{i + 1}/{n}", "-o",
                    out)
        assert p.returncode == 0, p.stderr
        return out
    with ThreadPoolExecutor(max_workers=2) as ex:
        return list(ex.map(one, range(n)))


@T
def thousand_shards_from_a_list_under_ulimit_64(d):
    m = os.path.join(d, "m.h5")
    nf = N_SHARDS * FRAMES_EACH
    write_structure(m, KEY, random_cluster(nf, 3, seed=4, spacing=3.6),
                    np.full(3, 18))
    shards = make_shards(d, m, N_SHARDS)
    lst = os.path.join(d, "shards.txt")
    with open(lst, "w") as f:
        f.write("\n".join(shards[:N_SHARDS // 2]) + "\n\n")
    err = open(os.path.join(d, "err.txt"), "w+")
    proc = subprocess.Popen([os.path.join(BIN, "mbe-merge"), "-q", m,
                             "@" + lst, "@-"], stdin=subprocess.PIPE,
                            stderr=err, text=True, preexec_fn=limited(64))
    proc.stdin.write("\n".join(shards[N_SHARDS // 2:]))
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.seek(0)
    assert proc.returncode == 0, err.read()[-2000:]
    # The merge's own peak (KiB), whatever the children before it used;
    # not under ASan, whose shadow memory and quarantine are most of it.
    if os.environ.get("MBE_SAN") != "1":
        assert usage.ru_maxrss < 64 * 1024, f"peak RSS {usage.ru_maxrss} KiB"
    with h5py.File(m, "r") as f:
        g = f[KEY]["ground_truth"]
        st = g[s_name("lj")][()]
        assert (st == STATUS["COMPLETED"]).all()
        assert len(g["mbe_merge_log"]) == N_SHARDS
        e = g[e_name("lj")][()]
    for i in (0, N_SHARDS // 2, N_SHARDS - 1):
        fr, _, en, _, _ = shard_arrays(shards[i])
        assert np.array_equal(e[fr], en)
    # The same again: every shard already applied, nothing written.
    p = subprocess.run([os.path.join(BIN, "mbe-merge"), m, "@" + lst],
                       capture_output=True, text=True,
                       preexec_fn=limited(64))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "0 frames written" in p.stdout, p.stdout[-500:]


@T
def list_errors_are_usage_errors(d):
    m = os.path.join(d, "m.h5")
    write_structure(m, KEY, random_cluster(2, 3, seed=4), np.full(3, 18))
    p = run("mbe-merge", m, "@" + os.path.join(d, "none.txt"))
    assert p.returncode == 2 and "none.txt" in p.stderr, p.stderr
    empty = os.path.join(d, "empty.txt")
    open(empty, "w").close()
    p = run("mbe-merge", m, "@" + empty)
    assert p.returncode == 2 and "lists are empty" in p.stderr, p.stderr


if __name__ == "__main__":
    T.main()
