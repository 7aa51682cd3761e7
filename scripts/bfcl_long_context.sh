#!/usr/bin/env bash
# Makes the BFCL long-context test data that is not kept in the repository: the filler
# (tests/fixtures/bfcl/long_context.json) and the reference trace of the long_context
# file (tests/fixtures/bfcl/traces/BFCL_v4_multi_turn_long_context.jsonl), both from
# upstream's own package (bfcl-eval on PyPI, the release matching ../shared/bfcl).
# Needs python3 with pip and the package index; CI runs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "bfcl-eval==2026.3.23"
python3 -c 'import mpmath' 2>/dev/null || python3 -m pip install --quiet mpmath
python3 - "$work" <<'PY'
import glob, sys, zipfile
zipfile.ZipFile(glob.glob(sys.argv[1] + "/bfcl_eval-*.whl")[0]).extractall(sys.argv[1] + "/pkg")
PY
python3 scripts/make_bfcl_long_context.py --reference "$work/pkg" --out tests/fixtures/bfcl/long_context.json
TZ=UTC python3 scripts/make_bfcl_traces.py --reference "$work/pkg" --only long_context --no-probes
