"""Harmful-content screening with word lists, English and Chinese (curation gate and PPO safety reward).

Pure stdlib. Matching:
- Terms written in letters/digits (English lists, and the Latin slang inside the Chinese lists such as
  "sb" or "cao") match whole words only, case-insensitively, multi-word terms as word sequences: "ass"
  must not fire inside "class", nor "sb" inside "usb".
- Terms holding CJK characters (or no letters at all, e.g. an emoji) match as substrings, because Chinese
  has no spaces to mark word boundaries. The ~42k such terms are matched with one trie walk per text
  position, not one `in` test per term.
Text and terms are NFKC-normalised and lower-cased first, so full-width letters and capitals match.

Terms listed in `allow` and CJK terms shorter than `min_cjk_chars` are not matched (see the constants).

Verdict (the knobs are the `load` / `from_terms` arguments):
- harmful   : any hit from a high-severity list, or >= `harmful_min_terms` (default 2) distinct terms;
- ambiguous : fewer distinct terms than that (by default exactly one), all low severity: a human should
              look;
- clean     : no hit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

# Which lists are high severity, and why:
# - sensitive-word-zh/violence is explosives and weapon-making how-tos ("硝酸甘油炸弹制作"), and the tagged
#   drugs/gambling/illegal/sexual lists are mostly long trade phrases ("出售钢珠枪" selling steel-ball guns):
#   no benign reading. Their short entries, though, are ordinary words (冰糖 rock sugar, 买房 buying a
#   house, and at three characters still 身份证 ID card, 新干线 the bullet train), so CJK terms shorter than
#   HIGH_SEVERITY_MIN_CJK_CHARS count as low severity whatever their list.
# - ldnoobw en/zh and sensitive-word-zh abuse/drugs/sexual stay low: profanity and anatomy words read
#   differently in context ("anal", "butt"), and the drugs list is a doping list that includes caffeine
#   (咖啡因). One such word alone is sent for review; two distinct ones make a text harmful.
DEFAULT_HIGH_SEVERITY: tuple[str, ...] = (
    "sensitive-word-zh/violence",
    "sensitive-word-zh/tagged:drugs",
    "sensitive-word-zh/tagged:gambling",
    "sensitive-word-zh/tagged:illegal",
    "sensitive-word-zh/tagged:sexual",
)
HIGH_SEVERITY_MIN_CJK_CHARS = 4
HARMFUL_MIN_TERMS = 2
# A single Chinese character is a morpheme, not a word: 性 sits in 性格 (character) and 可能性
# (possibility), 乳 in 牛乳 (milk). Substring matching of one character flags most Chinese text.
MIN_CJK_CHARS = 2
# Everyday words that the lists carry, found as the most frequent hits on clean dialogue corpora
# (KdConv, self-instruct): films, Japan, women, ID cards, currency, selling; "处女" is the 处女作 (debut
# work) of every filmography; "13." of ldnoobw/zh is slang that matches the plain number 13;
# "aids" is hearing and teaching aids far more often than the disease.
DEFAULT_ALLOW: tuple[str, ...] = (
    "电影", "日本", "日本人", "女人", "美女", "情人", "成人", "人民币", "证件", "身份证", "学生证",
    "出售", "销售", "处女", "13.", "aids",
)

# tagged.txt tag numbers (sensitive-word-zh SOURCE.txt: 0 政治 1 毒品 2 色情 3 赌博 4 违法).
TAG_NAMES = {"0": "politics", "1": "drugs", "2": "sexual", "3": "gambling", "4": "illegal"}
TAGGED_FILE = "tagged.txt"
NOT_A_LIST = ("LICENSE", "SOURCE", "README")

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# Letters/digits runs that stop at CJK characters, so "你是sb吗" yields the word "sb".
_WORD = re.compile(r"[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_TRIE_END = ""  # key marking "a term ends here"; no real character is the empty string


class LexiconError(ValueError):
    """A word-list folder or file cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class LexiconHit:
    term: str
    language: str  # language of the list the term comes from: "en" | "zh"
    severity: str  # "high" | "low"
    list_name: str


@dataclass
class _Entry:
    """Everything known about one normalised term: the lists it is on."""
    term: str
    hits: list[LexiconHit] = field(default_factory=list)


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _is_substring_term(term: str) -> bool:
    return bool(_CJK.search(term)) or not _words(term)


class Lexicon:
    def __init__(self, entries: dict[str, _Entry], harmful_min_terms: int = HARMFUL_MIN_TERMS):
        if harmful_min_terms < 1:
            raise ValueError(f"harmful_min_terms must be >= 1, got {harmful_min_terms}")
        self.harmful_min_terms = harmful_min_terms
        self._entries = entries
        self._trie: dict = {}
        self._by_first_word: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for term in entries:
            if _is_substring_term(term):
                self._add_to_trie(term)
            else:
                words = tuple(_words(term))
                self._by_first_word.setdefault(words[0], []).append((words, term))

    @classmethod
    def load(cls, lexicon_dir: str | Path, high_severity: Iterable[str] = DEFAULT_HIGH_SEVERITY, *,
             allow: Iterable[str] = DEFAULT_ALLOW, harmful_min_terms: int = HARMFUL_MIN_TERMS,
             min_cjk_chars: int = MIN_CJK_CHARS) -> "Lexicon":
        """Read every word list under `lexicon_dir` (see `read_lists` for the layout)."""
        lists, languages = read_lists(Path(lexicon_dir))
        return cls.from_terms(lists, languages, high_severity, allow=allow, harmful_min_terms=harmful_min_terms,
                              min_cjk_chars=min_cjk_chars)

    @classmethod
    def from_terms(cls, terms: dict[str, list[str]], languages: dict[str, str],
                   high_severity: Iterable[str] = DEFAULT_HIGH_SEVERITY, *, allow: Iterable[str] = (),
                   harmful_min_terms: int = HARMFUL_MIN_TERMS, min_cjk_chars: int = 1) -> "Lexicon":
        """Build from list_name -> terms and list_name -> language ("en" | "zh"). Unlike `load`, nothing is
        filtered by default, so tests see exactly the terms they pass."""
        high = set(high_severity)
        allowed = {normalise(term).strip() for term in allow}
        unknown = high - set(terms)
        if unknown:
            raise LexiconError(f"high-severity lists {sorted(unknown)} are not among the loaded lists "
                               f"{sorted(terms)}")
        entries: dict[str, _Entry] = {}
        for list_name, words in terms.items():
            language = languages[list_name]
            if language not in ("en", "zh"):
                raise LexiconError(f"list {list_name!r}: language must be 'en' or 'zh', got {language!r}")
            for raw in words:
                term = normalise(raw).strip()
                if not term or term in allowed or _too_short(term, min_cjk_chars):
                    continue
                severity = "high" if list_name in high and _long_enough_for_high(term) else "low"
                entry = entries.setdefault(term, _Entry(term))
                if all(hit.list_name != list_name for hit in entry.hits):  # lists repeat some terms
                    entry.hits.append(LexiconHit(term, language, severity, list_name))
        return cls(entries, harmful_min_terms)

    def _add_to_trie(self, term: str) -> None:
        node = self._trie
        for char in term:
            node = node.setdefault(char, {})
        node[_TRIE_END] = term

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, text: str) -> list[LexiconHit]:
        """Every (term, list) hit in `text`, each distinct term once per list (substring terms first)."""
        text = normalise(text)
        matched = dict.fromkeys(self._substring_matches(text))
        matched.update(dict.fromkeys(self._word_matches(_words(text))))
        return [hit for term in matched for hit in self._entries[term].hits]

    def _substring_matches(self, text: str) -> Iterable[str]:
        trie, end = self._trie, len(text)
        for start in range(end):
            node, pos = trie.get(text[start]), start + 1
            while node is not None:
                if _TRIE_END in node:
                    yield node[_TRIE_END]
                if pos == end:
                    break
                node, pos = node.get(text[pos]), pos + 1

    def _word_matches(self, words: list[str]) -> Iterable[str]:
        for i, word in enumerate(words):
            for seq, term in self._by_first_word.get(word, ()):
                if tuple(words[i:i + len(seq)]) == seq:
                    yield term

    def verdict(self, text: str) -> str:
        return verdict_of(self.find(text), self.harmful_min_terms)


def verdict_of(hits: list[LexiconHit], harmful_min_terms: int = HARMFUL_MIN_TERMS) -> str:
    """"clean" | "ambiguous" | "harmful" for a text's hits (module docstring has the rule)."""
    if not hits:
        return "clean"
    distinct = {hit.term for hit in hits}
    if any(hit.severity == "high" for hit in hits) or len(distinct) >= harmful_min_terms:
        return "harmful"
    return "ambiguous"


def _long_enough_for_high(term: str) -> bool:
    return not _CJK.search(term) or len(term) >= HIGH_SEVERITY_MIN_CJK_CHARS


def _too_short(term: str, min_cjk_chars: int) -> bool:
    return bool(_CJK.search(term)) and len(term) < min_cjk_chars


def read_lists(lexicon_dir: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every file under `lexicon_dir` except LICENSE/SOURCE/README files is a word list, one term a line,
    UTF-8 or UTF-16 with a byte-order mark. Its name is its path without `.txt` ("ldnoobw/en"); its
    language comes from a path part named `en`/`zh` or ending in `-en`/`-zh`. A file named `tagged.txt`
    holds "term tags" lines (tags comma-separated numbers, TAG_NAMES) and becomes one list per tag,
    named "<folder>/tagged:<tag name>"."""
    if not lexicon_dir.is_dir():
        raise LexiconError(f"{lexicon_dir}: lexicon folder does not exist")
    lists: dict[str, list[str]] = {}
    languages: dict[str, str] = {}
    for path in sorted(p for p in lexicon_dir.rglob("*") if p.is_file()):
        if path.name.startswith(NOT_A_LIST):
            continue
        rel = path.relative_to(lexicon_dir)
        language = _language_of(rel)
        lines = _read_lines(path)
        if path.name == TAGGED_FILE:
            for tag, terms in _split_tagged(path, lines).items():
                name = f"{rel.parent.as_posix()}/tagged:{tag}"
                lists[name], languages[name] = terms, language
        else:
            name = rel.with_suffix("").as_posix() if rel.suffix == ".txt" else rel.as_posix()
            lists[name], languages[name] = [line.strip() for line in lines], language
    if not lists:
        raise LexiconError(f"{lexicon_dir}: no word lists found")
    return lists, languages


def _language_of(rel: Path) -> str:
    for part in (rel.with_suffix("").name, *reversed(rel.parent.parts)):
        for language in ("en", "zh"):
            if part == language or part.endswith(f"-{language}"):
                return language
    raise LexiconError(f"{rel}: cannot tell the list's language; put it under a folder named en/zh "
                       f"or ending in -en/-zh")


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return raw.decode(encoding).splitlines()
    except UnicodeDecodeError as exc:
        raise LexiconError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from None


def _split_tagged(path: Path, lines: list[str]) -> dict[str, list[str]]:
    by_tag: dict[str, list[str]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        term, _, tags = line.rstrip().rpartition(" ")
        names = [TAG_NAMES.get(tag) for tag in tags.split(",")]
        if not term or None in names:
            raise LexiconError(f"{path}:{lineno}: expected 'term tags' with tags among "
                               f"{sorted(TAG_NAMES)}, got {line!r}")
        for name in names:
            by_tag.setdefault(name, []).append(term)
    return by_tag
