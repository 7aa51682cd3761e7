#!/usr/bin/env python3
"""Generate the Qwen2 / Qwen2.5 reference fixtures used by artist's Rust tests.

What it makes
-------------
``tests/fixtures/qwen2/<name>/`` for five tiny, randomly initialised Qwen2 models
(``Qwen2ForCausalLM`` from Hugging Face transformers). Each directory is a real
Hugging Face model directory::

    config.json               (two key styles, see below)
    generation_config.json    (as transformers writes it; tiny-gqa's is Qwen-Instruct-like)
    model.safetensors         (tiny-sharded: model-0000{1,2}-of-00002.safetensors
                               + model.safetensors.index.json)
    tokenizer.json            (tiny byte-level BPE, identical in every fixture)
    tokenizer_config.json     (Qwen2.5-Instruct chat template, eos <|im_end|>, ...)
    reference.json            (what transformers computes, in float32)

and ``tests/fixtures/qwen2_5_chat.json``: chat-template renderings and token ids of the
real Qwen2.5 tokenizer (``shared/tokenizers/qwen2.5/tokenizer.json``).

Fixtures:

* ``tiny-gqa``       hidden 64, inter 160, 4 heads / 2 KV heads (GQA), vocab 311, untied,
                     rope_theta 1e4, 2 layers; classic config keys.
* ``tiny-tied-mqa``  hidden 48, inter 100, 4 heads (head_dim 12) / 1 KV head (MQA),
                     vocab 301, tied embeddings, rope_theta 1e6, 2 layers; transformers-5 keys.
* ``tiny-mha-odd``   hidden 72, inter 90, 6 heads (head_dim 12) / 6 KV heads (MHA),
                     vocab 293, untied, rope_theta 5e5, 3 layers; transformers-5 keys.
                     (Vocab 293, not 257: a byte-level tokenizer already has 256 byte
                     tokens + merges + 3 specials = 291 ids, and the model's vocab must
                     cover the tokenizer's.)
* ``tiny-bf16``      tiny-gqa's shape, weights stored as BF16; reference computed in f32
                     over the widened BF16 weights; classic config keys.
* ``tiny-f16``       tiny-mha-odd's widths, 2 layers, 6 heads / 2 KV heads, tied, weights
                     stored as F16; reference in f32 over the widened F16 weights.
* ``tiny-sharded``   tiny-tied-mqa's shape but untied, saved in 2 safetensors shards;
                     classic config keys.

"Classic" config keys = what real Qwen2.5 checkpoints ship (transformers 4.x):
``rope_theta`` + ``rope_scaling: null`` + ``torch_dtype`` + a non-null ``sliding_window``
that must be ignored because ``use_sliding_window`` is false (tiny-gqa sets it to 8,
smaller than its longer inputs, so a loader that wrongly applies it gets other logits).
"transformers-5" keys = what transformers 5 writes: ``rope_parameters: {rope_theta,
rope_type: "default"}`` + ``dtype`` + ``layer_types`` + ``sliding_window: null``.
The script writes with transformers, then rewrites some config.json files by hand into
the other style, reloads every fixture from disk and checks it reproduces the reference
exactly, and checks the reference against a plain re-implementation of the Qwen2 forward
pass that reads only config.json and the safetensors (agreement within 1e-5).

Weights: every parameter is re-drawn from a seeded ``torch.Generator`` (independent of
transformers' own init code): matrices and embeddings N(0, 0.2), q/k/v biases N(0, 0.2)
(transformers initialises them to 0), RMSNorm weights U(0.5, 1.5). Large std makes the
output distributions peaky. Seeds are bumped until every greedy step has a top-1 vs
top-2 logit margin >= 1e-3 and every case's top-6 logits are >= 1e-4 apart, so the
fixtures are not fragile to float reassociation.

Tokenizer: a byte-level BPE trained with the ``tokenizers`` library on the small English
text embedded below: the 256 byte symbols + 32 merges (ids 0..287), then the added
special tokens ``<|endoftext|>`` 288, ``<|im_start|>`` 289, ``<|im_end|>`` 290. Its
normalizer / pre-tokenizer / decoder / post-processor are exactly Qwen2's (NFC; Split on
the Qwen2 regex, Isolated; ByteLevel(add_prefix_space=False, use_regex=False); ByteLevel
decoder), because transformers 5's ``Qwen2Tokenizer`` (what ``tokenizer_class:
Qwen2Tokenizer`` loads) discards the pipeline stored in tokenizer.json and rebuilds
exactly that one from the vocab and merges; with any other pipeline, transformers and a
plain tokenizer.json reader would disagree.

How to run
----------
From the repository root, in a Python environment with torch, transformers,
safetensors, tokenizers and jinja2 (CPU wheels are fine; nothing is downloaded at
run time)::

    python -m venv /tmp/fxenv
    /tmp/fxenv/bin/pip install torch transformers safetensors tokenizers jinja2
    /tmp/fxenv/bin/python scripts/make_qwen2_fixtures.py

It uses one CPU thread and takes well under a minute. Output is deterministic for a
given set of library versions (re-running rewrites the same bytes).

Versions it was run with (the committed fixtures): Python 3.11.7, torch 2.15.0 (PyPI
wheel 2.15.0+cu132, run on CPU),
transformers 5.24.0, tokenizers 0.23.3, safetensors 0.8.0, jinja2 3.1.6.

The Qwen2.5-Instruct chat template below is the ``chat_template`` string of the
Qwen2.5-Instruct checkpoints' tokenizer_config.json (Qwen/Qwen2.5-7B-Instruct and the
other sizes ship the same string), kept JSON-escaped exactly as it appears in that file.
It was copied from public copies of that file (no network access to the Hub) and
cross-checked character for character against three independent copies; its sha256 is
asserted below.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

torch.set_num_threads(1)

import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers  # noqa: E402
from tokenizers import pre_tokenizers, processors, trainers  # noqa: E402
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "fixtures" / "qwen2"
QWEN25_CHAT_OUT = REPO / "tests" / "fixtures" / "qwen2_5_chat.json"
# shared/ sits inside the checkout on some machines and beside it on others.
_QWEN25_REL = Path("shared") / "tokenizers" / "qwen2.5" / "tokenizer.json"
QWEN25_TOKENIZER = Path(
    os.environ.get(
        "QWEN25_TOKENIZER",
        str(REPO / _QWEN25_REL if (REPO / _QWEN25_REL).exists() else REPO.parent / _QWEN25_REL),
    )
)

# ---------------------------------------------------------------------------------------
# Qwen2.5-Instruct chat template, JSON-escaped exactly as in tokenizer_config.json.
# ---------------------------------------------------------------------------------------
_QWEN25_CHAT_TEMPLATE_JSON = r"""{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"""
QWEN25_CHAT_TEMPLATE: str = json.loads('"' + _QWEN25_CHAT_TEMPLATE_JSON + '"')
QWEN25_CHAT_TEMPLATE_SHA256 = "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"

# ---------------------------------------------------------------------------------------
# Tiny tokenizer.
# ---------------------------------------------------------------------------------------
# Qwen2's pre-tokenizer split regex (same as transformers' Qwen2Tokenizer and the real
# Qwen2.5 tokenizer.json).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_MERGES = 32
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox
runs into the woods. In the morning the farmer opens the gate and the animals walk out
to the field. There is a small river near the farm; the children like to swim there
when the weather is warm. The teacher says that the answer is in the book, and the
students read the book again and again until they find it. You are a helpful
assistant. The user asks a question and the assistant gives the answer. Think step
by step, then write the answer. What is the capital of France? The capital of France
is Paris. What is two plus two? Two plus two is four. Hello there, how are you today?
I am fine, thank you, and you? The end of the story is near, but there is always
another story to tell when the night is long and the fire is warm.
"""

# ---------------------------------------------------------------------------------------
# Tiny models.
# ---------------------------------------------------------------------------------------
COMMON = dict(
    hidden_act="silu",
    use_sliding_window=False,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    initializer_range=0.2,
)

FIXTURES = [
    dict(
        name="tiny-gqa",
        base_seed=1000,
        config=dict(
            vocab_size=311, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
        ),
        save_dtype=torch.float32,
        style="classic",
        # Non-null sliding_window smaller than the longer inputs: must be ignored because
        # use_sliding_window is false (real Qwen2.5 configs carry sliding_window too).
        classic_sliding_window=8,
        classic_max_window_layers=1,
        qwen_instruct_generation_config=True,
        shards=1,
    ),
    dict(
        name="tiny-tied-mqa",
        base_seed=2000,
        config=dict(
            vocab_size=301, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1000000.0,
        ),
        save_dtype=torch.float32,
        style="v5",
        shards=1,
    ),
    dict(
        name="tiny-mha-odd",
        base_seed=3000,
        config=dict(
            vocab_size=293, hidden_size=72, intermediate_size=90, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=6, tie_word_embeddings=False, rope_theta=500000.0,
        ),
        save_dtype=torch.float32,
        style="v5",
        shards=1,
    ),
    dict(
        name="tiny-bf16",
        base_seed=4000,
        config=dict(
            vocab_size=311, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
        ),
        save_dtype=torch.bfloat16,
        style="classic",
        classic_sliding_window=131072,
        classic_max_window_layers=2,
        shards=1,
    ),
    dict(
        name="tiny-f16",
        base_seed=6000,
        config=dict(
            vocab_size=293, hidden_size=72, intermediate_size=90, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0,
        ),
        save_dtype=torch.float16,
        style="v5",
        shards=1,
    ),
    dict(
        name="tiny-sharded",
        base_seed=5000,
        config=dict(
            vocab_size=301, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1000000.0,
        ),
        save_dtype=torch.float32,
        style="classic",
        classic_sliding_window=4096,
        classic_max_window_layers=2,
        shards=2,
    ),
]

GREEDY_NEW_TOKENS = 32
GREEDY_MIN_MARGIN = 1e-3
TOP_GAP_MIN = 1e-4

# Chat used by every tiny fixture (kept short: the tiny tokenizer is nearly byte-level
# and max_position_embeddings is 128).
TINY_CHAT_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi é 世界 🦀?"},
    {"role": "assistant", "content": "<think>\nok\n</think>\n<answer>Hi!</answer>"},
]

# Chat for the real Qwen2.5 tokenizer.
QWEN25_MESSAGES = [
    {
        "role": "system",
        "content": "You are a careful math tutor. Réponds en français si l'élève écrit en français.",
    },
    {
        "role": "user",
        "content": "Combien font 12 × 7 ? Et en chinois, comment dit-on « bonjour » ? 你好世界 🙂\n"
        "(Also: Cafe\u0301 is written with a combining accent.)",
    },
    {
        "role": "assistant",
        "content": "<think>\n12 × 7 = 84.\n« Bonjour » se dit 你好 (nǐ hǎo).\n</think>\n"
        "<answer>\n12 × 7 = 84\n\n« Bonjour » → 你好 🙂\n</answer>",
    },
]
QWEN25_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location (météo actuelle).",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city, e.g. Zürich or 北京"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["location"],
            },
        },
    }
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------
def qwen2_pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)


def build_tiny_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    qwen2_pipeline(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=256 + NUM_MERGES,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True), trainer)
    assert tok.get_vocab_size() == 256 + NUM_MERGES, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def tokenizer_config_json(tok: Tokenizer) -> dict:
    added = {}
    for t in SPECIAL_TOKENS:
        added[str(tok.token_to_id(t))] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    # Same keys as Qwen2.5-Instruct's tokenizer_config.json.
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 128,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


ROUNDTRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello  world's 123 é 世界 🦀\n\n  tabs\there",
    "naïve café — Zürich, 東京, Москва, العربية, 🙂👍🏽",
    "Cafe\u0301 (NFC turns e + U+0301 into é)",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
]


def check_tiny_tokenizer(tok: Tokenizer, fixture_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(str(fixture_dir))
    assert type(hf).__name__ == "Qwen2Tokenizer", type(hf)
    assert len(hf) == tok.get_vocab_size(), (len(hf), tok.get_vocab_size())
    assert hf.eos_token == "<|im_end|>" and hf.pad_token == "<|endoftext|>" and hf.bos_token is None
    for s in ROUNDTRIP_TEXTS + [TRAINING_TEXT]:
        ids = tok.encode(s).ids
        assert hf.encode(s, add_special_tokens=False) == ids, s
        dec = tok.decode(ids, skip_special_tokens=False)
        import unicodedata

        assert dec == unicodedata.normalize("NFC", s), (s, dec)
        assert hf.decode(ids) == dec
    # Bytes of non-ASCII chars really are split into byte tokens.
    assert len(tok.encode("世界").ids) >= 2


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------
def randomize_(model: torch.nn.Module, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def load_f32(path: Path, dtype=None) -> Qwen2ForCausalLM:
    if dtype is None:
        m = Qwen2ForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    else:
        m = Qwen2ForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager").float()
    m.eval()
    assert m.config._attn_implementation == "eager"
    return m


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    assert out.logits.dtype == torch.float32
    return out.logits[0]


@torch.no_grad()
def compute_case(model, ids: list[int]) -> dict:
    lg = logits_of(model, ids)
    lsm = torch.log_softmax(lg.double(), dim=-1).float()  # log-softmax of the f32 logits
    logprobs = [float(lsm[i - 1, ids[i]]) for i in range(1, len(ids))]
    last = lg[-1]
    top = torch.topk(last, 6)
    vals = top.values.tolist()
    min_gap = min(vals[i] - vals[i + 1] for i in range(5))
    return {
        "input_ids": list(ids),
        "logprobs": logprobs,
        "last_logits_top5": [[int(i), float(v)] for i, v in zip(top.indices[:5].tolist(), vals[:5])],
        "last_logits": [float(x) for x in last.tolist()],
        "_min_top6_gap": min_gap,
    }


@torch.no_grad()
def greedy(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    ids = list(prompt)
    new = []
    min_margin = float("inf")
    for _ in range(n):
        last = logits_of(model, ids)[-1]
        top2 = torch.topk(last, 2)
        min_margin = min(min_margin, float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        new.append(nxt)
        ids.append(nxt)
    return new, min_margin


@torch.no_grad()
def greedy_generate(model, prompt: list[int], n: int) -> list[int]:
    """Same greedy continuation through generate() (KV cache), as a cross-check."""
    gc = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    # transformers 5 fills fields left at their defaults from the model's own
    # generation_config.json (tiny-gqa's has repetition_penalty 1.05, top_k, ...), so the
    # plain-greedy values must be passed explicitly as well.
    out = model.generate(
        torch.tensor([prompt], dtype=torch.long),
        generation_config=gc,
        repetition_penalty=1.0,
        temperature=None,
        top_k=None,
        top_p=None,
    )
    return out[0, len(prompt):].tolist()


def case_inputs(tok: Tokenizer, vocab: int, chat_ids: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed + 17)
    tok_vocab = tok.get_vocab_size()
    one = [vocab - 1]  # an id above the tokenizer's vocabulary
    text7 = tok.encode("The fox is here.").ids
    text7 = (text7 + text7)[:7]
    rand23 = torch.randint(0, vocab, (23,), generator=g).tolist()
    rand23[3] = tok_vocab + 1  # above the tokenizer, below vocab_size
    rand23[11] = vocab - 1
    rand23[17] = tok.token_to_id("<|im_start|>")
    cases = [one, text7, rand23, chat_ids]
    for c in cases:
        assert all(0 <= i < vocab for i in c)
    assert len(text7) == 7
    return cases


def greedy_prompts(tok: Tokenizer, vocab: int) -> list[list[int]]:
    p1 = tok.encode("The capital of France is").ids
    tv = tok.get_vocab_size()
    p2 = [tok.token_to_id("<|im_start|>"), 5, tv, 200, vocab - 2, 17]
    return [p1, p2]


def chat_object(hf_tok, messages) -> dict:
    rendered = hf_tok.apply_chat_template(messages, tokenize=False)
    rendered_gen = hf_tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    ids = hf_tok.encode(rendered, add_special_tokens=False)
    gen_ids = hf_tok.encode(rendered_gen, add_special_tokens=False)
    return {
        "messages": messages,
        "rendered": rendered,
        "rendered_generation_prompt": rendered_gen,
        "ids": ids,
        "generation_prompt_ids": gen_ids,
    }


def to_classic_config(cfg: dict, fx: dict) -> dict:
    """Rewrite a transformers-5 config.json into the key style of real Qwen2.5 checkpoints."""
    rp = cfg.pop("rope_parameters")
    assert rp == {"rope_theta": rp["rope_theta"], "rope_type": "default"}, rp
    dtype = cfg.pop("dtype")
    cfg.pop("layer_types")
    cfg["rope_theta"] = float(rp["rope_theta"])
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = dtype
    cfg["sliding_window"] = fx["classic_sliding_window"]
    cfg["max_window_layers"] = fx["classic_max_window_layers"]
    cfg.pop("pad_token_id", None)
    return dict(sorted(cfg.items()))


def save_model(model: Qwen2ForCausalLM, out: Path, fx: dict) -> None:
    model = model.to(fx["save_dtype"])
    if fx["shards"] == 1:
        model.save_pretrained(str(out))
        assert (out / "model.safetensors").exists()
        return
    # Pick the largest max_shard_size that gives exactly the requested number of shards.
    total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    for frac in (0.75, 0.7, 0.65, 0.6, 0.55, 0.5):
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), max_shard_size=int(total * frac))
        shards = sorted(p.name for p in tmp.glob("model-*.safetensors"))
        if len(shards) == fx["shards"]:
            for f in tmp.iterdir():
                shutil.move(str(f), str(out / f.name))
            tmp.rmdir()
            assert (out / "model.safetensors.index.json").exists()
            return
        shutil.rmtree(tmp)
    raise RuntimeError("could not produce the requested shard count")


def make_fixture(fx: dict, tok: Tokenizer) -> dict:
    name = fx["name"]
    out = OUT_DIR / name
    vocab = fx["config"]["vocab_size"]
    tv = tok.get_vocab_size()
    assert vocab > tv
    for attempt in range(50):
        seed = fx["base_seed"] + attempt
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        torch.manual_seed(seed)
        cfg = Qwen2Config(
            **COMMON,
            **fx["config"],
            bos_token_id=tok.token_to_id("<|endoftext|>"),
            eos_token_id=tok.token_to_id("<|im_end|>"),
        )
        model = Qwen2ForCausalLM(cfg)
        randomize_(model, seed, COMMON["initializer_range"])
        if fx["config"]["tie_word_embeddings"]:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        save_model(model, out, fx)
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config_json(tok), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if fx.get("qwen_instruct_generation_config"):
            # Shaped like Qwen2.5-Instruct's generation_config.json (eos is a list).
            gen = {
                "bos_token_id": tok.token_to_id("<|endoftext|>"),
                "do_sample": True,
                "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
                "pad_token_id": tok.token_to_id("<|endoftext|>"),
                "repetition_penalty": 1.05,
                "temperature": 0.7,
                "top_k": 20,
                "top_p": 0.8,
                "transformers_version": transformers.__version__,
            }
            (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

        # The reference is computed from what is on disk, reloaded (for bf16: the bf16
        # weights widened to f32), always in float32 with eager attention.
        ref_model = load_f32(out, dtype=fx["save_dtype"] if fx["save_dtype"] != torch.float32 else None)
        hf_tok = AutoTokenizer.from_pretrained(str(out))
        chat = chat_object(hf_tok, TINY_CHAT_MESSAGES)
        assert chat["ids"] == tok.encode(chat["rendered"]).ids
        assert len(chat["ids"]) <= 128, len(chat["ids"])
        cases, greedy_out, margin, gap = sample_reference(ref_model, tok, vocab, chat, seed)
        if margin < GREEDY_MIN_MARGIN or gap < TOP_GAP_MIN:
            log(f"{name}: seed {seed} rejected (greedy margin {margin:.2e}, top gap {gap:.2e})")
            continue
        for g_ in greedy_out:
            assert greedy_generate(ref_model, g_["prompt_ids"], GREEDY_NEW_TOKENS) == g_["new_ids"]
        break
    else:
        raise RuntimeError(f"{name}: no robust seed found")

    # Config key style.
    cfg_path = out / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    if fx["style"] == "classic":
        cfg_json = to_classic_config(cfg_json, fx)
        cfg_path.write_text(json.dumps(cfg_json, indent=2) + "\n")
    else:
        assert "rope_parameters" in cfg_json and "dtype" in cfg_json and "rope_theta" not in cfg_json

    ref = reference_json(name, seed, fx["save_dtype"], tv, margin, gap, cases, greedy_out, chat)
    (out / "reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"{name}: seed {seed}, greedy margin {margin:.3g}, top gap {gap:.3g}")
    return ref


def sample_reference(ref_model, tok: Tokenizer, vocab: int, chat: dict, seed: int):
    """What a model computes for the fixture's inputs: the cases (logprobs, last logits) and
    greedy continuations, with the smallest greedy top-1 margin and top-6 logit gap."""
    cases = [compute_case(ref_model, c) for c in case_inputs(tok, vocab, chat["ids"], seed)]
    greedy_out = []
    margins = []
    for p in greedy_prompts(tok, vocab):
        new, margin = greedy(ref_model, p, GREEDY_NEW_TOKENS)
        margins.append(margin)
        greedy_out.append({"prompt_ids": p, "new_ids": new})
    gaps = [c.pop("_min_top6_gap") for c in cases]
    return cases, greedy_out, min(margins), min(gaps)


def reference_json(name, seed, save_dtype, tv, margin, gap, cases, greedy_out, chat) -> dict:
    """reference.json of a fixture."""
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "tokenizers_version": tokenizers.__version__,
        "fixture": name,
        "seed": seed,
        "stored_dtype": str(save_dtype).replace("torch.", ""),
        "compute_dtype": "float32",
        "attn_implementation": "eager",
        "tokenizer_vocab_size": tv,
        "min_greedy_top1_margin": margin,
        "min_top6_logit_gap": gap,
        "cases": cases,
        "greedy": greedy_out,
        "chat": chat,
    }


# ---------------------------------------------------------------------------------------
# Verification: reload everything from disk (after the config edits) and compare.
# ---------------------------------------------------------------------------------------
def verify_fixture(fx: dict, tok: Tokenizer) -> float:
    out = OUT_DIR / fx["name"]
    ref = json.loads((out / "reference.json").read_text(encoding="utf-8"))
    cfg = json.loads((out / "config.json").read_text())
    if fx["style"] == "classic":
        assert "rope_theta" in cfg and "torch_dtype" in cfg and "rope_parameters" not in cfg and "dtype" not in cfg
    else:
        assert "rope_parameters" in cfg and "dtype" in cfg and "rope_theta" not in cfg and "torch_dtype" not in cfg
    loaded_cfg = Qwen2Config.from_pretrained(str(out))
    assert loaded_cfg.rope_parameters["rope_theta"] == fx["config"]["rope_theta"], loaded_cfg.rope_parameters
    assert loaded_cfg.sliding_window is None
    assert all(t == "full_attention" for t in loaded_cfg.layer_types)
    model = load_f32(out, dtype=fx["save_dtype"] if fx["save_dtype"] != torch.float32 else None)
    # The stored tensors have the expected dtype.
    from safetensors import safe_open

    files = sorted(out.glob("*.safetensors"))
    assert len(files) == fx["shards"], files
    names = set()
    for f in files:
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                names.add(k)
                assert sf.get_slice(k).get_dtype() == {torch.bfloat16: "BF16", torch.float16: "F16"}.get(fx["save_dtype"], "F32")
    assert ("lm_head.weight" in names) == (not fx["config"]["tie_word_embeddings"]), names
    assert any(k.endswith("self_attn.q_proj.bias") for k in names)
    worst = 0.0
    for c in ref["cases"]:
        got = compute_case(model, c["input_ids"])
        for a, b in zip(got["logprobs"], c["logprobs"]):
            worst = max(worst, abs(a - b))
        for a, b in zip(got["last_logits"], c["last_logits"]):
            worst = max(worst, abs(a - b))
        assert [i for i, _ in got["last_logits_top5"]] == [i for i, _ in c["last_logits_top5"]]
    for g_ in ref["greedy"]:
        assert greedy(model, g_["prompt_ids"], GREEDY_NEW_TOKENS)[0] == g_["new_ids"]
    assert worst <= 1e-5, (fx["name"], worst)
    # Independent check of the semantics: a plain re-implementation from the files.
    raw_cfg, raw_w = read_model_dir(out)
    manual_worst = 0.0
    for c in ref["cases"]:
        lg = manual_qwen2_logits(raw_cfg, raw_w, c["input_ids"])
        manual_worst = max(manual_worst, float((lg[-1] - torch.tensor(c["last_logits"])).abs().max()))
        lp = torch.log_softmax(lg.double(), -1)
        for i in range(1, len(c["input_ids"])):
            manual_worst = max(manual_worst, abs(float(lp[i - 1, c["input_ids"][i]]) - c["logprobs"][i - 1]))
    assert manual_worst <= 1e-4, (fx["name"], manual_worst)
    log(f"{fx['name']}: plain re-implementation agrees to {manual_worst:.3g}")
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    assert chat_object(hf_tok, ref["chat"]["messages"]) == ref["chat"]
    check_tiny_tokenizer(tok, out)
    return worst


def read_model_dir(path: Path) -> tuple[dict, dict]:
    """config.json (either key style) + all tensors (sharded or not), widened to f32."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "config.json").read_text())
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    w = {}
    for f in files:
        w.update({k: v.float() for k, v in load_file(str(path / f)).items()})
    return cfg, w


@torch.no_grad()
def manual_qwen2_logits(cfg: dict, w: dict, ids: list[int]) -> torch.Tensor:
    """Textbook Qwen2 (or Qwen3) forward pass from config.json + safetensors only (no
    transformers modelling code): what a from-scratch implementation has to compute. A
    projection is biased where the files hold its bias; Qwen3's q_norm / k_norm (each head
    of q and k through RMSNorm over head_dim, before RoPE) apply where the files hold them."""
    theta = cfg["rope_parameters"]["rope_theta"] if "rope_parameters" in cfg else cfg["rope_theta"]
    h_, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h_ // nh
    eps = cfg["rms_norm_eps"]
    n = len(ids)

    def rms(x, wt):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * wt

    def rot_half(x):
        return torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def heads(x, count, norm):
        x = x.view(n, count, d)
        return (rms(x, w[norm]) if norm in w else x).transpose(0, 1)

    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.arange(n).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((n, n), float("-inf")).triu(1)

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = heads(lin(h, p + "self_attn.q_proj"), nh, p + "self_attn.q_norm.weight")
        k = heads(lin(h, p + "self_attn.k_proj"), nkv, p + "self_attn.k_norm.weight")
        v = heads(lin(h, p + "self_attn.v_proj"), nkv, None)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        k = k.repeat_interleave(nh // nkv, dim=0)  # query head j uses KV head j // (nh / nkv)
        v = v.repeat_interleave(nh // nkv, dim=0)
        att = torch.softmax(q @ k.transpose(1, 2) / d**0.5 + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(n, nh * d)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------------------------------
# Real Qwen2.5 tokenizer chat fixture.
# ---------------------------------------------------------------------------------------
def make_qwen25_chat() -> dict:
    hf = PreTrainedTokenizerFast(
        tokenizer_file=str(QWEN25_TOKENIZER),
        chat_template=QWEN25_CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    raw = Tokenizer.from_file(str(QWEN25_TOKENIZER))
    chat = chat_object(hf, QWEN25_MESSAGES)
    assert chat["ids"] == raw.encode(chat["rendered"], add_special_tokens=False).ids
    with_tools = hf.apply_chat_template(
        QWEN25_MESSAGES[:2], tools=QWEN25_TOOLS, tokenize=False, add_generation_prompt=True
    )
    default_system = hf.apply_chat_template(QWEN25_MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    tools_default_system = hf.apply_chat_template(
        QWEN25_MESSAGES[1:2], tools=QWEN25_TOOLS, tokenize=False, add_generation_prompt=True
    )
    chat.update(
        {
            "tools": QWEN25_TOOLS,
            "rendered_with_tools": with_tools,
            "ids_with_tools": hf.encode(with_tools, add_special_tokens=False),
            "rendered_default_system": default_system,
            "rendered_with_tools_default_system": tools_default_system,
        }
    )
    assert chat["ids_with_tools"] == raw.encode(with_tools, add_special_tokens=False).ids
    assert "You are Qwen, created by Alibaba Cloud." in default_system
    assert "<tools>\n{\"type\": \"function\"" in with_tools
    return {
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "tokenizer": "shared/tokenizers/qwen2.5/tokenizer.json",
        "tokenizer_sha256": hashlib.sha256(QWEN25_TOKENIZER.read_bytes()).hexdigest(),
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "chat_template_sha256": QWEN25_CHAT_TEMPLATE_SHA256,
        "chat": chat,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="fixture names to (re)make (default: all)")
    ap.add_argument("--skip-qwen25-chat", action="store_true")
    args = ap.parse_args()

    assert hashlib.sha256(QWEN25_CHAT_TEMPLATE.encode()).hexdigest() == QWEN25_CHAT_TEMPLATE_SHA256
    # The template's default-system rendering, as documented for Qwen2.5.
    t = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), chat_template=QWEN25_CHAT_TEMPLATE)
    assert t.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    ) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )

    tok = build_tiny_tokenizer()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    selected = [fx for fx in FIXTURES if not args.only or fx["name"] in args.only]
    for fx in selected:
        make_fixture(fx, tok)
    for fx in selected:
        worst = verify_fixture(fx, tok)
        log(f"{fx['name']}: reloaded from disk, max |diff| vs reference = {worst:.3g}")

    if not args.skip_qwen25_chat:
        obj = make_qwen25_chat()
        QWEN25_CHAT_OUT.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        log(f"wrote {QWEN25_CHAT_OUT.relative_to(REPO)}")
    log(
        f"versions: python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}"
    )


if __name__ == "__main__":
    main()
