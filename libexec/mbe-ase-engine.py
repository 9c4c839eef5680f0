#!/usr/bin/env python3
"""mbe-ase-engine - the engine of mbe-compute -c ase:MODULE:CALL.

Started by mbe-compute (never by hand), with the environment:
  MBE_IPI_ADDRESS  the UNIX socket to connect to (/tmp/ipi_...)
  MBE_ASE_MODULE   module to import, e.g. ase.calculators.emt
  MBE_ASE_CALL     expression evaluated once in that module's namespace,
                   e.g. EMT(); the calculator every frame is computed with

Protocol (ours, in the framing of i-PI: 12-byte space-padded headers,
native-endian int32 and float64), on one connection:
  engine -> MBEHELLO  int32 version, int32 ok, int32 len, bytes[len]:
                      ok 1: the calculator's level_of_theory ("" none);
                      ok 0: why no calculator could be made (one line)
  server -> MBEFRAME  int32 n, int32 flags (1: forces), int32 pbc[3],
                      float64 cell[9] (rows are vectors, Å),
                      int32 numbers[n], float64 positions[n][3] (Å)
  engine -> MBERESULT int32 status (0 COMPLETED, 2 SCF_NOT_CONVERGED,
                      3 FAILED), float64 energy (eV), int32 nf (n or 0),
                      float64 forces[nf][3] (eV/Å), int32 len, bytes[len]
                      (the exception, "Type: message", when not 0)
  server -> EXIT
Units are the calculator's own: nothing is converted either way, so the
numbers mbe-compute stores are the calculator's to the last bit.
Standard library, numpy and ASE only.
"""
import importlib
import os
import socket
import struct
import sys

HDR = 12
VERSION = 1
COMPLETED, SCF_NOT_CONVERGED, FAILED = 0, 2, 3
MSG_MAX = 900


def header(name):
    return name.encode().ljust(HDR)


class Link:
    """The connection, read in place into one growing buffer."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = bytearray(1 << 16)

    def recv(self, n):
        if len(self.buf) < n:
            self.buf = bytearray(n)
        view = memoryview(self.buf)[:n]
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                sys.exit(0)  # the server went away: nothing left to do
            got += k
        return view

    def send(self, *parts):
        self.sock.sendall(b"".join(parts))


def one_line(ex):
    text = " ".join(f"{type(ex).__name__}: {ex}".split())
    return text[:MSG_MAX].encode("utf-8", "replace")


def is_scf(ex):
    """ASE's SCFError, or a class whose name says the SCF did not
    converge (SCF_NOT_CONVERGED, SCFNotConverged, KohnShamConvergenceError
    of GPAW), among the exception's classes."""
    try:
        from ase.calculators.calculator import SCFError
        if isinstance(ex, SCFError):
            return True
    except ImportError:
        pass
    for k in type(ex).__mro__:
        n = k.__name__.upper().replace("_", "")
        if ("SCF" in n and "CONVERG" in n) or "KOHNSHAMCONVERGENCE" in n:
            return True
    return False


def make_calculator():
    """(calculator, level) or (None, why)."""
    module, call = os.environ["MBE_ASE_MODULE"], os.environ["MBE_ASE_CALL"]
    try:
        ns = vars(importlib.import_module(module))
        calc = eval(call, dict(ns))  # the user's own expression
    except BaseException as ex:  # noqa: BLE001 - reported to the server
        return None, b"cannot make the calculator " + \
            f"{module}:{call}: ".encode() + one_line(ex)
    level = getattr(calc, "level_of_theory", None)
    return calc, (level if isinstance(level, str) else "").encode()


class Frames:
    """Atoms for each frame; the object is kept while numbers and
    periodicity stay, as a plain loop over one structure would."""

    def __init__(self, calc):
        import numpy as np
        from ase import Atoms
        self.np, self.Atoms, self.calc = np, Atoms, calc
        self.atoms = None

    def atoms_for(self, numbers, pbc, cell, pos):
        a = self.atoms
        np = self.np
        if (a is None or len(a) != len(numbers) or
                not np.array_equal(a.numbers, numbers) or
                not np.array_equal(a.pbc, pbc)):
            a = self.Atoms(numbers=numbers, positions=pos,
                           cell=cell if pbc.any() else None, pbc=pbc)
            a.calc = self.calc
            self.atoms = a
        else:
            a.positions = pos
            if pbc.any():
                a.cell = cell
        return a


def compute(frames, link, n, flags):
    np = frames.np
    body = link.recv(12 + 72 + 4 * n + 24 * n)
    pbc = np.frombuffer(body, np.int32, 3, 0).astype(bool)
    cell = np.frombuffer(body, np.float64, 9, 12).reshape(3, 3)
    numbers = np.frombuffer(body, np.int32, n, 84)
    pos = np.frombuffer(body, np.float64, 3 * n, 84 + 4 * n).reshape(n, 3)
    try:
        atoms = frames.atoms_for(numbers.copy(), pbc, cell.copy(), pos)
        energy = float(atoms.get_potential_energy())
        forces = None
        if flags & 1:
            forces = np.ascontiguousarray(atoms.get_forces(), np.float64)
            if forces.shape != (n, 3):
                raise ValueError(f"forces of shape {forces.shape}, not "
                                 f"({n}, 3)")
    except Exception as ex:  # noqa: BLE001 - the frame's failure
        frames.atoms = None  # a calculator may be left half-way
        msg = one_line(ex)
        link.send(header("MBERESULT"),
                  struct.pack("=idi", SCF_NOT_CONVERGED if is_scf(ex)
                              else FAILED, float("nan"), 0),
                  struct.pack("=i", len(msg)), msg)
        return
    nf = n if forces is not None else 0
    link.send(header("MBERESULT"), struct.pack("=idi", COMPLETED, energy, nf),
              forces.tobytes() if nf else b"", struct.pack("=i", 0))


def main():
    link = Link(os.environ["MBE_IPI_ADDRESS"])
    calc, text = make_calculator()
    link.send(header("MBEHELLO"),
              struct.pack("=iii", VERSION, calc is not None, len(text)), text)
    if calc is None:
        return 1
    frames = Frames(calc)
    while True:
        h = bytes(link.recv(HDR)).rstrip()
        if h == b"MBEFRAME":
            n, flags = struct.unpack("=ii", link.recv(8))
            compute(frames, link, n, flags)
        elif h == b"EXIT":
            return 0
        else:
            sys.stderr.write(f"mbe-ase-engine: unexpected header {h!r}\n")
            return 1


if __name__ == "__main__":
    sys.exit(main())
