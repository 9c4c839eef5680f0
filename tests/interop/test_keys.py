"""Many keys in one job (issue 15): -k repeated and as shell patterns,
--all-keys, the (key, frame) pool split by --chunk like numpy.array_split,
one shard per piece holding a member per key (shard format 4), the skip
of COMPLETED frames and --overwrite per key, a piece killed with SIGKILL
and run again, a job begun by 0.2 with one shard per key continued, and
the keyed mbe-status --missing spec that mbe-compute -f @FILE takes back.

Frames are computed by an exec: engine that logs what it computes
(MBE_NATOMS, MBE_FRAME): every key has its own number of atoms, so the log
tells which frame of which key was computed, and how often."""
import glob
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
LEVEL = "count"

# Energy and forces from the positions only, so that any two runs agree
# bit for bit; one log line "n_atoms frame" per frame computed.
ENGINE = r'''#!/bin/sh
echo "$MBE_NATOMS $MBE_FRAME" >> "$MBE_TEST_LOG"
[ -n "$MBE_TEST_SLEEP" ] && sleep "$MBE_TEST_SLEEP"
exec awk 'NR == 1 { n = $1; next }
NR == 2 { next }
NR <= n + 2 { k = NR - 2; s[k] = $1; x[k] = $2; y[k] = $3; z[k] = $4;
              e += x[k] - 0.5 * y[k] + 0.25 * z[k] }
END { print n
      printf "Properties=species:S:1:pos:R:3:forces:R:3 energy=%.17g pbc=\"F F F\"\n", e
      for (k = 1; k <= n; k++)
          printf "%s %.17g %.17g %.17g %.17g %.17g %.17g\n", s[k], x[k], y[k], z[k], -1.0, 0.5, -0.25 }'
'''


def engine(d):
    p = os.path.join(d, "engine.sh")
    with open(p, "w") as f:
        f.write(ENGINE)
    os.chmod(p, 0o755)
    return f"exec:{p}"


# 12 keys, every one with its own number of atoms (2..13): Structures,
# Trajectories and FiniteSubsystems, as the package keeps them.
def twelve_keys(d):
    path = os.path.join(d, "m.h5")
    keys, sizes = [], {}
    for i in range(12):
        na, nf = 2 + i, 3 + (i * 5) % 7
        pos = random_cluster(nf, na, seed=i, spacing=3.6)
        z = np.full(na, 18)
        if i % 4 == 3:
            key = f"fs{i}"
            write_finite_subsystem(path, key, pos, z)
            key = f"{key}/{CLUSTER}"
        elif i % 4 == 2:
            key = f"md/T{i}"
            write_structure(path, key, pos, z, dataclass="Trajectory",
                            mode="w" if i == 0 else "a")
        else:
            key = f"training/s{i:02d}"
            write_structure(path, key, pos, z, mode="w" if i == 0 else "a")
        keys.append(key)
        sizes[na] = (key, nf)
    return path, keys, sizes


def env_of(d, sleep=None):
    e = {"MBE_TEST_LOG": os.path.join(d, "log")}
    if sleep:
        e["MBE_TEST_SLEEP"] = str(sleep)
    return e


def log_counts(d, sizes):
    """{(key, frame): times computed} from the engine's log."""
    counts = {}
    path = os.path.join(d, "log")
    if not os.path.exists(path):
        return counts
    with open(path) as f:
        for line in f:
            na, fr = map(int, line.split())
            k = (sizes[na][0], fr)
            counts[k] = counts.get(k, 0) + 1
    return counts


def every_pair(sizes):
    return {(k, f) for k, nf in sizes.values() for f in range(nf)}


def merge_all(master, d, pattern="*.h5*"):
    shards = sorted(glob.glob(os.path.join(d, "shards", pattern)))
    lst = os.path.join(d, "list")
    with open(lst, "w") as f:
        f.write("\n".join(shards) + "\n")
    assert_ok(run("mbe-merge", master, f"@{lst}"))
    return shards


def members(path):
    """[(key, frames)] of each member of a shard, in order."""
    with h5py.File(path, "r") as f:
        if f.attrs["mbe_shard_format_version"] != 4:
            return [(f.attrs["key"].decode(), list(f["frames"][()]))]
        n = int(f.attrs["n_members"])
        assert sorted(f.keys()) == sorted(str(i) for i in range(n))
        return [(f[str(i)].attrs["key"].decode(),
                 [int(x) for x in f[str(i)]["frames"][()]])
                for i in range(n)]


def results(master, keys):
    out = {}
    with h5py.File(master, "r") as f:
        for k in keys:
            gt = f[k][GT]
            out[k] = (gt[e_name(LEVEL)][()], gt[f_name(LEVEL)][()],
                      gt[s_name(LEVEL)][()])
    return out


def missing(master, *keyopts):
    p = run("mbe-status", "--missing", "-l", LEVEL, *keyopts, master)
    assert_ok(p)
    return p.stdout


@T
def all_keys_every_frame_once_for_small_and_large_n(d):
    master, keys, sizes = twelve_keys(d)
    total = sum(nf for _, nf in sizes.values())
    calc = engine(d)
    for n in (1, 3, 7, total, total + 9):
        sub = os.path.join(d, f"n{n}")
        os.makedirs(os.path.join(sub, "shards"))
        m = os.path.join(sub, "m.h5")
        subprocess.run(["cp", master, m], check=True)
        for i in range(1, n + 1):
            p = compute(m, "--all-keys", "--chunk", f"{i}/{n}", "-c", calc,
                        "-l", LEVEL, "-q", "-o",
                        os.path.join(sub, "shards", f"t{i}.h5"),
                        env=env_of(sub))
            assert_ok(p)
        counts = log_counts(sub, sizes)
        assert set(counts) == every_pair(sizes), (n, set(counts) ^ every_pair(sizes))
        assert set(counts.values()) == {1}, (n, counts)
        merge_all(m, sub)
        assert missing(m, "--all-keys") == "", n
        # One shard per piece that holds frames, a member per key.
        names = sorted(os.listdir(os.path.join(sub, "shards")))
        assert len(names) == min(n, total), (n, names)
        assert all(x.startswith("t") and x.endswith(".h5") for x in names)
        if n == 1:
            assert [k for k, _ in members(os.path.join(sub, "shards",
                                                       "t1.h5"))] == \
                sorted(keys), names


@T
def pieces_follow_the_pool_like_array_split(d):
    master, keys, sizes = twelve_keys(d)
    calc = engine(d)
    os.makedirs(os.path.join(d, "shards"))
    # Keys in the order given: a pattern in file (sorted) order, then a
    # literal key; the pool is theirs, frames in order of each key.
    opts = ["-k", "training/*", "-k", keys[2]]
    order = sorted(k for k in keys if k.startswith("training/")) + [keys[2]]
    nf = {k: n for k, n in sizes.values()}
    pool = [(k, f) for k in order for f in range(nf[k])]
    n = 5
    want = np.array_split(np.arange(len(pool)), n)
    for i in range(1, n + 1):
        out = os.path.join(d, "shards", f"p{i}.h5")
        assert_ok(compute(master, *opts, "--chunk", f"{i}/{n}", "-c", calc,
                          "-l", LEVEL, "-q", "-o", out, env=env_of(d)))
        # Members in the pool's order, each with its key's frames.
        got = [(k, f) for k, fr in members(out) for f in fr]
        assert got == [pool[j] for j in want[i - 1]], i


@T
def skip_completed_and_overwrite_per_key(d):
    master, keys, sizes = twelve_keys(d)
    calc = engine(d)
    os.makedirs(os.path.join(d, "shards"))
    a, b = keys[0], keys[5]
    assert_ok(compute(master, "-k", a, "-f", "0-1", "-c", calc, "-l", LEVEL,
                      "-q", "-o", os.path.join(d, "shards", "one.h5"),
                      env=env_of(d)))
    merge_all(master, d)
    os.unlink(os.path.join(d, "log"))
    out = os.path.join(d, "shards", "two.h5")
    p = compute(master, "-k", a, "-k", b, "-c", calc, "-l", LEVEL, "-o",
                out, env=env_of(d))
    assert_ok(p)
    assert "2 of " in p.stderr and "already COMPLETED" in p.stderr, p.stderr
    counts = log_counts(d, sizes)
    nf = {k: n for k, n in sizes.values()}
    assert set(counts) == ({(a, f) for f in range(2, nf[a])} |
                           {(b, f) for f in range(nf[b])}), counts
    os.unlink(os.path.join(d, "log"))
    assert_ok(compute(master, "-k", a, "-k", b, "-c", calc, "-l", LEVEL,
                      "--overwrite", "-q", "-o",
                      os.path.join(d, "shards", "three.h5"), env=env_of(d)))
    assert set(log_counts(d, sizes)) == ({(a, f) for f in range(nf[a])} |
                                         {(b, f) for f in range(nf[b])})


@T
def killed_piece_run_again_loses_nothing(d):
    master, keys, sizes = twelve_keys(d)
    ref = os.path.join(d, "ref.h5")
    subprocess.run(["cp", master, ref], check=True)
    calc = engine(d)
    sh = os.path.join(d, "shards")
    os.makedirs(sh)
    refdir = os.path.join(d, "refshards")
    os.makedirs(refdir)
    n = 3
    for i in range(1, n + 1):
        assert_ok(compute(ref, "--all-keys", "--chunk", f"{i}/{n}", "-c",
                          calc, "-l", LEVEL, "-q", "-o",
                          os.path.join(refdir, f"t{i}.h5"),
                          env={"MBE_TEST_LOG": os.path.join(d, "reflog")}))
    shards = sorted(glob.glob(os.path.join(refdir, "*.h5")))
    assert_ok(run("mbe-merge", ref, *shards))
    # Piece 2 killed with SIGKILL in the middle of its keys.
    args = [os.path.join(BIN, "mbe-compute"), master, "--all-keys",
            "--chunk", f"2/{n}", "-c", calc, "-l", LEVEL, "-q",
            "--sync-interval", "0", "-o", os.path.join(sh, "t2.h5")]
    env = dict(os.environ, **env_of(d, sleep=0.05))
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    piece = 0
    nf = {k: m for k, m in sizes.values()}
    pool = [(k, f) for k in sorted(keys) for f in range(nf[k])]
    piece = len(np.array_split(np.arange(len(pool)), n)[1])
    t0 = time.time()
    while time.time() - t0 < 60:
        if len(log_counts(d, sizes)) >= piece // 2:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert os.listdir(sh) == ["t2.h5.part"], os.listdir(sh)
    # The .part alone merges (what the merge job of a killed task does).
    merge_all(master, d)
    for i in (1, 2, 3):
        assert_ok(compute(master, "--all-keys", "--chunk", f"{i}/{n}", "-c",
                          calc, "-l", LEVEL, "-q", "-o",
                          os.path.join(sh, f"t{i}.h5"), env=env_of(d)))
    assert not glob.glob(os.path.join(sh, "*.part"))
    merge_all(master, d)
    assert missing(master, "--all-keys") == ""
    got, want = results(master, keys), results(ref, keys)
    for k in keys:
        for g, w in zip(got[k], want[k]):
            assert np.array_equal(g, w), k
    assert set(log_counts(d, sizes)) == every_pair(sizes)


@T
def missing_round_trip_over_keys(d):
    master, keys, sizes = twelve_keys(d)
    calc = engine(d)
    sh = os.path.join(d, "shards")
    os.makedirs(sh)
    nf = {k: m for k, m in sizes.values()}
    # Scattered frames of a few keys computed first.
    with open(os.path.join(d, "first"), "w") as f:
        f.write(f"{keys[0]}: 0,\n 2\n{keys[4]}: 1 - 2\n\n{keys[11]}: 0\n")
    assert_ok(compute(master, "--all-keys", "-f", f"@{d}/first", "-c", calc,
                      "-l", LEVEL, "-q", "-o", os.path.join(sh, "a.h5"),
                      env=env_of(d)))
    merge_all(master, d)
    spec = missing(master, "--all-keys")
    lines = spec.splitlines()
    assert len(lines) == 12, spec
    assert f"{keys[0]}: 1" + ("" if nf[keys[0]] == 3 else f",3-{nf[keys[0]] - 1}") in lines, spec
    # A single key stays today's plain spec.
    single = missing(master, "-k", keys[4]).strip()
    assert ":" not in single and single.startswith("0,3"), single
    # Patterns: only the keys they take, in the same form.
    part = missing(master, "-k", "md/*")
    assert all(x.startswith("md/") for x in part.splitlines()), part
    todo = os.path.join(d, "todo")
    with open(todo, "w") as f:
        f.write(spec)
    os.unlink(os.path.join(d, "log"))
    for i in (1, 2):
        assert_ok(compute(master, "--all-keys", "-f", f"@{todo}", "--chunk",
                          f"{i}/2", "-c", calc, "-l", LEVEL, "-q", "-o",
                          os.path.join(sh, f"r{i}.h5"), env=env_of(d)))
    merge_all(master, d, "r*.h5")
    assert missing(master, "--all-keys") == ""
    done_first = {(keys[0], 0), (keys[0], 2), (keys[4], 1), (keys[4], 2),
                  (keys[11], 0)}
    assert set(log_counts(d, sizes)) == every_pair(sizes) - done_first
    # An empty spec (nothing missing) computes nothing.
    with open(todo, "w") as f:
        f.write(missing(master, "--all-keys"))
    p = compute(master, "--all-keys", "-f", f"@{todo}", "-c", calc, "-l",
                LEVEL, "-o", os.path.join(sh, "none.h5"), env=env_of(d))
    assert_ok(p)
    assert not glob.glob(os.path.join(sh, "none*")), os.listdir(sh)


@T
def one_key_spec_over_lines_with_blanks(d):
    master, keys, sizes = twelve_keys(d)
    spec = os.path.join(d, "spec")
    with open(spec, "w") as f:
        f.write(" 0 - 1,\n\n  4\n")
    out = os.path.join(d, "s.h5")
    p = compute(master, "-k", keys[6], "-f", f"@{spec}", "-c", engine(d),
                "-l", LEVEL, "-q", "-o", out, env=env_of(d))
    assert_ok(p)
    with h5py.File(out, "r") as f:
        assert list(f["frames"][()]) == [0, 1, 4]
        assert f.attrs["selection"].decode() == "0-1,4"
    p = compute(master, "-k", keys[6], "-f", "1 2", "-c", "lj", "-o",
                os.path.join(d, "t.h5"))
    assert p.returncode == 2, p


@T
def startup_in_summary_shard_and_status(d):
    """Every piece pays the start-up (issue 15, item 2): the summary line
    and the shard's provenance say how long it was."""
    import json
    master, keys, sizes = twelve_keys(d)
    out = os.path.join(d, "s.h5")
    p = compute(master, "-k", keys[1], "-c", "gfn2-xtb", "-o", out)
    assert_ok(p)
    last = p.stderr.strip().splitlines()[-1]
    assert "(start-up " in last and ", first frame " in last, last
    with h5py.File(out, "r") as f:
        ms = int(f.attrs["startup_ms"])
    assert 0 <= ms < 60000, ms
    st = run("mbe-status", "--json", out)
    assert_ok(st)
    assert json.loads(st.stdout)["files"][0]["provenance"]["startup_ms"] == ms
    assert "start-up" in run("mbe-status", out).stdout
    # Shards written before it have none: null, and still read.
    old = os.path.join(ROOT, "tests", "data", "shard-v2-u00c5-lj-molecule.h5")
    st = run("mbe-status", "--json", "--no-verify", old)
    prov = json.loads(st.stdout)["files"][0]["provenance"]
    assert prov["startup_ms"] is None, prov


@T
def key_options_refused_in_one_line(d):
    master, keys, sizes = twelve_keys(d)
    out = os.path.join(d, "s.h5")
    p = compute(master, "-k", "nothing/*", "-c", "lj", "-o", out)
    assert p.returncode == 1 and "matches no frame-holding group" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = compute(master, "-k", keys[0], "-k", "fs3", "-k", keys[3], "-c",
                "lj", "-o", out)
    assert p.returncode == 1 and "selected twice" in p.stderr, p.stderr
    p = compute(master, "--all-keys", "-f", "nokey: 1", "-c", "lj", "-o", out)
    assert p.returncode == 1 and "'nokey' is not one of" in p.stderr, p.stderr
    p = compute(master, "-k", keys[0], "-k", keys[1], "-f", "0-99", "-c",
                "lj", "-o", out)
    assert p.returncode == 1 and keys[0] in p.stderr, p.stderr
    assert not glob.glob(out + "*") and not glob.glob(
        os.path.join(d, "s.k*")), os.listdir(d)


@T
def job_of_shards_per_key_continued(d):
    """tests/data/keys-v2: a job of 0.2 over two keys, killed in its
    second key, left s.k0000.h5 and s.k0001.h5.part.  Run again, it goes
    on in those shards, computing only what they do not hold."""
    src = os.path.join(ROOT, "tests", "data", "keys-v2")
    for name in os.listdir(src):
        subprocess.run(["cp", "-p", os.path.join(src, name), d], check=True)
    log = os.path.join(d, "log")
    p = run("mbe-compute", "m.h5", "-k", "training/*", "-c",
            "exec:./engine.sh", "-l", "count", "-o", "s.h5", cwd=d,
            env={"MBE_TEST_LOG": log})
    assert_ok(p)
    assert "continuing the shards of one key each" in p.stderr, p.stderr
    assert sorted(os.listdir(d)) == sorted(
        ["engine.sh", "m.h5", "m.h5.lock", "s.k0000.h5", "s.k0001.h5",
         "log"]), os.listdir(d)
    with open(log) as f:
        assert f.read().split("\n")[:-1] == ["2 2", "2 3", "2 4"]
    assert_ok(run("mbe-merge", os.path.join(d, "m.h5"),
                  os.path.join(d, "s.k0000.h5"),
                  os.path.join(d, "s.k0001.h5")))
    with h5py.File(os.path.join(d, "m.h5"), "r") as f:
        for k, n in (("training/a", 4), ("training/b", 5)):
            st = f[k][GT][s_name("count")][()]
            assert list(st) == [0] * n, (k, st)
    # A fresh job of the same keys writes one shard of two members.
    p = run("mbe-compute", "m.h5", "-k", "training/*", "--overwrite", "-c",
            "exec:./engine.sh", "-l", "count", "-q", "-o", "new.h5", cwd=d)
    assert_ok(p)
    assert [k for k, _ in members(os.path.join(d, "new.h5"))] == \
        ["training/a", "training/b"]


@T
def shard_of_other_keys_not_resumed(d):
    master, keys, sizes = twelve_keys(d)
    calc = engine(d)
    out = os.path.join(d, "s.h5")
    assert_ok(compute(master, "-k", keys[0], "-k", keys[1], "-c", calc, "-l",
                      LEVEL, "-q", "-o", out, env=env_of(d)))
    before = open(out, "rb").read()
    p = compute(master, "-k", keys[0], "-k", keys[1], "-k", keys[4], "-c",
                calc, "-l", LEVEL, "-q", "-o", out, env=env_of(d))
    assert p.returncode == 1, p
    assert p.stderr.count("\n") == 1, p.stderr
    assert "belongs to another job (it holds 2 keys, this piece 3)" in \
        p.stderr, p.stderr
    p = compute(master, "-k", keys[1], "-k", keys[0], "-c", calc, "-l",
                LEVEL, "-q", "-o", out, env=env_of(d))
    assert p.returncode == 1 and "its key differs" in p.stderr, p.stderr
    assert open(out, "rb").read() == before


if __name__ == "__main__":
    T.main()
