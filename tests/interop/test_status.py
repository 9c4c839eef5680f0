"""End-to-end tests of mbe-status: masters written by h5py exactly as the
package writes them (several groups, levels with '/', legacy levels) and
by our own mbe-merge, shards of finished and of killed jobs.  The JSON
output is checked field by field against what h5py itself reads, the
--missing spec is fed back to mbe-compute, and every exit code and error
line is checked."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.environ.get("MBE_ROOT", "."), "tests",
                                "pylib"))
from mbetest import *  # noqa: E402,F401,F403

import h5py  # noqa: E402
import numpy as np  # noqa: E402

T = Tests()
ARGON = "md/argon"
SLASHED = "r2scan/def2-tzvpp"
UNICODE = "\u03c9B97X-D/def2-svp"

# The documented members of each object of schema mbe-status/1.
TOP_FIELDS = {"schema", "version", "files"}
MASTER_FIELDS = {"path", "type", "needs_recovery", "groups"}
GROUP_FIELDS = {"key", "n_frames", "n_atoms", "periodic", "angstrom", "levels",
                "merge_log_error",
                "merges"}
LEVEL_FIELDS = {"level", "listed", "legacy", "datasets", "n_frames", "counts",
                "energy_min", "energy_max"}
MERGE_FIELDS = {"shard_id", "level", "time", "path", "frames"}
SHARD_FIELDS = {"path", "type", "finished", "shard_id", "master_file", "key",
                "has_forces",
                "level", "master_n_frames", "n_atoms", "selection", "frames",
                "n_frames", "n_done", "counts", "energy_min", "energy_max",
                "checksums", "checksum_error", "provenance", "merged",
                "running"}
PROV_FIELDS = {"calculator", "calc_settings", "tool_version", "host",
               "slurm_job_id", "slurm_array_job_id", "slurm_array_task_id",
               "start_time", "end_time", "startup_ms"}
ERROR_FIELDS = {"path", "type", "error", "lock_timeout"}
STATUS_NAMES = ["COMPLETED", "UNDEFINED", "SCF_NOT_CONVERGED", "FAILED"]


def status(*args, **kw):
    return run("mbe-status", *args, **kw)


def compute(*args, **kw):
    return run("mbe-compute", *args, **kw)


def assert_exit(p, code):
    assert p.returncode == code, \
        f"exit {p.returncode}, expected {code}: {p.stderr.strip()[:600]}"


def one_error_line(p, *fragments):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr: {p.stderr!r}"
    assert lines[0].startswith("mbe-status: "), lines[0]
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def status_json(*args, code=0):
    p = status("--json", *args)
    assert_exit(p, code)
    doc = json.loads(p.stdout)
    assert set(doc) == TOP_FIELDS, set(doc)
    assert doc["schema"] == "mbe-status/1"
    return doc


def spec_of(frames):
    """The compact spec of sorted frame indices ("0-3,7")."""
    out, i, frames = [], 0, list(frames)
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[j] + 1:
            j += 1
        out.append(str(frames[i]) if i == j else f"{frames[i]}-{frames[j]}")
        i = j + 1
    return ",".join(out)


# ------------------------------------------------------------ masters

def rich_master(d):
    """Several groups of every frame-holding kind, a group that holds no
    frames, levels with '/' and non-ASCII names, and a legacy level."""
    path = os.path.join(d, "master.h5")
    n = 12
    write_structure(path, ARGON, random_cluster(n, 3, seed=1, spacing=3.6),
                    np.full(3, 18))
    st = np.array([0, 0, 1, 2, 3, 0, 1, 3, 0, 2, 0, 1])
    e = -1.0 - 0.1 * np.arange(n)
    update_ground_truth(path, ARGON, SLASHED, e, np.zeros((n, 3, 3)), st)
    le = 0.5 + 0.01 * np.arange(n)
    le[4] = np.nan
    update_ground_truth(path, ARGON, "gfn2-xtb", le, np.zeros((n, 3, 3)),
                        np.zeros(n, int), with_status=False)
    write_structure(path, "traj/npt", random_cluster(5, 2, seed=2),
                    [1, 8], dataclass="Trajectory",
                    cell=np.eye(3) * 20.0)
    update_ground_truth(path, "traj/npt", UNICODE, np.arange(5.0),
                        np.zeros((5, 2, 3)), np.array([1, 1, 0, 3, 0]))
    write_finite_subsystem(path, "clusters/dimer",
                           random_cluster(4, 2, seed=3), [1, 1])
    with h5py.File(path, "a") as f:
        f.create_group("crystal").attrs["dataclass"] = "MolecularCrystal"
    return path


def h5_groups(path):
    """Keys of the frame-holding groups, as the package defines them."""
    keys = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Group):
            return
        dc = obj.attrs.get("dataclass")
        if isinstance(dc, bytes):
            dc = dc.decode()
        if dc in ("Structure", "Trajectory"):
            keys.append(name)
        elif dc == "FiniteSubsystem":
            keys.append(name + "/cluster_of_molecules")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sorted(set(keys))


def h5_level(g, level):
    """What h5py reads for one level of a group: the expected level
    object of the JSON output."""
    n = int(g.attrs["n_frames"])
    gt = g.get("ground_truth")
    levels = []
    if gt is not None:
        levels = [s.decode() if isinstance(s, bytes) else s
                  for s in gt.attrs.get("levels_of_theory", [])]
    has = lambda name: gt is not None and name in gt  # noqa: E731
    legacy = not has(s_name(level)) and (has(e_name(level)) or
                                         has(f_name(level)))
    if has(s_name(level)):
        st = gt[s_name(level)][()]
    elif legacy:
        st = np.zeros(n, np.int64)
    else:
        st = np.ones(n, np.int64)
    e = gt[e_name(level)][()] if has(e_name(level)) else np.full(n, np.nan)
    good = e[(st == 0) & np.isfinite(e)]
    datasets = [q for q, name in (("energies", e_name(level)),
                                  ("forces", f_name(level)),
                                  ("status", s_name(level))) if has(name)]
    return {
        "level": level, "listed": level in levels, "legacy": bool(legacy),
        "datasets": datasets, "n_frames": n,
        "counts": {name: int((st == code).sum())
                   for name, code in STATUS.items()},
        "energy_min": float(good.min()) if len(good) else None,
        "energy_max": float(good.max()) if len(good) else None,
    }


def h5_master(path, key=None, level=None):
    """The expected "groups" of a master object, merges left out."""
    out = []
    with h5py.File(path, "r") as f:
        for k in (h5_groups(path) if key is None else [key]):
            g = f[k]
            levels = []
            if "ground_truth" in g:
                levels = sorted(s.decode() if isinstance(s, bytes) else s
                                for s in g["ground_truth"].attrs.get(
                                    "levels_of_theory", []))
            if level is not None:
                levels = [level]
            out.append({
                "key": k, "n_frames": int(g.attrs["n_frames"]),
                "n_atoms": int(g.attrs["n_atoms"]),
                "periodic": bool(g.attrs["periodic"]),
                "levels": [h5_level(g, lv) for lv in levels]})
    return out


def check_master_json(obj, path, key=None, level=None, recovery=False):
    assert set(obj) == MASTER_FIELDS, set(obj)
    assert obj["type"] == "master" and obj["path"] == path
    assert obj["needs_recovery"] is recovery
    want = h5_master(path, key, level)
    got = obj["groups"]
    assert [g["key"] for g in got] == [g["key"] for g in want], \
        ([g["key"] for g in got], [g["key"] for g in want])
    for g, w in zip(got, want):
        assert set(g) == GROUP_FIELDS, set(g)
        for field in ("n_frames", "n_atoms", "periodic"):
            assert g[field] == w[field], (g["key"], field, g[field], w[field])
        assert g["angstrom"] == "U+212B", g["angstrom"]
        assert [lv["level"] for lv in g["levels"]] == \
            [lv["level"] for lv in w["levels"]]
        for lv, wl in zip(g["levels"], w["levels"]):
            assert set(lv) == LEVEL_FIELDS, set(lv)
            assert set(lv["counts"]) == set(STATUS_NAMES)
            for field in LEVEL_FIELDS:
                assert lv[field] == wl[field], \
                    (g["key"], lv["level"], field, lv[field], wl[field])
        for m in g["merges"]:
            assert set(m) == MERGE_FIELDS, set(m)
    return got


@T
def json_matches_h5py_field_by_field(d):
    path = rich_master(d)
    doc = status_json(path)
    assert len(doc["files"]) == 1
    groups = check_master_json(doc["files"][0], path)
    assert [g["key"] for g in groups] == [
        "clusters/dimer/cluster_of_molecules", ARGON, "traj/npt"]
    argon = groups[1]
    assert [lv["level"] for lv in argon["levels"]] == ["gfn2-xtb", SLASHED]
    assert argon["levels"][0]["legacy"] is True
    assert argon["levels"][1]["counts"] == {
        "COMPLETED": 5, "UNDEFINED": 3, "SCF_NOT_CONVERGED": 2, "FAILED": 2}
    assert argon["merges"] == []
    assert groups[0]["levels"] == []
    assert groups[2]["levels"][0]["level"] == UNICODE


@T
def key_and_level_filters(d):
    path = rich_master(d)
    doc = status_json("-k", ARGON, "-l", SLASHED, path)
    check_master_json(doc["files"][0], path, key=ARGON, level=SLASHED)
    # A FiniteSubsystem is named by its own key.
    doc = status_json("-k", "clusters/dimer", path)
    assert doc["files"][0]["groups"][0]["key"] == \
        "clusters/dimer/cluster_of_molecules"


@T
def absent_level_all_undefined_null_energies(d):
    path = rich_master(d)
    doc = status_json("-k", ARGON, "-l", "b3lyp/def2-svp", path)
    lv = check_master_json(doc["files"][0], path, ARGON,
                           "b3lyp/def2-svp")[0]["levels"][0]
    assert lv["listed"] is False and lv["legacy"] is False
    assert lv["counts"]["UNDEFINED"] == 12
    assert lv["energy_min"] is None and lv["energy_max"] is None


@T
def human_table(d):
    path = rich_master(d)
    p = status(path)
    assert_exit(p, 0)
    out = p.stdout
    assert p.stderr == "", p.stderr
    for want in (f"{path}: master, 3 groups", f"  {ARGON}: 12 frames, 3 atoms",
                 "traj/npt: 5 frames, 2 atoms, periodic", "gfn2-xtb (legacy)",
                 UNICODE, "no levels of theory", "merged shards: none",
                 "-2.000000 .. -1.000000"):
        assert want in out, f"{want!r} not in\n{out}"
    row = next(ln for ln in out.splitlines() if SLASHED in ln).split()
    assert row[1:6] == ["12", "5", "2", "2", "3"], row
    p = status("-q", path)
    assert_exit(p, 0)
    assert p.stdout == "" and p.stderr == ""


# ------------------------------------------------ --missing, --failed

def lj_master(d, n=12, n_atoms=4):
    path = os.path.join(d, "master.h5")
    write_structure(path, ARGON, random_cluster(n, n_atoms, seed=4,
                                                spacing=3.6),
                    np.full(n_atoms, 18))
    return path


@T
def missing_spec_feeds_mbe_compute(d):
    path = lj_master(d)
    st = np.array([0, 0, 1, 2, 3, 0, 1, 3, 0, 2, 0, 1])
    update_ground_truth(path, ARGON, "lj", np.zeros(12),
                        np.zeros((12, 4, 3)), st)
    p = status("--missing", "-l", "lj", path)
    assert_exit(p, 0)
    want = np.flatnonzero(st != 0)
    assert p.stdout == spec_of(want) + "\n", p.stdout
    assert p.stderr == ""
    p2 = status("--failed", "-l", "lj", path)
    assert_exit(p2, 0)
    assert p2.stdout == spec_of(np.flatnonzero((st == 2) | (st == 3))) + "\n"
    # --overwrite: the shard holds exactly the spec, not what compute would
    # have chosen by itself.
    shard = os.path.join(d, "s.h5")
    assert_exit(compute(path, "-c", "lj", "-q", "--overwrite", "--frames",
                        p.stdout.strip(), "-o", shard), 0)
    with h5py.File(shard, "r") as f:
        assert list(f["frames"][()]) == list(want)
    # Without it too, since none of them is COMPLETED.
    shard2 = os.path.join(d, "s2.h5")
    assert_exit(compute(path, "-c", "lj", "-q", "--frames", p.stdout.strip(),
                        "-o", shard2), 0)
    with h5py.File(shard2, "r") as f:
        assert list(f["frames"][()]) == list(want)


@T
def missing_empty_when_all_completed(d):
    path = lj_master(d)
    update_ground_truth(path, ARGON, "lj", np.zeros(12),
                        np.zeros((12, 4, 3)), np.zeros(12, int))
    for opt in ("--missing", "--failed"):
        p = status(opt, "-l", "lj", path)
        assert_exit(p, 0)
        assert p.stdout == "" and p.stderr == "", (p.stdout, p.stderr)
    # A legacy level is COMPLETED everywhere as well.
    update_ground_truth(path, ARGON, "old/x", np.zeros(12),
                        np.zeros((12, 4, 3)), np.zeros(12, int),
                        with_status=False)
    p = status("--missing", "-l", "old/x", path)
    assert_exit(p, 0)
    assert p.stdout == ""


@T
def missing_of_absent_level_is_every_frame(d):
    path = lj_master(d)
    p = status("--missing", "-l", "gfn2-xtb", path)
    assert_exit(p, 0)
    assert p.stdout == "0-11\n", p.stdout
    p = status("--failed", "-l", "gfn2-xtb", path)
    assert_exit(p, 0)
    assert p.stdout == ""


@T
def missing_needs_one_group(d):
    path = rich_master(d)
    p = status("--missing", "-l", SLASHED, path)
    assert_exit(p, 1)
    one_error_line(p, path, "--key")
    assert p.stdout == ""
    p = status("--missing", "-l", SLASHED, "-k", ARGON, path)
    assert_exit(p, 0)
    assert p.stdout == "2-4,6-7,9,11\n", p.stdout


@T
def usage_errors_exit_2(d):
    path = lj_master(d)
    for args in (["--missing", path], ["--missing", "-l", "x", path, path],
                 ["--missing", "-l", "x"], ["--failed", "--missing", "-l",
                                             "x", path],
                 ["--missing", "-l", "x", "--json", path], [],
                 ["--timeout", "soon", path], ["--bogus", path],
                 ["-l", "", path], ["--missing", "-l", "x", "--master",
                                    path, path]):
        p = status(*args)
        assert_exit(p, 2)
        one_error_line(p)
        assert "--help" in p.stderr
        assert p.stdout == ""
    p = status("--help")
    assert_exit(p, 0)
    assert "Usage: mbe-status" in p.stdout and "--missing" in p.stdout
    p = status("--version")
    assert_exit(p, 0)
    assert p.stdout.startswith("mbe-status (mbe-shard) ")


# -------------------------------------------------------------- shards

def shard_arrays(path):
    with h5py.File(path, "r") as f:
        return f["frames"][()], f["status"][()], f["energy"][()]


def check_shard_json(obj, path):
    """Field by field against the shard as h5py reads it."""
    assert set(obj) == SHARD_FIELDS, set(obj)
    assert set(obj["provenance"]) == PROV_FIELDS, set(obj["provenance"])
    assert obj["type"] == "shard" and obj["path"] == path
    frames, st, en = shard_arrays(path)
    with h5py.File(path, "r") as f:
        attrs = shard_attrs(f)
    assert obj["frames"] == spec_of(frames)
    assert obj["n_frames"] == len(frames)
    assert obj["n_done"] == int((st != STATUS["UNDEFINED"]).sum())
    assert obj["counts"] == {name: int((st == code).sum())
                             for name, code in STATUS.items()}
    good = en[(st == 0) & np.isfinite(en)]
    assert obj["energy_min"] == (float(good.min()) if len(good) else None)
    assert obj["energy_max"] == (float(good.max()) if len(good) else None)
    for field in ("shard_id", "master_file", "key", "level", "selection"):
        assert obj[field] == attrs[field], (field, obj[field], attrs[field])
    assert obj["master_n_frames"] == int(attrs["n_frames"])
    assert obj["n_atoms"] == int(attrs["n_atoms"])
    for field in PROV_FIELDS - {"end_time", "startup_ms"}:
        assert obj["provenance"][field] == attrs[field], field
    assert obj["provenance"]["startup_ms"] == (
        int(attrs["startup_ms"]) if "startup_ms" in attrs else None)
    return obj


@T
def shard_of_killed_job(d):
    master = slow_master(d)
    shard = os.path.join(d, "s.h5")
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_ARRAY_JOB_ID="4240",
               SLURM_ARRAY_TASK_ID="2")
    proc = subprocess.Popen(
        [os.path.join(BIN, "mbe-compute"), master, "-c", SLOW_CALC, "-f", "0-59",
         "-q", "--sync-interval", "0", "-o", shard],
        stderr=subprocess.DEVNULL, env=env)
    wait_for_frames(shard + ".part", 5)
    live = status_json(shard + ".part")["files"][0]
    assert live["running"] is True and live["finished"] is False, live
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    part = shard + ".part"
    assert os.path.exists(part) and not os.path.exists(shard)
    # Both the .part and the name the job was given find it.
    for arg in (part, shard):
        doc = status_json(arg)
        obj = check_shard_json(doc["files"][0], part)
        assert obj["finished"] is False
        assert obj["checksums"] == "ok" and obj["checksum_error"] is None
        assert obj["frames"] == "0-59" and obj["selection"] == "0-59"
        assert 5 <= obj["n_done"] < 60, obj["n_done"]
        assert obj["key"] == "big" and obj["level"] == SLOW_CALC
        assert obj["master_file"] == os.path.realpath(master)
        assert obj["running"] is False
        prov = obj["provenance"]
        assert prov["calculator"] == SLOW_CALC and prov["calc_settings"]
        assert prov["host"] == socket.gethostname()
        assert (prov["slurm_job_id"], prov["slurm_array_job_id"],
                prov["slurm_array_task_id"]) == ("4242", "4240", "2")
        assert prov["end_time"] == "" and prov["start_time"]
        assert obj["merged"] is None
    p = status(part)
    assert_exit(p, 0)
    for want in ("shard, unfinished", "0-59 (60 frames)", "checksums   ok",
                 "job 4242, array job 4240 task 2", "UNDEFINED"):
        assert want in p.stdout, f"{want!r} not in\n{p.stdout}"


def finished_shard(d, master, frames, name="s.h5", level="lj"):
    shard = os.path.join(d, name)
    assert_exit(compute(master, "-c", "lj", "-l", level, "-q", "-f", frames,
                        "-o", shard), 0)
    return shard


@T
def finished_shard_and_bad_checksum(d):
    master = lj_master(d)
    shard = finished_shard(d, master, "2-7")
    obj = check_shard_json(status_json(shard)["files"][0], shard)
    assert obj["finished"] is True and obj["n_done"] == 6
    assert obj["provenance"]["end_time"], obj["provenance"]
    assert obj["counts"]["COMPLETED"] == 6
    # A damaged value: verification fails, exit 3, the rest still shown.
    with h5py.File(shard, "a") as f:
        f["energy"][1] = f["energy"][1] + 1.0
    doc = status_json(shard, code=3)
    obj = doc["files"][0]
    assert obj["checksums"] == "bad" and "crc32" in obj["checksum_error"]
    p = status(shard)
    assert_exit(p, 3)
    assert "frame 3" in p.stdout or "frames 3" in p.stdout, p.stdout
    assert_exit(status("-q", shard), 3)
    assert status("-q", shard).stdout == ""
    p = status("--no-verify", "--json", shard)
    assert_exit(p, 0)
    assert json.loads(p.stdout)["files"][0]["checksums"] == "skipped"


@T
def missing_frames_refuse_shards(d):
    master = lj_master(d)
    shard = finished_shard(d, master, "0-1")
    p = status("--missing", "-l", "lj", shard)
    assert_exit(p, 1)
    one_error_line(p, shard, "shard")


# --------------------------------------------------------- our merge

def need_merge():
    if not os.access(os.path.join(BIN, "mbe-merge"), os.X_OK):
        raise Skip("build/bin/mbe-merge not built yet")


@T
def merged_by_mbe_merge(d):
    need_merge()
    master = lj_master(d)
    s1 = finished_shard(d, master, "0-4", "s1.h5", "lj/argon")
    s2 = finished_shard(d, master, "5-8", "s2.h5", "lj/argon")
    ids = [status_json(s)["files"][0]["shard_id"] for s in (s1, s2)]
    doc = status_json("--master", master, s1)
    assert doc["files"][0]["merged"] == {"master": master, "merged": False,
                                         "time": None}
    p = run("mbe-merge", master, s1, s2)
    assert_exit(p, 0)
    doc = status_json(master)
    g = check_master_json(doc["files"][0], master)[0]
    assert g["levels"][0]["counts"]["COMPLETED"] == 9
    assert g["levels"][0]["counts"]["UNDEFINED"] == 3
    assert [m["shard_id"] for m in g["merges"]] == ids, g["merges"]
    assert [m["frames"] for m in g["merges"]] == [5, 4]
    assert all(m["level"] == "lj/argon" and m["time"] for m in g["merges"])
    for s in (s1, s2):
        m = status_json("--master", master, s)["files"][0]["merged"]
        assert m["merged"] is True and m["time"], m
    # Filtering merges by level.
    doc = status_json("-l", "other", master)
    assert doc["files"][0]["groups"][0]["merges"] == []
    p = status(master)
    assert "merged shards: 2" in p.stdout and ids[0] in p.stdout, p.stdout
    # The loop: compute the missing frames, merge, nothing is missing.
    spec = status("--missing", "-l", "lj/argon", master).stdout.strip()
    assert spec == "9-11", spec
    s3 = finished_shard(d, master, spec, "s3.h5", "lj/argon")
    assert_exit(run("mbe-merge", master, s3), 0)
    p = status("--missing", "-l", "lj/argon", master)
    assert_exit(p, 0)
    assert p.stdout == ""


# ------------------------------------------------- errors and locking

@T
def recovery_pending(d):
    path = lj_master(d)
    update_ground_truth(path, ARGON, "lj", np.zeros(12),
                        np.zeros((12, 4, 3)), np.zeros(12, int))
    # What mbe-merge leaves when killed in a structural change: the undo
    # journal beside the master.
    open(path + ".mbe-journal", "wb").close()
    doc = status_json(path, code=3)
    check_master_json(doc["files"][0], path, recovery=True)
    p = status(path)
    assert_exit(p, 3)
    assert "run mbe-merge again" in p.stdout, p.stdout
    p = status("--missing", "-l", "lj", path)
    assert_exit(p, 3)
    assert p.stdout == ""
    one_error_line(p, path, "mbe-merge again")


@T
def bad_files_one_line_each(d):
    good = lj_master(d)
    missing = os.path.join(d, "nope.h5")
    text = os.path.join(d, "notes.txt")
    with open(text, "w") as f:
        f.write("not hdf5\n")
    empty = os.path.join(d, "empty.h5")
    with h5py.File(empty, "w") as f:
        f.create_group("x")
    p = status(missing, good, text, empty)
    assert_exit(p, 1)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 3, p.stderr
    for ln, path in zip(lines, (missing, text, empty)):
        assert ln.startswith(f"mbe-status: {path}: "), ln
        assert ln.count(path) == 1 or "several" in ln, ln
    assert "No such file" in lines[0]
    assert "not an HDF5 file" in lines[1]
    assert "frame-holding" in lines[2]
    assert f"{good}: master" in p.stdout
    doc = json.loads(status("--json", missing, good).stdout)
    err, ok = doc["files"]
    assert set(err) == ERROR_FIELDS and err["type"] == "error"
    assert err["path"] == missing and "No such file" in err["error"]
    assert err["lock_timeout"] is False
    check_master_json(ok, good)
    # A shard that stops in the middle is damaged: one line too.
    shard = finished_shard(d, good, "0-3")
    with open(shard, "rb") as f:
        data = f.read()
    cut = os.path.join(d, "cut.h5")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    p = status(cut)
    assert_exit(p, 1)
    one_error_line(p, cut)
    assert not os.path.exists(cut + ".lock")


@T
def lock_timeout_exit_4(d):
    path = lj_master(d)
    os.makedirs(os.path.join(d, "x"))
    other = lj_master(os.path.join(d, "x"))
    with PythonLock(path):
        t0 = time.time()
        p = status("--timeout", "0.5", path, other)
        assert time.time() - t0 < 10
        assert_exit(p, 4)
        line = one_error_line(p, path, "lock")
        assert "waiting" not in line
        assert f"{other}: master" in p.stdout
        p = status("--json", "--timeout", "0", "-q", path)
        assert_exit(p, 4)
        err = json.loads(p.stdout)["files"][0]
        assert err["type"] == "error" and err["lock_timeout"] is True
        p = status("--missing", "-l", "lj", "--timeout", "0", path)
        assert_exit(p, 4)
        assert p.stdout == ""
    # The lock is released as soon as mbe-status has read the master.
    assert_exit(status(path), 0)


@T
def waits_for_lock_then_reads(d):
    path = lj_master(d)
    lk = PythonLock(path)
    lk.__enter__()
    proc = subprocess.Popen([os.path.join(BIN, "mbe-status"), "--timeout",
                             "30", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    lk.__exit__()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "waiting for the lock" in err, err
    assert f"{path}: master" in out


if __name__ == "__main__":
    T.main()
