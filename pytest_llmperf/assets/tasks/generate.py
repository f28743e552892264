"""Writes the offline lm-eval tasks shipped with pytest-llmperf (``python -m pytest_llmperf.assets.tasks.generate``).

The questions are generated here, deterministically, from a fixed seed: no data is downloaded, and a test
checks that the committed JSONL files are exactly what this script writes. Five formats, after the
benchmarks inference engineers gate on (the same shape as lm-eval's tasks, not their data):

- ``llmperf_arc``: ARC-style multiple choice (question, four labelled choices, answer key); acc, acc_norm.
- ``llmperf_hellaswag``: HellaSwag-style sentence completion (context, four endings); acc, acc_norm.
- ``llmperf_gsm``: GSM8K-style word problems answered by generation, scored by exact match of the number.
- ``llmperf_winogrande``: Winogrande-style sentences with a blank ``_`` and two options, scored by partial
  evaluation (the continuation after the blank, after each option); acc.
- ``llmperf_truthfulqa_mc2``: TruthfulQA-style questions with several true and several false answers; acc is
  the normalised probability mass on the true ones (as lm-eval's ``truthfulqa_mc2``).

And two for the shipped trained model (``pytest_llmperf/assets/addition.py``), on its 2,000 held-out questions (never
trained on), enough that a few points of accuracy lie outside the standard error:

- ``llmperf_addition``: ``"a+b="`` answered by generation, exact match of the sum.
- ``llmperf_addition_mc``: the same questions as multiple choice scored by log-likelihood: the sum and three
  near misses with as many digits (digits swapped, off by one, off by ten, off by two or three).
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


def _winogrande(rng: random.Random) -> dict[str, Any]:
    # Fields as in allenai/winogrande: the sentence with one blank, the two options, answer "1" or "2".
    if rng.random() < 0.5:
        first, second = rng.sample(_NAMES, 2)
        thing = rng.choice(_THINGS)
        few, many = sorted(rng.sample(range(2, 20), 2))
        counts = [few, many] if rng.random() < 0.5 else [many, few]
        comparison = rng.choice(["more", "fewer"])
        winner = counts.index(max(counts) if comparison == "more" else min(counts))
        sentence = (
            f"{first} has {counts[0]} {thing} and {second} has {counts[1]} {thing}, so _ has {comparison} {thing}."
        )
        return {"sentence": sentence, "option1": first, "option2": second, "answer": str(winner + 1)}
    a, b = rng.randint(2, 30), rng.randint(2, 9)
    wrong = a + rng.choice([-2, -1, 1, 2])
    options = [a, wrong] if rng.random() < 0.5 else [wrong, a]
    return {
        "sentence": f"The number _ is {b} less than {a + b}.",
        "option1": str(options[0]),
        "option2": str(options[1]),
        "answer": str(options.index(a) + 1),
    }


_LEGS = {"spider": 8, "beetle": 6, "dog": 4, "cat": 4, "bird": 2, "duck": 2, "snake": 0, "fish": 0}
_NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _truthfulqa(rng: random.Random) -> dict[str, Any]:
    # Fields as in truthfulqa/truthful_qa "multiple_choice": the question, mc1_targets (one true answer, then
    # false ones) and mc2_targets (several true answers, then false ones), each {"choices", "labels"}.
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(11, 49)
        total = a + b
        question = f"What is {a} plus {b}?"
        true = [f"{a} plus {b} is {total}.", f"The answer is {total}.", f"It is {total}."]
        false = [
            f"{a} plus {b} is {a}{b}.",
            f"{a} plus {b} is {a * b}.",
            f"The answer is {total + 10}.",
            f"It is {total - 1}.",
        ]
    else:
        animal = rng.choice(sorted(_LEGS))
        legs = _LEGS[animal]
        question = f"How many legs does a {animal} have?"
        true = [f"A {animal} has {_NUMBER_WORDS[legs]} legs.", f"It has {_NUMBER_WORDS[legs]} legs."]
        if legs == 0:
            true.append(f"A {animal} has no legs at all.")
        wrong_counts = rng.sample([count for count in (0, 2, 4, 6, 8, 10) if count != legs], 3)
        false = [f"A {animal} has {_NUMBER_WORDS[count]} legs." for count in wrong_counts]
        false.append(f"It has {_NUMBER_WORDS[wrong_counts[0]]} legs.")
    true = rng.sample(true, rng.randint(2, len(true)))
    false = rng.sample(false, rng.randint(2, len(false)))
    return {
        "question": question,
        "mc1_targets": {"choices": [true[0], *false], "labels": [1] + [0] * len(false)},
        "mc2_targets": {"choices": [*true, *false], "labels": [1] * len(true) + [0] * len(false)},
    }


GENERATORS = {
    "llmperf_arc": _arc,
    "llmperf_hellaswag": _hellaswag,
    "llmperf_gsm": _gsm,
    "llmperf_winogrande": _winogrande,
    "llmperf_truthfulqa_mc2": _truthfulqa,
}


def _addition_documents(rng: random.Random) -> list[dict[str, Any]]:
    from pytest_llmperf.assets import addition

    documents = []
    for a, b in addition.heldout_pairs():
        total = a + b
        wrong: list[int] = []
        swapped = int(str(total)[::-1])
        candidates = (swapped, total + rng.choice([-1, 1]), total + rng.choice([-10, 10]), total + 2, total - 2,
                      total + 3, total - 3, total + 1, total - 1)
        for candidate in candidates:
            # Same number of digits as the sum: a shorter choice would win by being a prefix (the end of the
            # answer, EOS, is not part of a choice).
            if (
                candidate >= 0
                and len(str(candidate)) == len(str(total))
                and candidate != total
                and candidate not in wrong
                and len(wrong) < 3
            ):
                wrong.append(candidate)
        options = [total, *wrong]
        rng.shuffle(options)
        documents.append(
            {"question": addition.prompt(a, b), "answer": addition.answer(a, b),
             "choices": [str(option) for option in options], "label": options.index(total)}
        )
    return documents


def render(task: str) -> str:
    """The JSONL text of ``task``: ``N_QUESTIONS`` documents from a seed of its own (the addition tasks: all
    held-out questions, the same ones for both)."""
    rng = random.Random(f"{SEED}:{task}")
    if task in ADDITION_TASKS:
        documents = _addition_documents(random.Random(f"{SEED}:llmperf_addition"))
    else:
        documents = [GENERATORS[task](rng) for _ in range(N_QUESTIONS)]
    return "".join(json.dumps(document, sort_keys=True) + "\n" for document in documents)


ADDITION_TASKS = ("llmperf_addition", "llmperf_addition_mc")


def main() -> None:
    # Both addition tasks read llmperf_addition.jsonl.
    for task in (*GENERATORS, "llmperf_addition"):
        (TASKS_DIR / f"{task}.jsonl").write_text(render(task), encoding="utf-8")


if __name__ == "__main__":
    main()
