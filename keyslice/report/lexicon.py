"""Word lists of the rule-based report segmenter that are about English text, not medicine.

Laterality words, the verbs that make a conjunction a clause boundary, and the
abbreviations the tokenizer keeps whole. The medical vocabulary (organs, finding words,
abnormality types, ConText rules, phase words) is :mod:`keyslice.vocab`, shared with
series assignment, VQA generation and fine-tuning.
"""

from __future__ import annotations

# --- laterality ----------------------------------------------------------------
LATERALITY_TERMS: dict[str, str] = {
    "left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral",
    "both sides": "bilateral", "left and right": "bilateral", "right and left": "bilateral",
    }
#: words after left/right that make the side a heart chamber or a region, not an organ side
LATERALITY_BLOCK_NEXT = frozenset(
    {"ventricle", "ventricular", "atrium", "atrial", "heart", "coronary", "circumflex", "ventricles"}
)
#: plural organ words that make "both" bilateral ("both kidneys")
BOTH_PLURALS = frozenset(
    {"kidneys", "lungs", "adrenals", "adrenal", "sides", "hemithoraces", "lobes", "ovaries", "breasts",
     "femurs", "femora", "psoas", "iliac", "pleural", "lower", "upper"}
)

#: words that make the preceding "and"/"but" a clause boundary for compound splitting
CLAUSE_VERBS = frozenset(
    {"is", "are", "was", "were", "appears", "appear", "appeared", "shows", "show", "showed", "demonstrates",
     "demonstrated", "reveals", "revealed", "measures", "measured", "contains", "contained", "has", "have",
     "had", "remains", "remain", "remained", "seems", "seem", "looks", "look", "enhances", "enhance",
     "extends", "involves", "compresses", "displaces", "seen", "noted", "identified", "visualized",
     "visualised", "present", "observed", "persists", "persist", "abuts", "surrounds", "encases", "invades",
     "became", "become", "becomes", "showing", "demonstrating", "revealing", "measuring"}
)
#: conjunctions at which a compound sentence may be split
SPLIT_CONJUNCTIONS = frozenset({"and", "but", "while", "whereas", "whilst"})

#: tokenizer special cases: abbreviations that keep their period (never end a sentence
#: unless listed in SENTENCE_FINAL_ABBREVIATIONS and followed by a capitalised word)
ABBREVIATIONS = (
    "approx.", "Approx.", "e.g.", "i.e.", "vs.", "Vs.", "etc.", "fig.", "Fig.", "figs.", "Figs.", "no.", "No.",
    "nr.", "Nr.", "ca.", "cf.", "diam.", "resp.", "incl.", "max.", "min.", "sec.", "yrs.", "yr.", "mo.", "wk.",
    "hr.", "hrs.", "esp.", "pt.", "pts.", "y.o.", "i.v.", "I.V.", "p.o.", "a.k.a.", "Dr.", "dr.", "Mr.", "Mrs.",
    "Ms.", "Prof.", "St.", "ant.", "lat.", "med.", "inf.", "sup.", "prox.", "dist.", "seg.", "Seg.", "ser.",
    "Ser.", "img.", "Img.", "im.", "Im.", "se.", "Se.", "abd.", "Abd.", "cm.", "mm.",
)
SLASH_ABBREVIATIONS = ("s/p", "S/P", "S/p", "w/o", "W/O", "w/", "W/", "h/o", "H/O", "r/o", "R/O", "c/w", "C/W")
#: abbreviations that may end a sentence (boundary when the next word is capitalised)
SENTENCE_FINAL_ABBREVIATIONS = frozenset({"etc.", "min.", "sec.", "yrs.", "yr.", "mo.", "wk.", "hr.", "hrs.", "incl.",
                                          "resp.", "cm.", "mm."})
