"""Writes the offline lm-eval tasks shipped with pytest-llmperf (``python -m pytest_llmperf.tasks.generate``).

The questions are generated here, deterministically, from a fixed seed: no data is downloaded, and a test
checks that the committed JSONL files are exactly what this script writes. Three formats, after the
benchmarks inference engineers gate on:

- ``llmperf_arc``: ARC-style multiple choice (question, four labelled choices, answer key); acc, acc_norm.
- ``llmperf_hellaswag``: HellaSwag-style sentence completion (context, four endings); acc, acc_norm.
- ``llmperf_gsm``: GSM8K-style word problems answered by generation, scored by exact match of the number.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).parent
SEED = 20261125
N_QUESTIONS = 40

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kofi", "Lena"]
_THINGS = ["apples", "books", "coins", "pencils", "stamps", "marbles", "cards", "shells"]


def _arc(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(10, 60), rng.randint(10, 39)
    operation = rng.choice(["plus", "minus", "times"])
    if operation == "plus":
        answer = a + b
    elif operation == "minus":
        a, b = max(a, b), min(a, b)
        answer = a - b
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        answer = a * b
    wrong: set[int] = set()
    while len(wrong) < 3:
        candidate = answer + rng.choice([-11, -10, -2, -1, 1, 2, 10, 11])
        if candidate != answer and candidate >= 0:  # answer >= 0, so +1 +2 +10 +11 always remain
            wrong.add(candidate)
    options = [answer, *sorted(wrong)]
    rng.shuffle(options)
    labels = ["A", "B", "C", "D"]
    return {
        "question": f"What is {a} {operation} {b}?",
        "choices": {"text": [str(option) for option in options], "label": labels},
        "answerKey": labels[options.index(answer)],
    }


def _hellaswag(rng: random.Random) -> dict[str, Any]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    count = rng.randint(3, 9)
    endings = [
        f"puts the {count} {thing} in a box and closes the lid.",
        f"eats the {thing} while the box flies to the moon.",
        "sings to the box until it turns into a river.",
        f"paints the number {count} on the sky with a spoon.",
    ]
    order = list(range(4))
    rng.shuffle(order)
    return {
        "ctx": f"{name} has {count} {thing} on the table and an empty box. {name}",
        "endings": [endings[index] for index in order],
        "label": order.index(0),
    }


def _gsm(rng: random.Random) -> dict[str, Any]:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    start, more, given = rng.randint(5, 40), rng.randint(2, 20), rng.randint(1, 5)
    answer = start + more - given
    question = (
        f"{name} has {start} {thing}. {name} buys {more} more and gives {given} away. "
        f"How many {thing} does {name} have now?"
    )
    solution = f"{name} has {start} + {more} - {given} = {answer} {thing}.\n#### {answer}"
    return {"question": question, "answer": solution}


GENERATORS = {"llmperf_arc": _arc, "llmperf_hellaswag": _hellaswag, "llmperf_gsm": _gsm}


def render(task: str) -> str:
    """The JSONL text of ``task``: ``N_QUESTIONS`` documents from a seed of its own."""
    rng = random.Random(f"{SEED}:{task}")
    documents = [GENERATORS[task](rng) for _ in range(N_QUESTIONS)]
    return "".join(json.dumps(document, sort_keys=True) + "\n" for document in documents)


def main() -> None:
    for task in GENERATORS:
        (TASKS_DIR / f"{task}.jsonl").write_text(render(task), encoding="utf-8")


if __name__ == "__main__":
    main()
