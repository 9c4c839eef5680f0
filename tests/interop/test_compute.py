"""End-to-end tests of mbe-compute on masters written with h5py: shards read
back with h5py and compared with an independent numpy Lennard-Jones, kills
and resumes, signals, and every bad input."""
import os
import shutil
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
EPS, SIG, RC = 0.0103, 3.40, 10.0


def lj_reference(pos, eps=EPS, sig=SIG, rc=RC):
    """Shifted Lennard-Jones, no periodicity: energy (eV) and forces."""
    n = len(pos)
    e = 0.0
    f = np.zeros_like(pos)
    shift = 4 * eps * ((sig / rc) ** 12 - (sig / rc) ** 6)
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[i] - pos[j]
            r = np.linalg.norm(d)
            if r >= rc:
                continue
            sr6 = (sig / r) ** 6
            e += 4 * eps * (sr6 * sr6 - sr6) - shift
            fmag = 24 * eps * (2 * sr6 * sr6 - sr6) / r
            f[i] += fmag * d / r
            f[j] -= fmag * d / r
    return e, f


def make_master(d, n_frames=10, n_atoms=5, key="md/argon", seed=1):
    path = os.path.join(d, "master.h5")
    pos = random_cluster(n_frames, n_atoms, seed=seed, spacing=3.6)
    write_structure(path, key, pos, np.full(n_atoms, 18))
    return path, pos


@T
def chunk_matches_numpy_reference(d):
    master, pos = make_master(d)
    shard = os.path.join(d, "s2.h5")
    p = compute(master, "-c", "lj", "--chunk", "2/4", "-o", shard)
    assert_ok(p)
    frames, status, energy, forces, crc = shard_arrays(shard)
    # numpy.array_split(range(10), 4)[1] == [3, 4, 5]
    assert list(frames) == [3, 4, 5], frames
    assert (status == 0).all()
    for k, fr in enumerate(frames):
        e, f = lj_reference(pos[fr])
        assert abs(energy[k] - e / 5) < 1e-12, (energy[k], e / 5)
        assert np.allclose(forces[k], f, rtol=0, atol=1e-11)
    check_crc_rows(status, energy, forces, crc)
    assert not os.path.exists(shard + ".part")
    with h5py.File(shard, "r") as f:
        attrs = shard_attrs(f)
    text = " ".join(str(v) for v in attrs.values())
    for want in ("md/argon", "lj", "master.h5"):
        assert want in text, f"{want!r} not in shard provenance {attrs}"


@T
def chunks_cover_selection_once(d):
    master, _ = make_master(d, n_frames=7)
    seen = []
    for i in range(1, 5):
        shard = os.path.join(d, f"s{i}.h5")
        assert_ok(compute(master, "-c", "lj", "-f", "1-6", "--chunk",
                          f"{i}/4", "-o", shard))
        seen += list(shard_arrays(shard)[0])
    assert seen == [1, 2, 3, 4, 5, 6], seen


@T
def slurm_array_variables(d):
    master, _ = make_master(d, n_frames=8)
    got = []
    for task in range(1, 5):   # --array=1-4
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "1",
               "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_STEP": "1",
               "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_JOB_ID": "77",
               "SLURM_JOB_ID": str(100 + task)}
        shard = os.path.join(d, f"s{task}.h5")
        assert_ok(compute(master, "-c", "lj", "--chunk", "slurm", "-o",
                          shard, env=env))
        got.append(list(shard_arrays(shard)[0]))
    assert got == [[0, 1], [2, 3], [4, 5], [6, 7]], got
    p = compute(master, "-c", "lj", "--chunk", "slurm", "-o",
                os.path.join(d, "x.h5"),
                env={"SLURM_ARRAY_TASK_ID": ""})
    assert p.returncode != 0 and "SLURM" in p.stderr, p.stderr


@T
def master_from_environment(d):
    master, _ = make_master(d)
    shard = os.path.join(d, "s.h5")
    assert_ok(compute("-c", "lj", "-f", "0-1", "-o", shard,
                      env={"MBE_MASTER": master}))
    assert list(shard_arrays(shard)[0]) == [0, 1]


@T
def skips_completed_frames_unless_overwrite(d):
    master, pos = make_master(d)
    n = 10
    status = np.full(n, STATUS["UNDEFINED"])
    status[:5] = STATUS["COMPLETED"]
    status[6] = STATUS["FAILED"]
    update_ground_truth(master, "md/argon", "lj", np.zeros(n),
                        np.zeros((n, 5, 3)), status)
    s1 = os.path.join(d, "s1.h5")
    assert_ok(compute(master, "-c", "lj", "-o", s1))
    assert list(shard_arrays(s1)[0]) == [5, 6, 7, 8, 9]
    s2 = os.path.join(d, "s2.h5")
    assert_ok(compute(master, "-c", "lj", "--overwrite", "-o", s2))
    assert list(shard_arrays(s2)[0]) == list(range(10))
    # Another level of theory has nothing completed.
    s3 = os.path.join(d, "s3.h5")
    assert_ok(compute(master, "-c", "lj", "-l", "lj/other", "-o", s3))
    assert len(shard_arrays(s3)[0]) == 10


@T
def nothing_to_compute_gives_empty_shard(d):
    master, _ = make_master(d, n_frames=3)
    update_ground_truth(master, "md/argon", "lj", np.zeros(3),
                        np.zeros((3, 5, 3)), np.zeros(3, np.int64))
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", "lj", "-o", shard)
    assert_ok(p)
    assert "nothing to compute" in p.stderr
    assert len(shard_arrays(shard)[0]) == 0


@T
def kill9_then_resume_equals_uninterrupted_run(d):
    master = slow_master(d)
    ref = os.path.join(d, "ref.h5")
    assert_ok(compute(master, "-c", SLOW_CALC, "-f", "0-59", "-q", "-o", ref))
    shard = os.path.join(d, "s.h5")
    args = [os.path.join(BIN, "mbe-compute"), master, "-c", SLOW_CALC, "-f",
            "0-59", "-q", "--sync-interval", "0", "-o", shard]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE)
    wait_for_frames(shard + ".part", 5)
    # A second job given the same -o is refused while the first runs.
    twin = subprocess.run(args, capture_output=True, text=True)
    assert twin.returncode == 1, twin
    assert "another running mbe-compute" in twin.stderr, twin.stderr
    proc.kill()
    proc.wait()
    part = shard + ".part"
    assert os.path.exists(part) and not os.path.exists(shard)
    frames, status, energy, forces, crc = shard_arrays(part)
    done = np.flatnonzero(status != STATUS["UNDEFINED"])
    assert len(done) >= 5, done
    check_crc_rows(status, energy, forces, crc)
    rf, rs, re_, rfo, _ = shard_arrays(ref)
    assert np.array_equal(energy[done], re_[done])
    assert np.array_equal(forces[done], rfo[done])
    p = subprocess.run(args, capture_output=True, text=True)
    assert_ok(p)
    assert "resuming" in p.stderr or p.returncode == 0
    frames, status, energy, forces, crc = shard_arrays(shard)
    assert np.array_equal(frames, rf) and np.array_equal(status, rs)
    assert np.array_equal(energy, re_) and np.array_equal(forces, rfo)
    assert not os.path.exists(part)


@T
def sigterm_leaves_durable_part_and_exit_5(d):
    master = slow_master(d)
    shard = os.path.join(d, "s.h5")
    args = [os.path.join(BIN, "mbe-compute"), master, "-c", SLOW_CALC, "-f",
            "0-199", "-o", shard]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    wait_for_frames(shard + ".part", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, (proc.returncode, err[-500:])
    assert "run the same command again" in err
    _, status, *_ = shard_arrays(shard + ".part")
    done = int((status != STATUS["UNDEFINED"]).sum())
    assert 3 <= done < 200, done
    p = subprocess.run(args + ["-q"], capture_output=True, text=True)
    assert_ok(p)
    assert (shard_arrays(shard)[1] == 0).all()


@T
def resume_of_another_job_is_refused(d):
    master, _ = make_master(d)
    shard = os.path.join(d, "s.h5")
    assert_ok(compute(master, "-c", "lj", "-f", "0-3", "-o", shard))
    before = open(shard, "rb").read()
    for extra in (["-f", "0-4"], ["-f", "0-3", "-l", "other"],
                  ["-f", "0-3", "--lj-sigma", "3.0"],
                  ["-f", "0-3", "-c", "gfn-ff", "-l", "lj"]):
        p = compute(master, "-c", "lj", *extra, "-o", shard)
        assert p.returncode == 1, p
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "belongs to another job" in p.stderr, p.stderr
    assert open(shard, "rb").read() == before
    # The same command again: nothing left, still success.
    assert_ok(compute(master, "-c", "lj", "-f", "0-3", "-o", shard))


@T
def bad_inputs_one_line_and_nonzero_exit(d):
    master, _ = make_master(d)
    text = os.path.join(d, "text.h5")
    with open(text, "w") as f:
        f.write("not hdf5\n")
    os.mkdir(os.path.join(d, "ro"))
    os.chmod(os.path.join(d, "ro"), 0o555)
    out = os.path.join(d, "s.h5")
    cases = [
        ((os.path.join(d, "missing.h5"), "-c", "lj", "-o", out), 1,
         "missing.h5"),
        ((text, "-c", "lj", "-o", out), 1, "HDF5"),
        ((master, "-k", "nope", "-c", "lj", "-o", out), 1, "nope"),
        ((master, "-c", "lj", "-f", "5-20", "-o", out), 1, "20"),
        ((master, "-c", "lj", "-f", "3-1", "-o", out), 2, "3-1"),
        ((master, "-c", "lj", "-f", "1,x", "-o", out), 2, "x"),
        ((master, "-c", "lj", "--chunk", "5/4", "-o", out), 2, "5/4"),
        ((master, "-c", "nosuch", "-o", out), 2, "nosuch"),
        ((master, "-c", "lj"), 2, "-o"),
        ((master, "-c", "lj", "--lj-sigma", "-1", "-o", out), 2, "sigma"),
        ((master, "--bogus", "-o", out), 2, "bogus"),
    ]
    if os.geteuid() != 0:
        cases.append(((master, "-c", "lj", "-o",
                       os.path.join(d, "ro", "s.h5")), 1, "ro"))
    sha = open(master, "rb").read()
    for args, code, word in cases:
        p = compute(*args)
        assert p.returncode == code, (args, p.returncode, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, (args, p.stderr)
        assert lines[0].startswith("mbe-compute: "), lines
        assert word in lines[0], (args, word, lines[0])
        assert not os.path.exists(out) and not os.path.exists(out + ".part"), \
            args
    assert open(master, "rb").read() == sha


@T
def gfn2_default_calculator_on_example(d):
    xyz = os.path.join(ROOT, "examples", "water-cluster.xyz")
    if not os.path.exists(xyz):
        raise Skip("examples/water-cluster.xyz not present")
    master = os.path.join(d, "m.h5")
    assert_ok(run("mbe-import", "-k", "water", xyz, master))
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-f", "0-2", "-o", shard)
    assert_ok(p)
    frames, status, energy, forces, _ = shard_arrays(shard)
    assert (status == 0).all()
    # GFN2-xTB total energies of water are about -5.07 Eh per molecule,
    # i.e. about -46 eV per atom.
    assert ((energy < -40) & (energy > -50)).all(), energy
    with h5py.File(shard, "r") as f:
        assert "gfn2" in " ".join(str(v) for v in f.attrs.values())


@T
def frames_from_a_file_beyond_the_argument_limit(d):
    # Every third of 100 000 frames: a 200 kB spec, more than one argument
    # of execve may hold (128 kB), as mbe-status --missing can print.
    n = 100_000
    path = os.path.join(d, "master.h5")
    write_structure(path, "big", random_cluster(n, 2, seed=5, spacing=3.6),
                    np.full(2, 18))
    want = np.arange(0, n, 3)
    spec = ",".join(map(str, want))
    assert len(spec) > 128 * 1024
    with open(os.path.join(d, "spec"), "w") as fh:
        fh.write("  " + spec + "\n")
    shard = os.path.join(d, "s.h5")
    assert_ok(compute(path, "-c", "lj", "-q", "-f",
                      "@" + os.path.join(d, "spec"), "-o", shard))
    assert np.array_equal(shard_arrays(shard)[0], want)
    p = compute(path, "-c", "lj", "-q", "-f", "@-", "-o",
                os.path.join(d, "t.h5"), input="5-9\n")
    assert_ok(p)
    assert list(shard_arrays(os.path.join(d, "t.h5"))[0]) == [5, 6, 7, 8, 9]
    p = compute(path, "-c", "lj", "-f", "@" + os.path.join(d, "nope"), "-o",
                os.path.join(d, "u.h5"))
    assert p.returncode == 2 and "nope" in p.stderr, p
    assert len(p.stderr.strip().splitlines()) == 1


if __name__ == "__main__":
    T.main()
