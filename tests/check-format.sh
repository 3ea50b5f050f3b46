#!/bin/sh
# Every tracked C source must match .clang-format exactly.
set -eu
cd "$1"
files=$(git ls-files --cached --others --exclude-standard "*.c" "*.h" 2>/dev/null || find . -name "*.[ch]" -not -path "./build*")
[ -n "$files" ] || exit 0
# shellcheck disable=SC2086
clang-format --dry-run -Werror $files
