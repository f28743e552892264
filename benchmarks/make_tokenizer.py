"""Build a small offline Hugging Face tokenizer directory (no model hub needed).

Trains a byte-level BPE (GPT-2 style, so any text encodes without unknown tokens and decodes exactly) on
seeded generated words plus a list of common English words, with ``hello`` frequent enough that
``" hello"`` (the zero server's streamed chunk, see ``zero_server.py``) is one token. Writes
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``: enough for
``transformers.AutoTokenizer.from_pretrained(DIR)`` and for load generators that take a tokenizer path
(``aiperf --tokenizer DIR``, ``guidellm --tokenizer kind=hf_auto,model=DIR``).

    python benchmarks/make_tokenizer.py DIR [--vocab-size 4096] [--corpus FILE ...]

Needs only the ``tokenizers`` package (installed with transformers).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path

COMMON = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "thou",
    "thee",
    "thy",
    "lord",
    "king",
    "love",
    "good",
    "man",
    "sir",
    "shall",
    "well",
    "what",
    "speak",
    "hear",
    "come",
    "night",
    "hello",
    "world",
    "token",
    "model",
    "stream",
    "server",
    "client",
    "request",
    "response",
    "test",
    "data",
    "text",
    "prompt",
]

EOS = "<|endoftext|>"


def corpus(n_words: int, seed: int) -> list[str]:
    """Lines of seeded text: common words, random lowercase/capitalised words, punctuation, numbers."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    invented = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    lines, line = [], []
    for _ in range(n_words):
        r = rng.random()
        if r < 0.10:
            w = "hello"
        elif r < 0.60:
            w = rng.choice(COMMON)
        elif r < 0.95:
            w = rng.choice(invented)
        else:
            w = str(rng.randint(0, 999))
        if rng.random() < 0.1:
            w = w.capitalize()
        if rng.random() < 0.08:
            w += rng.choice(".,;:!?")
        line.append(w)
        if len(line) >= 16:
            lines.append(" ".join(line))
            line = []
    if line:
        lines.append(" ".join(line))
    return lines


def build(
    out_dir: str | Path,
    vocab_size: int = 4096,
    n_words: int = 200_000,
    seed: int = 0,
    extra_files: list[str] | None = None,
    max_length: int = 131072,
) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus(n_words, seed)
    for path in extra_files or []:
        lines.extend(Path(path).read_text(encoding="utf-8", errors="replace").splitlines())
    tok.train_from_iterator(lines, trainer=trainer)

    ids = tok.encode(" hello").ids
    if len(ids) != 1:
        raise SystemExit(f"' hello' is not one token: {tok.encode(' hello').tokens}")
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build an offline byte-level BPE tokenizer directory.")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--words", type=int, default=200_000, help="generated training words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", action="append", default=[], help="extra training text file (repeatable)")
    args = ap.parse_args(argv)
    out = build(args.out_dir, args.vocab_size, args.words, args.seed, args.corpus)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    sample = "hello hello, world! The quick brown fox 123"
    enc = tok.encode(sample)
    print(
        f"wrote {out} (vocab {tok.get_vocab_size()}); {sample!r} -> {len(enc.ids)} tokens; "
        f"' hello' -> {tok.encode(' hello').tokens}; round trip {tok.decode(enc.ids) == sample}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
