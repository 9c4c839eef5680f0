"""Failures of the system under the programs, and mistaken arguments, in
our words: for each case exactly one line on stderr, starting with the
program's name, naming the file the user gave (not a temporary one), with
the expected words and the expected exit status (2 for usage errors), and
none of libhdf5's own text (its "errno = 28, ... file descriptor = 5,
bytes actually written = 18446744073709551615" and such).  A disk that
fills up is the shim's ENOSPC (tests/reliability/shim.c), or a small
tmpfs when we may mount one; permission errors are had as user nobody
when we are root."""
import os
import re
import shutil
import subprocess

from rel import *  # noqa: F401,F403
from rel import SHIM, Findings, Tests, err_lines, figure, make_argon, prog, \
    run_prog, sha

T = Tests()
ROOT_USER = os.geteuid() == 0
# libhdf5's descriptions of failed system calls, and its function names.
RAW = re.compile(r"errno =|error message =|flags =|file descriptor|"
                 r"bytes actually|buf = 0x|\bH5[A-Z][A-Za-z_]*\(|\.new-")
ENOSPC = {"SHIM_ERRNO": "ENOSPC", "SHIM_CLASSES": "write",
          "SHIM_FAIL_AT": 1, "SHIM_FAIL_COUNT": -1}
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def fixture(d):
    os.chmod(d, 0o755)
    m = os.path.join(d, "master.h5")
    make_argon(m, n_frames=6, n_atoms=3)
    s = os.path.join(d, "s.h5")
    p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", s)
    assert p.returncode == 0, p.stderr
    xyz = os.path.join(d, "pair.xyz")
    with open(xyz, "w") as f:
        f.write("2\npair\nAr 0 0 0\nAr 3.6 0 0\n")
    for x in os.listdir(d):
        os.chmod(os.path.join(d, x), 0o666)
    return m, s, xyz


def as_nobody(name, *args):
    """Run as user nobody (root is let through every permission)."""
    if not ROOT_USER:
        return run_prog(name, *args)
    if not shutil.which("setpriv"):
        raise Skip("no setpriv to drop root")  # noqa: F405
    return subprocess.run(NOBODY + [prog(name), *map(str, args)],
                          capture_output=True, text=True, errors="replace",
                          timeout=120)


class Mount:
    """A tmpfs of size bytes at path (root only), read-only when ro."""

    def __init__(self, path, size, ro=False):
        self.path, self.size, self.ro = path, size, ro

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        if not ROOT_USER or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                 self.path], capture_output=True).returncode:
            raise Skip("cannot mount a tmpfs")  # noqa: F405
        return self

    def seal(self):
        subprocess.run(["mount", "-o", "remount,ro", self.path], check=True)

    def __exit__(self, *a):
        subprocess.run(["umount", "-l", self.path], capture_output=True)


def check(found, label, p, code, words, path, watched=()):
    """The verdict on one case; watched: (path, sha before) pairs."""
    lines = err_lines(p)
    why = []
    if p.returncode != code:
        why.append(f"exit {p.returncode}, expected {code}")
    if len(lines) != 1:
        why.append(f"{len(lines)} lines on stderr")
    line = lines[0] if lines else ""
    if line and not line.startswith(f"mbe-{label.split(':')[0]}: "):
        why.append("no program name first")
    for w in words:
        if w.lower() not in line.lower():
            why.append(f"no '{w}'")
    if path and path not in line:
        why.append(f"does not name {path}")
    if RAW.search(line):
        why.append("libhdf5's text")
    for f, h in watched:
        if (sha(f) if os.path.exists(f) else None) != h:
            why.append(f"{os.path.basename(f)} changed")
    if why:
        found.add(f"{label}: {'; '.join(why)}", p.stderr.strip()[:400])
    print(f"  {'BAD ' if why else 'ok  '} {label}: exit {p.returncode}: "
          f"{line[:200]}")


def conclude(found, what):
    figure(f"messages ({what})", f"{found.count()} findings")
    found.report()
    assert not found.count(), f"{found.count()} findings"


def none_left(found, label, path):
    """A master that could not be made is not left half made."""
    if os.path.exists(path):
        found.add(f"{label}: a half-made master was left", path)


def shim_run(name, *args, match):
    return run_prog(name, *args, shim=dict(ENOSPC, SHIM_MATCH=match))


@T
def compute_messages(d):
    m, s, _ = fixture(d)
    found = Findings()
    keep = [(m, sha(m))]
    out = os.path.join(d, "o.h5")
    p = shim_run("mbe-compute", m, "-c", "lj", "-q", "-o", out, match="o.h5")
    check(found, "compute: disk full creating the shard", p, 1,
          ["No space left on device"], out, keep)
    missing = os.path.join(d, "nodir", "o.h5")
    p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", missing)
    check(found, "compute: output directory missing", p, 1,
          ["does not exist"], os.path.join(d, "nodir"), keep)
    p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o",
                 os.path.join(s, "o.h5"))
    check(found, "compute: output directory is a file", p, 1,
          ["is not a directory"], s, keep)
    link = os.path.join(d, "link.h5")
    os.symlink(m, link)
    other = os.path.join(d, "..", os.path.basename(d), "master.h5")
    for label, o in (("the same name", m), ("a symlink", link),
                     ("another path", other)):
        p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", o)
        check(found, f"compute: -o is the master ({label})", p, 2,
              ["is the master"], o, keep)
    p = run_prog("mbe-compute", m, "-c", "ljj", "-q", "-o", out)
    check(found, "compute: unknown calculator", p, 2,
          ["unknown calculator 'ljj'"], None, keep)
    p = run_prog("mbe-compute", m, "-c", "lj", "--lj-sigma", "-1", "-q",
                 "-o", out)
    check(found, "compute: bad calculator option", p, 2, ["lj_sigma"], None,
          keep)
    # Engine addresses and ase: arguments are checked as written, before
    # anything is bound or started.
    for calc, words in (("ipi:a/b", "without '/'"),
                        ("ipi:localhost:99999", "from 1 to 65535"),
                        ("ipi:*:31415", "--ipi-remote"),
                        ("ipi:" + "n" * 200, "too long"),
                        ("ase:not-a-module:X()", "not a Python module"),
                        ("ase:emt", "ase:MODULE:CALL")):
        p = run_prog("mbe-compute", m, "-c", calc, "-l", "x", "-q", "-o",
                     out)
        check(found, f"compute: malformed calculator argument {calc[:20]}",
              p, 2, [words], None, keep)
    rodir = os.path.join(d, "rodir")
    os.mkdir(rodir, 0o555)
    p = as_nobody("mbe-compute", m, "-c", "lj", "-q", "-o",
                  os.path.join(rodir, "o.h5"))
    check(found, "compute: output directory not writable", p, 1,
          ["Permission denied"], os.path.join(rodir, "o.h5"), keep)
    os.chmod(m, 0o600)
    p = as_nobody("mbe-status", m)
    os.chmod(m, 0o666)
    check(found, "status: master not readable", p, 1, ["Permission denied"],
          m, keep)
    conclude(found, "compute, status")


@T
def master_write_messages(d):
    m, s, xyz = fixture(d)
    found = Findings()
    p = shim_run("mbe-merge", "-q", m, s, match="master.h5")
    check(found, "merge: disk full writing the master", p, 1,
          ["No space left on device"], m)
    new = os.path.join(d, "new.h5")
    p = shim_run("mbe-import", "-q", xyz, new, match="new.h5")
    check(found, "import: disk full creating a master", p, 1,
          ["No space left on device"], new)
    none_left(found, "import: disk full", new)
    keep = [(m, sha(m))]
    os.chmod(m, 0o644)
    p = as_nobody("mbe-import", "-q", "-k", "pair", xyz, m)
    check(found, "import: master not writable", p, 1, ["Permission denied"],
          m, keep)
    conclude(found, "merge, import")


@T
def real_full_and_read_only_file_systems(d):
    """The same on a real full tmpfs and a read-only one (root only)."""
    m, s, xyz = fixture(d)
    found = Findings()
    small = os.path.join(d, "small")
    with Mount(small, 48 * 1024) as mt:
        fill = os.path.join(small, "fill")
        with open(fill, "wb") as f:
            try:
                f.write(b"\0" * (44 * 1024))
            except OSError:
                pass
        out = os.path.join(small, "o.h5")
        p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", out)
        check(found, "compute: full tmpfs", p, 1,
              ["No space left on device"], out)
        new = os.path.join(small, "new.h5")
        p = run_prog("mbe-import", "-q", xyz, new)
        check(found, "import: full tmpfs", p, 1, ["No space left on device"],
              new)
        none_left(found, "import: full tmpfs", new)
        del mt
    ro = os.path.join(d, "ro")
    with Mount(ro, 1 << 20) as mt:
        shutil.copyfile(m, os.path.join(ro, "master.h5"))
        mt.seal()
        out = os.path.join(ro, "o.h5")
        p = run_prog("mbe-compute", m, "-c", "lj", "-q", "-o", out)
        check(found, "compute: read-only file system", p, 1,
              ["Read-only file system"], out)
        rm = os.path.join(ro, "master.h5")
        p = run_prog("mbe-import", "-q", "-k", "pair", xyz, rm)
        check(found, "import: master on a read-only file system", p, 1,
              ["read-only file system"], ro)
    conclude(found, "full and read-only tmpfs")


if __name__ == "__main__":
    T.main()
