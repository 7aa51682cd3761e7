#!/usr/bin/env python3
"""Reference traces for the BFCL environments, made by running upstream's own classes.

The Rust environments in crates/bfcl are checked against what BFCL's Python classes do:
for every call, the exact result string BFCL's harness makes of the return value (or of
the exception), and after every turn the public state of every instance. This script
runs the reference classes and writes those traces as fixtures; the Rust tests replay
the same calls and compare. Nothing here is needed to build or test the project.

Two kinds of traces:

* ground truth: for each multi-turn file in ../shared/bfcl/ (or --bfcl), every entry's
  ground-truth calls, turn by turn, on one set of instances per entry, as BFCL's checker
  runs them. Output: tests/fixtures/bfcl/traces/<file stem>.jsonl.
* probes: hand-written call sequences that exercise behaviour and error paths the ground
  truth never reaches, one JSON object per line in tests/fixtures/bfcl/probes/*.jsonl:
      {"name": "cd into a file", "involved_classes": ["GorillaFileSystem"],
       "initial_config": {...}, "long_context": false, "calls": ["cd(folder='a.txt')", ...]}
  Output: the same file with ".expected" before ".jsonl", one line per probe with
  "results" (one string per call) and "state" (after the last call).

Set-up (no network beyond the package index):
    pip download bfcl-eval==2026.3.23 --no-deps -d /tmp/bfcl && \
      unzip -q -o /tmp/bfcl/bfcl_eval-*.whl -d /tmp/bfcl/pkg && pip install mpmath
    TZ=UTC python3 scripts/make_bfcl_traces.py --reference /tmp/bfcl/pkg

TZ=UTC matters: TradingBot formats timestamps in local time, and the Rust side uses UTC.
"""

import argparse
import copy
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASS_MODULES = {
    "GorillaFileSystem": "gorilla_file_system",
    "MathAPI": "math_api",
    "MessageAPI": "message_api",
    "TwitterAPI": "posting_api",
    "TicketAPI": "ticket_api",
    "TradingBot": "trading_bot",
    "TravelAPI": "travel_booking",
    "VehicleControlAPI": "vehicle_control",
}
STATELESS = {"MathAPI"}
BLOCKED = {"kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run"}
PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"


def tagged(v, path="state"):
    """The tagged JSON the Rust side reads with Value::from_tagged_json."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return {"$float": "nan"}
        if math.isinf(v):
            return {"$float": "inf" if v > 0 else "-inf"}
        return v
    if isinstance(v, list):
        return [tagged(x, path) for x in v]
    if isinstance(v, tuple):
        return {"$tuple": [tagged(x, path) for x in v]}
    if v is Ellipsis:
        return {"$ellipsis": True}
    if isinstance(v, (set, frozenset)):
        return {"$set": sorted((tagged(x, path) for x in v), key=repr)}
    if isinstance(v, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: tagged(x, f"{path}.{k}") for k, x in v.items()}
        return {"$dict": [[tagged(k, path), tagged(x, path)] for k, x in v.items()]}
    name = type(v).__name__
    if name == "File":
        return {"$object": "File", "fields": {"name": v.name, "content": v.content}}
    if name == "Directory":
        return {"$object": "Directory", "fields": {"name": v.name, "contents": tagged(v.contents, path)}}
    raise TypeError(f"{path}: cannot encode a {name}")


def public_state(instance):
    return {k: tagged(v, k) for k, v in vars(instance).items() if not k.startswith("_")}


def result_string(value):
    """What BFCL's execute_multi_turn_func_call makes of a return value."""
    if type(value) == str:
        return value
    if type(value) == dict:
        try:
            return json.dumps(value)
        except Exception:
            return str(value)
    return str(value)


class Session:
    """One set of instances, as BFCL keeps per entry (created once, reused across turns)."""

    def __init__(self, involved, config, long_context):
        import importlib

        self.instances = {}
        self.methods = {}
        for cls in involved:
            module = importlib.import_module(f"{PACKAGE}.{CLASS_MODULES[cls]}")
            inst = getattr(module, cls)()
            if cls not in STATELESS:
                inst._load_scenario(copy.deepcopy(config.get(cls, {})), long_context=long_context)
            self.instances[cls] = inst
            for name in dir(inst):
                if not name.startswith("_") and callable(getattr(inst, name)):
                    self.methods[name] = getattr(inst, name)

    def run(self, call):
        try:
            head = call.split("(")[0]
            if "." in head:
                head = head.split(".")[1]
            if head in BLOCKED:
                raise Exception(f"Function call {head} is not allowed.")
            # The same evaluation BFCL does (method names bound to this session's
            # instances), with no builtins reachable.
            value = eval(call, {"__builtins__": {}}, dict(self.methods))
            return result_string(value)
        except Exception as e:
            return f"Error during execution: {str(e)}"

    def state(self):
        return {cls: public_state(inst) for cls, inst in self.instances.items() if cls not in STATELESS}


def ground_truth_traces(bfcl, out_dir, only):
    out_dir.mkdir(parents=True, exist_ok=True)
    for qfile in sorted((bfcl / "questions").glob("*.json")):
        stem = qfile.stem
        if only and not any(o in stem for o in only):
            continue
        afile = bfcl / "possible_answer" / qfile.name
        questions = [json.loads(l) for l in qfile.read_text().splitlines() if l.strip()]
        answers = [json.loads(l) for l in afile.read_text().splitlines() if l.strip()]
        long_context = "long_context" in stem
        lines = []
        for q, a in zip(questions, answers):
            assert q["id"] == a["id"]
            session = Session(q["involved_classes"], q["initial_config"], long_context)
            turns = []
            for calls in a["ground_truth"]:
                results = [session.run(c) for c in calls]
                turns.append({"results": results, "state": session.state()})
            lines.append(json.dumps({"id": q["id"], "turns": turns}, ensure_ascii=False))
        (out_dir / f"{stem}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{stem}: {len(lines)} entries", file=sys.stderr)


def probe_traces(probe_dir):
    for pfile in sorted(probe_dir.glob("*.jsonl")):
        if pfile.name.endswith(".expected.jsonl"):
            continue
        out = []
        for n, line in enumerate(pfile.read_text().splitlines(), 1):
            if not line.strip():
                continue
            p = json.loads(line)
            session = Session(p["involved_classes"], p.get("initial_config", {}), p.get("long_context", False))
            results = [session.run(c) for c in p["calls"]]
            out.append(json.dumps({"name": p["name"], "results": results, "state": session.state()}, ensure_ascii=False))
        target = pfile.with_name(pfile.name.replace(".jsonl", ".expected.jsonl"))
        target.write_text("\n".join(out) + "\n")
        print(f"{pfile.name}: {len(out)} probes", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="directory holding the unpacked bfcl_eval package")
    ap.add_argument("--bfcl", default=str(ROOT.parent / "shared" / "bfcl"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "bfcl"))
    ap.add_argument("--only", nargs="*", help="only question files whose name contains one of these")
    ap.add_argument("--probes-only", action="store_true")
    ap.add_argument("--no-probes", action="store_true", help="leave the probe expectations alone")
    args = ap.parse_args()
    if os.environ.get("TZ") != "UTC":
        sys.exit("run with TZ=UTC (TradingBot formats timestamps in local time)")
    time.tzset()
    sys.path.insert(0, args.reference)
    out = Path(args.out)
    if not args.probes_only:
        ground_truth_traces(Path(args.bfcl), out / "traces", args.only)
    if (out / "probes").is_dir() and not args.no_probes:
        probe_traces(out / "probes")
        (out / "GENERATED_ON").write_text(datetime.date.today().isoformat() + "\n")


if __name__ == "__main__":
    main()
