"""examples/slurm without a Slurm (issue 15, item 3): sbatch and scancel
are stubs that record what they were given.  resubmit with 10^5
scattered missing frames (a 1.1 MB spec, beyond the 128 kB of one
argument or variable) passes the spec in a file and never echoes it;
submit sizes pieces (MBE_PIECE_FRAMES), limits concurrency
(MBE_CONCURRENT), records MBE_TASKS and the array's settings;
compute.sbatch run as one task alone computes its own piece with
MBE_TASKS and refuses without it.  make check-slurm runs the same scripts
on a real Slurm."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
SLURM = os.path.join(ROOT, "examples", "slurm")

# Records its arguments and the size of each MBE_ variable, one file per
# call; prints a job id as sbatch --parsable does.
SBATCH = r'''#!/bin/sh
n=$(ls "$STUB_DIR" | grep -c '^call')
n=$((n + 1))
{ printf '%s\n' "$@"; echo ---; env | grep '^MBE_' | awk -F= '{ print $1, length($0) }'
  echo ---; env | grep -E '^MBE_(FRAMES|TASKS|CONCURRENT|RUN)=' ; } >"$STUB_DIR/call$n"
echo "$((1000 + n))"
'''


def stubs(d):
    b = os.path.join(d, "stubbin")
    os.makedirs(b)
    for name, text in (("sbatch", SBATCH), ("scancel", "#!/bin/sh\n")):
        p = os.path.join(b, name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o755)
    return b


def script(d, name, *args, env=None):
    b = os.path.join(d, "stubbin")
    if not os.path.isdir(b):
        stubs(d)
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("MBE_", "SLURM_")) or k == "MBE_ROOT"}
    e.update(STUB_DIR=d, MBE_BIN=BIN, PATH=b + ":" + os.environ["PATH"])
    e.update(env or {})
    return subprocess.run([os.path.join(SLURM, name), *args],
                          capture_output=True, text=True, env=e, timeout=300)


def calls(d):
    out = []
    for n in sorted((x for x in os.listdir(d) if x.startswith("call")),
                    key=lambda x: int(x[4:])):
        with open(os.path.join(d, n)) as f:
            args, sizes, vals = f.read().split("---\n")
        out.append((args.split("\n")[:-1],
                    {ln.split()[0]: int(ln.split()[1])
                     for ln in sizes.splitlines()},
                    dict(ln.split("=", 1) for ln in vals.splitlines())))
    return out


@T
def resubmit_of_scattered_frames_passes_a_file(d):
    n = 200000
    master = os.path.join(d, "m.h5")
    write_structure(master, "big", np.zeros((n, 1, 3)), [18], mode="w")
    status = np.where(np.arange(n) % 2 == 0, 0, 1).astype(np.int64)
    update_ground_truth(master, "big", "lj", np.zeros(n), None, status)
    p = script(d, "resubmit", env={"MBE_MASTER": master, "MBE_CALC": "lj"})
    assert p.returncode == 0, p.stderr + p.stdout
    out = p.stdout + p.stderr
    assert len(out) < 2000, len(out)
    assert "100000 frames in" in out, out
    c = calls(d)
    assert len(c) == 2, c               # the array and its merge
    args, sizes, vals = c[0]
    assert "--array=1-4" in args, args
    assert max(sizes.values()) < 4096, sizes
    spec = vals["MBE_FRAMES"]
    assert spec.startswith("@"), spec
    with open(spec[1:]) as f:
        text = f.read().strip()
    assert len(text) > 128 * 1024 and text.startswith("1,3,5,"), len(text)
    assert vals["MBE_TASKS"] == "4"
    assert c[1][0][-1] == "1001"        # merge.sbatch of array 1001


@T
def submit_pieces_concurrency_and_recorded_settings(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "a", np.zeros((50, 1, 3)), [18], mode="w")
    write_structure(master, "b/c", np.zeros((23, 2, 3)), [18, 18])
    env = {"MBE_MASTER": master, "MBE_CALC": "lj", "MBE_ALL_KEYS": "1",
           "MBE_PIECE_FRAMES": "10", "MBE_CONCURRENT": "3"}
    p = script(d, "submit", "--time=1:00:00", env=env)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "(8 tasks, 3 at a time, 73 frames in " in p.stdout, p.stdout
    args, _, vals = calls(d)[0]
    assert "--array=1-8%3" in args and "--time=1:00:00" in args, args
    assert vals["MBE_TASKS"] == "8" and "MBE_RUN" not in vals, vals
    with open(vals["MBE_FRAMES"][1:]) as f:
        assert f.read() == "a: 0-49\nb/c: 0-22\n"
    envf = os.path.join(d, "shards", "submit-1001.env")
    text = open(envf).read()
    assert "export MBE_TASKS=8" in text and "export MBE_RUN=1001" in text
    assert "export MBE_ALL_KEYS=1" in text, text
    bad = script(d, "submit", env=dict(env, MBE_PIECE_FRAMES="0"))
    assert bad.returncode == 2 and "not a positive integer" in bad.stderr
    # Nothing missing: nothing submitted.
    for k, nf, na in (("a", 50, 1), ("b/c", 23, 2)):
        update_ground_truth(master, k, "lj", np.zeros(nf), None,
                            np.zeros(nf, np.int64))
    p = script(d, "submit", env=env)
    assert p.returncode == 0 and "nothing to compute" in p.stdout, p
    assert len(calls(d)) == 2


def task_env(d, master, task, count, **kw):
    e = {"MBE_MASTER": master, "MBE_CALC": "lj", "SLURM_ARRAY_JOB_ID": "77",
         "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(task),
         "SLURM_ARRAY_TASK_MAX": str(task), "SLURM_ARRAY_TASK_COUNT":
         str(count), "SLURM_ARRAY_TASK_STEP": "1"}
    e.update(kw)
    return e


@T
def one_task_run_again_computes_its_piece(d):
    master = os.path.join(d, "m.h5")
    write_structure(master, "a", random_cluster(10, 2, spacing=3.6), [18] * 2,
                    mode="w")
    p = script(d, "compute.sbatch", env=task_env(d, master, 3, 1))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "an array of one task would compute every frame" in p.stderr
    p = script(d, "compute.sbatch",
               env=task_env(d, master, 3, 1, MBE_TASKS="4", MBE_RUN="70"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "piece 3/4" in p.stdout, p.stdout
    with h5py.File(os.path.join(d, "shards", "70_3.h5"), "r") as f:
        assert list(f["frames"][()]) == [6, 7]     # array_split of 10 in 4
    p = script(d, "compute.sbatch",
               env=task_env(d, master, 5, 1, MBE_TASKS="4"))
    assert p.returncode == 2 and "not one of 1 to MBE_TASKS=4" in p.stderr


if __name__ == "__main__":
    T.main()
