# Convenience targets; each calls a script or the venv's tools.
# QSF_VENV selects the virtualenv (default /opt/qsf-venv).
QSF_VENV ?= /opt/qsf-venv
PYTHON := $(QSF_VENV)/bin/python
PYTEST := $(QSF_VENV)/bin/pytest
SIZE ?= medium
FUZZ_SECONDS ?= 600

.PHONY: help install test demo demo-9p lint fuzz test-long bench bench-server bench-fuse bench-guest \
	bench-codec test-guest screenshots deb rpm test-packages fuzz-fuse

help:
	@echo "make install     apt packages, virtualenv, editable install (scripts/install.sh)"
	@echo "make test        the whole suite: pytest (without slow), ruff, mypy (scripts/test.sh)"
	@echo "make demo        share a folder between two simulated qubes (qvm-mount-folder, FUSE)"
	@echo "make demo-9p     serve a sample folder and read it through diod's 9P clients"
	@echo "make lint        ruff and mypy only"
	@echo "make fuzz        the long runs: tests marked slow (hypothesis profile 'long'), then"
	@echo "                 the coverage-guided 9P decoder fuzzer for FUZZ_SECONDS (600)"
	@echo "make fuzz-fuse   the hostile-server fuzzer of qsf-fuse: QSF_FUZZ_SESSIONS sessions"
	@echo "                 (default 5000 against qsf-server, 1000 against diod)"
	@echo "make bench       server benchmark, qsf-server vs diod (SIZE=tiny|small|medium|large)"
	@echo "make bench-fuse  FUSE mount benchmark, qsf-fuse vs sshfs vs local (SIZE=tiny|small|medium)"
	@echo "make bench-guest kernel v9fs client in a QEMU guest, qsf-server vs diod (SIZE=...)"
	@echo "make bench-codec qsf_p9 codec micro-benchmark"
	@echo "make test-guest  only the QEMU guest tests (kernel v9fs client)"
	@echo "make screenshots the README's pictures, made by the GUI tests under Xvfb (docs/images)"
	@echo "make deb         Debian packages qsf and qsf-dom0 in var/pkg/deb (lintian-checked)"
	@echo "make rpm         RPMs qsf and qsf-dom0 in var/pkg/rpm/RPMS/noarch"
	@echo "make test-packages  build both, install the .debs in clean Debian 12 and 13 roots"
	@echo "                 and use them there, install the RPMs into an empty root"

install:
	bash scripts/install.sh

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

demo-9p:
	bash scripts/demo_9p.sh

lint: install
	$(QSF_VENV)/bin/ruff check .
	$(QSF_VENV)/bin/mypy

fuzz test-long: install
	HYPOTHESIS_PROFILE=long $(PYTEST) -m slow
	mkdir -p var/fuzz-corpus/p9_decoder
	$(PYTHON) fuzz/p9_decoder.py -max_total_time=$(FUZZ_SECONDS) var/fuzz-corpus/p9_decoder

fuzz-fuse: install
	$(PYTEST) -m slow tests/fuse/test_fuse_fuzz.py -k test_fuzz_long

bench bench-server: install
	$(PYTHON) -m bench.server --size $(SIZE) --markdown

bench-fuse: install
	$(PYTHON) -m bench.fuse_bench --size $(SIZE) --markdown

bench-guest: install
	$(PYTHON) -m bench.guest_bench --size $(SIZE) --markdown

bench-codec: install
	$(PYTHON) bench/codec_micro.py

test-guest: install
	$(PYTEST) -m guest

# Every GUI test that makes a README picture copies it to QSF_SCREENSHOTS_DIR.
screenshots: install
	mkdir -p docs/images
	QSF_SCREENSHOTS_DIR=$(CURDIR)/docs/images $(PYTEST) tests/gui -q

deb: install
	QSF_VENV=$(QSF_VENV) bash scripts/build_packages.sh deb

rpm: install
	QSF_VENV=$(QSF_VENV) bash scripts/build_packages.sh rpm

test-packages: install
	$(PYTEST) -m packages tests/packages
