#!/bin/sh
# Fail every allocation of the scripted session in turn, not every STRIDE-th as the test
# suite does: minutes, not seconds. Needs a build configured with -Dalloc_fail=true
# (with -Dsanitize=true it also checks for leaks). Usage: tests/alloc-fail-all.sh BUILD_DIR
set -eu
build=$(cd "${1:?usage: $0 BUILD_DIR}" && pwd)
cd "$(dirname "$0")/.."
SUBPOOL_BUILD_DIR=$build SUBPOOL_ALLOC_FAIL_STRIDE=1 \
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1} \
    exec /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration/test_alloc_fail.py
