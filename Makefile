# mbe-shard - build, test, install.
#
#   make                  library and programs (installs missing Debian
#                         packages first when run as root)
#   make check            every test: Check suites, end-to-end, h5py interop
#   make check-sanitize   the same tests built with ASan + UBSan
#   make install PREFIX=/usr/local DESTDIR=
#   make clean

ifeq ($(origin CC),default)
CC      := gcc
endif
BUILD   ?= build
PREFIX  ?= /usr/local
PYTHON  ?= /usr/bin/python3
PKGS    := hdf5 zlib libisal check xtb jansson

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs hdf5 zlib libisal xtb jansson 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer \
           -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ALL_CFLAGS = -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L \
             -Wall -Wextra -Werror -Ilib $(PKG_CFLAGS) $(CFLAGS)

# What is built, from what: every source is listed, one a line, so that a
# file left out is an error (below) rather than silently missing from the
# archive.  A program may have helper files of its own beside cmd/common.c.
LIB_SRCS = \
	lib/calc.c \
	lib/calc_ase.c \
	lib/calc_exec.c \
	lib/calc_ipi.c \
	lib/calc_lj.c \
	lib/calc_peer.c \
	lib/calc_xtb.c \
	lib/child.c \
	lib/compute.c \
	lib/crc.c \
	lib/elements.c \
	lib/frames.c \
	lib/geometry.c \
	lib/ground_truth.c \
	lib/h5util.c \
	lib/ipi.c \
	lib/isolate.c \
	lib/journal.c \
	lib/lock.c \
	lib/master.c \
	lib/master_probe.c \
	lib/master_write.c \
	lib/merge.c \
	lib/merge_check.c \
	lib/merge_log.c \
	lib/merge_plan.c \
	lib/merge_write.c \
	lib/missing.c \
	lib/names.c \
	lib/paths.c \
	lib/pool.c \
	lib/shard_common.c \
	lib/shard_read.c \
	lib/shard_write.c \
	lib/status.c \
	lib/util.c \
	lib/xyz.c

PROGS = \
	mbe-compute \
	mbe-import \
	mbe-merge \
	mbe-status

mbe-compute_SRCS = \
	cmd/mbe-compute.c \
	cmd/common.c
mbe-import_SRCS = \
	cmd/mbe-import.c \
	cmd/common.c
mbe-merge_SRCS = \
	cmd/mbe-merge.c \
	cmd/common.c
mbe-status_SRCS = \
	cmd/mbe-status.c \
	cmd/status_json.c \
	cmd/status_print.c \
	cmd/common.c

# Each Check suite is one tests/unit/test_*.c (and the helpers): found, not
# listed, so that a new suite cannot be left out of make check.
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TEST_HELPER_SRC := tests/unit/helpers.c

# A source under lib/ or cmd/ that no list names stops the build.
UNLISTED := $(filter-out $(LIB_SRCS) $(foreach p,$(PROGS),$($(p)_SRCS)),\
                         $(wildcard lib/*.c cmd/*.c))
ifneq ($(UNLISTED),)
ifneq ($(MAKECMDGOALS),clean)
$(error $(UNLISTED): in no list of the Makefile (LIB_SRCS, or a program's _SRCS))
endif
endif

LIB_OBJ  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
LIBMBE   := $(BUILD)/libmbe.a
PROG_BINS := $(PROGS:%=$(BUILD)/bin/%)
TESTS    := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_HELPER_OBJ := $(TEST_HELPER_SRC:%.c=$(BUILD)/%.o)
MANS     := $(sort $(wildcard man/*.[1-9]))
# Programs mbe-compute runs, beside its bin/ as built and as installed.
LIBEXEC  := $(BUILD)/libexec/mbe-shard/mbe-ase-engine

.PHONY: all deps build check check-run check-sanitize install clean \
        lint-man demo check-slurm check-slurm-run check-reliability \
        check-reliability-run bench fuzz check-fuzz check-valgrind \
        check-hdf5-1.14 check-gpaw

all: deps
	@$(MAKE) --no-print-directory build

deps:
	@scripts/ensure-deps

build: $(LIBMBE) $(PROG_BINS) $(TESTS) $(LIBEXEC)

$(BUILD)/libexec/mbe-shard/%: libexec/%.py
	@mkdir -p $(dir $@)
	install -m 755 $< $@

$(BUILD)/%.o: %.c $(wildcard lib/*.h cmd/*.h tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIBMBE): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# $(BUILD)/bin/P from the objects of P_SRCS, for each P of PROGS.
define PROG_RULE
$(BUILD)/bin/$(1): $$($(1)_SRCS:%.c=$$(BUILD)/%.o) $$(LIBMBE)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(PKG_LIBS) -lm
endef
$(foreach p,$(PROGS),$(eval $(call PROG_RULE,$(p))))

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(TEST_HELPER_OBJ) $(LIBMBE)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(PKG_LIBS) -lm

# The test command of the README.  Dependencies are installed first, then a
# fresh make reads the pkg-config flags they provide.
check: deps
	@$(MAKE) --no-print-directory check-run

check-run: build
	@BUILD=$(BUILD) PYTHON=$(PYTHON) MBE_SAN=$(SAN) tests/run

check-sanitize: deps
	@$(MAKE) --no-print-directory BUILD=build/san SAN=1 OPT=-O1 check-run

# Reliability: kills, injected faults, bad inputs, concurrency; prints the
# figures (tests/reliability/README.md).  Not on the SAN=1 build: the ASan
# runtime must come first and refuses an LD_PRELOAD shim.
check-reliability: deps
	@$(MAKE) --no-print-directory check-reliability-run

check-reliability-run: build
	@BUILD=$(BUILD) PYTHON=$(PYTHON) CC=$(CC) tests/reliability/run

# libFuzzer targets of fuzz/ (clang), FUZZ_SECONDS each (fuzz/README);
# check-fuzz is the short pass CI runs.
FUZZ_SECONDS ?= 300
fuzz: deps
	@scripts/ensure-deps fuzz
	@fuzz/run $(FUZZ_SECONDS)

check-fuzz: deps
	@scripts/ensure-deps fuzz
	@fuzz/run 30

# Every test under valgrind memcheck, built in build/valgrind (about 25
# minutes on 2 cores; tests/valgrind/run).
check-valgrind: deps
	@scripts/ensure-deps valgrind
	@$(MAKE) --no-print-directory BUILD=build/valgrind build
	@BUILD=build/valgrind PYTHON=$(PYTHON) tests/valgrind/run

# Benchmarks, never part of check: bench/RESULTS.md and bench/merge.png
# (about 40 minutes and 3 GB free under /work; see bench/RESULTS.md).
bench: deps
	@scripts/ensure-deps bench
	@$(MAKE) --no-print-directory build
	@BUILD=$(BUILD) PYTHON=$(PYTHON) $(PYTHON) bench/run

# SLURM end to end (root): a private single-node Slurm runs the scripts of
# examples/slurm on the example (tests/slurm/run-slurm.sh); not in make check.
check-slurm: deps
	@scripts/ensure-deps slurm
	@$(MAKE) --no-print-directory check-slurm-run

check-slurm-run: build
	@MBE_BIN=$(BUILD)/bin PYTHON=$(PYTHON) tests/slurm/run-slurm.sh

# HDF5 1.14 (root): every test of check-run built against Debian 13's
# HDF5 in a debootstrapped chroot, then files exchanged between that build
# and this one (tests/hdf5-1.14/run; the chroot is cached).
check-hdf5-1.14: deps
	@scripts/ensure-deps chroot
	@$(MAKE) --no-print-directory build
	@BUILD=$(BUILD) PYTHON=$(PYTHON) tests/hdf5-1.14/run

# GPAW through -c ase: at full size (eight frames, dzp, a fine grid);
# make check runs the short variant of the same test.
check-gpaw: all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) MBE_GPAW_FULL=1 tests/run test_gpaw

# The whole flow on the example, from a fresh clone.
demo: all
	@BUILD=$(BUILD) scripts/demo

lint-man:
	mandoc -Tlint -Wwarning $(MANS)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(PROG_BINS) $(DESTDIR)$(PREFIX)/bin
	install -d $(DESTDIR)$(PREFIX)/libexec/mbe-shard
	install -m 755 $(LIBEXEC) $(DESTDIR)$(PREFIX)/libexec/mbe-shard
	@for m in $(MANS); do \
	  s=$${m##*.}; install -d $(DESTDIR)$(PREFIX)/share/man/man$$s; \
	  echo install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man$$s; \
	  install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man$$s || exit 1; \
	done

clean:
	rm -rf build
