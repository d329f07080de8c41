"""Is this report English? A small, documented stopword heuristic (no model, no download).

Rule, over the alphabetic words of the text:
1. If more than 30 % of the letters are outside the Latin script (Cyrillic, CJK,
   Arabic, Greek...), the text is not English.
2. Otherwise count English function words (spaCy's English ``STOP_WORDS``) and the
   function words of German, French, Spanish, Italian, Portuguese and Dutch (short
   lists below, words that are not also English words). With at least
   ``min_words`` words, the text is not English when the best foreign language's
   share is >= 15 % of the words and larger than the English share.

Telegraphic English ("Liver: normal. Spleen: 12 cm.") has few stopwords of any
language and passes; very short texts (< ``min_words`` words) always pass.
"""

from __future__ import annotations

import re

from spacy.lang.en.stop_words import STOP_WORDS as EN_STOP

FOREIGN_STOPWORDS: dict[str, frozenset[str]] = {
    "de": frozenset("der die das und ist nicht mit von den dem des ein eine einer eines sich auf für im zum zur "
                    "bei kein keine keinen wird werden sind wurde wurden nach oder auch ohne links rechts "
                    "unauffällig regelrecht leber niere milz beidseits kein".split()),
    "fr": frozenset("le la les et est des du une un dans pour sur avec pas sans au aux qui que ne ce cette "
                    "sont été foie rein rate gauche droite droit normal aucune aucun".split()),
    "es": frozenset("el la los las y es del una un en con por para sin se que no su sus hígado riñón bazo "
                    "izquierdo derecho izquierda derecha muy está están".split()),
    "it": frozenset("il lo la gli le e è del della dei delle un una con per senza non che si sono fegato "
                    "rene milza sinistro destro sinistra destra nella nel".split()),
    "pt": frozenset("o a os as e é do da dos das um uma em com por para sem não que se fígado rim baço "
                    "esquerdo direito esquerda direita".split()),
    "nl": frozenset("de het een en is van niet met zijn op voor geen bij er naar lever nier milt links "
                    "rechts".split()),
}
#: words of the lists above that are also English words (or English report tokens: "e" of
#: "e.g.", "normal", "rate", "links") never count as foreign
ENGLISH_TOO = frozenset("a e o y i normal rate rein links sin con pour son lo la le die dies est per use "
                        "sono van".split())
# drop words that are also English function words ("a", "is", "in", "no"...) or English words
FOREIGN_STOPWORDS = {k: frozenset(w for w in v if w not in EN_STOP and w not in ENGLISH_TOO)
                     for k, v in FOREIGN_STOPWORDS.items()}

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_NON_LATIN = re.compile(r"[^\W\d_a-zA-Z\u00c0-\u024f]", re.UNICODE)
_WORD_LANGS: dict[str, tuple[str, ...]] = {}
for _lang, _words in [("en", EN_STOP), *FOREIGN_STOPWORDS.items()]:
    for _w in _words:
        _WORD_LANGS[_w] = _WORD_LANGS.get(_w, ()) + (_lang,)


def detect_language(text: str, min_words: int = 6) -> tuple[str, dict[str, float]]:
    """Return (language code or "en", scores). Codes: en, de, fr, es, it, pt, nl, "non-latin"."""
    n_letters = 0 if text.isascii() else len(_LETTER.findall(text))  # ASCII text is all Latin
    if n_letters:
        non_latin = len(_NON_LATIN.findall(text))
        if non_latin / n_letters > 0.30:
            return "non-latin", {"non_latin_share": non_latin / n_letters}
    words = _WORD.findall(text.lower())
    if len(words) < min_words:
        return "en", {}
    n = len(words)
    counts = dict.fromkeys(["en", *FOREIGN_STOPWORDS], 0)
    for w in words:
        for lang in _WORD_LANGS.get(w, ()):
            counts[lang] += 1
    scores = {k: v / n for k, v in counts.items()}
    best = max((k for k in scores if k != "en"), key=lambda k: scores[k])
    if scores[best] >= 0.15 and scores[best] > scores["en"]:
        return best, scores
    return "en", scores
