"""Seeded input perturbations for robustness suites: typos, casing, whitespace, punctuation,
character swaps and paraphrase templates.

Each attack is a pure function of the text and a ``random.Random``; :func:`perturb` seeds that
generator from (seed, attack, case id), so a case gets the same perturbation in every process,
on every xdist worker and in every run, whatever else the run holds. The attacks keep what a
reader needs to answer: letters stay letters (casing), words stay words (whitespace,
punctuation), and a typo touches a few words only (``rate``, at least one). Chinese text works
too: a run of CJK characters counts as one word, and its typos delete or double a character.
"""

from __future__ import annotations

import random
import re
import string
from typing import Callable, Sequence

ATTACKS = ("typos", "casing", "whitespace", "punctuation", "char_swap", "paraphrase")
DEFAULT_RATE = 0.1

EN_TEMPLATES = ("Here it is: {input}", "{input} That is all.", "Consider this. {input}",
                "Read this carefully: {input}", "{input} Thanks!")
ZH_TEMPLATES = ("请看：{input}", "{input}（以上）", "具体如下：{input}", "{input} 谢谢！")

_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCTUATION = set(string.punctuation) | set("。，、；：？！“”‘’（）《》【】…—")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
# keys next to each other on a QWERTY keyboard: where real typos land
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _key in enumerate(_row):
        _near = [_row[i] for i in (_c - 1, _c + 1) if 0 <= i < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_ROWS):
                _near += [_ROWS[_other][i] for i in (_c - 1, _c, _c + 1) if 0 <= i < len(_ROWS[_other])]
        _NEIGHBOURS[_key] = "".join(_near)


def _how_many(count: int, rate: float) -> int:
    return max(1, round(rate * count)) if count else 0


def _replace_words(text: str, spans: Sequence[tuple[int, int]], change: Callable[[str], str]) -> str:
    out, last = [], 0
    for start, end in sorted(spans):
        out += [text[last:start], change(text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)


def _pick_words(text: str, rng: random.Random, rate: float, min_len: int) -> list[tuple[int, int]]:
    words = [m.span() for m in _WORD.finditer(text) if m.end() - m.start() >= min_len]
    return rng.sample(words, _how_many(len(words), rate))


def typos(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """One keyboard slip in a share of the words: a neighbouring key, a dropped or doubled letter."""

    def slip(word: str) -> str:
        i = rng.randrange(len(word))
        char = word[i]
        lower = char.lower()
        ops = ["drop", "double"] + (["near", "insert"] if lower in _NEIGHBOURS else [])
        op = rng.choice(ops)
        if op == "drop":
            return word[:i] + word[i + 1:]
        if op == "double":
            return word[:i] + char + word[i:]
        near = rng.choice(_NEIGHBOURS[lower])
        near = near.upper() if char.isupper() else near
        return word[:i] + near + word[i + 1:] if op == "near" else word[:i] + near + word[i:]

    return _replace_words(text, _pick_words(text, rng, rate, 3), slip)


def char_swap(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """Two neighbouring characters swapped inside a share of the words (first and last kept in
    words of four or more letters, as in the classic 'typoglycemia' attack)."""

    def swap(word: str) -> str:
        inner = range(1, len(word) - 2) if len(word) >= 4 and not _CJK.search(word) else range(len(word) - 1)
        choices = [i for i in inner if word[i] != word[i + 1]]
        if not choices:
            return word
        i = rng.choice(choices)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]

    return _replace_words(text, _pick_words(text, rng, rate, 2), swap)


def casing(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """The whole text upper-cased, lower-cased, title-cased, or random case in a share of words."""

    def random_case(word: str) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)

    modes: list[Callable[[str], str]] = [
        str.upper, str.lower, str.title,
        lambda t: _replace_words(t, _pick_words(t, rng, max(rate, 0.3), 2), random_case),
    ]
    rng.shuffle(modes)
    for mode in modes:
        changed = mode(text)
        if changed != text:
            return changed
    return text


def whitespace(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """Extra spaces, tabs and newlines in a share of the gaps between words, and at the ends."""
    gaps = [m.span() for m in re.finditer(r"[ \t]+", text)]
    noise = ("  ", "   ", "\t", " \n ")
    if gaps:
        chosen = rng.sample(gaps, _how_many(len(gaps), rate))
        text = _replace_words(text, chosen, lambda gap: gap + rng.choice(noise))
    else:  # Chinese and other unspaced text: a space between two characters
        if len(text) > 1:
            i = rng.randrange(1, len(text))
            text = text[:i] + " " + text[i:]
    return rng.choice(("", " ", "\n")) + text + rng.choice((" ", "  ", "\n"))


def punctuation(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """Punctuation dropped altogether, or added after a share of the words."""
    present = [c for c in text if c in _PUNCTUATION]
    if present and rng.random() < 0.5:
        return "".join(c for c in text if c not in _PUNCTUATION)
    marks = ("，", "！", "？", "；") if _CJK.search(text) else (",", "!", "?", ";", "...")
    words = [m.span() for m in _WORD.finditer(text)]
    chosen = rng.sample(words, _how_many(len(words), rate)) if words else []
    return _replace_words(text, chosen, lambda word: word + rng.choice(marks)) if chosen else text + rng.choice(marks)


def paraphrase(text: str, rng: random.Random, rate: float = DEFAULT_RATE, templates: Sequence[str] = ()) -> str:
    """The text wrapped in a template that keeps its meaning ("Here it is: {input}")."""
    choices = templates or (ZH_TEMPLATES if _CJK.search(text) else EN_TEMPLATES)
    return rng.choice(list(choices)).replace("{input}", text)


ATTACK_FUNCTIONS: dict[str, Callable[..., str]] = {
    "typos": typos, "casing": casing, "whitespace": whitespace, "punctuation": punctuation,
    "char_swap": char_swap, "paraphrase": paraphrase,
}


def perturb(text: str, attack: str, *, seed: int = 0, key: str = "", rate: float = DEFAULT_RATE,
            templates: Sequence[str] = ()) -> str:
    """The text under one attack, the same for the same (seed, attack, key) everywhere."""
    if attack not in ATTACK_FUNCTIONS:
        raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    # a str seed is hashed with SHA-512 by random.seed: stable across processes, unlike hash()
    rng = random.Random(f"{seed}\x1f{attack}\x1f{key}")
    return ATTACK_FUNCTIONS[attack](text, rng, rate, templates)
