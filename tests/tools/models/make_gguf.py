#!/usr/bin/env python3
"""Writes the tiny GGUF models that the real engines (Ollama, llama.cpp) serve in tests.

    make_gguf.py OUT_DIR

OUT_DIR gets:
  tiny.gguf              a llama-architecture chat model (2 layers, hidden 64)
  tiny-embed.gguf        the same network with `llama.pooling_type` set, which
                         makes Ollama list it as an embedding model (its only
                         rule: the key `<arch>.pooling_type` is present) and
                         makes llama.cpp pool one vector per input
  Modelfile.tiny         `ollama create tiny -f OUT_DIR/Modelfile.tiny` (its FROM
                         is relative to the Modelfile); ChatML template and stops
  Modelfile.tiny-embed   `ollama create tiny-embed -f OUT_DIR/Modelfile.tiny-embed`

The weights are random from a fixed seed and the vocabulary is built here, so
no model hub is needed and two runs write byte-identical files. The vocabulary
is SentencePiece-style (`tokenizer.ggml.model = llama`): special tokens, the
256 byte-fallback tokens <0x00>..<0xFF>, the printable ASCII characters, and
`▁`-prefixed words with every prefix of them (1951 tokens in all), so that
llama.cpp's merge-by-score tokenizer can build each word from its characters.
Control and byte tokens are never sampled (see `tensors`). Each file is
written to a temporary name in OUT_DIR and renamed, so a reader never sees
half a file. Both GGUFs are about 0.7 MB.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

SEED = 20240611
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX = 2048
RMS_EPS = 1e-5

CAPITALISED = 128
SPACE = "\u2581"  # SentencePiece's word-boundary mark, "▁"

# Special tokens first: their ids are fixed by position.
UNK, BOS, EOS, IM_START, IM_END = range(5)
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

# Whole words of the vocabulary, most common first. Each is a `▁word` piece;
# the first CAPITALISED ones get a `▁Word` piece too.
WORDS = """
the of and to in is it you that he was for on are with as his they be at one
have this from or had by hot word but what some we can out other were all there
when up use your how said an each she which do their time if will way about many
then them write would like so these her long make thing see him two has look
more day could go come did number sound no most people my over know water than
call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give
our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set
three want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind
off need house picture try us again animal point mother world near build self
earth father head stand own page should country found answer school grow study
still learn plant cover food sun four between state keep eye never last let
thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat
room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list
though feel talk bird soon body dog family direct pose leave song measure door
product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space
heard best hour better true during hundred five remember step early hold west
ground interest reach fast verb sing listen six table travel less morning ten
simple several vowel toward war lay against pattern slow center love person
money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box
noun field rest correct able pound done beauty drive stood contain front teach
week final gave green quick develop ocean warm free minute strong special mind
behind clear tail produce fact street inch multiply nothing course stay wheel
full force blue object decide surface deep moon island foot system busy test
record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill east
paint language among hello model token quota request reply server gateway user
assistant system chat stream count limit key admin answer prompt embed vector
""".split()


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """The token strings, scores and types, in id order."""
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(piece: str, score: float, kind: gguf.TokenType) -> None:
        if piece in seen:
            return
        seen.add(piece)
        tokens.append(piece)
        scores.append(score)
        types.append(int(kind))

    for i, piece in enumerate(SPECIALS):
        kind = gguf.TokenType.UNKNOWN if i == UNK else gguf.TokenType.CONTROL
        add(piece, 0.0, kind)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)

    # Single characters: the lowest scores, so merges are always preferred.
    singles = [SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    for piece in singles:
        add(piece, -1000.0, gguf.TokenType.NORMAL)

    # Words with every prefix of them: llama.cpp's SentencePiece tokenizer
    # merges the adjacent pair whose union is the highest-scoring token, so a
    # chain of prefixes lets it build each whole word. Longer pieces score
    # higher; ties are broken by a small per-id step so the order is total.
    pieces: list[str] = []
    for i, word in enumerate(WORDS):
        forms = [word, word.capitalize()] if i < CAPITALISED else [word]
        for form in forms:
            text = SPACE + form
            for end in range(2, len(text) + 1):
                pieces.append(text[:end])
    for piece in pieces:
        if piece not in seen:
            add(piece, float(len(piece)) - len(tokens) * 1e-5, gguf.TokenType.NORMAL)
    return tokens, scores, types


# ChatML turns for llama.cpp (Jinja). A message's content is a string or a
# list of OpenAI content parts, of which the text parts are rendered.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same ChatML turns in Ollama's Go template syntax.
OLLAMA_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def tensors(
    rng: np.random.Generator, n_vocab: int, never_sampled: list[int]
) -> list[tuple[str, np.ndarray]]:
    """The llama tensors in GGUF naming; numpy shapes are (rows=out, cols=in).

    Random weights give every token about the same probability. Two token
    kinds must not come out, though: control tokens, and byte tokens, whose
    random runs are invalid UTF-8 (llama-cpp-python's server then stalls a
    stream, holding back text it cannot decode, and the engines disagree on
    what such bytes count as). So hidden dimension 0 carries a constant: every
    token embedding has 1.0 there, which dominates the small random residual,
    so after the final RMS norm it is about +7 for any input. The output rows
    of the tokens in `never_sampled` have -3 in that column, a logit near -20.
    """

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    head_dim = N_EMBD // N_HEAD
    token_embd = matrix(n_vocab, N_EMBD)
    token_embd[:, 0] = 1.0
    out = [("token_embd.weight", token_embd)]
    for i in range(N_LAYER):
        out += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", matrix(N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_k.weight", matrix(N_HEAD_KV * head_dim, N_EMBD)),
            (f"blk.{i}.attn_v.weight", matrix(N_HEAD_KV * head_dim, N_EMBD)),
            (f"blk.{i}.attn_output.weight", matrix(N_EMBD, N_EMBD)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", matrix(N_FF, N_EMBD)),
            (f"blk.{i}.ffn_up.weight", matrix(N_FF, N_EMBD)),
            (f"blk.{i}.ffn_down.weight", matrix(N_EMBD, N_FF)),
        ]
    output = matrix(n_vocab, N_EMBD)
    output[never_sampled, 0] = -3.0
    out += [("output_norm.weight", norm()), ("output.weight", output)]
    return out


def write_gguf(path: Path, name: str, pooling: gguf.PoolingType | None) -> None:
    tokens, scores, types = build_vocab()
    # The same seed for both files: the embedding model is the chat model's
    # network with pooling switched on.
    rng = np.random.default_rng(SEED)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_vocab_size(len(tokens))
        w.add_context_length(N_CTX)
        w.add_embedding_length(N_EMBD)
        w.add_block_count(N_LAYER)
        w.add_feed_forward_length(N_FF)
        w.add_head_count(N_HEAD)
        w.add_head_count_kv(N_HEAD_KV)
        w.add_rope_dimension_count(N_EMBD // N_HEAD)
        w.add_layer_norm_rms_eps(RMS_EPS)
        if pooling is not None:
            w.add_pooling_type(pooling)

        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(UNK)
        w.add_bos_token_id(BOS)
        w.add_eos_token_id(EOS)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(True)
        if pooling is None:
            w.add_chat_template(CHAT_TEMPLATE)

        # Every control token but the two that end a turn, and every byte.
        never_sampled = [
            i
            for i, kind in enumerate(types)
            if (kind == gguf.TokenType.CONTROL and i not in (EOS, IM_END))
            or kind in (gguf.TokenType.BYTE, gguf.TokenType.UNKNOWN)
        ]
        for tensor_name, data in tensors(rng, len(tokens), never_sampled):
            w.add_tensor(tensor_name, data)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def modelfile(gguf_name: str, chat: bool) -> str:
    lines = [f"FROM ./{gguf_name}", f"PARAMETER num_ctx {N_CTX}"]
    if chat:
        lines += [
            f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
            'PARAMETER stop "<|im_end|>"',
            'PARAMETER stop "<|im_start|>"',
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write_gguf(out / "tiny.gguf", "tiny", None)
    write_gguf(out / "tiny-embed.gguf", "tiny-embed", gguf.PoolingType.MEAN)
    write_text(out / "Modelfile.tiny", modelfile("tiny.gguf", chat=True))
    write_text(out / "Modelfile.tiny-embed", modelfile("tiny-embed.gguf", chat=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
