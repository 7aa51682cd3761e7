"""A stateful environment for multi-turn function calling, served over MCP's stdio transport
with Python's standard library alone: a template for your own (docs/TRAINING.md, "Multi-turn
environments of your own").

The model may call:
  get_balance(account)               an account's balance
  transfer(source, target, amount)   moves money between two accounts
The grader calls (hidden from the model; name them in [mcp]):
  load_scenario(accounts)            mcp.setup_tool: an entry's initial_config, {"accounts": {...}}
  get_state()                        mcp.state_tool: the whole state, as JSON with sorted keys

Each episode gets a server of its own, so the state below is one episode's. A server reads
one JSON-RPC message a line on stdin and writes one a line on stdout; anything else it
prints must go to stderr.
"""

import json
import sys

accounts = {}


def tool(name, description, properties, required):
    schema = {"type": "object", "properties": properties, "required": required}
    return {"name": name, "description": description, "inputSchema": schema}


TOOLS = [
    tool("get_balance", "The balance of an account.", {"account": {"type": "string"}}, ["account"]),
    tool(
        "transfer",
        "Moves an amount from one account to another.",
        {"source": {"type": "string"}, "target": {"type": "string"}, "amount": {"type": "number"}},
        ["source", "target", "amount"],
    ),
    tool("load_scenario", "Sets the accounts up.", {"accounts": {"type": "object"}}, []),
    tool("get_state", "The whole state.", {}, []),
]


def call(name, args):
    """The text of a tool's answer, or raises ValueError with what the model did wrong."""
    if name == "load_scenario":
        accounts.clear()
        accounts.update(args.get("accounts", {}))
        return "ready"
    if name == "get_state":
        return json.dumps({"accounts": accounts}, sort_keys=True)
    if name == "get_balance":
        account = args["account"]
        if account not in accounts:
            raise ValueError("no account %r" % account)
        return json.dumps({"balance": accounts[account]})
    if name == "transfer":
        source, target, amount = args["source"], args["target"], args["amount"]
        for account in (source, target):
            if account not in accounts:
                raise ValueError("no account %r" % account)
        if not 0 < amount <= accounts[source]:
            raise ValueError("cannot move %s from %s (balance %s)" % (amount, source, accounts[source]))
        accounts[source] -= amount
        accounts[target] += amount
        return json.dumps({"source_balance": accounts[source], "target_balance": accounts[target]})
    raise ValueError("no tool %r" % name)


def answer(req_id, result=None, error=None):
    message = {"jsonrpc": "2.0", "id": req_id}
    if error is None:
        message["result"] = result
    else:
        message["error"] = error
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    if not line.strip():
        continue
    message = json.loads(line)
    method, req_id = message.get("method"), message.get("id")
    if req_id is None:
        continue  # a notification (notifications/initialized) needs no answer
    if method == "initialize":
        answer(req_id, {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "bank", "version": "1"},
        })
    elif method == "tools/list":
        answer(req_id, {"tools": TOOLS})
    elif method == "tools/call":
        params = message.get("params", {})
        try:
            text, failed = call(params["name"], params.get("arguments") or {}), False
        except (ValueError, KeyError, TypeError) as e:
            text, failed = "error: %s" % e, True
        answer(req_id, {"content": [{"type": "text", "text": text}], "isError": failed})
    else:
        answer(req_id, error={"code": -32601, "message": "no method %s" % method})
