#!/usr/bin/env python3
"""Extracts BFCL's long-context filler into JSON for the Rust environments.

In the long_context category every environment appends large filler (extra files, long
file contents, watch-list entries, credit cards, ...) when it loads a scenario. The
filler is upstream data (Python literals in bfcl_eval's func_source_code/long_context.py,
Apache-2.0) and is not kept in this repository; this script reads those literals without
running the module and writes them as tagged JSON (see Value::from_tagged_json).

    pip download bfcl-eval==2026.3.23 --no-deps -d /tmp/bfcl && \\
      unzip -q -o /tmp/bfcl/bfcl_eval-*.whl -d /tmp/bfcl/pkg
    python3 scripts/make_bfcl_long_context.py --reference /tmp/bfcl/pkg \\
      --out tests/fixtures/bfcl/long_context.json
"""

import argparse
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_bfcl_traces import tagged  # noqa: E402

REL = "bfcl_eval/eval_checker/multi_turn_eval/func_source_code/long_context.py"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="directory holding the unpacked bfcl_eval package")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tree = ast.parse((Path(args.reference) / REL).read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            constants[name] = tagged(ast.literal_eval(node.value), name)
    Path(args.out).write_text(json.dumps(constants, ensure_ascii=False))
    print(f"{len(constants)} constants: {', '.join(constants)}", file=sys.stderr)


if __name__ == "__main__":
    main()
