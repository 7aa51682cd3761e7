#!/usr/bin/env python3
"""Generate the Qwen3 reference fixtures used by artist's Rust tests.

What it makes
-------------
``tests/fixtures/qwen3/<name>/`` for two tiny, randomly initialised Qwen3 models
(``Qwen3ForCausalLM`` from Hugging Face transformers), each a real Hugging Face model
directory with the same files and the same ``reference.json`` layout as the Qwen2
fixtures of ``scripts/make_qwen2_fixtures.py`` (whose tiny tokenizer, test inputs, seed
search and checks this script reuses):

* ``tiny-qwen3``            hidden 64, inter 160, 4 heads of 32 (wider than hidden / heads,
                            as Qwen3's 128 is) over 2 KV heads, vocab 311, untied,
                            rope_theta 1e6, 2 layers, no attention bias (every released
                            Qwen3); float32, the keys transformers 5 writes.
* ``tiny-qwen3-bias-tied``  hidden 48, inter 100, 4 heads of 16 over 1 KV head, vocab 301,
                            tied, rope_theta 1e4, 2 layers, ``attention_bias: true`` (q, k,
                            v and o biased); stored as bf16 (reference in f32 over the
                            widened weights), the classic keys Qwen3's checkpoints ship
                            (``rope_theta``, ``torch_dtype``, ``sliding_window: null``).

``tests/fixtures/qwen3_chat.json``: Qwen3's chat template (the string a public copy gives
for Qwen/Qwen3-4B-Base's tokenizer_config.json; its sha256 is asserted below) rendered by
transformers for conversations that reach each of its branches: reasoning split out of an
assistant's content, history turns' reasoning dropped, ``reasoning_content``, tool calls
with arguments as objects and as strings, consecutive tool responses, tools, and the
generation prompt with and without ``enable_thinking=False``;
and ``tests/fixtures/training/grads/tiny-qwen3/``: a batch (``batch.jsonl``), its masked
mean NLL (``reference.json``) and PyTorch's gradient of it for every parameter
(``grads.safetensors``, q_norm and k_norm included), as ``scripts/make_training_fixtures.py``
makes for the Qwen2 fixtures.

What differs from Qwen2 is the attention block: q/k/v have no bias (unless
``attention_bias``, which biases o too), and every head of q and of k goes through an
RMSNorm of its own over ``head_dim`` (``q_norm``, ``k_norm``) before RoPE. Every weight is
re-drawn from a seeded generator (matrices N(0, 0.2), biases N(0, 0.2), norm weights,
q_norm and k_norm included, U(0.5, 1.5)), so a norm applied to the wrong axis, or
skipped, changes the logits. The reference is checked against the plain re-implementation
of the forward pass that reads only config.json and the safetensors.

How to run
----------
From the repository root, in the environment of make_qwen2_fixtures.py (torch,
transformers with Qwen3, safetensors, tokenizers, jinja2)::

    python3 scripts/make_qwen3_fixtures.py

It takes a few seconds on the CPU and rewrites the same bytes for a given set of library
versions. Versions it was run with (the committed fixtures): Python 3.11.7, torch 2.15.0
(PyPI wheel 2.15.0+cu132, run on CPU), transformers 5.25.0, tokenizers 0.23.3,
safetensors 0.8.0.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_qwen2_fixtures as q2  # noqa: E402  (sets HF offline, one thread)
import make_training_fixtures as tr  # noqa: E402

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

OUT_DIR = q2.REPO / "tests" / "fixtures" / "qwen3"
CHAT_OUT = q2.REPO / "tests" / "fixtures" / "qwen3_chat.json"

QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""
QWEN3_CHAT_TEMPLATE_SHA256 = "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# (name, messages, tools, add_generation_prompt, extra keyword arguments)
CHAT_CASES = [
    ("reasoning_in_content", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "<think>\nSix sevens.\n</think>\n\n42"},
    ], None, False, {}),
    ("generation_prompt", [{"role": "user", "content": "What is 6 * 7?"}], None, True, {}),
    ("thinking_off", [{"role": "user", "content": "What is 6 * 7?"}], None, True, {"enable_thinking": False}),
    ("history_reasoning_dropped", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\ngreet\n</think>\n\nHello!"},
        {"role": "user", "content": "And 2 + 2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "add them"},
    ], None, False, {}),
    ("tools_multi_step", [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "<think>\nTwo calls.\n</think>\n\nChecking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
        ]},
        {"role": "tool", "content": "18 C"},
        {"role": "tool", "content": "9 C"},
        {"role": "assistant", "content": "", "reasoning_content": "Both in.", "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Rome"}},
        ]},
        {"role": "tool", "content": "25 C"},
    ], [WEATHER_TOOL], True, {}),
]
GRADS_DIR = q2.REPO / "tests" / "fixtures" / "training" / "grads"

FIXTURES = [
    dict(
        name="tiny-qwen3",
        base_seed=8000,
        config=dict(
            vocab_size=311, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
            rope_theta=1000000.0, attention_bias=False,
        ),
        save_dtype=torch.float32,
        style="v5",
        grads=dict(seed=7104, lengths=[9, 23, 40, 57]),
    ),
    dict(
        name="tiny-qwen3-bias-tied",
        base_seed=8100,
        config=dict(
            vocab_size=301, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
            rope_theta=10000.0, attention_bias=True,
        ),
        save_dtype=torch.bfloat16,
        style="classic",
    ),
]


def load_f32(path: Path, dtype=None) -> Qwen3ForCausalLM:
    m = Qwen3ForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32, attn_implementation="eager")
    m = m.float().eval()
    assert m.config._attn_implementation == "eager"
    return m


def to_classic_config(cfg: dict) -> dict:
    """transformers 5's keys -> the keys of the released Qwen3 checkpoints."""
    rp = cfg.pop("rope_parameters")
    assert rp == {"rope_theta": rp["rope_theta"], "rope_type": "default"}, rp
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types")
    cfg["rope_theta"] = float(rp["rope_theta"])
    cfg["rope_scaling"] = None
    cfg["sliding_window"] = None
    cfg["max_window_layers"] = cfg["num_hidden_layers"]
    return cfg


def make_fixture(fx: dict, tok) -> dict:
    name = fx["name"]
    out = OUT_DIR / name
    vocab = fx["config"]["vocab_size"]
    tv = tok.get_vocab_size()
    dtype = fx["save_dtype"] if fx["save_dtype"] != torch.float32 else None
    for attempt in range(50):
        seed = fx["base_seed"] + attempt
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        torch.manual_seed(seed)
        cfg = Qwen3Config(
            **q2.COMMON,
            **fx["config"],
            bos_token_id=tok.token_to_id("<|endoftext|>"),
            eos_token_id=tok.token_to_id("<|im_end|>"),
        )
        model = Qwen3ForCausalLM(cfg)
        q2.randomize_(model, seed, q2.COMMON["initializer_range"])
        names = [n for n, _ in model.named_parameters()]
        assert any(n.endswith("self_attn.q_norm.weight") for n in names), names
        assert any(n.endswith("self_attn.o_proj.bias") for n in names) == fx["config"]["attention_bias"]
        model.to(fx["save_dtype"]).save_pretrained(str(out))
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps(q2.tokenizer_config_json(tok), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        ref_model = load_f32(out, dtype)
        hf_tok = AutoTokenizer.from_pretrained(str(out))
        chat = q2.chat_object(hf_tok, q2.TINY_CHAT_MESSAGES)
        cases, greedy_out, margin, gap = q2.sample_reference(ref_model, tok, vocab, chat, seed)
        if margin < q2.GREEDY_MIN_MARGIN or gap < q2.TOP_GAP_MIN:
            q2.log(f"{name}: seed {seed} rejected (greedy margin {margin:.2e}, top gap {gap:.2e})")
            continue
        for g_ in greedy_out:
            assert q2.greedy_generate(ref_model, g_["prompt_ids"], q2.GREEDY_NEW_TOKENS) == g_["new_ids"]
        break
    else:
        raise RuntimeError(f"{name}: no robust seed found")

    cfg_path = out / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    assert cfg_json["model_type"] == "qwen3" and cfg_json["head_dim"] == fx["config"]["head_dim"]
    if fx["style"] == "classic":
        cfg_path.write_text(json.dumps(to_classic_config(cfg_json), indent=2) + "\n")

    ref = q2.reference_json(name, seed, fx["save_dtype"], tv, margin, gap, cases, greedy_out, chat)
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    q2.log(f"{name}: seed {seed}, greedy margin {margin:.3g}, top gap {gap:.3g}")
    return ref


def verify_fixture(fx: dict, tok) -> None:
    out = OUT_DIR / fx["name"]
    ref = json.loads((out / "reference.json").read_text(encoding="utf-8"))
    cfg = json.loads((out / "config.json").read_text())
    assert ("rope_theta" in cfg) == (fx["style"] == "classic"), cfg
    model = load_f32(out, fx["save_dtype"] if fx["save_dtype"] != torch.float32 else None)
    worst = 0.0
    for c in ref["cases"]:
        got = q2.compute_case(model, c["input_ids"])
        worst = max([worst] + [abs(a - b) for a, b in zip(got["logprobs"] + got["last_logits"], c["logprobs"] + c["last_logits"])])
    for g_ in ref["greedy"]:
        assert q2.greedy(model, g_["prompt_ids"], q2.GREEDY_NEW_TOKENS)[0] == g_["new_ids"]
    assert worst <= 1e-5, (fx["name"], worst)
    raw_cfg, raw_w = q2.read_model_dir(out)
    assert ("model.layers.0.self_attn.o_proj.bias" in raw_w) == fx["config"]["attention_bias"]
    plain = 0.0
    for c in ref["cases"]:
        lg = q2.manual_qwen2_logits(raw_cfg, raw_w, c["input_ids"])
        plain = max(plain, float((lg[-1] - torch.tensor(c["last_logits"])).abs().max()))
        lp = torch.log_softmax(lg.double(), -1)
        for i in range(1, len(c["input_ids"])):
            plain = max(plain, abs(float(lp[i - 1, c["input_ids"][i]]) - c["logprobs"][i - 1]))
    assert plain <= 1e-4, (fx["name"], plain)
    # Without the q/k norms the logits are far off: the fixture tells them apart.
    no_norm = {k: (torch.ones_like(v) if k.endswith(("q_norm.weight", "k_norm.weight")) else v) for k, v in raw_w.items()}
    c = max(ref["cases"], key=lambda c: len(c["input_ids"]))
    off = float((q2.manual_qwen2_logits(raw_cfg, no_norm, c["input_ids"])[-1] - torch.tensor(c["last_logits"])).abs().max())
    assert off > 0.1, off
    q2.check_tiny_tokenizer(tok, out)
    q2.log(f"{fx['name']}: reloaded {worst:.3g}, plain re-implementation {plain:.3g}, unit q/k norms off by {off:.3g}")


def make_grads(fx: dict) -> None:
    name, case = fx["name"], fx["grads"]
    out = GRADS_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lines = tr.make_lines(fx["config"]["vocab_size"], case["lengths"], case["seed"])
    tr.write_jsonl(out / "batch.jsonl", lines)
    model = load_f32(OUT_DIR / name)
    model.zero_grad(set_to_none=True)
    loss, n = tr.batch_loss(model, lines)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(k.endswith("k_norm.weight") and g.abs().max() > 0 for k, g in grads.items())
    tr.save_tensors(out / "grads.safetensors", grads)
    ref = {"model": name, "model_dir": f"qwen3/{name}", "loss": float(loss.detach()), "n_targets": n, "note": tr.LOSS_NOTE}
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    q2.log(f"grads/{name}: loss {float(loss.detach()):.6f} over {n} targets, {len(grads)} tensors")


def make_chat() -> dict:
    import hashlib

    assert hashlib.sha256(QWEN3_CHAT_TEMPLATE.encode()).hexdigest() == QWEN3_CHAT_TEMPLATE_SHA256
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), chat_template=QWEN3_CHAT_TEMPLATE)
    cases = []
    for name, messages, tools, gen, extra in CHAT_CASES:
        rendered = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=gen, tokenize=False, **extra)
        cases.append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": gen,
                      "extra": extra, "rendered": rendered})
    by = {c["name"]: c["rendered"] for c in cases}
    assert by["thinking_off"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "greet" not in by["history_reasoning_dropped"] and "<think>\nadd them\n</think>" in by["history_reasoning_dropped"]
    assert '{"name": "get_weather", "arguments": {"city": "Oslo"}}' in by["tools_multi_step"]
    return {
        "transformers_version": transformers.__version__,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "chat_template_sha256": QWEN3_CHAT_TEMPLATE_SHA256,
        "cases": cases,
    }


def main() -> None:
    CHAT_OUT.write_text(json.dumps(make_chat(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    q2.log(f"wrote {CHAT_OUT.relative_to(q2.REPO)}")
    tok = q2.build_tiny_tokenizer()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for fx in FIXTURES:
        make_fixture(fx, tok)
        verify_fixture(fx, tok)
        if "grads" in fx:
            make_grads(fx)
    q2.log(
        f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}"
    )


if __name__ == "__main__":
    main()
