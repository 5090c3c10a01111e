#!/usr/bin/env python3
"""Writes a tiny Llama in Hugging Face format for the real vLLM in the test world.

    python make_hf.py OUT_DIR

The weights are random from a fixed seed and the tokenizer is trained here,
offline, on the text below, so two runs give byte-identical files and nothing
is downloaded. The model answers nonsense; the server, its wire format and its
token counts are vLLM's own.

Files: config.json, generation_config.json, model.safetensors (float32, about
0.6 MB), tokenizer.json (byte-level BPE, 640 tokens, so any text encodes) and
tokenizer_config.json (special tokens and a Llama-3-style chat template).

Runs in the vLLM venv (torch, transformers, tokenizers). The directory is
built as OUT_DIR.tmp and renamed, so a half-written model is never taken for
a finished one.
"""

import json
import os
import shutil
import sys
from pathlib import Path

# Single-threaded: the tokenizer trainer and torch then do the same work in the
# same order on every run and every machine.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Offline and quiet: nothing is looked up on a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SEED = 20240616
VOCAB_SIZE = 640
MAX_POSITIONS = 4096

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT]

# Llama-3 layout: each message is a header with its role, a blank line, the
# content and <|eot_id|>; the generation prompt opens an assistant header.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# Training text for the tokenizer: plain English about the things the tests
# send (chat, questions, numbers, code-ish words). Written for this file.
CORPUS = """
The gateway reads every request before the model sees it. It checks the token,
finds the tenant, counts the prompt and charges the quota when the answer ends.
Hello! How are you today? I am fine, thank you. What is the weather like?
It is sunny in the morning and it will rain in the evening, so take a coat.
Tell me a short story about a small robot who learns to paint the sea.
Once upon a time there was a little robot. Every day it walked to the harbour
and looked at the water. One morning it found a brush and began to paint.
Write a function that adds two numbers and returns the sum of both of them.
def add(a, b): return a + b
fn main() { println!("hello, world"); }
{"model": "tiny", "messages": [{"role": "user", "content": "Say hello."}]}
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 42 100 256 1024 2048
The quick brown fox jumps over the lazy dog near the river bank at noon.
Please summarise the following text in one sentence for a busy reader.
Translate this into French: the cat sleeps on the warm window sill.
Why is the sky blue? Light from the sun is scattered by the air, and blue light
is scattered more than red light, so the sky looks blue during the day.
You are a helpful assistant. Answer briefly and say when you do not know.
The user asked a question, the assistant gave an answer, and the system set
the rules. A tool may be called with arguments and it returns a result.
Embeddings turn a sentence into a list of numbers that can be compared.
Streaming sends the answer in small pieces, one chunk after another, and the
last chunk may carry the usage: prompt tokens, completion tokens and the total.
When the limit is reached the answer stops and the reason is the length.
"""


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Keep offsets byte-level but add nothing: BOS comes from the chat
    # template or from tokenizer_config's add_bos_token.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.strip().splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    return tokenizer


def tokenizer_config(tokenizer):
    added = {}
    for token in SPECIAL_TOKENS:
        added[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOT,
        "pad_token": EOS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


def write_json(path, value):
    path.write_text(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def build(tmp):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer()
    tokenizer.save(str(tmp / "tokenizer.json"), pretty=True)
    write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer))

    bos_id = tokenizer.token_to_id(BOS)
    eos_ids = [tokenizer.token_to_id(EOT), tokenizer.token_to_id(EOS)]
    pad_id = tokenizer.token_to_id(EOS)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs 32, 64, 80, ...
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id)
    model.save_pretrained(str(tmp), safe_serialization=True)


def main(argv):
    if len(argv) != 2:
        print("usage: make_hf.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"[make_hf] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
