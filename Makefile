# The two commands of the README:  `make run`  and  `make test`.
# Both set everything up on a fresh Debian 12 machine (run as root: installs Debian packages).
PY      ?= /usr/bin/python3
VENV    ?= .venv
DEB_PKGS = python3-venv python3-dev gcc libc6-dev libcap-dev libseccomp2 procps iproute2 \
           bubblewrap crun runc busybox-static nftables uidmap passt slirp4netns podman \
           docker-registry apache2-utils openssl containerd
DEMO    ?= /bin/sh -c 'id; hostname; ps; ls /'

.PHONY: setup run test test-unit test-install bench lint clean
.DEFAULT_GOAL := run

$(VENV)/.deps: pyproject.toml setup.py
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	fi
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,net,build]'
	$(VENV)/bin/python -m sandbox.entry $(VENV)/bin >/dev/null
	touch $@

# PID 1's last stage, a small static program (sandbox/pid1.c; sandbox/init.py, init_image). Without
# it PID 1 stays a Python process (~1.5 MiB more per sandbox; nothing of the isolation changes).
# `pip install -e .` (above) builds it too (setup.py's build hook); this rebuilds it after an edit
# of pid1.c. A wheel (`pip wheel .`, `python -m build`) always carries it, compiled at build time.
INIT = sandbox/pysandbox-init
$(INIT): sandbox/pid1.c | $(VENV)/.deps
	cc -O2 -Wall -Wextra -static -s -o $@ $< || { rm -f $@; echo "pysandbox: $@ not built"; }

# pysandbox-runtime's C front end (sandbox/runtime/front.c: start, state, kill, delete without Python;
# everything else goes to the Python CLI). sandbox/entry.py copies it into the venv as pysandbox-runtime.
RTFRONT = sandbox/runtime/pysandbox-runtime-front
$(RTFRONT): sandbox/runtime/front.c sandbox/front_fallback.h | $(VENV)/.deps
	cc -O2 -Wall -Wextra -static -s -o $@ $< || { rm -f $@; echo "pysandbox: $@ not built"; }

# `pysandbox`'s C front end (sandbox/cli/front.c: `run` sent to the launch server without Python;
# everything else goes to pysandbox-py). sandbox/entry.py copies it into the venv as pysandbox.
CLIFRONT = sandbox/cli/pysandbox-front
$(CLIFRONT): sandbox/cli/front.c sandbox/front_fallback.h | $(VENV)/.deps
	cc -O2 -Wall -Wextra -Werror -static -s -o $@ $< || { rm -f $@; echo "pysandbox: $@ not built"; }

# the lean, isolated `pysandbox-py` entry script (sandbox/entry.py: python -IS, standard library first)
$(VENV)/bin/pysandbox: sandbox/entry.py $(RTFRONT) $(CLIFRONT) | $(VENV)/.deps
	$(VENV)/bin/python -m sandbox.entry $(VENV)/bin >/dev/null

setup: $(VENV)/.deps $(INIT) $(RTFRONT) $(CLIFRONT) $(VENV)/bin/pysandbox

run: setup
	$(VENV)/bin/pysandbox run --profile strict -- $(DEMO)

# both tiers: tests/unit/ (no root, no kernel) and the real sandboxes (tests/system/, tests/security/,
# tests/faults/); each system test gets a state directory of its own (tests/conftest.py). Two
# workers at once (pytest-xdist; modules sharing host-wide objects on one worker), then the tests
# marked `exclusive` alone (they change what others read, or measure rates); both always run.
test: setup
	$(VENV)/bin/pysandbox lint profiles/
	@rc=0; \
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup -m "not exclusive" tests || rc=$$?; \
	$(VENV)/bin/python -m pytest -q -m exclusive tests || rc=$$?; \
	exit $$rc

# the unit tier alone: pure policies/audit/lint/parsing tests, no root needed (any user, any directory)
test-unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

# the install checks alone (also part of `make test`): wheel in a fresh venv + editable, from /tmp
test-install: setup
	$(VENV)/bin/python -m pytest -q tests/system/test_install.py tests/system/test_doctor.py

lint: setup
	$(VENV)/bin/pysandbox lint profiles/

bench: setup      # every bench/<topic>.py with rows(): one table + bench/results/<UTC>.json (BENCH_ARGS="--quick --only launch")
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info build
