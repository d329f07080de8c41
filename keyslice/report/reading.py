"""Reading a report file safely: bounded size, a detected encoding, and text that is language.

A report comes from a hospital export: UTF-8, often Windows-1252 or Latin-1, sometimes UTF-16
with a byte-order mark, and now and then something that is not a report at all (a binary file
saved as ``report.txt``). Decoding with ``errors="replace"`` turned ``3 × 2 cm`` into ``3 � 2 cm``
and random bytes into "findings"; here:

1. the file must be a regular file (a named pipe would block forever) and is read only up to
   the build's ``max_report_bytes`` (more is a :class:`LimitExceededError`);
2. UTF-8 (with or without a BOM) and BOM-marked UTF-16/32 decode directly; anything else goes
   to charset-normalizer (the detector ``requests`` uses). A mostly-ASCII text is tried against
   the Western single-byte encodings only, where a short Latin-1 report cannot be mistaken for
   Shift-JIS. Nothing decodes cleanly: :class:`UndecodableReportError`, never replacement marks;
3. :func:`check_language_like` refuses text that is not language (control characters, no
   words, symbol soup, letter runs that are no words) with :class:`NotLanguageError`.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
import unicodedata
from pathlib import Path

from keyslice.errors import InputError, LimitExceededError

#: default of the build setting ``max_report_bytes`` (see configs/build.example.yaml)
MAX_REPORT_BYTES = 200_000

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
#: single-byte encodings of Western European exports, tried for mostly-ASCII bytes
WESTERN = ["cp1252", "latin_1", "iso8859_15", "cp1250", "iso8859_2", "mac_roman"]


class UndecodableReportError(InputError):
    """The report's bytes are not text in any encoding the detector knows."""


class NotLanguageError(InputError):
    """The report decodes, but what it holds is not written language."""


def read_report_bytes(path: Path, max_bytes: int = MAX_REPORT_BYTES) -> bytes:
    """At most ``max_bytes`` of a regular file, never blocking; larger files are refused."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError("the report is not a regular file (a named pipe, socket or device); "
                             "replace it by a text file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitExceededError(f"the report is larger than {max_bytes} bytes (max_report_bytes); a radiology "
                                 "report is a few kB: check the file, or raise the limit in the build config")
    return data


def decode_report(data: bytes) -> str:
    """The text of a report's bytes in their detected encoding (see the module docstring)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise UndecodableReportError(f"the report starts with a {encoding} byte-order mark but is not "
                                             f"valid {encoding} (byte {exc.start}); save it as UTF-8") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    ascii_share = sum(b < 0x80 for b in data) / max(len(data), 1)
    best = from_bytes(data, cp_isolation=WESTERN).best() if ascii_share >= 0.9 else None
    best = best or from_bytes(data).best()
    if best is None:
        raise UndecodableReportError("the report is not text in any known encoding (a binary file?); "
                                     "save the report as UTF-8 text")
    return str(best)


def read_report_text(path: Path, max_bytes: int = MAX_REPORT_BYTES) -> str:
    """A report file's text: bounded, regular files only, encoding detected."""
    return decode_report(read_report_bytes(path, max_bytes))


_WORD = re.compile(r"[^\W\d_]{2,}")
_VOWELS = set("aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿœ")


def check_language_like(text: str) -> None:
    """Refuse text that is not written language, with the reason (:class:`NotLanguageError`).

    Rules (a report is short prose or telegraphic notes such as "Liver: unremarkable. Spleen:
    unremarkable."; both pass): at most 1 % control or replacement characters; letters make at least
    40 % of the non-space characters; at least 60 % of the words (runs of two or more letters) look
    like words (at most 25 letters, with a vowel, or an abbreviation of at most 5 capitals).
    Non-Latin scripts are left to the language check of the segmenter.
    """
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return  # empty: the segmenter's EmptyReportError says so
    bad = sum(1 for c in chars if c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Cn"))
    if bad / len(chars) > 0.01:
        raise NotLanguageError(f"the report holds {bad} control or undecodable characters of {len(chars)}: "
                               "it is not text (a binary file?)")
    letters = sum(1 for c in chars if c.isalpha())
    if letters / len(chars) < 0.40:
        raise NotLanguageError(f"only {letters / len(chars):.0%} of the report's characters are letters: "
                               "it is not written language")
    if not text.isascii() and _mostly_non_latin(text):
        return
    words = _WORD.findall(text)
    if not words:
        raise NotLanguageError("the report holds no word")
    wordlike = sum(1 for w in words if len(w) <= 25 and (set(w.lower()) & _VOWELS or (w.isupper() and len(w) <= 5)))
    if wordlike / len(words) < 0.60:
        raise NotLanguageError(f"only {wordlike / len(words):.0%} of the report's words look like words: "
                               "it is not written language")


def _mostly_non_latin(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if ord(c) > 0x24F) > 0.3 * len(letters)
