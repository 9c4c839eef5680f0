"""Which frames a job computes, and which are missing, against our own
Python transcription of the rules of the package mbe_automation
(api/classes.py: _resolve_chunk_indices, _run_model, _frames_to_compute,
_completed_frames; storage/core.py: _read_ground_truth), written from
reading its source: mbe-compute runs on masters made with h5py and the
frames of its shard are compared with the transcription's, and so is the
spec that mbe-status --missing / --failed prints.

The transcription reads the master with h5py as the package does, so the
cases are files, not descriptions: a listed status, a status dataset whose
level is not listed, legacy results listed and not, the group's
level_of_theory equal to the level (as a variable-length string, as the
package writes it, and as a fixed-length one, which h5py reads as bytes
and the package's == never matches)."""
import os
import sys

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
KEY = "md/argon"
N = 13
MIXED = [0, 1, 2, 3, 0, 0, 1, 3, 0, 2, 0, 1, 0]


# ------------------------------------------------- the package's rules

def package_statuses(g):
    """_read_ground_truth's calculation_status: the listed levels with a
    status dataset, or with energies or forces only (legacy: every frame
    COMPLETED); None without a ground_truth group."""
    if "ground_truth" not in g:
        return None
    gt = g["ground_truth"]
    out = {}
    for name in gt.attrs.get("levels_of_theory", []):
        if s_name(name) in gt:
            out[name] = gt[s_name(name)][...]
            continue
        n = 0
        if e_name(name) in gt:
            n = len(gt[e_name(name)])
        elif f_name(name) in gt:
            n = len(gt[f_name(name)])
        if n > 0:
            out[name] = np.full(n, STATUS["COMPLETED"], np.int64)
    return out


def package_completed(g, level):
    """_completed_frames for one level."""
    lot = g.attrs.get("level_of_theory")
    if lot is not None and level == lot:
        return np.arange(g.attrs["n_frames"])
    cs = package_statuses(g)
    if cs is None or level not in cs:
        return np.array([], np.int64)
    return np.nonzero(cs[level] == STATUS["COMPLETED"])[0]


def package_piece(n_frames, selected, chunk):
    """_resolve_chunk_indices, then _run_model's checks: the job's frames
    before completed ones are dropped (ValueError where the package
    raises)."""
    sel = None if selected is None else np.asarray(selected, np.int64)
    if chunk is not None:
        pool = sel if sel is not None else np.arange(n_frames)
        i, n = chunk
        if not 1 <= i <= n:
            raise ValueError("chunk index")
        sel = np.array_split(pool, n)[i - 1]
    if sel is None:
        return np.arange(n_frames)
    if len(sel) and (sel.min() < 0 or sel.max() > n_frames - 1):
        raise ValueError("Invalid indices in selected_frames")
    unique = np.unique(sel)
    if len(unique) != len(sel):
        raise ValueError("Repeated elements in selected_frames")
    return unique


def package_job(path, level, selected, chunk, overwrite):
    """(piece, frames to compute) of one job."""
    with h5py.File(path, "r") as f:
        g = f[KEY]
        piece = package_piece(int(g.attrs["n_frames"]), selected, chunk)
        if overwrite:
            return piece, piece
        done = package_completed(g, level)
        return piece, np.setdiff1d(piece, done, assume_unique=True)


def package_missing(path, level, failed_only):
    """What --missing (not COMPLETED) and --failed (FAILED or
    SCF_NOT_CONVERGED) mean under the package's view of the status."""
    with h5py.File(path, "r") as f:
        g = f[KEY]
        n = int(g.attrs["n_frames"])
        if not failed_only:
            return np.setdiff1d(np.arange(n), package_completed(g, level))
        lot = g.attrs.get("level_of_theory")
        cs = package_statuses(g) or {}
        if (lot is not None and level == lot) or level not in cs:
            return np.array([], np.int64)
        bad = (STATUS["FAILED"], STATUS["SCF_NOT_CONVERGED"])
        return np.nonzero(np.isin(cs[level], bad))[0]


# ---------------------------------------------------------- specs

def expand(spec):
    """Frames of a spec in the order written."""
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def compact(frames):
    """Sorted frames as a compact spec (0-2,5)."""
    runs, frames = [], sorted(int(x) for x in frames)
    for x in frames:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


# --------------------------------------------------------- masters

def set_levels(path, levels):
    with h5py.File(path, "a") as f:
        f[KEY]["ground_truth"].attrs["levels_of_theory"] = np.array(
            sorted(levels), dtype=h5py.string_dtype())


def put(path, level, status=None, legacy=False):
    st = np.asarray(status if status is not None else MIXED, np.int64)
    update_ground_truth(path, KEY, level, np.arange(N) * -0.01,
                        np.zeros((N, 3, 3)), st, with_status=not legacy)


def plain(path):
    pass


def listed(path):
    put(path, "lj")


def unlisted(path):
    put(path, "lj", np.zeros(N))
    put(path, "pbe")
    set_levels(path, ["pbe"])


def unlisted_no_attribute(path):
    put(path, "lj", np.zeros(N))
    with h5py.File(path, "a") as f:
        del f[KEY]["ground_truth"].attrs["levels_of_theory"]


def legacy_listed(path):
    put(path, "lj", legacy=True)


def legacy_unlisted(path):
    put(path, "lj", legacy=True)
    put(path, "pbe")
    set_levels(path, ["pbe"])


def listed_without_datasets(path):
    put(path, "pbe")
    set_levels(path, ["lj", "pbe"])


def generator(path, value="lj"):
    put(path, "lj")
    with h5py.File(path, "a") as f:
        f[KEY].attrs["level_of_theory"] = value


def generator_fixed_length(path):
    generator(path, np.bytes_(b"lj"))


def generator_other(path):
    generator(path, "gfn2-xtb")


def generator_without_ground_truth(path):
    with h5py.File(path, "a") as f:
        f[KEY].attrs["level_of_theory"] = "lj"


MASTERS = [plain, listed, unlisted, unlisted_no_attribute, legacy_listed,
           legacy_unlisted, listed_without_datasets, generator,
           generator_fixed_length, generator_other,
           generator_without_ground_truth]


def make(d, how):
    path = os.path.join(d, how.__name__ + ".h5")
    write_structure(path, KEY, random_cluster(N, 3, seed=3, spacing=3.6),
                    np.full(3, 18))
    how(path)
    return path


# ------------------------------------------------------------- runs

SLURM_2_OF_3 = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_STEP": "1",
                "SLURM_ARRAY_TASK_COUNT": "3"}


class Job:
    def __init__(self, master, level, spec, chunk, overwrite):
        self.master, self.level, self.spec = master, level, spec
        self.chunk, self.overwrite = chunk, overwrite

    def __str__(self):
        return (f"{os.path.basename(self.master)} -l {self.level} "
                f"-f {self.spec} --chunk {self.chunk} "
                f"overwrite={self.overwrite}")

    def run(self, shard):
        args = [self.master, "-c", "lj", "-l", self.level, "-q", "-o", shard]
        env = None
        if self.spec is not None:
            args += ["-f", self.spec]
        if self.chunk == "slurm":
            args += ["--chunk", "slurm"]
            env = SLURM_2_OF_3
        elif self.chunk is not None:
            args += ["--chunk", self.chunk]
        if self.overwrite:
            args.append("--overwrite")
        return compute(*args, env=env)

    def expected(self):
        chunk = (2, 3) if self.chunk == "slurm" else (
            None if self.chunk is None else
            tuple(int(x) for x in self.chunk.split("/")))
        selected = None if self.spec is None else expand(self.spec)
        return package_job(self.master, self.level, selected, chunk,
                           self.overwrite)


def check_job(d, job, k):
    shard = os.path.join(d, f"s{k}.h5")
    p = job.run(shard)
    assert p.returncode == 0, f"{job}: exit {p.returncode}: {p.stderr}"
    piece, want = job.expected()
    frames = shard_arrays(shard)[0]
    assert list(frames) == list(want), \
        f"{job}: computed {list(frames)}, the package {list(want)}"
    with h5py.File(shard, "r") as f:
        sel = shard_attrs(f)["selection"]
    # The provenance is the job's piece, sorted, before skipping.
    assert sel == compact(piece), f"{job}: selection {sel!r}, piece {piece}"
    os.remove(shard)


SPECS = [None, "12,0,5-7,3,1", "10-12,0-4", "2,1", "7", "3,9-11,0"]
CHUNKS = [None, "1/1", "1/2", "2/2", "2/3", "3/5", "4/4", "6/20", "13/13",
          "20/20", "slurm"]
SOME = [(None, None), ("12,0,5-7,3,1", "2/3"), ("10-12,0-4", "1/2"),
        (None, "6/20"), ("2,1", "1/2"), (None, "slurm")]


@T
def order_and_chunks_like_the_package(d):
    """Every spec and chunk on a master with a mixed status: the pool in
    the order given, split, and only the piece sorted."""
    master = make(d, listed)
    k = 0
    for spec in SPECS:
        for chunk in CHUNKS:
            for overwrite in (False, True):
                check_job(d, Job(master, "lj", spec, chunk, overwrite), k)
                k += 1
    assert k == 132


@T
def unsorted_frames_split_before_sorting(d):
    """The case of the issue: -f 2,1 --chunk 1/2 is frame 2."""
    master = make(d, plain)
    for chunk, want in (("1/2", [2]), ("2/2", [1])):
        shard = os.path.join(d, chunk.replace("/", "of") + ".h5")
        assert_ok(compute(master, "-c", "lj", "-f", "2,1", "--chunk", chunk,
                          "-q", "-o", shard))
        assert list(shard_arrays(shard)[0]) == want, chunk
    assert list(package_job(master, "lj", [2, 1], (1, 2), False)[1]) == [2]


@T
def completed_frames_like_the_package(d):
    """Every kind of master and level, a few selections each."""
    k = 0
    for how in MASTERS:
        master = make(d, how)
        for level in ("lj", "gfn2-xtb"):
            for spec, chunk in SOME:
                for overwrite in (False, True):
                    check_job(d, Job(master, level, spec, chunk, overwrite),
                              k)
                    k += 1
    assert k == len(MASTERS) * 24


@T
def transcription_sees_the_cases(d):
    """The transcription sees what the cases are meant to show, so that a
    wrong fixture cannot pass as agreement."""
    n_done = MIXED.count(0)
    want = {plain: 0, listed: n_done, unlisted: 0, unlisted_no_attribute: 0,
            legacy_listed: N, legacy_unlisted: 0,
            listed_without_datasets: 0, generator: N,
            generator_fixed_length: n_done, generator_other: n_done,
            generator_without_ground_truth: N}
    for how, n in want.items():
        master = make(d, how)
        with h5py.File(master, "r") as f:
            got = len(package_completed(f[KEY], "lj"))
        assert got == n, f"{how.__name__}: {got} COMPLETED, meant {n}"


def spec_frames(text):
    text = text.strip()
    return sorted(expand(text)) if text else []


@T
def missing_and_failed_like_the_package(d):
    for how in MASTERS:
        master = make(d, how)
        for level in ("lj", "gfn2-xtb", "pbe"):
            for opt, failed in (("--missing", False), ("--failed", True)):
                p = run("mbe-status", opt, "-l", level, master)
                assert_ok(p)
                got = spec_frames(p.stdout)
                want = list(package_missing(master, level, failed))
                assert got == want, \
                    f"{how.__name__} {opt} -l {level}: {got}, package {want}"


@T
def level_of_theory_says_why_nothing_is_computed(d):
    master = make(d, generator)
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", "lj", "-o", shard)
    assert_ok(p)
    assert "level_of_theory" in p.stderr and "nothing to compute" in \
        p.stderr, p.stderr
    assert len(shard_arrays(shard)[0]) == 0
    p = run("mbe-status", "--missing", "-l", "lj", master)
    assert_ok(p)
    assert p.stdout == "" and "level_of_theory" in p.stderr, p
    p = run("mbe-status", "--missing", "-q", "-l", "lj", master)
    assert p.stdout == "" and p.stderr == "", p


@T
def unlisted_status_is_named(d):
    master = make(d, unlisted)
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", "lj", "-o", shard)
    assert_ok(p)
    assert "not listed in its levels_of_theory" in p.stderr, p.stderr
    assert list(shard_arrays(shard)[0]) == list(range(N))
    p = run("mbe-status", "--missing", "-l", "lj", master)
    assert_ok(p)
    assert p.stdout.strip() == f"0-{N - 1}", p.stdout
    assert "not listed" in p.stderr, p.stderr


@T
def merge_still_reads_an_unlisted_status(d):
    """The merge's update rule reads the stored status dataset, listed or
    not (storage/core.py, _update_dataset): frames COMPLETED there stay
    COMPLETED when a shard brings FAILED ones."""
    master = make(d, unlisted)
    shard = os.path.join(d, "s.h5")
    p = compute(master, "-c", "exec:false", "-l", "lj", "-f", "0-2", "-q",
                "-o", shard)
    assert p.returncode == 3, p
    assert list(shard_arrays(shard)[1]) == [STATUS["FAILED"]] * 3
    assert_ok(run("mbe-merge", master, shard))
    _, _, st = read_ground_truth(master, KEY, "lj")
    assert list(st) == [STATUS["COMPLETED"]] * N, st
    with h5py.File(master, "r") as f:
        levels = list(f[KEY]["ground_truth"].attrs["levels_of_theory"])
    assert "lj" in levels, levels


@T
def stricter_than_the_package(d):
    """Repeats anywhere in the spec and frames beyond the group are
    refused, where the package refuses them only within the job's piece."""
    master = make(d, plain)
    out = os.path.join(d, "s.h5")
    # The package gives job 1 [1, 2] and job 2 [1]: frame 1 twice.
    piece, _ = package_job(master, "lj", [1, 2, 1], (1, 2), False)
    assert list(piece) == [1, 2]
    p = compute(master, "-c", "lj", "-f", "1,2,1", "--chunk", "1/2",
                "-o", out)
    assert p.returncode == 2 and "twice" in p.stderr, p
    # Frame 99 is in job 2's piece only; job 1 of the package runs.
    piece, _ = package_job(master, "lj", [0, 1, 99], (1, 2), False)
    assert list(piece) == [0, 1]
    p = compute(master, "-c", "lj", "-f", "0,1,99", "--chunk", "1/2",
                "-o", out)
    assert p.returncode == 1 and "out of range" in p.stderr, p
    assert not os.path.exists(out) and not os.path.exists(out + ".part")


if __name__ == "__main__":
    T.main()
