"""The kinds of task in the task set (:mod:`.tasks`): each draws one instance from an :class:`~.task_rng.Rng`
and computes its answer, and phrases it with one of at least three templates.

A kind's ``draw(rng) -> (values, answer)``: ``values`` fill the template (``str.format``) and also key the
instance (two draws with equal values are the same instance, whatever the phrasing); ``answer`` is the
exact expected text, computed here (code tracing computes the printed value from the numbers it
writes into the snippet; the snippet is never executed).

Part of the frozen task set: any change to a word, template or draw changes the set's checksum
(docs/tasks.md), so a change needs a new ``TASKSET_VERSION``.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Callable

from .task_rng import Rng

__all__ = ["KINDS", "TaskKind", "WORDS"]

# 200 common lowercase English words, 3 to 8 letters, no repeats (the order is part of the frozen set)
WORDS = tuple("""
apple river stone cloud garden window silver orange planet forest bread candle dragon engine
feather guitar hammer island jacket kettle lemon marble needle ocean pepper rabbit saddle tiger
umbrella valley wagon yellow zebra anchor basket castle desert finger goose harbor insect jungle
kitchen ladder mirror napkin oyster pillow quilt rocket spider tomato violin walnut button carpet
donkey eagle falcon ginger helmet igloo jelly koala lantern meadow nickel olive parrot quarter
ribbon salmon turtle velvet winter yogurt bottle cactus dolphin elbow fabric glove honey iron
jigsaw kitten lizard magnet noodle onion pencil puzzle rain shadow teapot uncle vessel wheat
barn cider dust frost grape hill inch jar kite leaf moon nest oak pond rope sand tent vine wolf
yard zinc arrow bench chalk drum fern gate horn ink jewel knot lamp mint nut oven pearl quiz
robin seed thumb urn vase whale yarn brick cabin delta ember flute grove hazel ivory jade
lilac maple nectar opal plum quartz raven sage thorn union vapor willow zenith acorn bison cedar
daisy epoch fjord glacier heron iris juniper kayak lotus mango nova orbit prism quill reef sparrow
tulip umber vortex wren amber blaze coral dune echo fable gravel haven pickle summer copper
fossil lagoon
""".split())


@dataclass(frozen=True)
class TaskKind:
    """A kind of task: its ``name``, its phrasings (``str.format`` templates over the drawn values) and
    ``draw(rng) -> (values, answer)``."""

    name: str
    templates: tuple[str, ...]
    draw: Callable[[Rng], tuple[dict, str]]


def _listed(items) -> str:
    return ", ".join(str(x) for x in items)


def _words(rng: Rng, low: int = 3, high: int = 6) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _numbers(rng: Rng, low: int = 4, high: int = 7, top: int = 99) -> list[int]:
    return rng.sample(range(top + 1), rng.randint(low, high))


# ---- strings ------------------------------------------------------------------------------------
def _reverse_word(rng):
    w = rng.choice(WORDS)
    return {"word": w}, w[::-1]


def _reverse_list(rng):
    items = _words(rng)
    return {"items": _listed(items)}, _listed(items[::-1])


def _uppercase(rng):
    ws = _words(rng, 1, 3)
    return {"text": " ".join(ws)}, " ".join(ws).upper()


def _first_letter(rng):
    w = rng.choice(WORDS)
    return {"word": w}, w[0]


def _last_letter(rng):
    w = rng.choice(WORDS)
    return {"word": w}, w[-1]


def _word_length(rng):
    w = rng.choice(WORDS)
    return {"word": w}, str(len(w))


def _caesar(rng):
    w, k = rng.choice(WORDS), rng.randint(1, 5)
    return {"word": w, "k": k}, "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in w)


# ---- counting and ordering ----------------------------------------------------------------------
def _count_letter(rng):
    w = rng.choice(WORDS)
    letter = rng.choice(w) if rng.below(4) else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return {"word": w, "letter": letter}, str(w.count(letter))


def _count_items(rng):
    items = _words(rng, 2, 9)
    return {"items": _listed(items)}, str(len(items))


def _sort_numbers(rng):
    xs = _numbers(rng)
    return {"items": _listed(xs)}, _listed(sorted(xs))


def _sort_descending(rng):
    xs = _numbers(rng)
    return {"items": _listed(xs)}, _listed(sorted(xs, reverse=True))


def _sort_words(rng):
    ws = _words(rng, 3, 5)
    return {"items": _listed(ws)}, _listed(sorted(ws))


def _max_list(rng):
    xs = _numbers(rng, 3, 7, 999)
    return {"items": _listed(xs)}, str(max(xs))


def _min_list(rng):
    xs = _numbers(rng, 3, 7, 999)
    return {"items": _listed(xs)}, str(min(xs))


# ---- arithmetic and units -----------------------------------------------------------------------
def _add(rng):
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return {"a": a, "b": b}, str(a + b)


def _subtract(rng):
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return {"a": max(a, b), "b": min(a, b)}, str(abs(a - b))


def _multiply(rng):
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    return {"a": a, "b": b}, str(a * b)


def _convert(factor: int, low: int = 1, high: int = 500):
    def draw(rng):
        n = rng.randint(low, high)
        return {"n": n}, str(n * factor)
    return draw


# ---- dates --------------------------------------------------------------------------------------
_EPOCH = datetime.date(2000, 1, 1)


def _date(rng) -> datetime.date:
    return _EPOCH + datetime.timedelta(days=rng.below(365 * 40))  # 2000-01-01 … 2039-12-xx


def _date_add(sign: int):
    def draw(rng):
        d, n = _date(rng), rng.randint(1, 60)
        return {"date": d.isoformat(), "n": n}, (d + datetime.timedelta(days=sign * n)).isoformat()
    return draw


def _weekday(rng):
    d = _date(rng)
    return {"date": d.isoformat()}, d.strftime("%A")


# ---- code tracing: the snippet is text; its printed value is computed here ------------------------
def _code_trace(rng):
    shape, a, b, c = rng.below(4), rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 9)
    if shape == 0:
        code, out = f"x = {a}\ny = x * {b} + {c}\nprint(y)", a * b + c
    elif shape == 1:
        code, out = f"x = {a}\nfor i in range({b}):\n    x = x + {c}\nprint(x)", a + b * c
    elif shape == 2:
        code, out = f"xs = [{a}, {b}, {c}]\nxs.append({a + b})\nprint(sum(xs))", a + b + c + a + b
    else:
        code, out = f"s = 'ab' * {b}\nn = len(s) - {a % b}\nprint(n)", 2 * b - a % b
    return {"code": code}, str(out)


def _kind(name: str, draw, *templates: str) -> TaskKind:
    return TaskKind(name, templates, draw)


KINDS: dict[str, TaskKind] = {k.name: k for k in (
    _kind("reverse_word", _reverse_word, "Reverse the word '{word}'. Reply with the reversed word only.",
          "Write '{word}' backwards.", "What is '{word}' spelled in reverse order?"),
    _kind("reverse_list", _reverse_list, "Reverse the order of this list: {items}",
          "Write these items in the opposite order, separated by commas: {items}",
          "List from last to first: {items}"),
    _kind("uppercase", _uppercase, "Convert to uppercase: {text}", "Write '{text}' in capital letters.",
          "Rewrite this text in all caps: {text}"),
    _kind("first_letter", _first_letter, "What is the first letter of the word '{word}'?",
          "Give the first letter of '{word}'.", "Which letter does '{word}' start with?"),
    _kind("last_letter", _last_letter, "What is the last letter of the word '{word}'?",
          "Give the final letter of '{word}'.", "Which letter does '{word}' end with?"),
    _kind("word_length", _word_length, "How many letters are in the word '{word}'?",
          "Count the letters of '{word}'.", "What is the length of the word '{word}'? Answer with a number."),
    _kind("caesar", _caesar, "Apply a Caesar shift of {k} to '{word}' (a becomes the letter {k} later).",
          "Shift every letter of '{word}' forward by {k} in the alphabet, wrapping z to a.",
          "Encode '{word}' with a Caesar cipher, shift {k}."),
    _kind("count_letter", _count_letter, "How many times does the letter '{letter}' appear in '{word}'?",
          "Count the occurrences of '{letter}' in the word '{word}'.",
          "In '{word}', how many '{letter}' are there? Answer with a number."),
    _kind("count_items", _count_items, "How many items are in this list: {items}?",
          "Count the words in this list: {items}", "Here is a list: {items}. How many entries does it have?"),
    _kind("sort_numbers", _sort_numbers, "Sort these numbers from smallest to largest: {items}",
          "Put in ascending order, separated by commas: {items}", "Arrange {items} in increasing order."),
    _kind("sort_descending", _sort_descending, "Sort these numbers from largest to smallest: {items}",
          "Put in descending order, separated by commas: {items}", "Arrange {items} in decreasing order."),
    _kind("sort_words", _sort_words, "Sort these words alphabetically: {items}",
          "Put in alphabetical order, separated by commas: {items}", "Alphabetize: {items}"),
    _kind("max_list", _max_list, "What is the largest number in {items}?", "Give the maximum of: {items}",
          "Which is the biggest of these numbers: {items}?"),
    _kind("min_list", _min_list, "What is the smallest number in {items}?", "Give the minimum of: {items}",
          "Which is the lowest of these numbers: {items}?"),
    _kind("add", _add, "What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."),
    _kind("subtract", _subtract, "What is {a} - {b}?", "Subtract {b} from {a}.",
          "Compute {a} minus {b}."),
    _kind("multiply", _multiply, "What is {a} * {b}?", "Multiply {a} by {b}.",
          "Compute the product of {a} and {b}."),
    _kind("km_to_m", _convert(1000), "How many meters are in {n} km?", "Convert {n} kilometers to meters.",
          "{n} km is how many m? Answer with a number."),
    _kind("kg_to_g", _convert(1000), "How many grams are in {n} kg?", "Convert {n} kilograms to grams.",
          "{n} kg is how many g? Answer with a number."),
    _kind("hours_to_minutes", _convert(60, 1, 300), "How many minutes are in {n} hours?",
          "Convert {n} hours to minutes.", "{n} h is how many minutes? Answer with a number."),
    _kind("m_to_cm", _convert(100, 1, 999), "How many centimeters are in {n} m?",
          "Convert {n} meters to centimeters.", "{n} m is how many cm? Answer with a number."),
    _kind("date_add_days", _date_add(1), "What date is {n} days after {date}? Answer as YYYY-MM-DD.",
          "Add {n} days to {date} (format YYYY-MM-DD).", "Starting from {date}, count forward {n} days. "
          "Which date is it (YYYY-MM-DD)?"),
    _kind("date_subtract_days", _date_add(-1), "What date is {n} days before {date}? Answer as YYYY-MM-DD.",
          "Subtract {n} days from {date} (format YYYY-MM-DD).", "Starting from {date}, count back {n} days. "
          "Which date is it (YYYY-MM-DD)?"),
    _kind("weekday", _weekday, "What day of the week is {date}?", "Which weekday falls on {date}?",
          "Name the day of the week of the date {date}."),
    _kind("code_trace", _code_trace, "What does this Python code print?\n\n{code}",
          "Run this Python snippet in your head and give its output:\n\n{code}",
          "{code}\n\nWhat is printed?"),
)}
