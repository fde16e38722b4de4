"""Organ tags from radiology reports (docs/method.md §2, paper section 3.1.1).

A report is scanned once with one regular expression built from the vocabulary in
``resources/tags.json`` (extendable by the user's own files of the same shape). Rules:

* whole words, longest phrase first, case-insensitive; abbreviations (``LV``, ``IVC``, ``GB``) only as written;
* a mention means the organ is in the image, so a negated finding ("no splenomegaly") still tags it;
* sided organs (kidney, adrenal gland, atrium, ventricle) take their side from the nearest side word in the
  same phrase ("left renal cyst", "L kidney"); a plural or bilateral mention ("kidneys", "both adrenals")
  tags both sides; an unsided singular mention tags both sides unless ``unsided="none"`` -- or unless the same
  sentence names that organ with a side ("Renal cell carcinoma in the left kidney": the left kidney only; clauses
  joined by ``;`` or ``:`` are one sentence: "cyst in the left kidney; renal function is normal");
* phrases that contain an organ word without naming the organ are ignored, with their plurals: brain ventricles
  by number or name ("4th ventricle", "lateral ventricles"), imaging phases ("portal venous phase(s)");
* ambiguous abbreviations count only in a sentence with a word of their context and none of a conflicting
  one (``abbreviation_contexts``): "RA" is the right atrium next to "atrial" or "heart", not in "History of RA";
  "PV" is the portal vein next to "liver" or "splenic", not beside "pulmonary vein";
* repeated mentions are aggregated: the result is the set of tags, in vocabulary order.

Input contract (documented for users): ``str`` or UTF-8 ``bytes``. An empty or blank text gives ``[]``;
any other type raises ``TypeError``; bytes that are not UTF-8 raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["TagVocabulary", "TagExtractor", "extract_tags", "tags_to_multi_hot", "default_vocabulary", "DEFAULT_TAGS"]

_PHRASE_BREAK = re.compile(r"[,.;:()\[\]!?\n]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")  # ";" and ":" join clauses of one sentence
_MAX_SIDE_GAP_WORDS = 2  # "left lower pole renal cyst": the side word may precede the organ word by two words
_MIN_WORDS_FOR_LANGUAGE = 5  # shorter texts ("Leber", "CT abdomen") say too little about their language
_SIDE_WINDOW = 256  # characters looked back for a side word: bounded, so extraction stays linear in the text


def _vocab_path() -> str:
    return str(Path(__file__).resolve().parent / "resources" / "tags.json")


class TagVocabulary:
    """The tag list and its synonyms, loaded from one or more JSON files (later files extend earlier ones).

    Args:
        paths: JSON files with the keys of ``resources/tags.json``; ``None`` loads only the shipped file.
        include_default: start from the shipped vocabulary before reading ``paths``.
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | None = None, include_default: bool = True) -> None:
        self.tags: list[str] = []
        self.phrases: dict[str, tuple[str, ...]] = {}  # lower-case phrase -> tags
        self.abbreviations: dict[str, tuple[str, ...]] = {}  # exact text -> tags
        self.sided: dict[str, tuple[str, str, bool]] = {}  # lower-case phrase -> (right tag, left tag, plural)
        self.ignore: set[str] = set()
        self.side_words: dict[str, str] = {}
        self.contexts: dict[str, set[str]] = {}  # name -> lower-case words
        self.abbreviation_contexts: dict[str, tuple[str, str | None]] = {}  # abbreviation -> (context, unless)
        self.stop_words: set[str] = set()  # the language's commonest words: a text without any is in another one
        files = ([_vocab_path()] if include_default else []) + [os.fspath(p) for p in (paths or [])]
        if not files:
            raise ValueError("TagVocabulary needs at least one vocabulary file.")
        for f in files:
            self._merge(f)

    def _merge(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tag vocabulary file not found: {path}")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tag vocabulary {path} is not valid UTF-8 JSON: {e}") from e
        for tag in data.get("tags", []):
            if tag not in self.tags:
                self.tags.append(tag)

        def known(tags: Iterable[str], where: str) -> tuple[str, ...]:
            tags = tuple(tags)
            for t in tags:
                if t not in self.tags:
                    raise ValueError(f"tag vocabulary {path}: {where} names '{t}', which is not in 'tags'")
            return tags

        for tag, words in data.get("terms", {}).items():
            known([tag], f"terms['{tag}']")
            for w in words:
                self.phrases[w.lower()] = (tag,)
        for word, tags in data.get("multi_terms", {}).items():
            self.phrases[word.lower()] = known(tags, f"multi_terms['{word}']")
        for word, tags in data.get("abbreviations", {}).items():
            self.abbreviations[word] = known(tags, f"abbreviations['{word}']")
        for organ, spec in data.get("sided_terms", {}).items():
            right, left = known([spec["right"], spec["left"]], f"sided_terms['{organ}']")
            for w in spec.get("singular", []):
                self.sided[w.lower()] = (right, left, False)
            for w in spec.get("plural", []):
                self.sided[w.lower()] = (right, left, True)
        for side, words in data.get("side_words", {}).items():
            if side not in ("right", "left", "both"):
                raise ValueError(f"tag vocabulary {path}: side_words has unknown side '{side}'")
            for w in words:
                self.side_words[w.lower()] = side
        self.ignore.update(w.lower() for w in data.get("ignore", []))
        self.stop_words.update(w.lower() for w in data.get("stop_words", []))
        for name, words in data.get("contexts", {}).items():
            self.contexts.setdefault(name, set()).update(w.lower() for w in words)
        for abbr, spec in data.get("abbreviation_contexts", {}).items():
            if abbr not in self.abbreviations:
                raise ValueError(f"tag vocabulary {path}: abbreviation_contexts names '{abbr}', not an abbreviation")
            for key in ("context", "unless"):
                if spec.get(key) is not None and spec[key] not in self.contexts:
                    raise ValueError(
                        f"tag vocabulary {path}: abbreviation_contexts['{abbr}'] {key} "
                        f"'{spec[key]}' is not in 'contexts'"
                    )
            self.abbreviation_contexts[abbr] = (spec["context"], spec.get("unless"))


class TagExtractor:
    """Extract unified organ tags from report text (see the module docstring for the rules).

    Args:
        vocabulary: a :class:`TagVocabulary`; the shipped one by default.
        unsided: what an unsided singular mention of a sided organ tags: ``"both"`` (default) or ``"none"``.

    >>> TagExtractor()("No splenomegaly. Left renal cyst; the IVC is patent.")
    ['spleen', 'left kidney', 'inferior vena cava']
    """

    def __init__(self, vocabulary: TagVocabulary | None = None, unsided: str = "both") -> None:
        if unsided not in ("both", "none"):
            raise ValueError(f"unsided must be 'both' or 'none', got {unsided!r}")
        self.vocabulary = vocabulary or TagVocabulary()
        self.unsided = unsided
        self._warned_language = False  # said once per extractor
        v = self.vocabulary
        alternatives = []  # (length, pattern); longest first makes the regex take the longest phrase
        for phrase in set(v.phrases) | set(v.sided):
            alternatives.append((len(phrase), "(?i:" + self._pattern(phrase) + ")"))
        for phrase in v.ignore:  # "portal venous phase" covers "... phases" too: plurals of what is ignored
            alternatives.append((len(phrase) + 2, "(?i:" + self._pattern(phrase) + "(?:e?s)?)"))
        for abbr in v.abbreviations:
            alternatives.append((len(abbr), self._pattern(abbr)))
        alternatives.sort(key=lambda a: -a[0])
        self._regex = re.compile(r"(?<![\w-])(?:" + "|".join(p for _, p in alternatives) + r")(?![\w-])")
        self._space = re.compile(r"[\s\-]+")

    @staticmethod
    def _pattern(phrase: str) -> str:
        return r"[\s\-]+".join(re.escape(w) for w in re.split(r"[\s\-]+", phrase.strip()))

    @property
    def tags(self) -> list[str]:
        return self.vocabulary.tags

    def _side(self, text: str, start: int) -> str | None:
        """The nearest side word before ``start`` within the same phrase (at most a few words back)."""
        before = _PHRASE_BREAK.split(text[max(0, start - _SIDE_WINDOW) : start])[-1]
        words = re.findall(r"[A-Za-z]+", before)[-(_MAX_SIDE_GAP_WORDS + 1) :]
        for w in reversed(words):
            side = self.vocabulary.side_words.get(w.lower())
            if side is not None:
                return side
        return None

    def __call__(self, text: str | bytes) -> list[str]:
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"report bytes are not valid UTF-8: {e}") from e
        if not isinstance(text, str):
            raise TypeError(f"extract_tags expects a str (or UTF-8 bytes), got {type(text).__name__}")
        v = self.vocabulary
        found: set[str] = set()
        for start, end in self._sentences(text):
            found |= self._sentence_tags(text, start, end)
        if not found and not self._warned_language and v.stop_words:
            words = re.findall(r"[^\W\d_]+", text.lower())
            if len(words) >= _MIN_WORDS_FOR_LANGUAGE and not v.stop_words.intersection(words):
                import warnings

                self._warned_language = True
                warnings.warn(
                    f"a report of {len(words)} words holds none of the vocabulary's common words "
                    f"({', '.join(sorted(v.stop_words)[:5])}, ...): it is probably not in the vocabulary's language "
                    "(English), so no tag can be found in it. Add a vocabulary in that language (docs/method.md, "
                    "'Tag vocabulary'; mosmos tags --vocab FILE)",
                    UserWarning,
                    stacklevel=2,
                )
        return [t for t in v.tags if t in found]

    @staticmethod
    def _sentences(text: str):
        """(start, end) of each sentence: split after ``. ! ?`` followed by a space, and at line breaks; clauses
        joined by ``;`` or ``:`` stay one sentence (a sided mention in one wins over an unsided one in another)."""
        start = 0
        for m in _SENTENCE_END.finditer(text):
            yield start, m.end()
            start = m.end()
        if start < len(text):
            yield start, len(text)

    def _context_ok(self, abbr: str, words: set[str]) -> bool:
        context, unless = self.vocabulary.abbreviation_contexts[abbr]
        ok = bool(words & self.vocabulary.contexts[context])
        return ok and not (unless is not None and words & self.vocabulary.contexts[unless])

    def _sentence_tags(self, text: str, start: int, end: int) -> set[str]:
        v = self.vocabulary
        found: set[str] = set()
        unsided: list[tuple[str, str]] = []  # organs mentioned without a side in this sentence
        words = None
        for m in self._regex.finditer(text, start, end):
            raw = m.group(0)
            if raw in v.abbreviations:
                if raw in v.abbreviation_contexts:
                    if words is None:
                        words = {w.lower() for w in re.findall(r"[A-Za-z]+", text[start:end])}
                    if not self._context_ok(raw, words):
                        continue
                found.update(v.abbreviations[raw])
                continue
            key = self._space.sub(" ", raw.lower())
            if key in v.ignore or re.sub(r"e?s$", "", key) in v.ignore:
                continue
            if key in v.phrases:
                found.update(v.phrases[key])
            elif key in v.sided:
                right, left, plural = v.sided[key]
                side = self._side(text, m.start())
                if plural or side == "both":
                    found.update((right, left))
                elif side == "right":
                    found.add(right)
                elif side == "left":
                    found.add(left)
                else:
                    unsided.append((right, left))
        for right, left in unsided:  # a sided mention of the same organ in the sentence wins
            if self.unsided == "both" and right not in found and left not in found:
                found.update((right, left))
        return found


@lru_cache(maxsize=1)
def default_vocabulary() -> TagVocabulary:
    return TagVocabulary()


@lru_cache(maxsize=1)
def _default_extractor() -> TagExtractor:
    return TagExtractor(default_vocabulary())


DEFAULT_TAGS: tuple[str, ...] = tuple(default_vocabulary().tags)


def extract_tags(text: str | bytes, extractor: TagExtractor | None = None) -> list[str]:
    """Unified tag names found in ``text``, in vocabulary order, without duplicates.

    ``str`` or UTF-8 ``bytes``; blank text gives ``[]``; another type raises ``TypeError``; invalid UTF-8 raises
    ``ValueError``.
    """
    return (extractor or _default_extractor())(text)


def tags_to_multi_hot(tags: Iterable[str], tag_list: Sequence[str] = DEFAULT_TAGS) -> torch.Tensor:
    """``y in {0,1}^K`` (float32) for the tags present; a tag outside ``tag_list`` is an error."""
    y = torch.zeros(len(tag_list), dtype=torch.float32)
    index = {t: i for i, t in enumerate(tag_list)}
    for t in tags:
        if t not in index:
            raise ValueError(f"tag '{t}' is not in the tag list {list(tag_list)}")
        y[index[t]] = 1.0
    return y
