# cri-resource-manager: developer and CI entry points.
# `make demo` and `make test` work on a fresh Debian 12 machine as root: they
# install the Debian packages and the Python virtualenv they need.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv generate check-generated test unit e2e packaging-test demo bench lint \
        install deb rpm clean dist sdist wheel

all: test

# --- environment ---------------------------------------------------------

$(VENV)/.stamp: requirements/runtime.lock requirements/dev.lock setup.cfg
	scripts/ensure-deps.sh venv
	$(PYTHON) -m venv $(VENV) || (rm -rf $(VENV); /usr/bin/python3 -m venv $(VENV))
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.stamp

deps:
	scripts/ensure-deps.sh venv e2e

# --- generated CRI modules -----------------------------------------------

generate: venv
	$(PY) -m cri_resmgr.cri.generate
	$(PY) -m cri_resmgr.config --write-conf etc/cri-resmgr/cri-resmgr.conf --write-docs docs/configuration.md

check-generated: venv
	$(PY) -m cri_resmgr.cri.generate --check
	$(PY) -m cri_resmgr.config --check-conf etc/cri-resmgr/cri-resmgr.conf --check-docs docs/configuration.md

# --- tests ---------------------------------------------------------------

test: deps venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

e2e: deps venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/e2e

lint: venv
	$(VENV)/bin/ruff check cri_resmgr tests harness bench
	$(VENV)/bin/ruff format --check cri_resmgr tests harness bench

# --- demo and benchmarks -------------------------------------------------

demo: deps venv
	$(PY) -m harness.demo

bench: deps venv
	$(PY) -m bench

# --- packaging -----------------------------------------------------------
# docs/packaging.md explains these targets. Outputs go to dist/, work to build/.
# `make install DESTDIR=DIR` installs the files that are not Python (unit, tmpfiles.d,
# /etc/cri-resmgr, the environment file, logrotate, setup.sh/clean.sh/lib.sh, kubelet
# template, man page); the .deb (debian/rules) and the .rpm
# (rpm/cri-resource-manager.spec) both use it.

PKG          = cri-resource-manager
PKG_VERSION  = $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' cri_resmgr/version.py)
DESTDIR     ?=
UNITDIR     ?= /lib/systemd/system
ENVDIR      ?= /etc/default
TMPFILESDIR ?= /usr/lib/tmpfiles.d
PKGDATADIR  ?= /usr/share/$(PKG)
MANDIR      ?= /usr/share/man
LOGROTATEDIR ?= /etc/logrotate.d
PRESETDIR   ?=
# The interpreter the packaged virtualenvs are made with and depend on (absolute and
# versioned: python3 may be a pyenv shim here).
PKG_PYTHON  ?= $(shell readlink -f /usr/bin/python3)
# Pinned wheels for both packagings, downloaded once (PyPI, binary wheels only).
WHEELHOUSE  ?= build/wheelhouse
SDIST        = dist/$(PKG)-$(PKG_VERSION).tar.gz
# Reproducible builds: every timestamp is the date of the newest debian/changelog entry.
PKG_EPOCH    = $(shell dpkg-parsechangelog -l debian/changelog -STimestamp)
# The host's pip configuration (extra indexes, find-links, constraints) stays out.
PKG_PIP_ENV  = env $(foreach v,$(filter PIP_%,$(.VARIABLES)),-u $(v)) PIP_CONFIG_FILE=/dev/null \
               PIP_DISABLE_PIP_VERSION_CHECK=1

install:
	install -D -m 0644 etc/systemd/$(PKG).service $(DESTDIR)$(UNITDIR)/$(PKG).service
	install -D -m 0644 etc/tmpfiles.d/$(PKG).conf $(DESTDIR)$(TMPFILESDIR)/$(PKG).conf
	install -D -m 0644 etc/cri-resmgr/cri-resmgr.conf $(DESTDIR)/etc/cri-resmgr/cri-resmgr.conf
	install -D -m 0644 etc/$(PKG).env $(DESTDIR)$(ENVDIR)/$(PKG)
	install -D -m 0644 etc/logrotate.d/$(PKG) $(DESTDIR)$(LOGROTATEDIR)/$(PKG)
	install -D -m 0755 setup.sh $(DESTDIR)$(PKGDATADIR)/setup.sh
	install -D -m 0755 clean.sh $(DESTDIR)$(PKGDATADIR)/clean.sh
	install -D -m 0644 lib.sh $(DESTDIR)$(PKGDATADIR)/lib.sh
	install -D -m 0644 debian/cri-resmgr.8 $(DESTDIR)$(MANDIR)/man8/cri-resmgr.8
	install -D -m 0644 etc/kubelet/90-cri-resmgr.conf \
	    $(DESTDIR)$(PKGDATADIR)/kubelet/90-cri-resmgr.conf
	$(if $(PRESETDIR),install -D -m 0644 etc/systemd/90-$(PKG).preset \
	    $(DESTDIR)$(PRESETDIR)/90-$(PKG).preset)

# Source tarball: the working tree's files that git tracks or would track, with
# normalized owners, modes and times (so the packages do not depend on the checkout).
sdist:
	scripts/ensure-deps.sh dist
	rm -rf build/sdist && mkdir -p build/sdist/$(PKG)-$(PKG_VERSION) dist
	git ls-files -co --exclude-standard | while IFS= read -r f; do \
	    if [ -e "$$f" ]; then echo "$$f"; fi; done | \
	    tar -cf - --no-recursion -T - | tar -xf - -C build/sdist/$(PKG)-$(PKG_VERSION)
	tar -C build/sdist --sort=name --mtime=@$(PKG_EPOCH) --owner=0 --group=0 \
	    --numeric-owner --mode=u+w,go-w,a+rX -cf - $(PKG)-$(PKG_VERSION) | gzip -9n > $(SDIST)

wheel: sdist
	rm -f dist/*.whl
	cd build/sdist/$(PKG)-$(PKG_VERSION) && SOURCE_DATE_EPOCH=$(PKG_EPOCH) $(PKG_PYTHON) -c \
	    'from setuptools import build_meta as b; b.build_wheel("$(CURDIR)/dist")' \
	    > $(CURDIR)/build/wheel.log 2>&1 || { cat $(CURDIR)/build/wheel.log; exit 1; }
	@ls -l dist/*.whl $(SDIST)

dist: sdist wheel

$(WHEELHOUSE)/.stamp: requirements/runtime.lock
	rm -rf build/pkg-pip $(WHEELHOUSE)
	$(PKG_PYTHON) -m venv build/pkg-pip
	$(PKG_PIP_ENV) build/pkg-pip/bin/pip download -q --only-binary=:all: \
	    -r requirements/runtime.lock -d $(WHEELHOUSE)
	touch $@

deb: sdist $(WHEELHOUSE)/.stamp
	scripts/ensure-deps.sh deb
	rm -rf build/deb && mkdir -p build/deb
	tar -xzf $(SDIST) -C build/deb
	cd build/deb/$(PKG)-$(PKG_VERSION) && $(PKG_PIP_ENV) \
	    WHEELHOUSE=$(abspath $(WHEELHOUSE)) PYVER=$(notdir $(PKG_PYTHON)) \
	    dpkg-buildpackage -us -uc -b > ../build.log 2>&1 || \
	    { tail -40 ../build.log; echo "make deb: failed, log: build/deb/build.log" >&2; exit 1; }
	rm -f dist/$(PKG)_*.deb
	mv build/deb/$(PKG)_*.deb dist/
	@ls -l dist/$(PKG)_*.deb

rpm: sdist $(WHEELHOUSE)/.stamp
	scripts/ensure-deps.sh rpm
	rm -rf build/rpm && mkdir -p build/rpm/SOURCES
	cp $(SDIST) build/rpm/SOURCES/
	$(PKG_PIP_ENV) SOURCE_DATE_EPOCH=$(PKG_EPOCH) rpmbuild --nodeps \
	    --define "_topdir $(abspath build/rpm)" \
	    --define "upstream_version $(PKG_VERSION)" \
	    --define "venv_python $(PKG_PYTHON)" \
	    --define "wheelhouse $(abspath $(WHEELHOUSE))" \
	    -tb build/rpm/SOURCES/$(notdir $(SDIST)) > build/rpm/build.log 2>&1 || \
	    { tail -40 build/rpm/build.log; echo "make rpm: failed, log: build/rpm/build.log" >&2; exit 1; }
	rm -f dist/$(PKG)-*.rpm
	mv build/rpm/RPMS/*/$(PKG)-*.rpm dist/
	@ls -l dist/$(PKG)-*.rpm

packaging-test: venv
	scripts/ensure-deps.sh deb rpm nspawn
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/packaging


clean:
	rm -rf build dist *.egg-info .pytest_cache
