"""Helpers of the reliability tests (tests/reliability/run): the shim,
masters and shards in the package's layout, snapshots of what a master
holds, and the FIGURE lines that the runner collects."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.environ.get(
    "MBE_ROOT", os.path.dirname(os.path.dirname(HERE))), "tests", "pylib"))
from mbetest import *  # noqa: E402,F401,F403
from mbetest import BIN, STATUS  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

SHIM = os.environ.get("MBE_SHIM", os.path.join(HERE, "shim.so"))
UNDEF = STATUS["UNDEFINED"]
# Ground-truth datasets and attributes: what the merge must get right.
GT = "ground_truth"
LOG = "mbe_merge_log"


def figure(name, value):
    """A line the runner repeats at the end: 'FIGURE name: value'."""
    print(f"FIGURE {name}: {value}", flush=True)


def prog(name):
    return os.path.join(BIN, name)


def run_prog(name, *args, shim=None, env=None, timeout=120, cwd=None):
    """Run a program, with the shim preloaded when shim is a dict of its
    SHIM_* settings.  Returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    for k in list(e):
        if k.startswith("SHIM_"):
            del e[k]
    if shim is not None:
        e["LD_PRELOAD"] = SHIM
        e.update({k: str(v) for k, v in shim.items()})
    if env:
        e.update(env)
    return subprocess.run([prog(name), *map(str, args)], capture_output=True,
                          text=True, errors="replace", env=e,
                          timeout=timeout, cwd=cwd)


def killed(p):
    return p.returncode == -signal.SIGKILL


def err_lines(p):
    return [ln for ln in p.stderr.splitlines() if ln.strip()]


def one_line_error(p, progname):
    """The error is one line, starting with the program's name."""
    lines = err_lines(p)
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {p.stderr!r}"
    assert lines[0].startswith(progname + ": "), lines[0]
    return lines[0]


def read_trace(path):
    """The shim's trace: list of (n, call, cls, path, off, len, hex, res)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for ln in f:
            p = ln.split()
            if len(p) < 8:
                continue
            out.append((int(p[0]), p[1], p[2], " ".join(p[3:-4]),
                        int(p[-4]), int(p[-3]), p[-2], int(p[-1])))
    return out


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def clean_dir(d):
    """Everything but the directory itself."""
    os.makedirs(d, exist_ok=True)
    for n in os.listdir(d):
        p = os.path.join(d, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


# ---------------------------------------------------------------- damage

def mutate(data, rng):
    """One kind of damage of a file's bytes (rng: random.Random), and its
    description."""
    b = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        at = [rng.randrange(len(b)) for _ in range(rng.randint(1, 8))]
        for i in at:
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b), f"bits flipped at {at}"
    if kind == 1:
        at, n = rng.randrange(len(b)), rng.randint(1, 64)
        b[at:at + n] = bytes(rng.randrange(256) for _ in range(n))[:len(b) - at]
        return bytes(b), f"{n} random bytes at {at}"
    if kind == 2:
        # Metadata sits in the first 2 KiB blocks: aim at it.
        at = rng.randrange(min(len(b), 4096))
        b[at] = rng.choice([0, 0xff, b[at] ^ 0x80])
        return bytes(b), f"byte {at} set"
    cut = rng.randrange(len(b))
    return bytes(b[:cut]), f"cut at {cut}"


# ---------------------------------------------------------------- masters

def make_argon(path, key="md/argon", n_frames=40, n_atoms=4, seed=1,
               mode="a", dataclass="Structure"):
    pos = random_cluster(n_frames, n_atoms, seed=seed, spacing=3.6)
    write_structure(path, key, pos, np.full(n_atoms, 18), mode=mode,
                    dataclass=dataclass)
    return pos


def compute_shards(master, outdir, n, *extra, prefix="s"):
    """n chunk shards of the master with lj; returns their paths."""
    paths = []
    for i in range(1, n + 1):
        out = os.path.join(outdir, f"{prefix}{i}.h5")
        p = run_prog("mbe-compute", master, "-c", "lj", "--chunk", f"{i}/{n}",
                     "-q", "-o", out, *extra)
        assert p.returncode == 0, p.stderr
        paths.append(out)
    return paths


# -------------------------------------------------------------- snapshots

def _val(obj):
    v = obj[()]
    if isinstance(v, np.ndarray):
        return (str(v.dtype), v.shape, v.tobytes()
                if v.dtype.kind not in "OV" else repr(v.tolist()))
    return repr(v)


def snapshot(path):
    """Everything a reader sees in a master, comparable with ==: every
    dataset's bytes (NaN-exact) and every attribute; the merge log as the
    sorted (shard_id, key, level, digest) of its records, since its time
    and counts differ between runs."""
    snap = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for a in sorted(obj.attrs):
                v = obj.attrs[a]
                snap[f"{name}@{a}"] = repr(v.tolist() if isinstance(
                    v, np.ndarray) else v)
            if isinstance(obj, h5py.Dataset):
                if name.endswith("/" + LOG):
                    rows = obj[()]
                    snap[name] = sorted(
                        (r["shard_id"], r["key"], r["level"], r["digest"])
                        for r in rows)
                else:
                    snap[name] = _val(obj)
        for a in sorted(f.attrs):
            snap[f"/@{a}"] = repr(f.attrs[a])
        f.visititems(visit)
    return snap


def diff_snap(a, b, limit=3):
    keys = sorted(set(a) | set(b))
    d = [k for k in keys if a.get(k) != b.get(k)]
    return d[:limit]


def log_ids(path, key):
    with h5py.File(path, "r") as f:
        g = f[key][GT]
        if LOG not in g:
            return []
        return [r["shard_id"].decode() if isinstance(r["shard_id"], bytes)
                else r["shard_id"] for r in g[LOG][()]]


# ----------------------------------------------------------------- shards

def shard_arrays(path):
    with h5py.File(path, "r") as f:
        return (f["frames"][()], f["status"][()], f["energy"][()],
                f["forces"][()], f["crc32"][()])


def row_crc(status, energy, forces):
    data = (np.int64(status).tobytes() + np.float64(energy).tobytes()
            + np.ascontiguousarray(forces, np.float64).tobytes())
    return zlib.crc32(data)


def claimed_rows_ok(path, ref):
    """Every frame the shard claims (status not UNDEFINED) holds its crc
    and the values of the uninterrupted run ref; returns the set of
    claimed frame numbers."""
    fr, st, en, fo, crc = shard_arrays(path)
    rfr, rst, ren, rfo, _ = ref
    assert np.array_equal(fr, rfr), "frames differ from the reference"
    claimed = set()
    for k in range(len(fr)):
        if st[k] == UNDEF:
            continue
        assert row_crc(st[k], en[k], fo[k]) == int(crc[k]), \
            f"{path}: frame {fr[k]} claimed with a bad crc"
        assert st[k] == rst[k], f"frame {fr[k]}: status {st[k]} != {rst[k]}"
        assert np.float64(en[k]).tobytes() == np.float64(ren[k]).tobytes(), \
            f"frame {fr[k]}: energy differs"
        assert fo[k].tobytes() == rfo[k].tobytes(), \
            f"frame {fr[k]}: forces differ"
        claimed.add(int(fr[k]))
    return claimed


def same_shard(path, ref):
    got = shard_arrays(path)
    for name, a, b in zip(("frames", "status", "energy", "forces"), got,
                          ref):
        assert a.tobytes() == b.tobytes(), f"{path}: {name} differ"


def dataset_offset(path, name):
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


def error_verdict(p, progname):
    """None when p failed with a one-line error of progname, else what is
    wrong with it: the category of a finding."""
    if p.returncode < 0 or p.returncode >= 128:
        sig = -p.returncode if p.returncode < 0 else p.returncode - 128
        name = signal.Signals(sig).name if sig in signal.valid_signals() \
            else str(sig)
        return f"killed by signal {sig} ({name}), " + (
            "after printing its error" if err_lines(p) else "no message")
    if p.returncode == 0:
        return "exit 0 after the fault"
    lines = err_lines(p)
    if not lines:
        return f"exit {p.returncode} and nothing on stderr"
    if len(lines) > 1:
        return f"exit {p.returncode}, {len(lines)}-line error"
    if not lines[0].startswith(progname + ": "):
        return "error line does not start with the program name"
    return None


class Findings:
    """Failures grouped by category, with the first examples of each."""

    def __init__(self):
        self.cats = {}

    def add(self, cat, detail):
        self.cats.setdefault(cat, []).append(detail)

    def count(self):
        return sum(len(v) for v in self.cats.values())

    def report(self, examples=2):
        for cat, v in sorted(self.cats.items(), key=lambda x: -len(x[1])):
            print(f"  {len(v)} x {cat}")
            for x in v[:examples]:
                print(f"      e.g. {x[:400]!r}")
