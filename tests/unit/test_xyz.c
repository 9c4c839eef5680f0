/* test_xyz.c - the XYZ / extended-XYZ reader and the element table. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mbe.h"

/* ------------------------------------------------------------ helpers */

static char tmpdir[64];

static void setup(void)
{
    strcpy(tmpdir, "/tmp/mbe-test-xyz.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Write text to <tmpdir>/name; returns the path (static buffer). */
static const char *put(const char *name, const char *text)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static void read_ok(const char *text, mbe_geometry *g)
{
    mbe_err e = {{0}};
    const char *path = put("t.xyz", text);
    int rc = mbe_xyz_read(path, g, &e);
    ck_assert_msg(rc == 0, "read failed: %s", e.msg);
    ck_assert_uint_gt(g->n, 0);
    for (size_t k = 0; k < g->n; k++)
        ck_assert_int_eq(g->index[k], (int64_t)k);
}

/* The message must be exactly "<path>:<want>" (want starts with the line
 * number, or ": " for messages about the whole file). */
static void read_bad(const char *text, const char *want)
{
    mbe_err e = {{0}};
    mbe_geometry g;
    const char *path = put("t.xyz", text);
    int rc = mbe_xyz_read(path, &g, &e);
    ck_assert_msg(rc < 0, "read of bad input succeeded (want '%s')", want);
    ck_assert_msg(g.n == 0 && !g.positions && !g.cells,
                  "geometry not empty after failure");
    char full[1200];
    snprintf(full, sizeof full, "%s:%s", path, want);
    ck_assert_msg(strcmp(e.msg, full) == 0, "message '%s', want '%s'", e.msg,
                  full);
}

#define EPS 1e-12

static void assert_pos(const mbe_geometry *g, size_t k, size_t i, double x,
                       double y, double z)
{
    const double *p = g->positions + (k * (size_t)g->n_atoms + i) * 3;
    ck_assert_double_eq_tol(p[0], x, EPS);
    ck_assert_double_eq_tol(p[1], y, EPS);
    ck_assert_double_eq_tol(p[2], z, EPS);
}

static const char water2[] =
    "3\n"
    "water\n"
    "O 0.0 0.0 0.1\n"
    "H 0.757 0.586 0.0 extra columns 1 2\n"
    "H -0.757 0.586 0.0\n"
    "3\n"
    "second frame\n"
    "O 0.0 0.0 0.2\n"
    "H 0.757 0.586 0.0\n"
    "H -0.757 0.586 1e-1\n";

/* ---------------------------------------------------------- elements */

START_TEST(element_symbols)
{
    ck_assert_int_eq(mbe_element_z("H"), 1);
    ck_assert_int_eq(mbe_element_z("He"), 2);
    ck_assert_int_eq(mbe_element_z("Cl"), 17);
    ck_assert_int_eq(mbe_element_z("Og"), 118);
    ck_assert_int_eq(mbe_element_z("CL"), 0);
    ck_assert_int_eq(mbe_element_z("cl"), 0);
    ck_assert_int_eq(mbe_element_z("X"), 0);
    ck_assert_int_eq(mbe_element_z(""), 0);
    ck_assert_int_eq(mbe_element_z(NULL), 0);
    ck_assert_ptr_null(mbe_element_symbol(0));
    ck_assert_ptr_null(mbe_element_symbol(119));
    ck_assert_str_eq(mbe_element_symbol(26), "Fe");
    for (int z = 1; z <= 118; z++)
        ck_assert_int_eq(mbe_element_z(mbe_element_symbol(z)), z);
}
END_TEST

/* Spot checks against ase.data.atomic_masses (ASE 3.22, IUPAC 2016). */
START_TEST(element_masses_as_ase)
{
    static const struct {
        int z;
        double m;
    } ase[] = {{1, 1.008},         {6, 12.011},       {7, 14.007},
               {8, 15.999},        {17, 35.45},       {26, 55.845},
               {43, 97.90721},     {61, 144.91276},   {79, 196.966569},
               {84, 208.98243},    {86, 222.01758},   {92, 238.02891},
               {100, 257.09511},   {118, 294.214}};
    for (size_t i = 0; i < sizeof ase / sizeof ase[0]; i++)
        ck_assert_msg(mbe_element_mass(ase[i].z) == ase[i].m,
                      "mass of Z=%d is %.10g, ASE has %.10g", ase[i].z,
                      mbe_element_mass(ase[i].z), ase[i].m);
    double sum = 0;
    for (int z = 1; z <= 118; z++)
        sum += mbe_element_mass(z);
    ck_assert_double_eq_tol(sum, 17284.869180001, 1e-6);
    ck_assert(isnan(mbe_element_mass(0)));
    ck_assert(isnan(mbe_element_mass(119)));
}
END_TEST

/* ------------------------------------------------------------ reading */

START_TEST(plain_two_frames)
{
    mbe_geometry g;
    read_ok(water2, &g);
    ck_assert_uint_eq(g.n, 2);
    ck_assert_int_eq(g.n_atoms, 3);
    ck_assert_int_eq(g.periodic, 0);
    ck_assert_ptr_null(g.cells);
    assert_pos(&g, 0, 0, 0.0, 0.0, 0.1);
    assert_pos(&g, 0, 1, 0.757, 0.586, 0.0);
    assert_pos(&g, 1, 2, -0.757, 0.586, 0.1);
    for (size_t k = 0; k < 2; k++) {
        ck_assert_int_eq(g.atomic_numbers[3 * k], 8);
        ck_assert_int_eq(g.atomic_numbers[3 * k + 1], 1);
        ck_assert(g.masses[3 * k] == 15.999);
        ck_assert(g.masses[3 * k + 2] == 1.008);
    }
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(crlf_and_trailing_blank_lines)
{
    mbe_geometry g;
    read_ok("2\r\ncomment\r\nC 0 0 0\r\nO 0 0 1.128\r\n"
            "2\r\n\r\nC 0 0 0\r\nO 0 0 1.13\r\n\r\n  \r\n\t\n", &g);
    ck_assert_uint_eq(g.n, 2);
    ck_assert_int_eq(g.atomic_numbers[1], 8);
    assert_pos(&g, 1, 1, 0, 0, 1.13);
    mbe_geometry_free(&g);
}
END_TEST

/* A count far beyond what the file holds is a truncated frame, found
 * without reserving room for it (fuzz/corpus/fuzz_xyz/regress_*: an
 * allocation of 16 x 2e13 atoms that ASan aborted on). */
START_TEST(count_beyond_the_file)
{
    read_bad("20000000000000\n\nH 0 0 0\n",
             "1: truncated frame 0: the count line says 20000000000000 "
             "atoms, the file ends after 1");
}
END_TEST

START_TEST(no_final_newline)
{
    mbe_geometry g;
    read_ok("1\n\nAr 1 2 3", &g);
    ck_assert_uint_eq(g.n, 1);
    assert_pos(&g, 0, 0, 1, 2, 3);
    ck_assert_int_eq(g.atomic_numbers[0], 18);
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(symbol_case_and_numbers)
{
    mbe_geometry g;
    read_ok("4\nupper case from some programs\nCL 0 0 0\ncl 0 0 2\n"
            "17 0 0 4\nNA 1 1 1\n", &g);
    ck_assert_int_eq(g.atomic_numbers[0], 17);
    ck_assert_int_eq(g.atomic_numbers[1], 17);
    ck_assert_int_eq(g.atomic_numbers[2], 17);
    ck_assert_int_eq(g.atomic_numbers[3], 11);
    ck_assert(g.masses[3] == 22.98976928);
    mbe_geometry_free(&g);
}
END_TEST

/* As ase.io.write(..., format="extxyz") writes a periodic frame. */
START_TEST(extxyz_lattice_properties)
{
    mbe_geometry g;
    read_ok("2\n"
            "Lattice=\"5.0 0.0 0.0 1.0 6.0 0.0 0.5 0.25 7.0\" "
            "Properties=species:S:1:pos:R:3:forces:R:3 energy=-12.5 "
            "pbc=\"T T T\"\n"
            "Na 0.0 0.0 0.0 0.1 0.2 0.3\n"
            "Cl 2.5 2.5 2.5 -0.1 -0.2 -0.3\n", &g);
    ck_assert_int_eq(g.periodic, 1);
    ck_assert_ptr_nonnull(g.cells);
    static const double cell[9] = {5, 0, 0, 1, 6, 0, 0.5, 0.25, 7};
    for (int j = 0; j < 9; j++)
        ck_assert_double_eq(g.cells[j], cell[j]);
    assert_pos(&g, 0, 1, 2.5, 2.5, 2.5);
    ck_assert_int_eq(g.atomic_numbers[1], 17);
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(extxyz_column_order)
{
    mbe_geometry g;
    read_ok("2\nProperties=pos:R:3:tags:I:1:species:S:1 pbc=\"F F F\"\n"
            "1.0 2.0 3.0 0 O\n4 5 6 1 H\n", &g);
    ck_assert_int_eq(g.periodic, 0);
    assert_pos(&g, 0, 0, 1, 2, 3);
    assert_pos(&g, 0, 1, 4, 5, 6);
    ck_assert_int_eq(g.atomic_numbers[0], 8);
    ck_assert_int_eq(g.atomic_numbers[1], 1);
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(extxyz_z_column)
{
    mbe_geometry g;
    read_ok("2\nProperties=Z:I:1:pos:R:3 comment=\"a = b\"\n"
            "6 0 0 0\n8 0 0 1.2\n", &g);
    ck_assert_int_eq(g.atomic_numbers[0], 6);
    ck_assert_int_eq(g.atomic_numbers[1], 8);
    ck_assert(g.masses[0] == 12.011);
    mbe_geometry_free(&g);
}
END_TEST

/* ASE lets Z win over species when both are given. */
START_TEST(extxyz_z_wins_over_species)
{
    mbe_geometry g;
    read_ok("1\nProperties=species:S:1:pos:R:3:Z:I:1\nC 0 0 0 14\n", &g);
    ck_assert_int_eq(g.atomic_numbers[0], 14);
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(extxyz_per_frame_cells)
{
    mbe_geometry g;
    read_ok("1\nLattice=\"4 0 0 0 4 0 0 0 4\" Properties=species:S:1:pos:R:3\n"
            "Si 0 0 0\n"
            "1\nLattice=\"4.1 0 0 0 4.1 0 0 0 4.2\"\nSi 0.1 0 0\n"
            "1\npbc=T Lattice=\"4.2, 0, 0, 0, 4.2, 0, 0, 0, 4.4\"\nSi 0 0 0\n",
            &g);
    ck_assert_uint_eq(g.n, 3);
    ck_assert_int_eq(g.periodic, 1);
    ck_assert_double_eq(g.cells[0], 4.0);
    ck_assert_double_eq(g.cells[9 + 8], 4.2);
    ck_assert_double_eq(g.cells[18 + 4], 4.2);
    ck_assert_double_eq(g.cells[18 + 8], 4.4);
    mbe_geometry_free(&g);
}
END_TEST

/* A slab: stored as periodic with its full cell. */
START_TEST(extxyz_partial_pbc)
{
    mbe_geometry g;
    read_ok("1\nLattice=\"3 0 0 0 3 0 0 0 20\" pbc=\"T T F\"\nCu 0 0 0\n",
            &g);
    ck_assert_int_eq(g.periodic, 1);
    ck_assert_double_eq(g.cells[8], 20.0);
    mbe_geometry_free(&g);
}
END_TEST

/* ASE writes a Lattice for a molecule in a box; pbc F F F makes it a
 * molecule. */
START_TEST(extxyz_box_without_pbc)
{
    mbe_geometry g;
    read_ok("1\nLattice=\"10 0 0 0 10 0 0 0 10\" pbc=\"F F F\"\nHe 5 5 5\n",
            &g);
    ck_assert_int_eq(g.periodic, 0);
    ck_assert_ptr_null(g.cells);
    mbe_geometry_free(&g);
}
END_TEST

/* Quotes, escapes, "key = value", and keys we ignore. */
START_TEST(extxyz_comment_syntax)
{
    mbe_geometry g;
    read_ok("1\nname='it is \\\"quoted\\\"' Lattice = \"3 0 0 0 3 0 0 0 3\" "
            "flag info={a b} Properties=\"species:S:1:pos:R:3\"\n"
            "Fe 0 0 0\n", &g);
    ck_assert_int_eq(g.periodic, 1);
    ck_assert_double_eq(g.cells[4], 3.0);
    mbe_geometry_free(&g);
}
END_TEST

/* xtb.trj comments are free text, not key=value. */
START_TEST(xtb_comment)
{
    mbe_geometry g;
    read_ok("1\n energy: -20.324795560527 gnorm: 0.000829 xtb: 6.5.1 "
            "(unknown)\nO 1.0 2.0 3.0\n", &g);
    ck_assert_int_eq(g.periodic, 0);
    mbe_geometry_free(&g);
}
END_TEST

START_TEST(many_frames_grow)
{
    size_t n = 1000;
    char *buf = malloc(n * 64), *p = buf;
    for (size_t k = 0; k < n; k++)
        p += sprintf(p, "2\nframe %zu\nH 0 0 %zu\nH 0 0 %zu.5\n", k, k, k);
    mbe_geometry g;
    read_ok(buf, &g);
    free(buf);
    ck_assert_uint_eq(g.n, n);
    assert_pos(&g, 999, 1, 0, 0, 999.5);
    assert_pos(&g, 500, 0, 0, 0, 500);
    mbe_geometry_free(&g);
}
END_TEST

/* ------------------------------------------------------------- errors */

START_TEST(error_coordinates)
{
    read_bad("3\n\nO 0 0 0\nH 1 0\nH 0 1 0\n",
             "4: expected 3 coordinates, found 2");
    read_bad("3\n\nO 0 0 0\nH 1 0 0\nH\n", "5: expected 3 coordinates, "
             "found 0");
    read_bad("1\n\nO 0 x 0\n", "3: bad coordinate 'x'");
    read_bad("1\n\nO 0 0 1.5.2\n", "3: bad coordinate '1.5.2'");
}
END_TEST

START_TEST(error_line_in_later_frame)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s3\n\nO 0 0 0\nH 1 0 0\nH 0 1\n", water2);
    read_bad(buf, "15: expected 3 coordinates, found 2");
}
END_TEST

START_TEST(error_non_finite)
{
    read_bad("1\n\nO 0 nan 0\n", "3: non-finite coordinate 'nan'");
    read_bad("1\n\nO inf 0 0\n", "3: non-finite coordinate 'inf'");
    read_bad("1\n\nO 1e999 0 0\n", "3: non-finite coordinate '1e999'");
    read_bad("1\nLattice=\"1 0 0 0 1 0 0 0 nan\"\nO 0 0 0\n",
             "2: bad number 'nan' in Lattice");
}
END_TEST

START_TEST(error_unknown_element)
{
    read_bad("2\n\nO 0 0 0\nXx 1 0 0\n", "4: unknown element 'Xx'");
    read_bad("1\n\nOW 0 0 0\n", "3: unknown element 'OW'");
    read_bad("1\n\n0 0 0 0\n", "3: unknown element '0'");
    read_bad("1\n\n119 0 0 0\n", "3: unknown element '119'");
    read_bad("1\nProperties=Z:I:1:pos:R:3\n0 0 0 0\n",
             "3: atomic number 0 outside 1-118");
    read_bad("1\nProperties=Z:I:1:pos:R:3\nC 0 0 0\n",
             "3: bad atomic number 'C'");
}
END_TEST

START_TEST(error_count_line)
{
    read_bad("three\n\nO 0 0 0\n",
             "1: bad count line 'three' (expected the number of atoms)");
    read_bad("3 atoms\n\n", "1: bad count line '3 atoms' (expected the "
             "number of atoms)");
    read_bad("0\n\n", "1: bad count line '0' (a frame needs at least one "
             "atom)");
    read_bad("-2\n\n", "1: bad count line '-2' (a frame needs at least one "
             "atom)");
    /* A frame with more atom lines than its count. */
    read_bad("1\n\nO 0 0 0\nH 0 0 1\n", "4: bad count line 'H 0 0 1' "
             "(expected the number of atoms)");
}
END_TEST

START_TEST(error_truncated)
{
    read_bad("3\n\nO 0 0 0\n", "1: truncated frame 0: the count line says "
             "3 atoms, the file ends after 1");
    char buf[512];
    snprintf(buf, sizeof buf, "%s3\ncomment\nO 0 0 0\nH 0 0 1", water2);
    read_bad(buf, "11: truncated frame 2: the count line says 3 atoms, the "
             "file ends after 2");
    snprintf(buf, sizeof buf, "%s3\n", water2);
    read_bad(buf, "11: truncated frame 2: the count line says 3 atoms, the "
             "file ends after 0");
}
END_TEST

START_TEST(error_empty)
{
    read_bad("", " empty file (no frames)");
    read_bad("\n\n  \r\n", " empty file (no frames)");
}
END_TEST

START_TEST(error_blank_between_frames)
{
    read_bad("1\n\nO 0 0 0\n\n1\n\nO 0 0 0\n",
             "4: blank line where the count line of a frame was expected");
    read_bad("2\n\nO 0 0 0\n\nH 0 0 1\n",
             "4: blank line where an atom was expected");
}
END_TEST

START_TEST(error_atom_count_differs)
{
    read_bad("1\n\nO 0 0 0\n2\n\nO 0 0 0\nH 0 0 1\n",
             "4: frame 1 has 2 atoms, the first frame has 1 (every frame "
             "needs the same atoms)");
}
END_TEST

START_TEST(error_periodicity_differs)
{
    read_bad("1\nLattice=\"3 0 0 0 3 0 0 0 3\"\nO 0 0 0\n1\n\nO 0 0 0\n",
             "5: frame 1 is not periodic but the first frame is periodic");
    read_bad("1\n\nO 0 0 0\n1\nLattice=\"3 0 0 0 3 0 0 0 3\"\nO 0 0 0\n",
             "5: frame 1 is periodic but the first frame is not periodic");
}
END_TEST

START_TEST(error_lattice)
{
    read_bad("1\nLattice=\"3 0 0 0 3 0 0 0\"\nO 0 0 0\n",
             "2: Lattice has 8 numbers, expected 9 (three lattice vectors)");
    read_bad("1\nLattice=\"3 0 0 0 3 0 x 0 3\"\nO 0 0 0\n",
             "2: bad number 'x' in Lattice");
    read_bad("1\nLattice=\"3 0 0 6 0 0 0 0 3\"\nO 0 0 0\n",
             "2: Lattice vectors are linearly dependent (zero volume)");
    read_bad("1\npbc=\"T T T\"\nO 0 0 0\n",
             "2: pbc is true but there is no Lattice");
    read_bad("1\nLattice=\"3 0 0 0 3 0 0 0 3\" pbc=\"T T\"\nO 0 0 0\n",
             "2: pbc has 2 values, expected 3 (or 1 for all three)");
    read_bad("1\nLattice=\"3 0 0 0 3 0 0 0 3\" pbc=\"T Y T\"\nO 0 0 0\n",
             "2: bad pbc value (expected \"T T T\", one T or F per lattice "
             "vector)");
}
END_TEST

START_TEST(error_properties)
{
    read_bad("1\nProperties=species:S:1\nO 0 0 0\n",
             "2: bad Properties: no pos column");
    read_bad("1\nProperties=pos:R:3\n0 0 0\n",
             "2: bad Properties: no species or Z column");
    read_bad("1\nProperties=species:S:1:pos:R\nO 0 0 0\n",
             "2: bad Properties: expected name:type:columns triples with "
             "type R, I, S or L");
    read_bad("1\nProperties=species:S:1:pos:R:2\nO 0 0\n",
             "2: bad Properties: pos must be R:3");
    read_bad("1\nProperties=species:S:1:pos:R:3:forces:R:3\nO\n",
             "3: expected 3 coordinates, found 0");
    read_bad("1\nProperties=pos:R:3:species:S:1\n0 0 0\n",
             "3: expected the element in column 4, found 3 columns");
}
END_TEST

START_TEST(error_missing_file)
{
    mbe_err e = {{0}};
    mbe_geometry g;
    char path[128];
    snprintf(path, sizeof path, "%s/none.xyz", tmpdir);
    ck_assert_int_lt(mbe_xyz_read(path, &g, &e), 0);
    char want[256];
    snprintf(want, sizeof want, "cannot open %s: No such file or directory",
             path);
    ck_assert_str_eq(e.msg, want);
}
END_TEST

static Suite *xyz_suite(void)
{
    Suite *s = suite_create("xyz");
    TCase *tc = tcase_create("elements");
    tcase_add_test(tc, element_symbols);
    tcase_add_test(tc, element_masses_as_ase);
    suite_add_tcase(s, tc);

    tc = tcase_create("read");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, plain_two_frames);
    tcase_add_test(tc, crlf_and_trailing_blank_lines);
    tcase_add_test(tc, no_final_newline);
    tcase_add_test(tc, count_beyond_the_file);
    tcase_add_test(tc, symbol_case_and_numbers);
    tcase_add_test(tc, extxyz_lattice_properties);
    tcase_add_test(tc, extxyz_column_order);
    tcase_add_test(tc, extxyz_z_column);
    tcase_add_test(tc, extxyz_z_wins_over_species);
    tcase_add_test(tc, extxyz_per_frame_cells);
    tcase_add_test(tc, extxyz_partial_pbc);
    tcase_add_test(tc, extxyz_box_without_pbc);
    tcase_add_test(tc, extxyz_comment_syntax);
    tcase_add_test(tc, xtb_comment);
    tcase_add_test(tc, many_frames_grow);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, error_coordinates);
    tcase_add_test(tc, error_line_in_later_frame);
    tcase_add_test(tc, error_non_finite);
    tcase_add_test(tc, error_unknown_element);
    tcase_add_test(tc, error_count_line);
    tcase_add_test(tc, error_truncated);
    tcase_add_test(tc, error_empty);
    tcase_add_test(tc, error_blank_between_frames);
    tcase_add_test(tc, error_atom_count_differs);
    tcase_add_test(tc, error_periodicity_differs);
    tcase_add_test(tc, error_lattice);
    tcase_add_test(tc, error_properties);
    tcase_add_test(tc, error_missing_file);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(xyz_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
