/*
 * h5compat.h - every difference between the HDF5 versions lib/ is built
 * against, in one place.  Not installed.
 *
 * Our users have HDF5 1.10 (Debian 12) and 1.14 (Debian 13, the h5py
 * wheels); the same source builds against both, -Werror clean, and
 * `make check` passes with both (`make check-hdf5-1.14`).  Against 1.14
 * it also builds with H5_NO_DEPRECATED_SYMBOLS: nothing deprecated is
 * used.  Versions between are not tested: 1.12 would take the branches
 * its API belongs to; the development releases 1.13.x are not supported
 * (their driver class changed from one to the next).
 */
#ifndef MBE_H5COMPAT_H
#define MBE_H5COMPAT_H

#include <hdf5.h>

#if H5_VERSION_GE(1, 12, 0)

/* 1.12 replaced H5Fis_hdf5 and H5Dvlen_reclaim, and gave object info a
 * token instead of an address (H5O_info2_t, H5Ovisit3). */
#define mbe_h5_is_hdf5(path) H5Fis_accessible((path), H5P_DEFAULT)
#define mbe_h5_reclaim(type, space, buf)                                    \
    H5Treclaim((type), (space), H5P_DEFAULT, (buf))
typedef H5O_info2_t mbe_h5_oinfo;
#define mbe_h5_visit(obj, cb, ud)                                           \
    H5Ovisit3((obj), H5_INDEX_NAME, H5_ITER_INC, (cb), (ud), H5O_INFO_BASIC)

#else

#define mbe_h5_is_hdf5(path) H5Fis_hdf5(path)
#define mbe_h5_reclaim(type, space, buf)                                    \
    H5Dvlen_reclaim((type), (space), H5P_DEFAULT, (buf))
typedef H5O_info_t mbe_h5_oinfo;
#define mbe_h5_visit(obj, cb, ud)                                           \
    H5Ovisit2((obj), H5_INDEX_NAME, H5_ITER_INC, (cb), (ud), H5O_INFO_BASIC)

#endif

/* The file driver class (H5FD_class_t, journal.c).  1.14 begins it with
 * the version of the struct, which H5FDregister checks ("wrong file
 * driver version #"), and a driver value; a class without them cannot be
 * registered.  MBE_H5FD_CLASS_ID(value) goes first in the designated
 * initializer of a class; older versions have neither field.
 *
 * 1.14 also added read_vector, write_vector, read_selection,
 * write_selection, del and ctl.  Left NULL, HDF5 splits vector and
 * selection I/O into calls of the class's read and write (so a driver
 * that must see every write does), H5Fdelete through the driver fails,
 * and ctl answers only operations not flagged H5FD_CTL_FAIL_IF_UNKNOWN
 * (those of the MPI drivers are). */
#if H5_VERSION_GE(1, 14, 0)
#define MBE_H5FD_CLASS_ID(v) .version = H5FD_CLASS_VERSION, .value = (v),
#else
#define MBE_H5FD_CLASS_ID(v)
#endif

/* libhdf5 1.14.5 checks the bounds of a global heap collection as it
 * decodes it and fails the read ("ran off end of input buffer while
 * decoding"); 1.10.8 reads past its end and crashes on
 * tests/data/shard-v1-damaged-global-heap.h5 (test_shard).  The releases
 * in between were not tried: the oldest seen to check is named. */
#define MBE_H5_CHECKS_GLOBAL_HEAP H5_VERSION_GE(1, 14, 5)

#endif
