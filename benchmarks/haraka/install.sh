#!/bin/sh
# Installs Haraka 3 from the npm registry into a directory of its own, for
# benchmarks/bench_smtp.py (the "haraka" peer). Usage:
#
#     benchmarks/haraka/install.sh [PREFIX]      # default PREFIX: var/haraka
#
# The binary is then PREFIX/node_modules/.bin/haraka. Nothing is installed
# globally. Running it again when Haraka 3 is already there does nothing.
set -eu

prefix=${1:-var/haraka}
installed="$prefix/node_modules/Haraka/package.json"

if ! command -v npm >/dev/null 2>&1; then
    echo "install.sh: npm is not installed; install Node.js 20+ and npm to benchmark against Haraka" >&2
    exit 1
fi
if [ -f "$installed" ] && grep -q '"version": "3\.' "$installed"; then
    echo "Haraka $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$installed") already in $prefix"
    exit 0
fi
mkdir -p "$prefix"
# --no-audit/--no-fund: no extra registry round trips; the warnings about
# optional plugins' engines (node 22) do not concern the core used here.
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error Haraka@3
echo "Haraka $(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$installed") installed in $prefix"
