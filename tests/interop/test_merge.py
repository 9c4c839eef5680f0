"""End-to-end tests of mbe-merge on masters written by h5py exactly as the
package writes them.  After every merge h5py reads the master and must find
exactly what the package's update rule (master-format.md) gives when the
shards are stored one after the other: a reference implemented here in
numpy, independent of the C planner.  Also: masters already holding the
level, legacy levels, levels with '/', repeated merges, kill -9 at many
points and re-running, the lock shared with the package, every kind of bad
shard (master bytes compared before and after), conflicts and --prefer,
--dry-run, --remove-shards, untouched rows byte for byte, the .part of a
killed mbe-compute, concurrent merges and h5py holding the file open.

Kill points are exact where strace is available (SIGKILL injected on the
nth write, sync, unlink or truncate of the merge), random otherwise."""
import hashlib
import os
import re
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
ARGON = "md/argon"
SLASHED = "r2scan-d4/def2-tzvpp"
C, U, SCF, FAIL = (STATUS[k] for k in ("COMPLETED", "UNDEFINED",
                                       "SCF_NOT_CONVERGED", "FAILED"))
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_SKIPPED, EXIT_TIMEOUT = 0, 1, 2, 3, 4


# ------------------------------------------------------------- helpers

def merge(*args, **kw):
    return run("mbe-merge", *args, **kw)


def compute(*args, **kw):
    return run("mbe-compute", *args, **kw)


def assert_exit(p, code):
    assert p.returncode == code, \
        (f"exit {p.returncode}, expected {code}: stderr "
         f"{p.stderr.strip()[:800]!r} stdout {p.stdout.strip()[-800:]!r}")


def err_lines(p):
    lines = p.stderr.strip().splitlines()
    for ln in lines:
        assert ln.startswith("mbe-merge: "), ln
    return lines


def one_error_line(p, *fragments):
    lines = err_lines(p)
    assert len(lines) == 1, f"expected one line on stderr: {p.stderr!r}"
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_master(d, n_frames=12, n_atoms=4, key=ARGON, name="master.h5",
                seed=3):
    path = os.path.join(d, name)
    write_structure(path, key, random_cluster(n_frames, n_atoms, seed=seed,
                                              spacing=3.6),
                    np.full(n_atoms, 18))
    return path


def shard_of(d, master, name, *args, code=0):
    """mbe-compute with lj; extra args (frames, chunk, level, ...)."""
    out = os.path.join(d, name)
    p = compute(master, "-c", "lj", "-q", *args, "-o", out)
    assert_exit(p, code)
    return out


def chunks(d, master, n=4, level=None, prefix="s", extra=()):
    lv = ("-l", level) if level else ()
    return [shard_of(d, master, f"{prefix}{i}.h5", "--chunk", f"{i}/{n}",
                     *lv, *extra) for i in range(1, n + 1)]


def result_crc(st, en, fo):
    data = (np.int64(st).tobytes() + np.float64(en).tobytes() +
            np.ascontiguousarray(fo, np.float64).tobytes())
    return zlib.crc32(data)


def edit_shard(path, status=None, energy=None, forces=None):
    """Replace rows of a shard (dicts: position in the shard -> value) and
    their crc32, as a job that computed other results would have written
    them.  Non-COMPLETED rows get NaN results, as mbe-compute writes."""
    with h5py.File(path, "r+") as f:
        st, en, fo = f["status"][()], f["energy"][()], f["forces"][()]
        crc = f["crc32"][()]
        for k, v in (status or {}).items():
            st[k] = v
            if v != C:
                en[k] = np.nan
                fo[k] = np.nan
        for k, v in (energy or {}).items():
            en[k] = v
        for k, v in (forces or {}).items():
            fo[k] = v
        for k in range(len(st)):
            crc[k] = result_crc(st[k], en[k], fo[k])
        f["status"][...] = st
        f["energy"][...] = en
        f["forces"][...] = fo
        f["crc32"][...] = crc


def perturbed(path):
    """Other results for every COMPLETED frame of a shard, as a rerun of
    the same method could give (a non-deterministic engine): what makes
    two shards of one level conflict."""
    _, st, en, _, _ = read_shard(path)
    edit_shard(path, energy={k: en[k] + 1e-3 for k in range(len(st))
                             if st[k] == C})
    return path


def gt_state(path, key, level):
    """(E, F, S) of the level as h5py reads it; S None for legacy; None
    when the level has no datasets."""
    with h5py.File(path, "r") as f:
        g = f[key]
        if "ground_truth" not in g or e_name(level) not in g["ground_truth"]:
            return None
    return read_ground_truth(path, key, level)


def levels_of(path, key):
    with h5py.File(path, "r") as f:
        g = f[key]["ground_truth"]
        return [s.decode() if isinstance(s, bytes) else s
                for s in g.attrs["levels_of_theory"]]


def same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and \
        a.tobytes() == b.tobytes()


def assert_gt(path, key, level, want):
    got = gt_state(path, key, level)
    assert got is not None, f"level {level!r} missing in {key}"
    for name, g, w in zip(("energies", "forces", "status"), got, want):
        if w is None:
            assert g is None, f"{name}: a dataset was created: {g}"
            continue
        assert g is not None, f"{name}: no dataset"
        if not same_bits(g, w):
            diff = np.flatnonzero(~np.isclose(g, w, equal_nan=True).reshape(
                len(g), -1).all(axis=1)) if g.shape == w.shape else "shape"
            raise AssertionError(f"{name} differ at frames {diff}: got "
                                 f"{g.reshape(len(g), -1)[:, 0]} want "
                                 f"{w.reshape(len(w), -1)[:, 0]}")


def h5py_reads_everything(path):
    """Every object of the master opens and every dataset reads."""
    seen = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                obj[()]
            seen.append(name)
        f.visititems(visit)
    return seen


def row_bytes(path, key, level):
    """File offset and row size of each level dataset (h5py's view)."""
    out = {}
    with h5py.File(path, "r") as f:
        g = f[key]["ground_truth"]
        for name in (e_name(level), f_name(level), s_name(level)):
            if name in g:
                ds = g[name]
                out[name] = (ds.id.get_offset(),
                             ds.dtype.itemsize * int(np.prod(ds.shape[1:])))
    return out


def file_rows(path, layout, frames):
    """The raw bytes in the file of each of the frames' rows."""
    with open(path, "rb") as fh:
        data = fh.read()
    return {name: [data[off + k * size:off + (k + 1) * size] for k in frames]
            for name, (off, size) in layout.items()}


def subdir(d, name):
    p = os.path.join(d, name)
    os.makedirs(p, exist_ok=True)
    return p


def shard_ids(paths):
    return [read_shard(p)[4]["shard_id"] for p in paths]


def merge_log(path, key):
    with h5py.File(path, "r") as f:
        g = f[key]["ground_truth"]
        if "mbe_merge_log" not in g:
            return []
        return [(r["shard_id"].decode() if isinstance(r["shard_id"], bytes)
                 else r["shard_id"]) for r in g["mbe_merge_log"][()]]


# ------------------------------------------------------ the update rule

@T
def four_chunks_match_reference(d):
    master = make_master(d, n_frames=13, n_atoms=5)
    before = sha(master)
    shards = chunks(d, master)
    # The shards cover the frames once, like numpy.array_split.
    frames = np.concatenate([read_shard(s)[0] for s in shards])
    assert list(frames) == list(range(13)), frames
    with h5py.File(master, "r") as f:
        pos0 = f[ARGON][POS][()]
    assert sha(master) == before, "mbe-compute changed the master"
    p = merge(master, *shards)
    assert_exit(p, EXIT_OK)
    assert p.stderr == "", p.stderr
    want = reference(None, shards, 13, 5)
    assert (want[2] == C).all()
    assert_gt(master, ARGON, "lj", want)
    assert levels_of(master, ARGON) == ["lj"]
    with h5py.File(master, "r") as f:
        g = f[ARGON]
        assert same_bits(g[POS][()], pos0)
        gt = g["ground_truth"]
        # As h5py creates them from numpy arrays.
        for name, dt, shape in ((e_name("lj"), "<f8", (13,)),
                                (f_name("lj"), "<f8", (13, 5, 3)),
                                (s_name("lj"), "<i8", (13,))):
            ds = gt[name]
            assert ds.dtype == np.dtype(dt) and ds.shape == shape, name
            assert ds.chunks is None and ds.compression is None, name
            assert ds.maxshape == shape, (name, ds.maxshape)
    assert "13 frames written" in p.stdout, p.stdout
    for s in shards:
        row = next(ln for ln in p.stdout.splitlines() if ln.startswith(s))
        assert row.endswith("applied"), row
    assert merge_log(master, ARGON) == shard_ids(shards)
    assert not os.path.exists(master + ".mbe-journal")
    h5py_reads_everything(master)


def h5_props(path, key, level):
    """What h5py can see of how the level's objects were made."""
    out = {}
    with h5py.File(path, "r") as f:
        parent = f[key]
        g = parent["ground_truth"]
        out["group"] = (parent.id.links.get_info(b"ground_truth").cset,
                        g.id.get_create_plist().get_obj_track_times(),
                        g.id.get_create_plist().get_link_creation_order())
        a = g.attrs.get_id("levels_of_theory")
        out["levels"] = (a.shape, h5py.check_string_dtype(a.dtype),
                         a.get_type().get_cset(),
                         a.get_type().is_variable_str(),
                         a.get_space().get_simple_extent_type())
        for name in (e_name(level), f_name(level), s_name(level)):
            ds = g[name]
            pl = ds.id.get_create_plist()
            out[name] = (ds.dtype.str, ds.shape, ds.maxshape, ds.chunks,
                         ds.compression, pl.get_layout(),
                         pl.get_obj_track_times(), pl.get_nfilters(),
                         g.id.links.get_info(name.encode()).cset,
                         ds.id.get_type().get_order(), len(ds.attrs))
    return out


@T
def created_as_h5py_creates_them(d):
    """New datasets, the ground_truth group and levels_of_theory look to
    h5py exactly like those the package writes (fill value and allocation
    time aside: they are the documented exceptions)."""
    master = make_master(d, n_frames=6)
    ref = make_master(subdir(d, "ref"), n_frames=6)
    shard = shard_of(d, master, "s.h5", "-l", SLASHED)
    assert_exit(merge(master, shard), EXIT_OK)
    update_ground_truth(ref, ARGON, SLASHED, np.zeros(6),
                        np.zeros((6, 4, 3)), np.zeros(6, int))
    ours, theirs = h5_props(master, ARGON, SLASHED), \
        h5_props(ref, ARGON, SLASHED)
    for k in theirs:
        assert ours[k] == theirs[k], (k, ours[k], theirs[k])


@T
def mixed_statuses_in_shards(d):
    """FAILED, SCF_NOT_CONVERGED and UNDEFINED rows in shards, over a new
    level: status written where not UNDEFINED, results where COMPLETED."""
    master = make_master(d, n_frames=10)
    a = shard_of(d, master, "a.h5", "-f", "0-6")
    b = shard_of(d, master, "b.h5", "-f", "4-9")
    edit_shard(a, status={0: FAIL, 2: SCF, 3: U, 5: FAIL})
    # b: frame 4 COMPLETED (a: COMPLETED too, same result), 5 COMPLETED
    # after a FAILED it, 6 FAILED after a COMPLETED it, 8 UNDEFINED.
    edit_shard(b, status={2: FAIL, 4: U})
    p = merge(master, a, b)
    assert_exit(p, EXIT_OK)
    want = reference(None, [a, b], 10, 4)
    assert list(want[2]) == [FAIL, C, SCF, U, C, C, C, C, U, C], want[2]
    assert_gt(master, ARGON, "lj", want)
    # Same shards the other way round: a's FAILED frame 5 comes last but
    # b made it COMPLETED first.
    m2 = make_master(subdir(d, "x"), n_frames=10)
    a2, b2 = (shutil.copy(s, os.path.join(d, "x", os.path.basename(s)))
              for s in (a, b))
    assert_exit(merge(m2, b2, a2), EXIT_OK)
    want2 = reference(None, [b2, a2], 10, 4)
    assert_gt(m2, ARGON, "lj", want2)
    assert want2[2][5] == C and want2[2][0] == FAIL


@T
def master_with_results_for_the_level(d):
    """COMPLETED is never downgraded, FAILED and SCF_NOT_CONVERGED are
    upgraded, energies follow every COMPLETED result."""
    n = 12
    master = make_master(d, n_frames=n)
    rng = np.random.default_rng(5)
    st0 = np.array([C, FAIL, SCF, U, C, FAIL, C, U, SCF, C, FAIL, U])
    e0 = np.where(st0 == C, rng.normal(size=n), np.nan)
    f0 = np.where((st0 == C)[:, None, None], rng.normal(size=(n, 4, 3)),
                  np.nan)
    update_ground_truth(master, ARGON, "lj", e0, f0, st0)
    update_ground_truth(master, ARGON, "gfn2-xtb", e0, f0, st0)
    # Without --overwrite the job skips COMPLETED frames.
    s1 = shard_of(d, master, "s1.h5", "--chunk", "1/2")
    s2 = shard_of(d, master, "s2.h5", "--chunk", "2/2")
    pool = np.concatenate([read_shard(s)[0] for s in (s1, s2)])
    assert list(pool) == list(np.flatnonzero(st0 != C)), pool
    # A retry over everything that fails some COMPLETED frames, succeeds
    # on some FAILED ones, and fails some never computed.
    s3 = shard_of(d, master, "s3.h5", "--overwrite", "-f", "0-11")
    edit_shard(s3, status={0: FAIL, 4: SCF, 1: C, 3: FAIL, 7: U, 11: SCF,
                           8: U, 10: SCF})
    # s1 holds frames 1, 2, 3, 5; s2 7, 8, 10, 11.
    edit_shard(s1, status={0: FAIL})
    edit_shard(s2, status={1: FAIL, 2: FAIL})
    before = gt_state(master, ARGON, "lj")
    other = gt_state(master, ARGON, "gfn2-xtb")
    digest = sha(master)
    dry = merge("--dry-run", master, s1, s2, s3)
    assert_exit(dry, EXIT_OK)
    assert sha(master) == digest
    p = merge(master, s1, s2, s3)
    assert_exit(p, EXIT_OK)
    # The dry run's table and count are those of the real merge.
    real = re.sub(r"; lock held [0-9.]+ s\n", "\n", p.stdout)
    assert real != p.stdout, p.stdout
    assert dry.stdout.replace("would apply", "applied").replace(
        "would be written (dry run: nothing was written)", "written") \
        == real, (dry.stdout, p.stdout)
    want = reference(before, [s1, s2, s3], n, 4)
    # Never downgraded: 0, 4 (stored COMPLETED), 3 (COMPLETED by s1).
    assert want[2][0] == C and want[2][4] == C and want[2][3] == C
    # Upgraded: 1 (FAILED, s1 fails it again, s3 completes it).
    assert want[2][1] == C
    # 8: SCF_NOT_CONVERGED, s2 FAILED, s3 UNDEFINED; 10: FAILED, s2
    # FAILED, s3 SCF_NOT_CONVERGED.
    assert want[2][8] == FAIL and want[2][10] == SCF
    assert_gt(master, ARGON, "lj", want)
    # The other level and the index are untouched.
    assert_gt(master, ARGON, "gfn2-xtb", other)
    assert levels_of(master, ARGON) == ["gfn2-xtb", "lj"]
    assert "created dataset" not in p.stdout, p.stdout


@T
def legacy_level_without_status(d):
    """Energies and forces updated where COMPLETED; the status dataset is
    created as the package saves it: COMPLETED for every frame (the
    package reads every legacy frame as COMPLETED), and the rule keeps
    them so."""
    n = 9
    master = make_master(d, n_frames=n)
    e0 = np.arange(n, dtype=float)
    f0 = np.ones((n, 4, 3))
    update_ground_truth(master, ARGON, "lj", e0, f0, np.zeros(n, int),
                        with_status=False)
    before = gt_state(master, ARGON, "lj")
    assert before[2] is None
    # Legacy frames count as COMPLETED: --overwrite to compute them.
    s1 = shard_of(d, master, "s1.h5", "--overwrite", "-f", "0-4")
    s2 = shard_of(d, master, "s2.h5", "--overwrite", "-f", "5-8")
    edit_shard(s1, status={1: FAIL, 3: U})
    edit_shard(s2, status={0: SCF})
    p = merge(master, s1, s2)
    assert_exit(p, EXIT_OK)
    want = reference(before, [s1, s2], n, 4)
    assert (want[2] == C).all()
    assert_gt(master, ARGON, "lj", want)
    assert want[0][1] == 1.0 and want[0][5] == 5.0
    assert levels_of(master, ARGON) == ["lj"]
    assert p.stdout.count("created dataset") == 1, p.stdout
    assert s_name("lj") in p.stdout, p.stdout
    # Listed but legacy and unlisted legacy both: levels_of_theory gains
    # the level when it was not listed.
    m2 = make_master(subdir(d, "y"), n_frames=n)
    with h5py.File(m2, "a") as f:
        g = f[ARGON].require_group("ground_truth")
        g.create_dataset(e_name("lj"), data=e0)
        g.create_dataset(f_name("lj"), data=f0)
    s3 = shard_of(os.path.join(d, "y"), m2, "s3.h5", "-f", "2-3")
    # Unlisted: readers ignore it, so mbe-compute computes every frame.
    assert_exit(merge(m2, s3), EXIT_OK)
    assert levels_of(m2, ARGON) == ["lj"]
    want = reference((e0, f0, None), [s3], n, 4)
    assert_gt(m2, ARGON, "lj", want)


@T
def level_with_slashes(d):
    master = make_master(d, n_frames=8)
    update_ground_truth(master, ARGON, "zzz/last", np.zeros(8),
                        np.zeros((8, 4, 3)), np.zeros(8, int))
    update_ground_truth(master, ARGON, "a", np.zeros(8), np.zeros((8, 4, 3)),
                        np.zeros(8, int))
    shards = chunks(d, master, n=2, level=SLASHED)
    p = merge(master, *shards)
    assert_exit(p, EXIT_OK)
    assert_gt(master, ARGON, SLASHED, reference(None, shards, 8, 4))
    assert levels_of(master, ARGON) == sorted(["a", SLASHED, "zzz/last"])
    with h5py.File(master, "r") as f:
        gt = f[ARGON]["ground_truth"]
        names = set(gt.keys())
        assert e_name(SLASHED) in names and s_name(SLASHED) in names
        # No subgroup made of the part before '/'.
        assert not any(isinstance(gt[k], h5py.Group) for k in gt), names
        assert "E_r2scan-d4" not in names
        assert "E_r2scan-d4\u2215def2-tzvpp (eV\u2215atom)" in names


@T
def moved_master_and_old_style_index(d):
    """A master moved to another directory under its own name keeps its
    shards; a levels_of_theory of fixed-length strings (older files) is
    read, and rewritten as the package writes it now."""
    master = make_master(d, n_frames=6)
    with h5py.File(master, "a") as f:
        g = f[ARGON].require_group("ground_truth")
        g.create_dataset(e_name("b"), data=np.zeros(6))
        g.create_dataset(f_name("b"), data=np.zeros((6, 4, 3)))
        g.create_dataset(s_name("b"), data=np.zeros(6, np.int64))
        g.attrs["levels_of_theory"] = np.array([b"b"], dtype="S8")
    shards = chunks(d, master, n=2)
    moved = os.path.join(subdir(d, "archive"), "master.h5")
    shutil.move(master, moved)
    p = merge(moved, *shards)
    assert_exit(p, EXIT_OK)
    assert_gt(moved, ARGON, "lj", reference(None, shards, 6, 4))
    assert levels_of(moved, ARGON) == ["b", "lj"]
    with h5py.File(moved, "r") as f:
        a = f[ARGON]["ground_truth"].attrs.get_id("levels_of_theory")
        assert h5py.check_string_dtype(a.dtype).length is None


# ------------------------------------------------------ idempotency

@T
def second_merge_changes_nothing(d):
    master = make_master(d, n_frames=11)
    shards = chunks(d, master, n=3)
    edit_shard(shards[1], status={0: FAIL})
    assert_exit(merge(master, *shards), EXIT_OK)
    first = gt_state(master, ARGON, "lj")
    digest = sha(master)
    log = merge_log(master, ARGON)
    p = merge(master, *shards)
    assert_exit(p, EXIT_OK)
    for a, b in zip(first, gt_state(master, ARGON, "lj")):
        assert same_bits(a, b)
    assert sha(master) == digest, "the master changed"
    assert merge_log(master, ARGON) == log
    for s in shards:
        row = next(ln for ln in p.stdout.splitlines() if ln.startswith(s))
        assert "already applied" in row, row
    assert "0 frames written" in p.stdout, p.stdout
    # In another order and mixed with a new shard: only the new one is
    # applied, and the frames of the others keep their merged values
    # even where the new one has other results for them.
    s4 = perturbed(shard_of(d, master, "s4.h5", "--overwrite", "-f", "0-3"))
    p = merge(master, shards[2], s4, shards[0])
    assert_exit(p, EXIT_OK)
    want = reference(first, [s4], 11, 4)
    assert_gt(master, ARGON, "lj", want)
    assert merge_log(master, ARGON) == log + shard_ids([s4])


@T
def same_shard_twice_on_one_command_line(d):
    master = make_master(d, n_frames=6)
    s = shard_of(d, master, "s.h5", "-f", "0-5")
    cp = os.path.join(d, "copy.h5")
    shutil.copy(s, cp)
    p = merge(master, s, cp)
    assert_exit(p, EXIT_OK)
    assert_gt(master, ARGON, "lj", reference(None, [s], 6, 4))
    assert merge_log(master, ARGON) == shard_ids([s])


# ---------------------------------------------------------- kill -9

def kill_merge_at(cmd, delay, stop_first=False):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if stop_first:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def have_strace():
    exe = shutil.which("strace")
    if not exe:
        return None
    p = subprocess.run([exe, "-o", "/dev/null", "true"], capture_output=True)
    return exe if p.returncode == 0 else None


KILL_CALLS = ("pwrite64", "fsync", "fdatasync", "unlink", "ftruncate")


def traced_child(tracer, comm):
    """The pid of tracer's child running comm, None until it runs: strace
    first forks short-lived children of its own to probe the kernel, and
    under load a poll can see one of those first."""
    kids = open(f"/proc/{tracer}/task/{tracer}/children").read().split()
    for k in kids:
        try:
            if open(f"/proc/{k}/comm").read().strip() == comm:
                return int(k)
        except OSError:
            pass
    return None


def traced_env():
    """LeakSanitizer cannot run under ptrace: off for traced runs of a
    sanitizer build (the untraced re-runs still check for leaks)."""
    e = dict(os.environ)
    e["ASAN_OPTIONS"] = (e.get("ASAN_OPTIONS", "") +
                         ":detect_leaks=0").lstrip(":")
    return e


def syscalls_of(strace, cmd, d):
    """How often an uninterrupted merge makes each of KILL_CALLS."""
    log = os.path.join(d, "strace.log")
    p = subprocess.run([strace, "-o", log, "-e",
                        "trace=" + ",".join(KILL_CALLS), *cmd],
                       capture_output=True, text=True, env=traced_env())
    assert_exit(p, EXIT_OK)
    counts = dict.fromkeys(KILL_CALLS, 0)
    with open(log) as f:
        for ln in f:
            name = ln.split("(", 1)[0].strip()
            if name in counts:
                counts[name] += 1
    return counts


def spread(n, most=10):
    """1..n, or at most `most` of them: the first and last few and some
    evenly between."""
    if n <= most:
        return list(range(1, n + 1))
    pick = {1, 2, 3, n - 2, n - 1, n}
    pick |= {1 + (n - 1) * i // (most - len(pick) + 1)
             for i in range(1, most - len(pick) + 1)}
    return sorted(pick)


def kill_at_syscall(strace, cmd, call, nth):
    """SIGKILL delivered when the merge enters its nth call of call."""
    p = subprocess.run([strace, "-o", "/dev/null", "-e", f"trace={call}",
                        "-e", f"inject={call}:signal=SIGKILL:when={nth}",
                        *cmd], capture_output=True, text=True,
                       env=traced_env())
    return p.returncode


def big_case(d, n_frames, n_atoms, with_results, chunked=False):
    master = make_master(d, n_frames=n_frames, n_atoms=n_atoms, seed=9)
    if with_results:
        rng = np.random.default_rng(2)
        st0 = rng.choice([C, U, FAIL, SCF], size=n_frames)
        e0 = np.where(st0 == C, rng.normal(size=n_frames), np.nan)
        f0 = np.where((st0 == C)[:, None, None],
                      rng.normal(size=(n_frames, n_atoms, 3)), np.nan)
        if chunked:
            # Rows written through HDF5, inside the undo journal.
            with h5py.File(master, "a") as f:
                g = f[ARGON].require_group("ground_truth")
                for name, v in ((e_name("lj"), e0), (f_name("lj"), f0),
                                (s_name("lj"), st0)):
                    g.create_dataset(name, data=v, chunks=True)
                g.attrs["levels_of_theory"] = np.array(
                    ["lj"], dtype=h5py.string_dtype())
        else:
            update_ground_truth(master, ARGON, "lj", e0, f0, st0)
    shards = chunks(d, master, n=4, extra=("--overwrite",))
    # Statuses that make the order of writes matter.
    rng = np.random.default_rng(3)
    for s in shards:
        n = len(read_shard(s)[0])
        pick = rng.choice(n, size=n // 3, replace=False)
        edit_shard(s, status={int(k): int(rng.choice([FAIL, SCF, U]))
                              for k in pick})
    # A second shard over some frames: a FAILED retry after COMPLETED.
    extra = shard_of(d, master, "retry.h5", "--overwrite", "-f",
                     f"0-{n_frames // 10}")
    edit_shard(extra, status={k: FAIL for k in range(0, n_frames // 10, 2)})
    return master, shards + [extra]


def masked_bytes(path):
    """The file's bytes with the ISO 8601 times of the merge log blanked."""
    import re
    with open(path, "rb") as f:
        data = f.read()
    return re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"T" * 20, data)


def check_killed(master, before, want, what):
    """Right after a kill, before any re-run.  With no undo journal left
    the master is a valid file that h5py reads, every frame holds its old
    or its final status, a COMPLETED frame its old or final energy and
    forces, and a frame that became COMPLETED already has its final ones.  (With a journal, readers are told to run
    mbe-merge again, and it rolls back first.)"""
    if os.path.exists(master + ".mbe-journal"):
        return
    h5py_reads_everything(master)
    got = gt_state(master, ARGON, "lj")
    if before is None:
        n = len(want[0])
        before = (np.full(n, np.nan), np.full(want[1].shape, np.nan),
                  np.full(n, U, np.int64))
        if got is None:
            return
    rows = [(a.reshape(len(a), -1).view(np.uint8), b.reshape(
        len(b), -1).view(np.uint8), c.reshape(len(c), -1).view(np.uint8))
        for a, b, c in zip(got, before, want)]
    # A kill can stop a write between two pages of the file, so the row
    # being written may be torn: allowed where no COMPLETED status vouches
    # for the results (mbe-merge(1), "Restart after an interruption").
    vouched = (got[2] == C) | (before[2] == C)
    for name, (g, b, w) in zip(("energies", "forces", "status"), rows):
        old = (g == b).all(axis=1)
        new = (g == w).all(axis=1)
        ok = old | new if name == "status" else old | new | ~vouched
        assert ok.all(), \
            f"{what}: {name} of frames {np.flatnonzero(~ok)} " \
            f"are neither old nor final"
    done = (got[2] == C) & (before[2] != C)
    for g, w in ((got[0], want[0]), (got[1], want[1])):
        assert same_bits(g[done], w[done]), \
            f"{what}: COMPLETED before its results were written"


def check_after_kill(master, want, shards, what):
    assert_gt(master, ARGON, "lj", want)
    assert not os.path.exists(master + ".mbe-journal"), what
    h5py_reads_everything(master)
    log = merge_log(master, ARGON)
    assert log == shard_ids(shards), (what, log)
    assert levels_of(master, ARGON) == ["lj"], what


def kill_and_rerun(d, with_results, n_frames=3000, n_atoms=16, rounds=4,
                   chunked=False):
    master, shards = big_case(d, n_frames, n_atoms, with_results, chunked)
    pristine = os.path.join(d, "pristine.h5")
    shutil.copy(master, pristine)
    before = gt_state(master, ARGON, "lj")
    want = reference(before, shards, n_frames, n_atoms)
    # Small buffers: many writes, so that kills land inside each phase.
    cmd = [os.path.join(BIN, "mbe-merge"), "-q", "--buffer", "0.01", master,
           *shards]

    def rerun(what):
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert_exit(p, EXIT_OK)
        check_after_kill(master, want, shards, what)
        # Byte for byte the file of an uninterrupted merge, but for the
        # times in the merge log.
        assert masked_bytes(master) == clean, f"{what}: other bytes"

    t0 = time.time()
    assert_exit(subprocess.run(cmd, capture_output=True, text=True),
                EXIT_OK)
    full = time.time() - t0
    check_after_kill(master, want, shards, "uninterrupted")
    clean = masked_bytes(master)
    # Exact points: SIGKILL on entering the nth write, sync, unlink or
    # truncate of the merge (structure, rows, log, journal commit).
    strace = have_strace()
    points = []
    if strace:
        shutil.copy(pristine, master)
        counts = syscalls_of(strace, cmd, d)
        assert counts["pwrite64"] > 100 and counts["fsync"] >= 4, counts
        for call in KILL_CALLS:
            points += [(call, k) for k in spread(counts[call])]
        for call, k in points:
            shutil.copy(pristine, master)
            rc = kill_at_syscall(strace, cmd, call, k)
            assert rc != 0, f"not killed at {call} #{k}"
            check_killed(master, before, want, f"{call} #{k}")
            rerun(f"{call} #{k}")
        # Killed at the start of the roll-back too, then finished.
        shutil.copy(pristine, master)
        assert kill_at_syscall(strace, cmd, "unlink", counts["unlink"]) != 0
        assert os.path.exists(master + ".mbe-journal")
        # A dry run neither rolls back nor reads the half-changed master.
        digest = sha(master)
        p = merge("--dry-run", master, *shards)
        assert_exit(p, EXIT_FAIL)
        one_error_line(p, "without --dry-run")
        assert sha(master) == digest
        assert kill_at_syscall(strace, cmd, "pwrite64", 1) != 0
        rerun("during roll-back")
    # Random moments, SIGKILL alone or after SIGSTOP.
    rnd = random.Random(11)
    killed = 0
    for r in range(rounds):
        shutil.copy(pristine, master)
        delay = full * (r + rnd.random()) / rounds
        rc = kill_merge_at(cmd, delay, stop_first=r % 2 == 1)
        killed += rc == -signal.SIGKILL
        check_killed(master, before, want, f"after {delay:.3f} s")
        if r == rounds - 1:
            kill_merge_at(cmd, full * rnd.random() / 2)
        rerun(f"after {delay:.3f} s")
    assert strace or killed >= 1, f"only {killed} of {rounds} were killed"


@T
def kill9_new_level_then_rerun(d):
    kill_and_rerun(d, with_results=False)


@T
def kill9_existing_level_then_rerun(d):
    kill_and_rerun(d, with_results=True)


@T
def kill9_chunked_level_then_rerun(d):
    kill_and_rerun(d, with_results=True, chunked=True, n_frames=1500,
                   rounds=2)


# ------------------------------------------------------------- lock

@T
def python_lock_delays_merge(d):
    master = make_master(d, n_frames=8)
    shards = chunks(d, master, n=2)
    lk = PythonLock(master)
    lk.__enter__()
    try:
        digest = sha(master)
        proc = subprocess.Popen([os.path.join(BIN, "mbe-merge"), "--timeout",
                                 "60", master, *shards],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        time.sleep(1.5)
        assert proc.poll() is None, "mbe-merge did not wait for the lock"
        assert sha(master) == digest, "written while the lock was held"
    finally:
        lk.__exit__()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_gt(master, ARGON, "lj", reference(None, shards, 8, 4))
    # While mbe-merge holds it, the package waits: a non-blocking attempt
    # after the merge succeeds at once (the lock was released).
    import fcntl
    with open(master + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


@T
def lock_timeout_fails_with_one_line(d):
    master = make_master(d, n_frames=8)
    shards = chunks(d, master, n=2)
    digest = sha(master)
    with PythonLock(master):
        t0 = time.time()
        p = merge("--timeout", "0.5", master, *shards)
        assert time.time() - t0 < 10
        assert_exit(p, EXIT_TIMEOUT)
        line = one_error_line(p, master, "lock")
        assert "waiting" not in line
    assert sha(master) == digest
    assert not os.path.exists(master + ".mbe-journal")
    assert gt_state(master, ARGON, "lj") is None
    # -q: still the one line.
    with PythonLock(master):
        p = merge("-q", "--timeout", "0", master, *shards)
        assert_exit(p, EXIT_TIMEOUT)
        one_error_line(p, "lock")
        assert p.stdout == ""
    assert_exit(merge(master, *shards), EXIT_OK)


@T
def concurrent_merge_applies_each_shard_once(d):
    """A merge that waited for the lock finds the shards another merge
    applied meanwhile, even when the first shard of the group was applied
    before it started."""
    master = make_master(d, n_frames=12)
    a, b, c = chunks(d, master, n=3)
    edit_shard(c, status={0: FAIL})
    assert_exit(merge(master, a), EXIT_OK)
    proc, err = merge_paused_at_lock(d, master, a, b, c)
    try:
        assert_exit(merge(master, b, c), EXIT_OK)
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == 0, errs
    for s in (a, b, c):
        row = next(ln for ln in out.splitlines() if ln.startswith(s))
        assert "already applied" in row, out
    assert merge_log(master, ARGON) == shard_ids([a, b, c])
    assert_gt(master, ARGON, "lj", reference(None, [a, b, c], 12, 4))


@T
def package_writes_while_merge_waits(d):
    """The package stores results for the level between validation and the
    lock: the merge plans from what is stored when it has the lock."""
    n = 10
    master = make_master(d, n_frames=n)
    s1 = shard_of(d, master, "s1.h5", "-f", "0-6")
    edit_shard(s1, status={1: FAIL, 2: FAIL})
    proc, err = merge_paused_at_lock(d, master, s1)
    try:
        st0 = np.array([C, C, U, FAIL, C, U, U, SCF, C, U])
        e0 = np.where(st0 == C, 7.0, np.nan)
        f0 = np.where((st0 == C)[:, None, None], np.ones((n, 4, 3)), np.nan)
        with PythonLock(master):
            update_ground_truth(master, ARGON, "lj", e0, f0, st0)
        before = gt_state(master, ARGON, "lj")
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == 0, errs
    assert "created dataset" not in out, out
    want = reference(before, [s1], n, 4)
    assert want[2][1] == C and want[2][2] == FAIL
    assert_gt(master, ARGON, "lj", want)
    assert levels_of(master, ARGON) == ["lj"]


@T
def h5py_holding_the_file_open_stops_the_merge(d):
    """h5py has the master open without the package's lock (a notebook):
    HDF5's own lock on the .h5 makes the merge fail before it writes a
    byte, for a new level and for rows of an existing one alike;
    HDF5_USE_FILE_LOCKING=FALSE lets it through, as it does HDF5."""
    if os.environ.get("HDF5_USE_FILE_LOCKING") in ("FALSE", "0"):
        raise Skip("HDF5 file locking is disabled here")
    master = make_master(d, n_frames=8)
    update_ground_truth(master, ARGON, "lj", np.zeros(8),
                        np.zeros((8, 4, 3)), np.full(8, U))
    old = shard_of(d, master, "old.h5", "-f", "0-3")
    new = shard_of(d, master, "new.h5", "-l", "new", "-f", "0-3")
    before = gt_state(master, ARGON, "lj")
    f = h5py.File(master, "r")
    try:
        for s in (old, new):
            digest = sha(master)
            p = merge(master, s)
            assert_exit(p, EXIT_FAIL)
            one_error_line(p, "h5py")
            assert sha(master) == digest, f"{s}: the master changed"
            assert not os.path.exists(master + ".mbe-journal")
        p = merge(master, old, env={"HDF5_USE_FILE_LOCKING": "FALSE"})
        assert_exit(p, EXIT_OK)
    finally:
        f.close()
    assert_gt(master, ARGON, "lj", reference(before, [old], 8, 4))
    assert_exit(merge(master, old, new), EXIT_OK)
    assert_gt(master, ARGON, "new", reference(None, [new], 8, 4))


# ---------------------------------------------------------- bad shards

LATE_BIT = 0x20
LATE_FLIP = f"-{LATE_BIT}.h5"


def bad_shards(d, master):
    """Every kind of invalid shard for master, with the fragment the
    refusal must contain."""
    bad = []
    good = shard_of(d, master, "good.h5", "-f", "0-3")
    data = open(good, "rb").read()
    cut = os.path.join(d, "truncated.h5")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    bad.append((cut, ""))
    # One byte flipped in the raw data of each array of the shard; those
    # of a COMPLETED row's forces, energy and crc (named LATE_FLIP) are
    # found when the row is read under the lock.
    for ds, at, bit, why in (("forces", 8 * 5 + 3, LATE_BIT, "crc32"),
                             ("energy", 8 * 2 + 6, LATE_BIT, "crc32"),
                             # COMPLETED -> SCF_NOT_CONVERGED, or no code
                             ("status", 8 * 1, 0x02, "crc32"),
                             ("status", 8 * 2, 0x10, "status"),
                             ("crc32", 4 * 3 + 1, LATE_BIT, "crc32"),
                             ("frames", 8 * 2, 0x10, ""),
                             ("geometry_crc32", 4 * 1 + 2, 0x10, "")):
        flip = os.path.join(d, f"flipped-{ds}-{bit}.h5")
        shutil.copy(good, flip)
        with h5py.File(flip, "r") as f:
            off = f[ds].id.get_offset()
        assert off is not None, ds
        with open(flip, "r+b") as f:
            f.seek(off + at)
            b = f.read(1)
            f.seek(off + at)
            f.write(bytes([b[0] ^ bit]))
        bad.append((flip, why))
    # Another master of the same name: other geometry.
    od = os.path.join(d, "other")
    os.makedirs(od)
    other = make_master(od, n_frames=12, seed=77)
    bad.append((shard_of(od, other, "foreign.h5", "-f", "4-6"), "geometry"))
    # Other n_atoms, other n_frames, a key the master lacks.
    nd = subdir(d, "natoms")
    m5 = make_master(nd, n_frames=12, n_atoms=5)
    bad.append((shard_of(nd, m5, "natoms.h5", "-f", "0-2"), "atoms"))
    fd = subdir(d, "nframes")
    m13 = make_master(fd, n_frames=13)
    bad.append((shard_of(fd, m13, "nframes.h5", "-f", "0-2"), "13 frames"))
    kd = subdir(d, "key")
    mk = make_master(kd, n_frames=12, key="md/neon")
    bad.append((shard_of(kd, mk, "otherkey.h5", "-f", "0-2"), "md/neon"))
    # Another master's file name.
    rd = os.path.join(d, "renamed")
    os.makedirs(rd)
    mr = make_master(rd, n_frames=12, name="elsewhere.h5")
    bad.append((shard_of(rd, mr, "renamed.h5", "-f", "0-2"), "elsewhere.h5"))
    # A shard whose level of theory is gone.
    nolevel = os.path.join(d, "nolevel.h5")
    shutil.copy(good, nolevel)
    with h5py.File(nolevel, "r+") as f:
        f.attrs["level"] = ""
    bad.append((nolevel, "level"))
    # Not HDF5 at all.
    text = os.path.join(d, "notes.h5")
    with open(text, "w") as f:
        f.write("energies: see the log\n" * 10)
    bad.append((text, ""))
    return good, bad


@T
def invalid_shards_refused_master_unchanged(d):
    """Every shard refused before the lock leaves the master as it was;
    rows whose forces, energy or crc were damaged are found as they are
    read, under the lock (each shard is read once), and never written."""
    master = make_master(d, n_frames=12)
    update_ground_truth(master, ARGON, "lj", np.zeros(12),
                        np.zeros((12, 4, 3)), np.full(12, U))
    good, bad = bad_shards(d, master)
    late = [(b, w) for b, w in bad if LATE_FLIP in b]
    bad = [(b, w) for b, w in bad if LATE_FLIP not in b]
    assert len(late) == 3, late
    good2 = shard_of(d, master, "good2.h5", "-f", "8-11")
    digest = sha(master)
    paths = [b for b, _ in bad]
    p = merge(master, good, *paths, good2)
    assert_exit(p, EXIT_FAIL)
    assert sha(master) == digest, "the master changed"
    assert not os.path.exists(master + ".mbe-journal")
    lines = err_lines(p)
    for path, why in bad:
        mine = [ln for ln in lines if path in ln]
        assert len(mine) == 1, (path, lines)
        assert why in mine[0], (why, mine[0])
    for g in (good, good2):
        assert not any(g in ln for ln in lines), lines
    # The rest: one summary line.
    assert len(lines) == len(bad) + 1, lines
    # Each alone as well.
    for path, why in bad:
        p = merge(master, path)
        assert_exit(p, EXIT_FAIL)
        assert sha(master) == digest, path
        assert sum(path in ln for ln in err_lines(p)) >= 1, p.stderr
    # Damaged rows: the merge stops at the row, writes no status, and every
    # frame holds what it held or the verified results of the good rows.
    before = gt_state(master, ARGON, "lj")
    _, _, en_g, fo_g, _ = read_shard(good)
    for path, _ in late:
        p = merge(master, path)
        assert_exit(p, EXIT_FAIL)
        line = one_error_line(p, path, "crc32", "no status was written")
        assert "--skip-invalid" in line, line
        e1, f1, s1 = gt_state(master, ARGON, "lj")
        assert same_bits(s1, before[2]), "a status was written"
        for k in range(4):
            assert (same_bits(e1[k], before[0][k]) and
                    same_bits(f1[k], before[1][k])) or \
                (same_bits(e1[k], en_g[k]) and same_bits(f1[k], fo_g[k])), k
        p = merge("--skip-invalid", master, path)
        assert_exit(p, EXIT_SKIPPED)
        assert same_bits(gt_state(master, ARGON, "lj")[2], before[2])
        assert merge_log(master, ARGON) == []
    # --skip-invalid: the valid ones are applied, the others named.
    before = gt_state(master, ARGON, "lj")
    p = merge("--skip-invalid", master, good, *paths, good2)
    assert_exit(p, EXIT_SKIPPED)
    assert_gt(master, ARGON, "lj", reference(before, [good, good2], 12, 4))
    lines = err_lines(p)
    for path, why in bad:
        assert sum(path in ln for ln in lines) == 1, (path, lines)
    assert len(lines) == len(bad), lines
    assert merge_log(master, ARGON) == shard_ids([good, good2])
    # Nothing valid at all: nothing written, still the exit status of
    # skipped shards.
    digest = sha(master)
    p = merge("--skip-invalid", master, *paths)
    assert_exit(p, EXIT_SKIPPED)
    assert len(err_lines(p)) == len(bad)
    assert sha(master) == digest


@T
def shard_that_computed_nothing_creates_no_level(d):
    """A level equal to the group's level_of_theory counts every frame as
    done, so its shard holds no result: merged, it creates no dataset, no
    level and no ground_truth group, as the package stores nothing when it
    computed nothing."""
    path = os.path.join(d, "m.h5")
    write_structure(path, ARGON, random_cluster(6, 4, seed=3, spacing=3.6),
                    np.full(4, 18), level_of_theory="lj")
    s = shard_of(d, path, "s.h5")
    with h5py.File(s, "r") as f:
        assert (f["status"][()] == U).all() or len(f["frames"]) == 0
    digest = sha(path)
    p = merge(path, s)
    assert_exit(p, EXIT_OK)
    assert "created dataset" not in p.stdout, p.stdout
    assert sha(path) == digest
    with h5py.File(path, "r") as f:
        assert "ground_truth" not in f[ARGON]


@T
def incompatible_level_in_master_refused(d):
    """The master already holds the level with other dimensions: the merge
    stops before anything is written, naming the dataset."""
    master = make_master(d, n_frames=6)
    s = shard_of(d, master, "s.h5", "-f", "0-2")
    with h5py.File(master, "a") as f:
        g = f[ARGON].require_group("ground_truth")
        g.create_dataset(e_name("lj"), data=np.zeros(5))
        g.create_dataset(f_name("lj"), data=np.zeros((5, 4, 3)))
        g.create_dataset(s_name("lj"), data=np.zeros(5, np.int64))
        g.attrs["levels_of_theory"] = np.array(["lj"],
                                               dtype=h5py.string_dtype())
    digest = sha(master)
    p = merge(master, s)
    assert_exit(p, EXIT_FAIL)
    assert sha(master) == digest
    assert any("E_lj" in ln for ln in err_lines(p)), p.stderr


@T
def usage_errors_exit_2(d):
    master = make_master(d, n_frames=4)
    s = shard_of(d, master, "s.h5", "-f", "0-1")
    digest = sha(master)
    for args in ([], [master], ["--prefer", "middle", master, s],
                 ["--bogus", master, s], ["--timeout", "soon", master, s],
                 ["--buffer", "0", master, s]):
        p = merge(*args)
        assert_exit(p, EXIT_USAGE)
        assert len(err_lines(p)) >= 1
    assert sha(master) == digest
    p = merge("--help")
    assert_exit(p, EXIT_OK)
    assert "Usage: mbe-merge" in p.stdout
    # A master that does not exist: an error, no file made.
    nope = os.path.join(d, "nope.h5")
    p = merge(nope, s)
    assert_exit(p, EXIT_FAIL)
    # One line: the master; the shard was never looked at, so it is not
    # called invalid.
    one_error_line(p, nope, "No such file")
    assert "INVALID" not in p.stdout, p.stdout
    assert not os.path.exists(nope)


# ------------------------------------------------- conflicts, --prefer

@T
def conflicting_overlap_refused_then_prefer(d):
    master = make_master(d, n_frames=10)
    a = shard_of(d, master, "a.h5", "-f", "0-5")
    b = perturbed(shard_of(d, master, "b.h5", "-f", "3-8"))
    digest = sha(master)
    p = merge(master, a, b)
    assert_exit(p, EXIT_FAIL)
    assert sha(master) == digest
    msg = " ".join(err_lines(p))
    assert "3, 4, 5" in msg and a in msg and b in msg, msg
    assert "--prefer" in msg, msg
    # A FAILED row does not conflict with a COMPLETED one.
    for prefer in ("first", "last"):
        m = os.path.join(d, f"m-{prefer}", "master.h5")
        os.makedirs(os.path.dirname(m))
        shutil.copy(master, m)
        p = merge("--prefer", prefer, m, a, b)
        assert_exit(p, EXIT_OK)
        want = reference(None, [a, b], 10, 4, prefer=prefer)
        assert_gt(m, ARGON, "lj", want)
        src = a if prefer == "first" else b
        fr, st, en, _, _ = read_shard(src)
        k = list(fr).index(4)
        assert gt_state(m, ARGON, "lj")[0][4] == en[k]
    assert sha(master) == digest


@T
def equal_overlap_is_fine(d):
    master = make_master(d, n_frames=10)
    a = shard_of(d, master, "a.h5", "-f", "0-6")
    b = shard_of(d, master, "b.h5", "-f", "3-9")
    c = perturbed(shard_of(d, master, "c.h5", "-f", "5"))
    edit_shard(c, status={0: FAIL})
    p = merge(master, a, b, c)
    assert_exit(p, EXIT_OK)
    assert_gt(master, ARGON, "lj", reference(None, [a, b, c], 10, 4))


# ------------------------------------------------- --dry-run, --remove

@T
def dry_run_writes_nothing(d):
    master = make_master(d, n_frames=10)
    update_ground_truth(master, ARGON, "old", np.zeros(10),
                        np.zeros((10, 4, 3)), np.zeros(10, int))
    shards = chunks(d, master, n=2)
    digest = sha(master)
    for opt in ("-n", "--dry-run"):
        p = merge(opt, master, *shards)
        assert_exit(p, EXIT_OK)
        assert sha(master) == digest
        assert "would" in p.stdout and "dry run" in p.stdout, p.stdout
        assert "10 frames would be written" in p.stdout, p.stdout
        assert not os.path.exists(master + ".mbe-journal")
        assert all(os.path.exists(s) for s in shards)
    p = merge("--dry-run", "--remove-shards", master, *shards)
    assert_exit(p, EXIT_OK)
    assert all(os.path.exists(s) for s in shards)
    assert sha(master) == digest
    assert_exit(merge(master, *shards), EXIT_OK)
    assert_gt(master, ARGON, "lj", reference(None, shards, 10, 4))


@T
def remove_shards_only_after_success(d):
    master = make_master(d, n_frames=10)
    a = shard_of(d, master, "a.h5", "-f", "0-5")
    b = perturbed(shard_of(d, master, "b.h5", "-f", "3-8"))
    p = merge("--remove-shards", master, a, b)
    assert_exit(p, EXIT_FAIL)
    assert os.path.exists(a) and os.path.exists(b)
    c = shard_of(d, master, "c.h5", "-f", "6-9")
    with PythonLock(master):
        p = merge("--remove-shards", "--timeout", "0", master, a, c)
        assert_exit(p, EXIT_TIMEOUT)
    assert os.path.exists(a) and os.path.exists(c)
    cut = os.path.join(d, "cut.h5")
    with open(b, "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 3])
    p = merge("--remove-shards", master, a, c, cut)
    assert_exit(p, EXIT_FAIL)
    assert all(os.path.exists(s) for s in (a, c, cut))
    p = merge("--remove-shards", "--skip-invalid", master, a, c, cut)
    assert_exit(p, EXIT_SKIPPED)
    assert not os.path.exists(a) and not os.path.exists(c)
    assert os.path.exists(cut), "an invalid shard was removed"
    got = gt_state(master, ARGON, "lj")
    assert (got[2][:10] == C).all(), got[2]


# ------------------------------------------------------ untouched rows

def untouched_rows(d, kind):
    """A level the user's h5py wrote: contiguous as the package writes it
    ('raw', rows written in place), or chunked and compressed, never
    allocated (shape and fill value only) or big-endian (through HDF5)."""
    n, na = 40, 6
    master = make_master(d, n_frames=n, n_atoms=na)
    rng = np.random.default_rng(8)
    st0 = rng.choice([C, U, FAIL], size=n)
    e0 = rng.normal(size=n)
    f0 = rng.normal(size=(n, na, 3))
    with h5py.File(master, "a") as f:
        g = f[ARGON].require_group("ground_truth")
        if kind == "late":
            g.create_dataset(e_name("lj"), shape=(n,), dtype="<f8",
                             fillvalue=np.nan)
            g.create_dataset(f_name("lj"), shape=(n, na, 3), dtype="<f8",
                             fillvalue=np.nan)
            g.create_dataset(s_name("lj"), shape=(n,), dtype="<i8",
                             fillvalue=U)
        else:
            kw = {}
            if kind == "chunked":
                kw = {"chunks": True, "compression": "gzip"}
            be = kind == "bigendian"
            g.create_dataset(e_name("lj"), data=e0.astype(">f8" if be
                                                          else "<f8"), **kw)
            g.create_dataset(f_name("lj"), data=f0.astype(">f8" if be
                                                          else "<f8"), **kw)
            g.create_dataset(s_name("lj"), data=st0.astype(">i8" if be
                                                           else "<i8"), **kw)
        g.attrs["levels_of_theory"] = np.array(["lj"],
                                               dtype=h5py.string_dtype())
    with h5py.File(master, "r") as f:
        pos = f[ARGON][POS][()]
    a = shard_of(d, master, "a.h5", "--overwrite", "-f", "2-5,20")
    b = shard_of(d, master, "b.h5", "--overwrite", "-f", "30-31,39")
    edit_shard(b, status={1: FAIL})
    touched = [2, 3, 4, 5, 20, 30, 31, 39]
    keep = [k for k in range(n) if k not in touched]
    layout = None
    if kind in ("raw", "bigendian"):
        layout = row_bytes(master, ARGON, "lj")
        assert all(off is not None for off, _ in layout.values()), layout
        rows0 = file_rows(master, layout, keep)
    before = gt_state(master, ARGON, "lj")
    p = merge(master, a, b)
    assert_exit(p, EXIT_OK)
    assert "created dataset" not in p.stdout, p.stdout
    want = reference(before, [a, b], n, na)
    assert_gt(master, ARGON, "lj", want)
    got = gt_state(master, ARGON, "lj")
    for arr, old in zip(got, before):
        assert same_bits(arr[keep], old[keep])
    if layout:
        assert row_bytes(master, ARGON, "lj") == layout, "datasets moved"
        assert file_rows(master, layout, keep) == rows0
    with h5py.File(master, "r") as f:
        assert same_bits(f[ARGON][POS][()], pos)
        ds = f[ARGON]["ground_truth"][f_name("lj")]
        assert (ds.chunks is not None) == (kind == "chunked")
        assert ds.dtype == np.dtype(">f8" if kind == "bigendian" else "<f8")
    assert not os.path.exists(master + ".mbe-journal")


@T
def frames_outside_shards_never_change(d):
    untouched_rows(d, "raw")


@T
def chunked_compressed_level(d):
    untouched_rows(d, "chunked")


@T
def unallocated_level(d):
    untouched_rows(d, "late")


@T
def big_endian_level(d):
    untouched_rows(d, "bigendian")


@T
def two_groups_two_levels_one_merge(d):
    master = make_master(d, n_frames=7, key="a/one")
    write_structure(master, "b", random_cluster(5, 3, seed=4, spacing=3.6),
                    np.full(3, 18))
    s1 = shard_of(d, master, "s1.h5", "-k", "a/one", "-f", "0-3")
    s2 = shard_of(d, master, "s2.h5", "-k", "b", "-l", SLASHED)
    s3 = shard_of(d, master, "s3.h5", "-k", "a/one", "-f", "4-6",
                  "-l", SLASHED)
    p = merge(master, s1, s2, s3)
    assert_exit(p, EXIT_OK)
    assert_gt(master, "a/one", "lj", reference(None, [s1], 7, 4))
    assert_gt(master, "a/one", SLASHED, reference(None, [s3], 7, 4))
    assert_gt(master, "b", SLASHED, reference(None, [s2], 5, 3))
    assert levels_of(master, "a/one") == sorted(["lj", SLASHED])
    assert levels_of(master, "b") == [SLASHED]
    assert merge_log(master, "a/one") == shard_ids([s1, s3])
    assert merge_log(master, "b") == shard_ids([s2])


@T
def every_kind_of_frame_group(d):
    """Trajectory, FiniteSubsystem (frames in cluster_of_molecules), a
    single frame stored as (n_atoms, 3), and periodic frames with their
    own cells where lj fails (a real FAILED status)."""
    master = os.path.join(d, "master.h5")
    write_structure(master, "traj", random_cluster(5, 3, seed=1,
                                                   spacing=3.6),
                    np.full(3, 18), dataclass="Trajectory")
    write_finite_subsystem(master, "fs/x", random_cluster(4, 3, seed=2,
                                                          spacing=3.6),
                           np.full(3, 18))
    write_structure(master, "one", random_cluster(1, 3, seed=3,
                                                  spacing=3.6)[0],
                    np.full(3, 18))
    write_structure(master, "cells", random_cluster(4, 3, seed=4,
                                                    spacing=3.6),
                    np.full(3, 18), cell=[np.eye(3) * (12 + 10 * k)
                                          for k in range(4)])
    shards = {k: shard_of(d, master, f"{k.replace('/', '_')}.h5", "-k", k,
                          code=3 if k == "cells" else 0)
              for k in ("traj", "fs/x", "one", "cells")}
    p = merge(master, *shards.values())
    assert_exit(p, EXIT_OK)
    for key, n in (("traj", 5), ("fs/x/cluster_of_molecules", 4),
                   ("one", 1), ("cells", 4)):
        k = key.split("/cluster")[0]
        assert_gt(master, key, "lj", reference(None, [shards[k]], n, 3))
    st = gt_state(master, "cells", "lj")[2]
    # Only the 12 Å cell is too small for the 10 Å cut-off.
    assert list(st) == [FAIL, C, C, C], st
    with h5py.File(master, "r") as f:
        assert "ground_truth" not in f["fs/x"]
        assert f["fs/x"].attrs["dataclass"] == "FiniteSubsystem"


@T
def tiny_and_default_buffers_agree(d):
    """A buffer smaller than one row of forces still writes every row."""
    master, shards = big_case(d, 300, 20, with_results=True)
    other = os.path.join(subdir(d, "b"), "master.h5")
    shutil.copy(master, other)
    want = reference(gt_state(master, ARGON, "lj"), shards, 300, 20)
    assert_exit(merge("--buffer", "0.0001", master, *shards), EXIT_OK)
    assert_exit(merge(other, *shards), EXIT_OK)
    assert_gt(master, ARGON, "lj", want)
    assert_gt(other, ARGON, "lj", want)


@T
def interleaved_and_overlapping_shards_any_buffer(d):
    """Shards whose frames interleave (job j takes frames j, j+3, ...),
    overlap (a retry over some of them) and hold every status: forces are
    gathered across shards and written in master order, and the geometry
    of each frame is read once for all of them, in windows of any size."""
    n, na = 90, 5
    master = make_master(d, n_frames=n, n_atoms=na, seed=21)
    update_ground_truth(master, ARGON, "lj", np.zeros(n),
                        np.zeros((n, na, 3)), np.full(n, FAIL, np.int64))
    shards = [shard_of(d, master, f"j{j}.h5", "--overwrite", "-f",
                       ",".join(str(k) for k in range(j, n, 3)))
              for j in range(3)]
    edit_shard(shards[1], status={k: FAIL for k in range(0, 30, 4)})
    edit_shard(shards[2], status={k: U for k in range(1, 30, 5)})
    retry = shard_of(d, master, "retry.h5", "--overwrite", "-f", "10-40")
    edit_shard(retry, status={k: SCF for k in range(0, 31, 3)})
    shards.append(retry)
    want = reference(gt_state(master, ARGON, "lj"), shards, n, na)
    for buf in ("0.00001", "0.0005", "0.003", "8"):
        m = os.path.join(subdir(d, "b" + buf), "master.h5")
        shutil.copy(master, m)
        assert_exit(merge("--buffer", buf, m, *shards), EXIT_OK)
        assert_gt(m, ARGON, "lj", want)
    # A frame whose geometry changed refuses exactly the shards holding
    # it, whichever windows they were read in.
    with h5py.File(master, "a") as f:
        f[ARGON][POS][40, 0, 0] += 0.5
    for buf in ("0.0005", "8"):
        p = merge("--buffer", buf, "--skip-invalid", "-n", master, *shards)
        assert_exit(p, EXIT_SKIPPED)
        lines = err_lines(p)
        assert len(lines) == 2, lines
        for path in (shards[1], retry):
            line = next(ln for ln in lines if path in ln)
            assert "geometry of 1 of" in line and "frame 40)" in line, line


# -------------------------------- shards that change after validation

def flip_forces(path, k):
    """One bit of the forces of the shard's frame k, its crc kept: the
    file damaged in place."""
    with h5py.File(path, "r") as f:
        off = f["forces"].id.get_offset()
        row = f["forces"].shape[1] * 3 * 8
    with open(path, "r+b") as fh:
        fh.seek(off + k * row + 3)
        b = fh.read(1)
        fh.seek(off + k * row + 3)
        fh.write(bytes([b[0] ^ 0x08]))


# Atoms enough that a shard's forces (4 frames) outgrow HDF5's 64 KiB
# sieve buffer, so that the merge reads them from the file again under
# the lock rather than from the copy HDF5 kept when it verified them.
BIG_ATOMS = 800


def steady_shards(d, master, n=3):
    """Chunks written more than a second ago: unchanged since, a merge
    could trust them without reading them twice."""
    shards = chunks(d, master, n=n)
    time.sleep(1.2)
    return shards


@T
def shard_damaged_after_validation_refused(d):
    """A shard damaged between validation and the lock: its damaged row is
    found as it is read under the lock and never written, nor any status;
    every frame written holds verified results."""
    for settle in (False, True):
        sd = subdir(d, f"settle{int(settle)}")
        master = make_master(sd, n_frames=12, n_atoms=BIG_ATOMS)
        shards = steady_shards(sd, master) if settle else chunks(sd, master,
                                                                 n=3)
        before = sha(master)
        proc, err = merge_paused_at_lock(sd, master, *shards)
        try:
            flip_forces(shards[1], 2)
        finally:
            rc, out, errs = resume_merge(proc, err)
        assert rc == EXIT_FAIL, (rc, out, errs)
        assert "changed after it was opened" in errs, errs
        assert shards[1] in errs and "no status was written" in errs, errs
        assert before != sha(master)
        assert not os.path.exists(master + ".mbe-journal")
        E, F, S = gt_state(master, ARGON, "lj")
        assert (S == U).all(), S
        _, _, en, fo, _ = read_shard(shards[1])
        assert np.isnan(E[4 + 2]) and np.isnan(F[4 + 2]).all()
        # Run again: the shard is found damaged again; with --skip-invalid
        # the others are applied.
        p = merge(master, *shards)
        assert_exit(p, EXIT_FAIL)
        assert "crc32" in p.stderr, p.stderr
        p = merge("--skip-invalid", master, *shards)
        assert_exit(p, EXIT_SKIPPED)
        assert_gt(master, ARGON, "lj",
                  reference(None, [shards[0], shards[2]], 12, BIG_ATOMS))


@T
def shard_rewritten_after_validation_refused(d):
    """A shard rewritten with other forces and matching crcs between
    validation and the lock: the forces are not those verified (the crcs
    and energies verified are kept in memory), so nothing is written; the
    next merge applies the new results."""
    na = BIG_ATOMS
    master = make_master(d, n_frames=12, n_atoms=na)
    shards = steady_shards(d, master)
    before = sha(master)
    proc, err = merge_paused_at_lock(d, master, *shards)
    try:
        edit_shard(shards[0], forces={1: np.full((na, 3), 0.125)})
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == EXIT_FAIL, (rc, out, errs)
    assert "changed after it was opened" in errs, errs
    assert before != sha(master)
    assert (gt_state(master, ARGON, "lj")[2] == U).all()
    assert_exit(merge(master, *shards), EXIT_OK)
    want = reference(None, shards, 12, na)
    assert (want[1][1] == 0.125).all()
    assert_gt(master, ARGON, "lj", want)


@T
def live_writer_adds_frames_after_validation(d):
    """The job of a .part stores more frames between validation and the
    lock (it only fills UNDEFINED rows): the merge still succeeds and
    applies exactly the frames it verified; the next merge the rest."""
    na = BIG_ATOMS
    master = make_master(d, n_frames=12, n_atoms=na)
    a, b = steady_shards(d, master, n=2)
    part = b + ".part"
    os.rename(b, part)
    full = os.path.join(d, "full.h5")
    shutil.copy(part, full)
    fr, st, en, fo, _ = read_shard(full)
    edit_shard(part, status={1: U, 3: U, 4: U})
    time.sleep(1.2)
    seen = os.path.join(d, "seen.h5")
    shutil.copy(part, seen)
    proc, err = merge_paused_at_lock(d, master, a, part)
    try:
        # As mbe-compute stores a frame: forces, energy, crc, status.
        edit_shard(part, status={1: C, 3: C}, energy={1: en[1], 3: en[3]},
                   forces={1: fo[1], 3: fo[3]})
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == EXIT_OK, (rc, out, errs)
    assert_gt(master, ARGON, "lj", reference(None, [a, seen], 12, na))
    row = next(ln for ln in out.splitlines() if ln.startswith(part))
    assert "applied (unfinished)" in row, out
    assert_exit(merge(master, a, part), EXIT_OK)
    assert_gt(master, ARGON, "lj", reference(None, [a, seen, part], 12, na))


@T
def shard_changed_while_rows_are_written_stops_the_merge(d):
    """A shard that changes while its rows are being written: each row read
    is checked against its crc as it is written, so the changed row never
    reaches the master; the merge fails before any status is written, and
    running it again refuses the damaged shard.
    The change is made while strace holds the merge at its first pwrite
    of forces (SIGSTOP injected there; one row per window, so the changed
    row is read later)."""
    strace = have_strace()
    if not strace or os.uname().machine != "x86_64":
        raise Skip("needs strace on x86_64")
    na = BIG_ATOMS
    master = make_master(d, n_frames=12, n_atoms=na)
    update_ground_truth(master, ARGON, "lj", np.zeros(12),
                        np.zeros((12, na, 3)), np.full(12, FAIL, np.int64))
    (shard,) = steady_shards(d, master, n=1)
    e0, f0, s0 = gt_state(master, ARGON, "lj")
    cmd = [strace, "-o", "/dev/null", "-e", "trace=pwrite64", "-e",
           "inject=pwrite64:signal=SIGSTOP:when=1",
           os.path.join(BIN, "mbe-merge"), "--buffer", "0.04", master, shard]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=traced_env())
    try:
        pid, t0 = None, time.time()
        # The merge stopped on entering its first pwrite64 (18 on x86_64)
        # until it gets SIGCONT.
        while True:
            if proc.poll() is not None or time.time() - t0 > 30:
                raise AssertionError(f"never held at pwrite64: exit "
                                     f"{proc.poll()}: {proc.stderr.read()}")
            try:   # strace forks short-lived probes before mbe-merge
                if pid is None:
                    pid = traced_child(proc.pid, "mbe-merge")
                if pid and open(f"/proc/{pid}/syscall").read().split()[0] \
                        == "18":
                    break
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.01)
        flip_forces(shard, 9)
    finally:
        if pid is not None:   # also when the test failed meanwhile
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        out, errs = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_FAIL, (proc.returncode, out, errs)
    assert "changed after it was opened" in errs, errs
    assert "frame 9" in errs and "no status was written" in errs, errs
    e1, f1, s1 = gt_state(master, ARGON, "lj")
    assert same_bits(s1, s0), "a status was written"
    assert same_bits(f1[9:], f0[9:]) and same_bits(e1[9:], e0[9:])
    # Frames before it: the shard's verified results, energy with forces.
    _, _, en, fo, _ = read_shard(shard)
    assert same_bits(e1[:9], en[:9]) and same_bits(f1[:9], fo[:9])
    p = merge(master, shard)
    assert_exit(p, EXIT_FAIL)
    assert "crc32" in p.stderr, p.stderr


@T
def shard_replaced_after_validation_applies_what_was_verified(d):
    """A shard file replaced (renamed over) after validation: the merge
    reads the file it verified, still open, and applies that; the merge
    log records it, so the new file is applied by the next merge."""
    na = BIG_ATOMS
    master = make_master(d, n_frames=12, n_atoms=na)
    shards = steady_shards(d, master)
    other = os.path.join(d, "other.h5")
    shutil.copy(shards[2], other)
    edit_shard(other, energy={0: -3.5})
    old = os.path.join(d, "old.h5")
    shutil.copy(shards[2], old)
    proc, err = merge_paused_at_lock(d, master, *shards)
    try:
        os.replace(other, shards[2])
    finally:
        rc, out, errs = resume_merge(proc, err)
    assert rc == EXIT_OK, (rc, out, errs)
    assert_gt(master, ARGON, "lj",
              reference(None, shards[:2] + [old], 12, na))
    assert_exit(merge(master, *shards), EXIT_OK)
    assert_gt(master, ARGON, "lj", reference(None, shards, 12, na))


# ---------------------------------------------- shard of a killed job

@T
def part_of_killed_compute_accepted(d):
    master = slow_master(d)
    shard = os.path.join(d, "s.h5")
    proc = subprocess.Popen(
        [os.path.join(BIN, "mbe-compute"), master, "-c", SLOW_CALC, "-f",
         "0-59", "-q", "--sync-interval", "0", "-o", shard],
        stderr=subprocess.DEVNULL)
    wait_for_frames(shard + ".part", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = shard + ".part"
    assert os.path.exists(part) and not os.path.exists(shard)
    fr, st, _, _, _ = read_shard(part)
    done = int((st != U).sum())
    assert 4 <= done < 60, done
    with h5py.File(master, "r") as f:
        n, na = f["big"].attrs["n_frames"], f["big"].attrs["n_atoms"]
    p = merge("--remove-shards", master, part)
    assert_exit(p, EXIT_OK)
    want = reference(None, [part], n, na)
    assert_gt(master, "big", SLOW_CALC, want)
    assert int((want[2] == C).sum()) == int((st == C).sum())
    assert (want[2][60:] == U).all()
    row = next(ln for ln in p.stdout.splitlines() if ln.startswith(part))
    assert "unfinished" in row, row
    # Its job may resume it: never removed.
    assert os.path.exists(part)
    part_id = shard_ids([part])
    assert merge_log(master, "big") == part_id
    first = gt_state(master, "big", SLOW_CALC)
    # The job resumed and finished: the same shard id, more results; the
    # merge applies it again, and the frames of the .part keep their
    # values.
    p = compute(master, "-c", SLOW_CALC, "-f", "0-59", "-q", "-o", shard)
    assert_exit(p, 0)
    assert not os.path.exists(part)
    fr2, st2, _, _, _ = read_shard(shard)
    assert (st2 == C).all() and len(fr2) == 60
    p = merge(master, shard)
    assert_exit(p, EXIT_OK)
    assert "already applied" not in p.stdout, p.stdout
    want = reference(first, [shard], n, na)
    assert_gt(master, "big", SLOW_CALC, want)
    assert (want[2][:60] == C).all()
    done = np.flatnonzero(st == C)
    assert same_bits(want[0][fr[done]], first[0][fr[done]])
    assert merge_log(master, "big") == part_id + shard_ids([shard])
    assert part_id == shard_ids([shard])


if __name__ == "__main__":
    T.main()
