/* test_master.c - reading masters written by h5py exactly as the Python
 * package writes them (tests/pylib/mbetest.py), in every variant of
 * master-format.md, and refusing broken ones with messages that name file,
 * key and dataset. */
#include <H5public.h> /* H5_VERSION_GE: what the damage does depends on it */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "mbe.h"

/* ------------------------------------------------------------ fixtures */

/* Writes every fixture into the directory argv[1].  Positions follow
 * pos[f, a, c] = f + 0.01 a + 0.001 c so that the C side recomputes them;
 * fingerprints.txt holds zlib.crc32 of each frame's bytes. */
static const char make_fixtures[] =
    "import os, sys, zlib\n"
    "sys.path.insert(0, os.path.join(os.environ[\"MBE_ROOT\"], \"tests\", \"pylib\"))\n"
    "import h5py\n"
    "import numpy as np\n"
    "import mbetest as mt\n"
    "\n"
    "os.chdir(sys.argv[1])\n"
    "Z = np.array([1, 6, 7, 8])\n"
    "\n"
    "\n"
    "def pos(nf, na):\n"
    "    f, a, c = np.meshgrid(np.arange(nf), np.arange(na), np.arange(3),\n"
    "                          indexing=\"ij\")\n"
    "    return f + 0.01 * a + 0.001 * c\n"
    "\n"
    "\n"
    "def cellf(f):\n"
    "    return np.diag([10.0 + f, 11.0 + f, 12.0 + f]) + 0.1\n"
    "\n"
    "\n"
    "mt.write_structure(\"plain.h5\", \"training/md/urea\", pos(7, 4), Z)\n"
    "mt.write_structure(\"single.h5\", \"one\", pos(1, 4)[0], Z)\n"
    "Zp = np.array([[(a + f) % 4 + 1 for a in range(4)] for f in range(5)])\n"
    "mt.write_structure(\"perframe.h5\", \"perm\", pos(5, 4), Zp, masses=Zp * 2.0)\n"
    "mt.write_structure(\"fixedcell.h5\", \"crystal\", pos(3, 4), Z, cell=cellf(0))\n"
    "mt.write_structure(\"varcell.h5\", \"md/npt\", pos(4, 4), Z,\n"
    "                   cell=np.array([cellf(f) for f in range(4)]),\n"
    "                   dataclass=\"Trajectory\")\n"
    "mt.write_finite_subsystem(\"finite.h5\", \"clusters/dimer\", pos(2, 4), Z)\n"
    "mt.write_structure(\"finite.h5\", \"crystal/supercell\", pos(1, 4), Z,\n"
    "                   cell=cellf(0))\n"
    "with h5py.File(\"finite.h5\", \"a\") as f:\n"
    "    f[\"crystal\"].attrs[\"dataclass\"] = \"MolecularCrystal\"\n"
    "    f.create_group(\"notes\").attrs[\"comment\"] = \"no dataclass\"\n"
    "\n"
    "for k in (\"a\", \"b/c\", \"d\"):\n"
    "    mt.write_structure(\"several.h5\", k, pos(2, 4), Z)\n"
    "mt.write_finite_subsystem(\"several.h5\", \"e\", pos(2, 4), Z)\n"
    "with h5py.File(\"several.h5\", \"a\") as f:\n"
    "    f[\"a\"].create_dataset(\"just_data\", data=np.arange(3))\n"
    "\n"
    "with h5py.File(\"none.h5\", \"w\") as f:\n"
    "    f.create_group(\"crystal\").attrs[\"dataclass\"] = \"MolecularCrystal\"\n"
    "    f.create_group(\"plain/group\")\n"
    "    f[\"x\"] = np.arange(3)\n"
    "\n"
    "# ground truth: a level with '/', a legacy level without status\n"
    "mt.write_structure(\"gt.h5\", \"training/md/urea\", pos(6, 4), Z)\n"
    "n = 6\n"
    "st = np.array([0, 1, 2, 3, 0, 1])\n"
    "mt.update_ground_truth(\"gt.h5\", \"training/md/urea\", \"r2scan/def2-tzvpp\",\n"
    "                       np.arange(n) * 1.0, np.ones((n, 4, 3)), st)\n"
    "mt.update_ground_truth(\"gt.h5\", \"training/md/urea\", \"gfn2-xtb\",\n"
    "                       np.arange(n) * 1.0, np.ones((n, 4, 3)),\n"
    "                       np.zeros(n, int), with_status=False)\n"
    "# a second pass of the update rule: frame 3 completes, frame 0 stays\n"
    "mt.update_ground_truth(\"gt.h5\", \"training/md/urea\", \"r2scan/def2-tzvpp\",\n"
    "                       np.arange(n) * 2.0, np.ones((n, 4, 3)),\n"
    "                       np.array([3, 1, 1, 0, 1, 1]))\n"
    "\n"
    "with open(\"text.h5\", \"w\") as f:\n"
    "    f.write(\"this is not HDF5\\n\" * 100)\n"
    "data = open(\"plain.h5\", \"rb\").read()\n"
    "with open(\"truncated.h5\", \"wb\") as f:\n"
    "    f.write(data[: len(data) // 2])\n"
    "\n"
    "mt.write_structure(\"intpos.h5\", \"s\", pos(3, 4), Z)\n"
    "with h5py.File(\"intpos.h5\", \"a\") as f:\n"
    "    g = f[\"s\"]\n"
    "    del g[mt.POS], g[\"atomic_numbers\"]\n"
    "    g.create_dataset(mt.POS, data=(np.arange(3)[:, None, None] +\n"
    "                                   np.zeros((3, 4, 3))).astype(np.int32))\n"
    "    g.create_dataset(\"atomic_numbers\", data=Z.astype(np.int32))\n"
    "    g.attrs[\"periodic\"] = np.int64(1)\n"
    "    g.create_dataset(mt.CELL, data=cellf(0).astype(np.float32))\n"
    "\n"
    "\n"
    "def broken(name, fn, nf=10, na=4, **kw):\n"
    "    mt.write_structure(name, \"k/s\", pos(nf, na), np.arange(na) + 1, **kw)\n"
    "    with h5py.File(name, \"a\") as f:\n"
    "        fn(f[\"k/s\"])\n"
    "\n"
    "\n"
    "def rank1(g):\n"
    "    del g[mt.POS]\n"
    "    g.create_dataset(mt.POS, data=pos(10, 4).ravel())\n"
    "\n"
    "\n"
    "def natoms(g):\n"
    "    g.attrs[\"n_atoms\"] = 5\n"
    "\n"
    "\n"
    "def strpos(g):\n"
    "    del g[mt.POS]\n"
    "    g.create_dataset(mt.POS, data=np.full((10, 4, 3), b\"1.0\", \"S8\"))\n"
    "\n"
    "\n"
    "def no_nframes(g):\n"
    "    del g.attrs[\"n_frames\"]\n"
    "\n"
    "\n"
    "def no_cell(g):\n"
    "    g.attrs[\"periodic\"] = True\n"
    "\n"
    "\n"
    "def no_masses(g):\n"
    "    del g[\"masses (u)\"]\n"
    "\n"
    "\n"
    "def bad_z(g):\n"
    "    del g[\"atomic_numbers\"]\n"
    "    g.create_dataset(\"atomic_numbers\", data=np.arange(4) * 1.5)\n"
    "\n"
    "\n"
    "def bad_cell(g):\n"
    "    g.attrs[\"periodic\"] = True\n"
    "    g.create_dataset(mt.CELL, data=np.zeros((9, 3, 3)))\n"
    "\n"
    "\n"
    "def single2d_many(g):\n"
    "    del g[mt.POS]\n"
    "    g.create_dataset(mt.POS, data=pos(1, 4)[0])\n"
    "\n"
    "\n"
    "broken(\"rank1.h5\", rank1)\n"
    "broken(\"natoms.h5\", natoms)\n"
    "broken(\"strpos.h5\", strpos)\n"
    "broken(\"nonframes.h5\", no_nframes)\n"
    "broken(\"nocell.h5\", no_cell)\n"
    "broken(\"nomasses.h5\", no_masses)\n"
    "broken(\"floatz.h5\", bad_z)\n"
    "broken(\"badcell.h5\", bad_cell)\n"
    "broken(\"single2d.h5\", single2d_many)\n"
    "broken(\"badstatus.h5\", lambda g: None)\n"
    "mt.update_ground_truth(\"badstatus.h5\", \"k/s\", \"pbe\", np.zeros(10),\n"
    "                       np.zeros((10, 4, 3)), np.zeros(10, int))\n"
    "with h5py.File(\"badstatus.h5\", \"a\") as f:\n"
    "    g = f[\"k/s/ground_truth\"]\n"
    "    del g[mt.s_name(\"pbe\")]\n"
    "    g.create_dataset(mt.s_name(\"pbe\"), data=np.zeros(9, np.int64))\n"
    "    g.attrs[\"levels_of_theory\"] = np.array([b\"pbe\", b\"b3lyp\"], \"S12\")\n"
    "\n"
    "# a status code outside the enum\n"
    "mt.write_structure(\"badcodes.h5\", \"s\", pos(3, 4), Z)\n"
    "mt.update_ground_truth(\"badcodes.h5\", \"s\", \"pbe\", np.zeros(3),\n"
    "                       np.zeros((3, 4, 3)), np.array([0, 7, 1]))\n"
    "\n"
    "# 20000 frames, only three of them read\n"
    "nf = 20000\n"
    "mt.write_structure(\"big.h5\", \"big\", pos(nf, 3), Z[:3])\n"
    "\n"
    "# fingerprints as the shards compute them\n"
    "with open(\"fingerprints.txt\", \"w\") as out:\n"
    "    for path, key in ((\"plain.h5\", \"training/md/urea\"),\n"
    "                      (\"fixedcell.h5\", \"crystal\"),\n"
    "                      (\"varcell.h5\", \"md/npt\"),\n"
    "                      (\"perframe.h5\", \"perm\")):\n"
    "        with h5py.File(path, \"r\") as f:\n"
    "            g = f[key]\n"
    "            P = g[mt.POS][()]\n"
    "            A = g[\"atomic_numbers\"][()]\n"
    "            C = g[mt.CELL][()] if g.attrs[\"periodic\"] else None\n"
    "            for i in range(g.attrs[\"n_frames\"]):\n"
    "                b = P[i].astype(\"<f8\").tobytes()\n"
    "                b += (A[i] if A.ndim == 2 else A).astype(\"<i8\").tobytes()\n"
    "                if C is not None:\n"
    "                    b += (C[i] if C.ndim == 3 else C).astype(\"<f8\").tobytes()\n"
    "                out.write(f\"{path} {i} {zlib.crc32(b)}\\n\")\n";

static char fixdir[64];

static void write_fixtures(void)
{
    snprintf(fixdir, sizeof fixdir, "/tmp/mbe-test-master-XXXXXX");
    th_make_fixtures(fixdir, make_fixtures);
}

static void remove_fixtures(void)
{
    th_remove_fixtures(fixdir);
}

/* Path of a fixture (a few rotating buffers). */
static const char *fx(const char *name)
{
    static char buf[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", fixdir, name);
    return buf[i];
}

/* ------------------------------------------------------------- helpers */

static const mbe_lock_opts no_wait = {0, NULL, NULL};

static mbe_master *open_ok(const char *name, const char *key)
{
    mbe_master *m = NULL;
    mbe_err e = {{0}};
    int rc = mbe_master_open(fx(name), key, 0, &no_wait, &m, &e);
    ck_assert_msg(rc == 0, "open %s: %s", name, e.msg);
    ck_assert_ptr_nonnull(m);
    return m;
}

static void close_ok(mbe_master *m)
{
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_close(m, &e) == 0, "close: %s", e.msg);
}

static void assert_has(const char *msg, const char *frag)
{
    ck_assert_msg(strstr(msg, frag), "message '%s' lacks '%s'", msg, frag);
    ck_assert_msg(!strchr(msg, '\n'), "multi-line message '%s'", msg);
}

/* Open must fail with a message holding the file's path and every
 * NULL-terminated fragment. */
static void open_bad(const char *name, const char *key, ...)
{
    mbe_master *m = (mbe_master *)1;
    mbe_err e = {{0}};
    int rc = mbe_master_open(fx(name), key, 0, &no_wait, &m, &e);
    ck_assert_msg(rc < 0, "open %s key %s should fail", name,
                  key ? key : "(none)");
    ck_assert_ptr_null(m);
    assert_has(e.msg, fx(name));
    va_list ap;
    va_start(ap, key);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        assert_has(e.msg, frag);
    va_end(ap);
}

static mbe_frames sel_of(const char *spec)
{
    mbe_frames f = {0};
    mbe_err e = {{0}};
    ck_assert_msg(mbe_frames_parse(spec, -1, &f, &e) == 0, "%s", e.msg);
    return f;
}

static void read_ok(mbe_master *m, const char *spec, mbe_geometry *g)
{
    mbe_frames sel = sel_of(spec);
    mbe_err e = {{0}};
    int rc = mbe_master_read_geometry(m, &sel, g, &e);
    ck_assert_msg(rc == 0, "read %s: %s", spec, e.msg);
    ck_assert_uint_eq(g->n, sel.n);
    for (size_t k = 0; k < sel.n; k++)
        ck_assert_int_eq(g->index[k], sel.idx[k]);
    mbe_frames_free(&sel);
}

static double pos(int64_t f, int64_t a, int c)
{
    return (double)f + 0.01 * (double)a + 0.001 * (double)c;
}

static void check_positions(const mbe_geometry *g)
{
    for (size_t k = 0; k < g->n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(g, k, &v);
        ck_assert_int_eq(v.index, g->index[k]);
        for (int64_t a = 0; a < g->n_atoms; a++)
            for (int c = 0; c < 3; c++)
                ck_assert_msg(v.positions[a * 3 + c] == pos(v.index, a, c),
                              "frame %lld atom %lld: %.17g != %.17g",
                              (long long)v.index, (long long)a,
                              v.positions[a * 3 + c], pos(v.index, a, c));
    }
}

/* Atomic numbers 1, 6, 7, 8 in every frame, masses twice as much. */
static void check_urea_like(const mbe_geometry *g)
{
    static const int64_t z[] = {1, 6, 7, 8};
    ck_assert_int_eq(g->n_atoms, 4);
    for (size_t k = 0; k < g->n; k++)
        for (int a = 0; a < 4; a++) {
            ck_assert_int_eq(g->atomic_numbers[k * 4 + a], z[a]);
            ck_assert(g->masses[k * 4 + a] == 2.0 * (double)z[a]);
        }
}

static double cellf(int64_t f, int i, int j)
{
    return (i == j ? 10.0 + (double)f + i : 0.0) + 0.1;
}

static void check_strlist(const mbe_strlist *l, ...)
{
    va_list ap;
    va_start(ap, l);
    size_t n = 0;
    for (const char *s; (s = va_arg(ap, const char *)); n++) {
        ck_assert_msg(n < l->n, "list too short: %zu", l->n);
        ck_assert_str_eq(l->v[n], s);
    }
    va_end(ap);
    ck_assert_uint_eq(l->n, n);
}

/* ------------------------------------------------------------ geometry */

START_TEST(structure_3d_positions)
{
    mbe_master *m = open_ok("plain.h5", NULL);
    ck_assert_str_eq(mbe_master_key(m), "training/md/urea");
    ck_assert_str_eq(mbe_master_path(m), fx("plain.h5"));
    ck_assert_int_eq(mbe_master_n_frames(m), 7);
    ck_assert_int_eq(mbe_master_n_atoms(m), 4);
    ck_assert_int_eq(mbe_master_periodic(m), 0);
    mbe_geometry g;
    read_ok(m, "0-6", &g);
    ck_assert_int_eq(g.periodic, 0);
    ck_assert_ptr_null(g.cells);
    check_positions(&g);
    check_urea_like(&g);
    mbe_frame_view v;
    mbe_geometry_frame(&g, 6, &v);
    ck_assert_ptr_null(v.cell);
    ck_assert_ptr_eq(v.positions, g.positions + 6 * 12);
    ck_assert_ptr_eq(v.atomic_numbers, g.atomic_numbers + 6 * 4);
    mbe_geometry_free(&g);
    ck_assert_ptr_null(g.positions);
    close_ok(m);
}
END_TEST

START_TEST(selected_frames_only)
{
    mbe_master *m = open_ok("plain.h5", "training/md/urea");
    mbe_geometry g;
    read_ok(m, "1,3-5", &g);
    ck_assert_int_eq(g.index[0], 1);
    ck_assert_int_eq(g.index[3], 5);
    check_positions(&g);
    check_urea_like(&g);
    mbe_geometry_free(&g);
    read_ok(m, "6", &g);
    check_positions(&g);
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(empty_selection)
{
    mbe_master *m = open_ok("fixedcell.h5", NULL);
    mbe_frames sel = {0};
    mbe_geometry g;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_read_geometry(m, &sel, &g, &e) == 0, "%s",
                  e.msg);
    ck_assert_uint_eq(g.n, 0);
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(single_frame_2d_positions)
{
    mbe_master *m = open_ok("single.h5", NULL);
    ck_assert_str_eq(mbe_master_key(m), "one");
    ck_assert_int_eq(mbe_master_n_frames(m), 1);
    mbe_geometry g;
    read_ok(m, "0", &g);
    check_positions(&g);
    check_urea_like(&g);
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(per_frame_atomic_numbers_and_masses)
{
    mbe_master *m = open_ok("perframe.h5", NULL);
    mbe_geometry g;
    read_ok(m, "0,2-4", &g);
    check_positions(&g);
    for (size_t k = 0; k < g.n; k++)
        for (int a = 0; a < 4; a++) {
            int64_t z = (a + g.index[k]) % 4 + 1;
            ck_assert_int_eq(g.atomic_numbers[k * 4 + a], z);
            ck_assert(g.masses[k * 4 + a] == 2.0 * (double)z);
        }
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(fixed_cell)
{
    mbe_master *m = open_ok("fixedcell.h5", NULL);
    ck_assert_int_eq(mbe_master_periodic(m), 1);
    mbe_geometry g;
    read_ok(m, "0-2", &g);
    ck_assert_int_eq(g.periodic, 1);
    check_positions(&g);
    for (size_t k = 0; k < g.n; k++) {
        mbe_frame_view v;
        mbe_geometry_frame(&g, k, &v);
        ck_assert_ptr_nonnull(v.cell);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                ck_assert(v.cell[i * 3 + j] == cellf(0, i, j));
    }
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(variable_cell_trajectory)
{
    mbe_master *m = open_ok("varcell.h5", NULL);
    ck_assert_str_eq(mbe_master_key(m), "md/npt");
    mbe_geometry g;
    read_ok(m, "1,3", &g);
    check_positions(&g);
    check_urea_like(&g);
    for (size_t k = 0; k < g.n; k++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                ck_assert(g.cells[k * 9 + i * 3 + j] ==
                          cellf(g.index[k], i, j));
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(finite_subsystem)
{
    const char *keys[] = {NULL, "clusters/dimer",
                          "clusters/dimer/cluster_of_molecules",
                          "/clusters/dimer/"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        mbe_master *m = open_ok("finite.h5", keys[i]);
        ck_assert_str_eq(mbe_master_key(m),
                         "clusters/dimer/cluster_of_molecules");
        mbe_geometry g;
        read_ok(m, "0-1", &g);
        check_positions(&g);
        check_urea_like(&g);
        mbe_geometry_free(&g);
        close_ok(m);
    }
    /* Part of a MolecularCrystal: never found alone, but may be named. */
    mbe_master *m = open_ok("finite.h5", "crystal/supercell");
    ck_assert_int_eq(mbe_master_n_frames(m), 1);
    close_ok(m);
}
END_TEST

START_TEST(integer_datasets_converted)
{
    mbe_master *m = open_ok("intpos.h5", NULL);
    ck_assert_int_eq(mbe_master_periodic(m), 1); /* int64 attribute */
    mbe_geometry g;
    read_ok(m, "0-2", &g);
    for (size_t k = 0; k < g.n; k++) {
        for (int a = 0; a < 12; a++)
            ck_assert(g.positions[k * 12 + a] == (double)k);
        check_urea_like(&g);
        for (int i = 0; i < 9; i++) /* float32 cell */
            ck_assert(g.cells[k * 9 + i] == (double)(float)cellf(0, i / 3,
                                                                  i % 3));
    }
    mbe_geometry_free(&g);
    close_ok(m);
}
END_TEST

START_TEST(few_frames_of_a_large_master)
{
    mbe_master *m = open_ok("big.h5", NULL);
    ck_assert_int_eq(mbe_master_n_frames(m), 20000);
    mbe_geometry g;
    read_ok(m, "0,12345,19998-19999", &g);
    ck_assert_int_eq(g.n_atoms, 3);
    check_positions(&g);
    mbe_geometry_free(&g);
    /* Every other frame: 10000 runs of one frame each. */
    mbe_frames sel = {0};
    mbe_err e = {{0}};
    for (int64_t f = 1; f < 20000; f += 2)
        ck_assert(mbe_frames_push(&sel, f, &e) == 0);
    ck_assert_msg(mbe_master_read_geometry(m, &sel, &g, &e) == 0, "%s",
                  e.msg);
    check_positions(&g);
    mbe_geometry_free(&g);
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

START_TEST(fingerprints_match_python_crc32)
{
    FILE *f = fopen(fx("fingerprints.txt"), "r");
    ck_assert_ptr_nonnull(f);
    char name[64];
    long long frame;
    unsigned long crc;
    int n = 0;
    while (fscanf(f, "%63s %lld %lu", name, &frame, &crc) == 3) {
        mbe_master *m = open_ok(name, NULL);
        char spec[32];
        snprintf(spec, sizeof spec, "%lld", frame);
        mbe_geometry g;
        read_ok(m, spec, &g);
        mbe_frame_view v;
        mbe_geometry_frame(&g, 0, &v);
        ck_assert_msg(mbe_frame_fingerprint(&v) == (uint32_t)crc,
                      "%s frame %lld: %08x != %08lx", name, frame,
                      mbe_frame_fingerprint(&v), crc);
        mbe_geometry_free(&g);
        close_ok(m);
        n++;
    }
    fclose(f);
    ck_assert_int_eq(n, 7 + 3 + 4 + 5);
}
END_TEST

START_TEST(frame_groups_listed)
{
    mbe_strlist l;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_list_frame_groups(fx("several.h5"), &no_wait, &l, &e)
                  == 0, "%s", e.msg);
    check_strlist(&l, "a", "b/c", "d", "e/cluster_of_molecules", NULL);
    mbe_strlist_free(&l);
    ck_assert(mbe_list_frame_groups(fx("finite.h5"), &no_wait, &l, &e) == 0);
    check_strlist(&l, "clusters/dimer/cluster_of_molecules", NULL);
    mbe_strlist_free(&l);
    ck_assert(mbe_list_frame_groups(fx("none.h5"), &no_wait, &l, &e) == 0);
    check_strlist(&l, NULL);
    mbe_strlist_free(&l);
    mbe_master *m = open_ok("several.h5", "b/c");
    ck_assert(mbe_master_list_groups(m, &l, &e) == 0);
    check_strlist(&l, "a", "b/c", "d", "e/cluster_of_molecules", NULL);
    mbe_strlist_free(&l);
    close_ok(m);
    ck_assert(mbe_list_frame_groups(fx("text.h5"), &no_wait, &l, &e) < 0);
    assert_has(e.msg, "not an HDF5 file");
}
END_TEST

/* -------------------------------------------------------- ground truth */

START_TEST(levels_sorted)
{
    mbe_strlist l;
    mbe_err e = {{0}};
    mbe_master *m = open_ok("gt.h5", NULL);
    ck_assert_msg(mbe_master_levels(m, &l, &e) == 0, "%s", e.msg);
    check_strlist(&l, "gfn2-xtb", "r2scan/def2-tzvpp", NULL);
    mbe_strlist_free(&l);
    close_ok(m);
    m = open_ok("plain.h5", NULL);
    ck_assert(mbe_master_levels(m, &l, &e) == 0);
    check_strlist(&l, NULL);
    close_ok(m);
}
END_TEST

START_TEST(levels_fixed_length_strings)
{
    mbe_strlist l;
    mbe_err e = {{0}};
    mbe_master *m = open_ok("badstatus.h5", NULL);
    ck_assert_msg(mbe_master_levels(m, &l, &e) == 0, "%s", e.msg);
    check_strlist(&l, "b3lyp", "pbe", NULL);
    mbe_strlist_free(&l);
    close_ok(m);
}
END_TEST

static void status_is(mbe_master *m, const char *level, const char *spec,
                      const int64_t *want)
{
    mbe_frames sel = sel_of(spec);
    int64_t st[32];
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_read_status(m, level, &sel, st, &e) == 0,
                  "status %s: %s", level, e.msg);
    for (size_t k = 0; k < sel.n; k++)
        ck_assert_msg(st[k] == want[k], "%s frame %lld: %lld, want %lld",
                      level, (long long)sel.idx[k], (long long)st[k],
                      (long long)want[k]);
    mbe_frames_free(&sel);
}

START_TEST(status_of_level_with_slash)
{
    mbe_master *m = open_ok("gt.h5", NULL);
    status_is(m, "r2scan/def2-tzvpp", "0-5",
              (int64_t[]){MBE_COMPLETED, MBE_UNDEFINED, MBE_SCF_NOT_CONVERGED,
                          MBE_COMPLETED, MBE_COMPLETED, MBE_UNDEFINED});
    status_is(m, "r2scan/def2-tzvpp", "1,3,5",
              (int64_t[]){MBE_UNDEFINED, MBE_COMPLETED, MBE_UNDEFINED});
    close_ok(m);
}
END_TEST

START_TEST(status_of_legacy_level)
{
    static const int64_t done[6] = {0};
    mbe_master *m = open_ok("gt.h5", NULL);
    status_is(m, "gfn2-xtb", "0-5", done);
    close_ok(m);
}
END_TEST

START_TEST(status_of_absent_level)
{
    static const int64_t undef[6] = {1, 1, 1, 1, 1, 1};
    mbe_master *m = open_ok("gt.h5", NULL);
    status_is(m, "r2scan", "0-5", undef);
    status_is(m, "def2-tzvpp", "2,4", undef);
    close_ok(m);
    m = open_ok("plain.h5", NULL); /* no ground_truth group */
    status_is(m, "gfn2-xtb", "0-5", undef);
    close_ok(m);
}
END_TEST

START_TEST(status_of_wrong_length)
{
    mbe_master *m = open_ok("badstatus.h5", NULL);
    mbe_frames sel = sel_of("0-2");
    int64_t st[3];
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_read_status(m, "pbe", &sel, st, &e), 0);
    assert_has(e.msg, fx("badstatus.h5"));
    assert_has(e.msg, "key 'k/s'");
    assert_has(e.msg, "dataset 'ground_truth/status_pbe' has shape (9,), "
                      "expected (10,)");
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

START_TEST(status_frames_out_of_range)
{
    mbe_master *m = open_ok("gt.h5", NULL);
    mbe_frames sel = sel_of("4-6");
    int64_t st[3];
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_read_status(m, "gfn2-xtb", &sel, st, &e),
                     0);
    assert_has(e.msg, "frame 6 out of range (n_frames=6)");
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

START_TEST(energies_of_levels)
{
    mbe_master *m = open_ok("gt.h5", NULL);
    mbe_frames sel = sel_of("0-5");
    double en[6];
    mbe_err e = {{0}};
    /* Written by the update rule: COMPLETED frames only, NaN elsewhere. */
    static const double want[6] = {0, NAN, NAN, 6, 4, NAN};
    ck_assert_msg(mbe_master_read_energies(m, "r2scan/def2-tzvpp", &sel, en,
                                           &e) == 0, "%s", e.msg);
    for (int k = 0; k < 6; k++)
        ck_assert_msg(isnan(want[k]) ? isnan(en[k]) : en[k] == want[k],
                      "frame %d: %g", k, en[k]);
    ck_assert(mbe_master_read_energies(m, "gfn2-xtb", &sel, en, &e) == 0);
    for (int k = 0; k < 6; k++)
        ck_assert(en[k] == k);
    ck_assert(mbe_master_read_energies(m, "pbe", &sel, en, &e) == 0);
    for (int k = 0; k < 6; k++)
        ck_assert(isnan(en[k]));
    mbe_frames_free(&sel);
    sel = sel_of("2-6");
    ck_assert_int_lt(mbe_master_read_energies(m, "gfn2-xtb", &sel, en, &e),
                     0);
    assert_has(e.msg, "frame 6 out of range");
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

START_TEST(status_code_outside_enum)
{
    mbe_master *m = open_ok("badcodes.h5", NULL);
    mbe_frames sel = sel_of("0-2");
    int64_t st[3];
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_read_status(m, "pbe", &sel, st, &e), 0);
    assert_has(e.msg, "dataset 'ground_truth/status_pbe' holds 7 for frame "
                      "1, not a status code (0-3)");
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

/* -------------------------------------------------------------- errors */

START_TEST(missing_file)
{
    open_bad("nothing.h5", NULL, "No such file or directory", NULL);
    ck_assert_int_ne(access(fx("nothing.h5.lock"), F_OK), 0);
}
END_TEST

START_TEST(not_hdf5)
{
    open_bad("text.h5", NULL, "not an HDF5 file", NULL);
}
END_TEST

START_TEST(truncated_hdf5)
{
    mbe_master *m = NULL;
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_open(fx("truncated.h5"), NULL, 0, &no_wait,
                                     &m, &e), 0);
    assert_has(e.msg, fx("truncated.h5"));
    assert_has(e.msg, "not a readable HDF5 file");
    assert_has(e.msg, "truncated file");
}
END_TEST

START_TEST(missing_key)
{
    open_bad("plain.h5", "training/md/urea2", "no group 'training/md/urea2'",
             "frame-holding groups: training/md/urea", NULL);
    open_bad("plain.h5", "training/xx/urea", "no group 'training/xx/urea'",
             NULL);
    open_bad("none.h5", "x/y", "no group 'x/y'",
             "the file holds no frame-holding group", NULL);
}
END_TEST

START_TEST(key_not_frames)
{
    open_bad("finite.h5", "crystal", "key 'crystal'", "MolecularCrystal",
             NULL);
    open_bad("none.h5", "plain", "key 'plain'", "no 'dataclass' attribute",
             NULL);
    open_bad("plain.h5", "training/md/urea/atomic_numbers",
             "'training/md/urea/atomic_numbers' is a dataset, not a group",
             NULL);
}
END_TEST

START_TEST(several_candidates)
{
    open_bad("several.h5", NULL, "several frame-holding groups in",
             ": a, b/c, d, e/cluster_of_molecules; choose one with --key",
             NULL);
}
END_TEST

START_TEST(no_candidates)
{
    open_bad("none.h5", NULL, "no frame-holding group in", NULL);
}
END_TEST

START_TEST(wrong_rank)
{
    open_bad("rank1.h5", NULL, "key 'k/s'",
             "dataset 'positions (\xe2\x84\xab)' has shape (120,), expected "
             "(10, 4, 3) (n_frames=10, n_atoms=4)", NULL);
    open_bad("single2d.h5", NULL,
             "dataset 'positions (\xe2\x84\xab)' has shape (4, 3), expected "
             "(10, 4, 3)", NULL);
}
END_TEST

START_TEST(n_atoms_mismatch)
{
    open_bad("natoms.h5", NULL, "key 'k/s'",
             "dataset 'positions (\xe2\x84\xab)' has shape (10, 4, 3), expected "
             "(10, 5, 3) (n_frames=10, n_atoms=5)", NULL);
}
END_TEST

START_TEST(wrong_dtype)
{
    open_bad("strpos.h5", NULL, "key 'k/s'",
             "dataset 'positions (\xe2\x84\xab)' has type string", "float64",
             NULL);
    open_bad("floatz.h5", NULL, "dataset 'atomic_numbers' has type float",
             "integer", NULL);
}
END_TEST

START_TEST(missing_attribute)
{
    open_bad("nonframes.h5", NULL, "key 'k/s'",
             "missing attribute 'n_frames'", NULL);
}
END_TEST

START_TEST(missing_datasets)
{
    open_bad("nocell.h5", NULL, "key 'k/s'",
             "periodic is true but dataset 'cell_vectors (\xe2\x84\xab)' is "
             "missing", NULL);
    open_bad("nomasses.h5", NULL, "missing dataset 'masses (u)'", NULL);
    open_bad("badcell.h5", NULL,
             "dataset 'cell_vectors (\xe2\x84\xab)' has shape (9, 3, 3), "
             "expected (3, 3) or (10, 3, 3)", NULL);
}
END_TEST

START_TEST(frames_out_of_range)
{
    mbe_master *m = open_ok("plain.h5", NULL);
    mbe_frames sel = sel_of("5-7");
    mbe_geometry g;
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_master_read_geometry(m, &sel, &g, &e), 0);
    assert_has(e.msg, fx("plain.h5"));
    assert_has(e.msg, "key 'training/md/urea'");
    assert_has(e.msg, "frame 7 out of range (n_frames=7)");
    ck_assert_ptr_null(g.positions);
    ck_assert_uint_eq(g.n, 0);
    mbe_frames_free(&sel);
    close_ok(m);
}
END_TEST

/* ---------------------------------------------------------------- lock */

static const char *copy_of(const char *name)
{
    char cmd[600];
    const char *dst = fx("copy.h5");
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", fx(name), dst);
    ck_assert_int_eq(system(cmd), 0);
    return dst;
}

START_TEST(writable_master_excludes_readers)
{
    char path[256];
    snprintf(path, sizeof path, "%s", copy_of("plain.h5"));
    mbe_master *w = NULL, *r = NULL;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_master_open(path, NULL, 1, &no_wait, &w, &e) == 0,
                  "%s", e.msg);
    ck_assert_int_eq(mbe_master_open(path, NULL, 0, &no_wait, &r, &e),
                     MBE_ETIMEOUT);
    ck_assert_ptr_null(r);
    assert_has(e.msg, "held by another process");
    ck_assert_msg(mbe_master_close(w, &e) == 0, "%s", e.msg);
    ck_assert_msg(mbe_master_open(path, NULL, 0, &no_wait, &r, &e) == 0,
                  "%s", e.msg);
    mbe_geometry g;
    read_ok(r, "0-6", &g);
    check_positions(&g);
    mbe_geometry_free(&g);
    close_ok(r);
}
END_TEST

START_TEST(readers_share)
{
    mbe_master *a = open_ok("gt.h5", NULL), *b = open_ok("gt.h5", NULL);
    mbe_strlist l;
    mbe_err e = {{0}};
    ck_assert(mbe_list_frame_groups(fx("gt.h5"), &no_wait, &l, &e) == 0);
    mbe_strlist_free(&l);
    close_ok(a);
    close_ok(b);
}
END_TEST

/* A copy of tests/data/name in the fixture directory (where its lock
 * file goes). */
static const char *data_copy(const char *name)
{
    const char *root = getenv("MBE_ROOT");
    char src[4096];
    snprintf(src, sizeof src, "%s/tests/data/%s", root ? root : ".", name);
    FILE *in = fopen(src, "rb"), *out = fopen(fx(name), "wb");
    ck_assert_msg(in && out, "copy %s", src);
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, in)) > 0;)
        ck_assert(fwrite(buf, 1, n, out) == n);
    fclose(in);
    ck_assert(fclose(out) == 0);
    return name;
}

/* h5py masters (superblock 0) whose damage made libhdf5 crash (global
 * heap; a bool enum's type) or loop in process: read first in a child,
 * and refused with one line (master_probe.c). */
START_TEST(damaged_masters_refused)
{
    setenv("MBE_PROBE_TIMEOUT", "2", 1);
    /* HDF5 1.10 crashes on it (in the child); 1.14 reports the damage. */
    open_bad(data_copy("master-v0-crash-2.h5"), NULL, "damaged HDF5 file",
             H5_VERSION_GE(1, 12, 0) ? NULL : "crashed", NULL);
    open_bad(data_copy("master-v0-crash-5.h5"), NULL, "damaged HDF5 file",
             NULL);
    open_bad(data_copy("master-v0-hang-1.h5"), NULL, "damaged HDF5 file",
             "within 2 s", NULL);
    mbe_strlist keys = {0};
    mbe_err e = {{0}};
    ck_assert_int_lt(mbe_list_frame_groups(fx("master-v0-crash-2.h5"),
                                           &no_wait, &keys, &e), 0);
    assert_has(e.msg, "damaged HDF5 file");
    ck_assert_int_lt(mbe_master_check(fx("master-v0-crash-5.h5"), &e), 0);
    assert_has(e.msg, "master-v0-crash-5.h5: damaged HDF5 file");
    ck_assert_msg(mbe_master_check(fx("gt.h5"), &e) == 0, "%s", e.msg);
    unsetenv("MBE_PROBE_TIMEOUT");
}
END_TEST

START_TEST(lock_released_after_failure)
{
    open_bad("nonframes.h5", NULL, "missing attribute", NULL);
    mbe_lock l;
    mbe_err e = {{0}};
    ck_assert_msg(mbe_lock_acquire(fx("nonframes.h5"), 1, &no_wait, &l, &e)
                  == 0, "%s", e.msg);
    mbe_lock_release(&l);
    mbe_master *m = NULL;
    ck_assert_int_eq(mbe_master_open(fx("plain.h5"), NULL, 0, &no_wait, &m,
                                     &e), 0);
    /* An exclusive lock (as the package takes) keeps us out. */
    ck_assert(mbe_lock_acquire(fx("gt.h5"), 1, &no_wait, &l, &e) == 0);
    mbe_master *g = NULL;
    ck_assert_int_eq(mbe_master_open(fx("gt.h5"), NULL, 0, &no_wait, &g, &e),
                     MBE_ETIMEOUT);
    mbe_lock_release(&l);
    close_ok(m);
}
END_TEST

static Suite *master_suite(void)
{
    Suite *s = suite_create("master");
    TCase *tc = tcase_create("geometry");
    tcase_add_unchecked_fixture(tc, write_fixtures, remove_fixtures);
    tcase_add_test(tc, structure_3d_positions);
    tcase_add_test(tc, selected_frames_only);
    tcase_add_test(tc, empty_selection);
    tcase_add_test(tc, single_frame_2d_positions);
    tcase_add_test(tc, per_frame_atomic_numbers_and_masses);
    tcase_add_test(tc, fixed_cell);
    tcase_add_test(tc, variable_cell_trajectory);
    tcase_add_test(tc, finite_subsystem);
    tcase_add_test(tc, integer_datasets_converted);
    tcase_add_test(tc, few_frames_of_a_large_master);
    tcase_add_test(tc, fingerprints_match_python_crc32);
    tcase_add_test(tc, frame_groups_listed);

    tcase_add_test(tc, levels_sorted);
    tcase_add_test(tc, levels_fixed_length_strings);
    tcase_add_test(tc, status_of_level_with_slash);
    tcase_add_test(tc, status_of_legacy_level);
    tcase_add_test(tc, status_of_absent_level);
    tcase_add_test(tc, status_of_wrong_length);
    tcase_add_test(tc, status_frames_out_of_range);
    tcase_add_test(tc, status_code_outside_enum);
    tcase_add_test(tc, energies_of_levels);

    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, not_hdf5);
    tcase_add_test(tc, truncated_hdf5);
    tcase_add_test(tc, missing_key);
    tcase_add_test(tc, key_not_frames);
    tcase_add_test(tc, several_candidates);
    tcase_add_test(tc, no_candidates);
    tcase_add_test(tc, wrong_rank);
    tcase_add_test(tc, n_atoms_mismatch);
    tcase_add_test(tc, wrong_dtype);
    tcase_add_test(tc, missing_attribute);
    tcase_add_test(tc, missing_datasets);
    tcase_add_test(tc, frames_out_of_range);

    tcase_add_test(tc, writable_master_excludes_readers);
    tcase_add_test(tc, readers_share);
    tcase_add_test(tc, lock_released_after_failure);
    tcase_add_test(tc, damaged_masters_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(master_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
