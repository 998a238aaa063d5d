# mailgate: `make run` starts it on conf.d/, `make test` sets up everything and runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= conf.d

# The real peers the tests run against (Debian packages). Installed without their services.
APT_PACKAGES := postfix postfix-pcre swaks clamav-daemon clamav-milter spamd spamassassin \
	spamass-milter opendkim opendkim-tools opendmarc rspamd postgresql miltertest \
	libmilter-dev publicsuffix gcc openssl sasl2-bin libsasl2-modules libsasl2-modules-db systemd \
	prometheus haproxy chromium chromium-driver postsrsd redis-server slapd ldap-utils

.PHONY: run test venv peers lint typecheck unit bench-smoke bench fuzz docs man clean

run: $(VENV)/.installed-run
	$(BIN)/mailgate serve --config $(CONFIG)

# A strict editable install: site-packages points at build/__editable__.*, a tree of links to
# core/ and plugins/ laid out as `mailgate`, which mypy reads like any installed typed package
# (the default install maps core/ to `mailgate` with an import hook mypy cannot follow). A new
# module appears there only when pip runs again: the stamps depend on the package directories,
# whose times change when a file is added or removed.
EDITABLE := --config-settings editable_mode=strict
PACKAGE_DIRS := core plugins $(filter-out %/__pycache__/,$(wildcard core/*/ plugins/*/))

# `make run` needs only mailgate itself; the test extras (pymilter) need libmilter-dev first.
$(VENV)/.installed-run: pyproject.toml $(PACKAGE_DIRS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . $(EDITABLE)
	touch $@

venv: $(VENV)/.installed-test

$(VENV)/.installed-test: pyproject.toml $(PACKAGE_DIRS) | peers
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' $(EDITABLE)
	touch $@

# apt must not start the daemons it installs: policy-rc.d says no, tests start their own. A
# policy-rc.d that was already there (Docker's, the administrator's) is left as it is; the one
# written here is removed again whatever apt's exit status, and apt's failure is still the
# target's. APT_GET and POLICY_RC_D exist for tests/test_makefile.py, which runs this without apt.
APT_GET ?= apt-get
POLICY_RC_D ?= /usr/sbin/policy-rc.d

peers:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	echo "installing test peers:$$missing"; \
	if [ ! -e '$(POLICY_RC_D)' ] && [ ! -L '$(POLICY_RC_D)' ]; then \
		trap "rm -f '$(POLICY_RC_D)'" EXIT; \
		printf '#!/bin/sh\nexit 101\n' > '$(POLICY_RC_D)' && chmod 755 '$(POLICY_RC_D)' || exit; \
	fi; \
	$(APT_GET) update -q && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q \
		--no-install-recommends $$missing

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

bench-smoke: venv peers
	MAILGATE_BENCH=smoke $(BIN)/pytest -q tests/bench

bench: venv peers
	$(BIN)/python -m tests.bench

# Coverage-guided fuzzing of the SMTP command parser, the DATA reader with the dot-stuffer, the
# milter codec and the policy parser (tests/fuzz); FUZZ_SECONDS is the whole budget. The corpus
# grows in .fuzz/corpus between runs; a crash's input is left in .fuzz/crashes.
FUZZ_SECONDS ?= 600
fuzz: venv
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS)

# The documentation site (mkdocs.yml) in build/site; --strict: a broken link or anchor fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The man page, written from the command line's own parser.
man: venv
	mkdir -p build/man
	$(BIN)/python -m mailgate.manpage > build/man/mailgate.1

test: peers venv
	$(MAKE) lint typecheck docs
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
