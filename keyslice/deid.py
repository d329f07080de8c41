"""De-identification of free text: one PHI detector for report ingestion, failure messages and the publish gate.

Every piece of text that comes from a study (the report, error messages that quote a study's folder) goes
through :func:`deidentify` before anything is written, and the publish gate (:mod:`keyslice.publish.privacy`)
scans exported strings with the same :data:`TEXT_RULES`, so what ingestion masks and what the gate refuses
can never drift apart. Each PHI span is replaced by a placeholder of its kind (:data:`KIND_TOKENS`:
``[NAME]``, ``[DATE]``, ``[ID]``, ``[ADDRESS]``, ``[CONTACT]``, ``[AGE]``, ``[LOCATION]``); a name is masked
whole (title, given names, initials, particles, hyphenated surname, suffix and credentials), never only
its first token.

What it finds (HIPAA Safe Harbor's elements that occur in report text):

* **names**: after a title (``Dr. Jonathan Whitfield``), after a label (``Name:``, ``Signed by``,
  ``Referring physician:``), before credentials (``J. Whitfield, MD``), DICOM person names
  (``DOE^JANE``), ``Doe, Jane``, bare ``Jane Doe`` / ``Doe Jane`` where one token is a known given name
  (the vocabulary: the Latin-script given names and surnames of Faker's person providers, all 86 locales,
  about 20,000 given names and 18,000 surnames) and the other is capitalised and not a medical or common
  word, and two or more capitalised words after a cue that names a person (``Seen by``, ``Patient``);
* **dates** in every common written form (``March 3rd, 2021``, ``3 Mar 2021``, ``03/04/21``,
  ``2021-03-04``, ``20210304``, ``03-MAR-2021``, month-year, day-month without a year), with an
  attached time;
* **identifiers**: labelled MRN / accession / patient / case numbers, ``MRN00482913``-style codes,
  runs of 6+ digits, SSNs, DICOM UIDs;
* **contacts**: phone and fax numbers (regex plus Google's libphonenumber through ``phonenumbers``),
  e-mail, URLs, IP addresses;
* **addresses**: street addresses (``123 Main Street, Apt 4``), city-state-ZIP, UK postcodes,
  German street names, labelled addresses; **locations**: institutions and local file paths;
* **ages over 89**, in digits or words (``92-year-old``, ``ninety-two-year-old``, ``aged 101``,
  ``in her nineties``, ``nonagenarian``).

Why rules and not Presidio: Presidio's analyzer finds names and places with a spaCy NER model, and no
NER model can be installed here (the official ``en_core_web_*`` packages are not on PyPI; copies
re-uploaded by third parties are not a source to trust with PHI). Without one, Presidio misses every
name, address and age; its remaining pattern recognisers cover e-mail, URL, IP and phone formats that
are here too, yet its e-mail and URL validation fetches the public-suffix list from the internet on
first use (a build must send no traffic), and it pins ``preshed<3.0.14``, a downgrade of a spaCy
dependency. The well-kept pieces that fit are used directly: ``phonenumbers`` (the library behind
Presidio's phone recogniser) and Faker's given-name lists as a vocabulary.

The rules lower the risk; they do not prove that no identifying information is left. The detector is
deliberately eager: a false positive costs a word of a report sentence, a false negative leaks PHI.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Mapping, Sequence

DEID_VERSION = "deid-rules.v1"

#: The placeholder each kind of PHI is replaced by.
KIND_TOKENS: dict[str, str] = {
    "name": "[NAME]", "date": "[DATE]", "id": "[ID]", "address": "[ADDRESS]", "contact": "[CONTACT]",
    "age": "[AGE]", "location": "[LOCATION]",
}

# --------------------------------------------------------------------------- vocabularies

_GIVEN_ATTRS = ("first_names", "first_names_male", "first_names_female", "first_names_nonbinary", "first_names_unisex",
                "first_romanized_names", "first_romanized_names_male", "first_romanized_names_female")
_FAMILY_ATTRS = ("last_names", "last_romanized_names")

#: Given names that are also ordinary English or report words; they start a bare name only after a title or
#: a label, never on their own.
AMBIGUOUS_GIVEN = frozenset("""
Will Mark May June April August Grace Hope Faith Joy Rose Iris Ruby Amber Dawn Summer Autumn Pearl Crystal
Holly Ivy Lily Daisy Violet Jade Bill Art Sky Chance Major King Angel Precious Destiny Harmony Heaven Miracle
Patience Royal Sunny Storm Star Page Lane Dean Drew Gene Guy Ray Rich Rob Sandy Frank Bud Cash Case Early Free
Gray Grey Young Long Little Love Lucky Max Mercy Noble Sage Tracy Van Victory Wade West Wood Ward Clay Cole
Glen Hunter Jack Miles Reed Rod Stone Lee Chip Don Eve Bo Cruz Le Justice Hale Carol Field Forest Ocean River
Rain Nova Luna Sol Ever Norma Gay Hardy Bright Bliss Brook Brooke Sterling Sonny Rusty Dusty Penny Ginger Honey
Candy Cherry Misty Mitch Ted Bob Bobby Tim Nick Pat Sam Kim Ali Bea Dot Flora Fauna Faye Golden Hazel Heather
Jasmine Jewel Kitty Liberty Marina Melody Olive Poppy Raven Reign Rosemary Saffron Serenity Sierra Stormy
Trinity Unity Vita Willow Winter Zen Alpha Bishop Brand Brown Carter Chase 
Colt Cook Cooper Court Crane Dale Dallas Denver Duke Dusty Ebony Ezra Fisher Fletcher Ford Fox Gale Gerry
Hall Hart Haven Hays Hill Jay Judge Kent Knight Lance Marshal Mayo Moss
Parker Pierce Porter Price Prince Queen Ransom Read Rex Rider Rock Rocky Shepherd
Sky Skye Wells Wolf Worth Wren York
""".split())

#: Words never taken as a surname or given name: imaging, anatomy and report vocabulary that is capitalised
#: at a sentence start or in a heading. Organ and finding terms of the segmenter's lexicon are added.
MEDICAL_WORDS = frozenset(w.lower() for w in """
Axial Coronal Sagittal Oblique Contrast Enhanced Unenhanced Noncontrast Arterial Venous Portal Delayed Phase
CT MRI PET Computed Tomography Tomogram Scan Scans Image Images Imaging Figure Fig Arrow Arrows Arrowhead
Arrowheads Asterisk Panel Series Slice Slices View Views Window Reconstruction Reformat Reformatted Plain Chest
Abdomen Abdominal Pelvis Pelvic Head Neck Brain Spine Thorax Thoracic Lumbar Cervical Sacral Cranial Liver Hepatic
Spleen Splenic Kidney Kidneys Renal Pancreas Pancreatic Lung Lungs Pulmonary Heart Cardiac Aorta Aortic Bowel Colon
Rectum Bladder Gallbladder Stomach Gastric Esophagus Uterus Ovary Prostate Adrenal Thyroid Bone Bones Rib Ribs
Vertebra Vertebral Left Right Bilateral Anterior Posterior Superior Inferior Medial Lateral Upper Lower Middle
Mass Lesion Lesions Tumor Tumour Cyst Nodule Nodules Abscess Fluid Effusion Hematoma Haematoma Fracture Stone
Stones Calculus Thrombus Embolism Aneurysm Dissection Stenosis Occlusion Hernia Obstruction Metastasis Metastases
Carcinoma Cancer Lymphoma Sarcoma Adenoma Syndrome Disease Diseases Sign Type Grade Stage Class Classification
Normal Abnormal Findings Finding Impression Impressions Report History Indication Technique Comparison
Conclusion Clinical Note Notes Patient Patients Case Cases Male Female Man Woman Boy Girl Year Years Old Month
Months Day Days Week Weeks Hospital Clinic Department University Center Centre Medical Radiology Institute
Unit Units Hounsfield Ultrasound Doppler Angiography Angiogram Biopsy Surgery Resection Stent Catheter Drain
Tube Valve Graft Shunt Filter Device Wire Clip Clips Coil Coils Pacemaker Prosthesis The This That These Those
There Here With Without And But Or Of In On At By For From To Into After Before During Status Post Prior Follow
Sections Section Volume Rendering Maximum Intensity Projection Minimum Multiplanar Three Dimensional High Low
Resolution Dose Protocol Study Studies Table Tables Group Groups Score Scale Index Test Tests Type
Wilms Crohn Hodgkin Hounsfield Bosniak Couinaud Klatskin Morgagni Bochdalek Meckel Kaposi Ewing Hashimoto Chiari
Mirizzi Caroli Riedel Virchow Pancoast Kerley Kartagener Marfan Danlos Zenker Boerhaave Fournier Lemierre Rendu
Jeghers Fraumeni Von Van De
""".split())

#: Eponyms made of words that are also common names; a name rule never fires inside one. (Eponyms whose words
#: are rare as names, such as Wilms or Klatskin, are in MEDICAL_WORDS; common surnames such as Turner, Barrett
#: or Graves stay names, since an eponym is never preceded by a given name.)
_EPONYMS = re.compile(r"\b(?:Sister[ \t]+Mary[ \t]+Joseph|Mallory[ -]Weiss|Peutz[ -]Jeghers|(?:Von|von)[ \t]+Hippel[ -]Lindau|"
                      r"Ehlers[ -]Danlos|Li[ -]Fraumeni|Osler[ -]Weber[ -]Rendu|Sturge[ -]Weber|Budd[ -]Chiari|"
                      r"Guillain[ -]Barr[eé]|Wolff[ -]Parkinson[ -]White|Zollinger[ -]Ellison|Stevens[ -]Johnson|"
                      r"Legg[ -]Calv[eé][ -]Perthes|Dandy[ -]Walker|Arnold[ -]Chiari|Charcot[ -]Marie[ -]Tooth)\b")

#: Lower-case words that may sit between a given name and a surname (``Maria de la Cruz``, ``Jan van der Berg``).
PARTICLES = frozenset({"van", "von", "de", "del", "della", "der", "den", "da", "di", "du", "dos", "das", "la", "le",
                       "ter", "ten", "bin", "ibn", "al", "el", "y", "af", "zu", "St", "St."})
_SUFFIXES = r"(?:Jr|Sr|II|III|IV|V)\.?"
_CREDENTIALS = (r"(?:M\.?D|D\.?O|Ph\.?D|MBBS|MBChB|MB|BS|RN|NP|PA-C|PA|FRCR|FRCP|FRCS|FRACS|FRANZCR|FACR|DMRD|DNB|"
                r"MPH|MSc|BSc|RT|RT\(R\)|ARRT|CNMT)")


def _load_vocabulary() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames) in Latin script from Faker's person providers of every locale (86 in Faker
    40): name data maintained by Faker's contributors."""
    import pkgutil

    try:
        import faker.providers.person as person
    except ImportError as exc:
        raise ImportError("keyslice.deid needs Faker's name lists: pip install 'faker==40.54.0'") from exc
    given: set[str] = set()
    family: set[str] = set()
    latin = re.compile(rf"{_NAMEWORD}")
    for module in pkgutil.iter_modules(person.__path__):
        try:
            provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        except (ImportError, AttributeError):
            continue
        for attrs, into in ((_GIVEN_ATTRS, given), (_FAMILY_ATTRS, family)):
            for attr in attrs:
                names = getattr(provider, attr, ())
                if isinstance(names, (list, tuple, dict, set, frozenset)):
                    into |= {str(n) for n in names if latin.fullmatch(str(n))}
    if not given:
        raise ImportError("keyslice.deid needs Faker's given-name lists: pip install 'faker==40.54.0'")
    return frozenset(given), frozenset(family)


@lru_cache(maxsize=1)
def vocabulary() -> tuple[frozenset[str], frozenset[str]]:
    """Given names usable as a bare-name cue (ambiguous and medical words removed), and surnames."""
    given, family = _load_vocabulary()
    medical = _medical_words()
    cues = frozenset(g for g in given if len(g) > 2 and g not in AMBIGUOUS_GIVEN and g.lower() not in medical)
    family = frozenset(f for f in family if len(f) > 2 and f.lower() not in medical and f not in AMBIGUOUS_GIVEN)
    return cues, family


@lru_cache(maxsize=1)
def _medical_words() -> frozenset[str]:
    from keyslice import vocab

    medical = set(MEDICAL_WORDS)
    for terms in vocab.organ_terms().values():
        medical |= {w.lower() for term in terms for w in term.split()}
    medical |= {w.lower() for term in vocab.FINDING_TERMS for w in term.split()}
    return frozenset(medical)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class TextHit:
    """One PHI span: the rule that found it, its kind, and character offsets."""

    rule: str
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Rule:
    """A named detector. ``pattern`` matches are hits (group ``phi`` when present, else the whole match);
    ``finder`` is used instead where a regex alone cannot decide (name vocabularies, libphonenumber).
    ``needs``: a character class every hit contains; texts without one skip the rule (speed)."""

    name: str
    kind: str
    description: str
    pattern: re.Pattern[str] | None = None
    finder: Callable[[str], Iterable[tuple[int, int]]] | None = None
    needs: str = ""
    validate: Callable[[re.Match[str]], bool] | None = None

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        if self.finder is not None:
            yield from self.finder(text)
            return
        assert self.pattern is not None
        for m in self.pattern.finditer(text):
            if self.validate is not None and not self.validate(m):
                continue
            if "phi" in self.pattern.groupindex and m.group("phi") is not None:
                yield m.span("phi")
            else:
                yield m.span()


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


_UP = "A-ZÀ-ÖØ-Þ\u0100-\u017f"  # Latin-1 and Latin Extended-A (Ł, Ś, Ž...; that block mixes cases)
_LO = "a-zß-öø-ÿ\u0100-\u017f"
#: A capitalised name word: Whitfield, O'Neil, McDonald, Smith-Jones, D'Angelo.
_NAMEWORD = rf"(?:[{_UP}][{_LO}]?['’])?[{_UP}][{_LO}]+(?:[{_UP}][{_LO}]+)?(?:-[{_UP}][{_LO}]+)*"
_CAPSWORD = rf"[{_UP}]{{2,}}(?:['’-][{_UP}]+)*"
_INITIAL = rf"[{_UP}]\.?"
_PARTICLE = r"(?:(?:van|von|de|del|della|der|den|da|di|du|dos|das|la|le|ter|ten|bin|ibn|al|el)\b|St\.?)"
_SP = r"[ \t]+"
#: A full name after a title or label: initials, given names, particles and a surname, a suffix.
_FULLNAME = (rf"(?:{_INITIAL}{_SP}?)*(?:{_NAMEWORD}|{_CAPSWORD})(?:{_SP}(?:{_INITIAL}(?=[ \t])|{_NAMEWORD}|{_CAPSWORD}))"
             rf"{{0,3}}(?:{_SP}{_PARTICLE}){{0,3}}(?:{_SP}{_NAMEWORD})?(?:,?{_SP}{_SUFFIXES})?"
             rf"(?:,?[ \t]*{_CREDENTIALS}\b)*")
_TITLES = r"(?:Mr|Mrs|Ms|Mx|Miss|Dr|Drs|Prof|Professor|Doctor|Sir|Dame|Madam|Mme|Mlle|Herr|Frau|Sr|Sra|Srta|Nurse)"
_NAME_LABELS = (r"(?i:patient(?:'s)?[ \t]+name|name|patient|pt|referring(?:[ \t]+(?:physician|doctor|provider|"
                r"clinician))?|ordering(?:[ \t]+(?:physician|provider|clinician))?|requesting(?:[ \t]+physician)?|"
                r"attending(?:[ \t]+physician)?|physician|radiologist|reading[ \t]+radiologist|consultant|surgeon|"
                r"technologist|radiographer|resident|fellow|author|cc|copy[ \t]+to|guardian|next[ \t]+of[ \t]+kin|"
                r"contact|informant|mother|father|spouse|wife|husband|daughter|son)[ \t]*[:=][ \t]*"
                r"|(?i:(?:electronically[ \t]+)?signed|dictated|reported|read|reviewed|verified|transcribed|approved|"
                r"authored|interpreted|discussed|communicated|referred)[ \t]+(?i:by|to|with)[ \t]+")

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_MONTH_ANYCASE = r"(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_ORD = r"(?:st|nd|rd|th)"
_YEAR4 = r"(?:1[89]\d{2}|20\d{2})"
_TIME = r"(?:(?:,?[ \t]+(?:at[ \t]+)?|T)(?:[01]?\d|2[0-3])[:.h][0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:[ \t]?(?i:[ap]\.?m\.?))?(?:[ \t]?(?:Z|UTC|[+-]\d{2}:?\d{2}))?)?"
_WEEKDAY = r"(?:(?:Mon|Tues?|Wed(?:nes)?|Thu(?:rs)?|Fri|Sat(?:ur)?|Sun)(?:day)?\.?,?[ \t]+)?"

_INSTITUTION_WORDS = (r"(?:Hospital|Hospitals|Clinic|Clinics|Medical Cent(?:er|re)|Health(?:care)? System|"
                      r"Infirmary|Klinikum|Universitätsklinikum|Radiology Associates|Imaging Cent(?:er|re))")
#: What may follow an institution word: ``of Edinburgh``, ``Rechts der Isar``, ``de la Santé``.
_INSTITUTION_TAIL = r"(?:(?:[ \t]+(?:of|de|di|für|der|des|am|an|la|the))*[ \t]+[A-Z][\w'’-]+){0,3}"
#: Street types; an abbreviation keeps its period (``Elm Rd.``), a full word leaves the sentence's period alone.
_STREET = (r"(?:(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Way|Terrace|Parkway|Highway|Square|Circle|"
           r"Close|Crescent|Row|Walk|Gardens|Alley|Trail|Mews|Hill|Grove|Park)\b"
           r"|(?:St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Pkwy|Hwy|Sq|Cir|Cres|Gdns)\b\.?)")
_US_STATES = ("AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
              "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC").split()
_US_STATE = "(?:" + "|".join(_US_STATES) + ")"

_NUM_UNITS = r"(?:one|two|three|four|five|six|seven|eight|nine)"
_AGE_WORDS = (rf"(?:ninety(?:[\s-]+{_NUM_UNITS})?|(?:one|a)[\s-]+hundred(?:[\s-]+(?:and[\s-]+)?"
              rf"(?:{_NUM_UNITS}|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|"
              rf"twenty|thirty|forty)(?:[\s-]+{_NUM_UNITS})?)?)")
_AGE_NUM = r"(?:9\d|1[0-4]\d)"


def _numeric_date_ok(m: re.Match[str]) -> bool:
    """``a/b/y``: one of a, b is a month (<= 12) and both are plausible days."""
    a, b = int(m.group("a")), int(m.group("b"))
    return 1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)


# ---- finders that need vocabularies or libraries

_WORD = re.compile(rf"[{_UP}{_LO}](?:[{_UP}{_LO}'’-]*[{_UP}{_LO}])?\.?")


def _words(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def _is_cap(word: str) -> bool:
    core = word.rstrip(".")
    return bool(re.fullmatch(_NAMEWORD, core))


def _is_caps(word: str) -> bool:
    return bool(re.fullmatch(_CAPSWORD, word))


def _bare_name_spans(text: str) -> Iterator[tuple[int, int]]:
    """``Jane Doe``, ``Jane A. Doe``, ``Maria de la Cruz``, ``JANE DOE``, ``Doe Jane`` and ``Doe, Jane``:
    one token is a known given name, the surname is capitalised and is not a medical or common word."""
    given, family = vocabulary()
    medical = _medical_words()
    words = _words(text)
    n = len(words)

    def adjacent(i: int, j: int, allow_comma: bool = False) -> bool:
        gap = text[words[i][1]:words[j][0]]
        return bool(re.fullmatch(r"[ \t]+" if not allow_comma else r",[ \t]*|[ \t]+", gap))

    def name_like(word: str, caps: bool) -> bool:
        core = word.rstrip(".")
        return (_is_caps(core) if caps else _is_cap(core)) and core.lower() not in medical and len(core) > 1

    def given_form(word: str) -> bool:
        core = word.rstrip(".")
        return (core in given) or (_is_caps(core) and core.title() in given)

    i = 0
    while i < n:
        start, end, word = words[i]
        core = word.rstrip(".")
        caps = _is_caps(core)
        if given_form(word) and (caps or _is_cap(core)):
            # Given [Initial|Middle]{0,2} [particles] Surname
            j, last = i, None
            k = i + 1
            middles = 0
            while k < n and adjacent(k - 1, k):
                w = words[k][2]
                wc = w.rstrip(".")
                if re.fullmatch(rf"[{_UP}]\.?", w) and middles < 2:
                    middles += 1
                elif wc in PARTICLES or w in PARTICLES:
                    pass
                elif name_like(w, caps):
                    last = k
                    if given_form(w) and middles < 2 and k + 1 < n and adjacent(k, k + 1) \
                            and name_like(words[k + 1][2], caps):
                        middles += 1  # a middle name: keep going to the surname
                        k += 1
                        continue
                    break
                else:
                    break
                k += 1
            if last is not None:
                j = last
                end_char = words[j][1] - (1 if words[j][2].endswith(".") and not re.fullmatch(
                    rf"[{_UP}]\.", words[j][2]) else 0)
                yield start, end_char
                i = j + 1
                continue
            # Surname Given / Surname, Given (a known surname before a given name)
        if i + 1 < n and (core in family or (caps and core.title() in family)) and adjacent(i, i + 1, True) \
                and given_form(words[i + 1][2]) and (_is_caps(words[i + 1][2].rstrip(".")) == caps):
            j = i + 1
            if j + 1 < n and adjacent(j, j + 1) and re.fullmatch(rf"[{_UP}]\.?", words[j + 1][2]):
                j += 1
            yield start, words[j][1]
            i = j + 1
            continue
        i += 1


def _last_comma_first_spans(text: str) -> Iterator[tuple[int, int]]:
    """``Whitfield, Jonathan`` with any capitalised surname before a known given name."""
    given, _ = vocabulary()
    medical = _medical_words()
    for m in re.finditer(rf"\b(?P<last>{_NAMEWORD}|{_CAPSWORD}),[ \t]*(?P<first>{_NAMEWORD}|{_CAPSWORD})"
                         rf"(?:[ \t]+{_INITIAL}(?![{_LO}]))?", text):
        last, first = m.group("last"), m.group("first")
        if last.lower() in medical or first.lower() in medical:
            continue
        if first in given or (first.isupper() and first.title() in given):
            yield m.span()


_PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "IT", "ES", "AU", "CA", "IN")
#: Digit groups long enough to be a phone number; only these are handed to libphonenumber (it is slow).
_PHONE_CANDIDATE = re.compile(r"\+?\(?\d[\d \t().-]{5,}\d")
_DATE_SHAPE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{8}")


def _phonenumbers_spans(text: str) -> Iterator[tuple[int, int]]:
    """Digit groups that Google's libphonenumber parses as a valid number of one of the common regions."""
    import phonenumbers

    for cand in _PHONE_CANDIDATE.finditer(text):
        value = cand.group().rstrip(" \t.-(")
        if sum(c.isdigit() for c in value) < 7 or _DATE_SHAPE.fullmatch(value):
            continue
        for region in _PHONE_REGIONS:
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                yield cand.start(), cand.start() + len(value)
                break


_NAME_CUES = re.compile(
    r"(?i:\b(?:patient(?:'s)?(?:[ \t]+name)?|pt|(?:seen|requested|referred|ordered|examined|reviewed|signed|"
    r"dictated|read|reported|verified|interpreted|approved|consented|accompanied|transferred|attended)[ \t]+by|"
    r"referring[ \t]+(?:clinician|physician|doctor|provider)|clinician|physician|radiologist|surgeon|consultant|"
    r"technologist|radiographer|nurse|daughter|son|wife|husband|mother|father|brother|sister|spouse|guardian|"
    r"cc|copy[ \t]+to|sent[ \t]+to|results[ \t]+to|discussed[ \t]+with|communicated[ \t]+to|informed|notified|"
    r"called|attn)[ \t]*[:,-]?[ \t]+)"
    rf"(?P<name>{_NAMEWORD}(?:[ \t]+(?:{_INITIAL}(?=[ \t])|{_PARTICLE}|{_NAMEWORD})){{1,4}})")


def _cued_name_spans(text: str) -> Iterator[tuple[int, int]]:
    """Two or more capitalised words after a cue that names a person (``Seen by Oluwaseun Adebayo``,
    ``Patient Hiroshi Tanaka``), whatever the names are, unless a word is medical or report vocabulary."""
    medical = _medical_words()
    for m in _NAME_CUES.finditer(text):
        words = [w for w in re.split(r"[ \t]+", m.group("name")) if not re.fullmatch(_PARTICLE, w)]
        if any(w.rstrip(".").lower() in medical for w in words):
            continue
        yield m.span("name")


TEXT_RULES: tuple[Rule, ...] = (
    # names
    Rule("title_name", "name", "a name after a title (Mr./Mrs./Dr./Prof.), masked whole",
         _rx(rf"\b{_TITLES}\.?{_SP}(?:and{_SP}{_TITLES}\.?{_SP})?{_FULLNAME}")),
    Rule("labelled_name", "name", "a name after a label (Name:, Patient:, Signed by, Referring physician:...)",
         _rx(rf"(?:{_NAME_LABELS})(?P<phi>(?:{_TITLES}\.?{_SP})?(?:[A-Za-z][A-Za-z'.-]*\^[A-Za-z'.^-]*"
             rf"|{_NAMEWORD},[ \t]*{_NAMEWORD}(?:[ \t]+{_INITIAL})?|{_FULLNAME}))")),
    Rule("name_credentials", "name", "a name before credentials (J. Whitfield, MD)",
         _rx(rf"\b(?:{_INITIAL}{_SP}?)*{_NAMEWORD}(?:{_SP}(?:{_INITIAL}|{_NAMEWORD})){{0,3}},?[ \t]*"
             rf"(?:M\.D\.|MD|D\.O\.|Ph\.?D|MBBS|MBChB|FRCR|FRCP|FRCS|FACR|RN|NP|PA-C)\b")),
    Rule("dicom_person_name", "name", "a DICOM person name (FAMILY^GIVEN^MIDDLE)",
         _rx(r"\b[A-Za-z][A-Za-z'.-]*(?:\^[A-Za-z'.-]*){1,4}"), needs=r"\^"),
    Rule("last_comma_first", "name", "a name written 'Lastname, Firstname' (a known given name)",
         finder=_last_comma_first_spans, needs=","),
    Rule("cued_name", "name", "two or more capitalised words after a cue (Seen by, Patient, Referring clinician)",
         finder=_cued_name_spans),
    Rule("bare_name", "name", "a bare name: a known given name with a capitalised surname (Jane Doe, Doe Jane)",
         finder=_bare_name_spans),
    # dates
    Rule("date_dicom", "date", "a DICOM-style date (YYYYMMDD), with a time",
         _rx(r"(?<!\d)(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:[T ]?[0-2]\d[0-5]\d(?:[0-5]\d)?)?(?!\d)"),
         needs=r"\d"),
    Rule("date_iso", "date", "an ISO-style date (YYYY-MM-DD, YYYY/MM/DD), with a time",
         _rx(rf"\b{_YEAR4}([-/.])(?:0?[1-9]|1[0-2])\1{_DAY}(?!\d){_TIME}"), needs=r"\d"),
    Rule("date_numeric", "date", "a numeric date (DD/MM/YYYY, MM-DD-YY, DD.MM.YYYY), with a time",
         _rx(rf"(?<![\d.,/-])(?P<a>\d{{1,2}})(?P<sep>[/.-])(?P<b>\d{{1,2}})(?P=sep)(?:\d{{4}}|\d{{2}})(?![\d/]|\.\d){_TIME}"),
         needs=r"\d", validate=_numeric_date_ok),
    Rule("date_text", "date", "a date with a month name (March 3rd, 2021; 3 Mar 2021; 03-MAR-2021; March 3)",
         _rx(rf"\b{_WEEKDAY}{_MONTH}\.?[ \t]+{_DAY}{_ORD}?\b(?:,?[ \t]+(?:{_YEAR4}|'\d{{2}})\b)?{_TIME}"
             rf"|\b{_WEEKDAY}(?:the[ \t]+)?{_DAY}{_ORD}?[ \t]+(?:of[ \t]+)?{_MONTH}\b\.?(?:,?[ \t]+{_YEAR4}\b)?{_TIME}"
             rf"|\b{_DAY}[-/ ]?{_MONTH_ANYCASE}[a-zA-Z]*\.?[-/ ]?(?:{_YEAR4}|\d{{2}})\b{_TIME}"
             rf"|\b{_MONTH}[-/.]{_DAY}[-/.](?:{_YEAR4}|\d{{2}})\b{_TIME}"),
         needs=r"\d"),
    Rule("date_month_year", "date", "a month and year (March 2021, Mar. 2021, 03/2021, 2021-03)",
         _rx(rf"\b{_MONTH}\.?,?[ \t]+(?:of[ \t]+)?(?:{_YEAR4}|'\d{{2}})\b|\b{_MONTH}[-/']\d{{2,4}}\b"
             rf"|(?<![\d./-])(?:0?[1-9]|1[0-2])[/-]{_YEAR4}\b(?![/-]\d)|\b{_YEAR4}[/-](?:0[1-9]|1[0-2])\b(?![/-]\d)"),
         needs=r"\d"),
    Rule("date_label", "date", "a value after a date label (DOB:, Date of birth:, Exam date:)",
         _rx(r"(?i:\b(?:DOB|D\.O\.B\.|date[ \t]+of[ \t]+(?:birth|death|service|exam|study|admission|discharge)|"
             r"birth[ \t]*date|exam[ \t]+date|study[ \t]+date|admitted|discharged|born)[ \t]*[:=]?[ \t]*)"
             r"(?P<phi>\d[\d/.\-]{5,9}\d)"), needs=r"\d"),
    # identifiers
    Rule("id_label", "id", "an identifier after an MRN/accession/patient-id label",
         _rx(r"\b(?:MRN|MR\s?#|medical\s+record(?:\s+(?:number|no\.?|#))?|record\s+(?:number|no\.?|#)|"
             r"patient\s+(?:id|number|no\.?|#)|PID|ID|accession(?:\s+(?:number|no\.?|#))?|acc(?:\.|ession)?\s?(?:no\.?|#)|"
             r"hospital\s+(?:number|no\.?|#)|case\s+(?:number|no\.?|#)|NHS\s+(?:number|no\.?)|SSN|"
             r"social\s+security(?:\s+number)?|encounter(?:\s+(?:id|number|no\.?))?|visit\s+(?:id|number|no\.?)|"
             r"study\s+id|exam\s+(?:id|number|no\.?)|order\s+(?:id|number|no\.?)|specimen\s+(?:id|number|no\.?)|"
             r"account\s+(?:number|no\.?)|insurance\s+(?:id|number|no\.?)|member\s+id|health\s+(?:card|plan)\s+"
             r"(?:number|no\.?)|chart(?:\s+(?:number|no\.?))?|specimen|order|encounter|folder|barcode|label|sample)"
             r"\s*[:#=]?\s*(?=[A-Z0-9/-]*\d)[A-Z0-9](?:[A-Z0-9-]|/(?=\d)){4,}(?:\s\d{3,}\b)*", re.IGNORECASE), needs=r"\d"),
    Rule("id_code", "id", "an MRN- or accession-like code (MRN00482913, ACC-2021-00042, A1234567)",
         _rx(r"\b(?:(?i:MRN|ACC|PID|MR|HN|NHS|PAT|PT|ID|ENC|ACCN|CASE)[-_#: ]?\d{4,}|[A-Z]{1,4}\d{0,3}-\d{4,}(?:-\d+)?"
             r"|[A-Z]{1,3}\d{6,})\b"), needs=r"\d"),
    Rule("ssn", "id", "a social-security-number pattern", _rx(r"\b\d{3}-\d{2}-\d{4}\b"), needs=r"\d"),
    Rule("digit_run", "id", "a run of 6 or more digits (MRN-, accession- or date-like)",
         _rx(r"(?<![\d.,])\d{6,}(?![\d,]|\.\d)"), needs=r"\d"),
    Rule("dicom_uid", "id", "a DICOM UID (dotted numbers)", _rx(r"(?<![\d.])\d+(?:\.\d+){4,}(?!\d|\.\d)"), needs=r"\d"),
    # contacts
    Rule("phone", "contact", "a phone or fax number",
         _rx(r"(?:\+\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b|\(\d{3}\)\s?\d{3}[\s.-]\d{4}\b"
             r"|\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}\b"), needs=r"\d"),
    Rule("phone_label", "contact", "a number after a phone/fax/pager label",
         _rx(r"\b(?:tel|phone|telephone|fax|pager|mobile|cell|bleep|ext|extension)\b\.?\s*(?:no\.?|number|#)?\s*[:#]?\s*"
             r"\+?\(?\d[\d\s().-]{2,}\d", re.IGNORECASE), needs=r"\d"),
    Rule("phone_extension", "contact", "an extension number (x4471)", _rx(r"\b[xX]\d{4,5}\b"), needs=r"\d"),
    Rule("phone_intl", "contact", "a phone number valid for a common region (Google libphonenumber)",
         finder=_phonenumbers_spans, needs=r"\d"),
    Rule("email", "contact", "an e-mail address",
         _rx(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), needs="@"),
    Rule("url", "contact", "a URL", _rx(r"\b(?:https?|ftp)://\S+|\bwww\.\S+", re.IGNORECASE), needs=r"[/w]"),
    Rule("ip_address", "contact", "an IP address", _rx(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)"), needs=r"\d"),
    # addresses and locations
    Rule("street_address", "address", "a street address (123 Main Street, Apt 4B, Boston, MA 02115)",
         _rx(rf"\b\d{{1,5}}[A-Za-z]?(?:[ \t]+[{_UP}][{_LO}]+\.?){{1,4}}[ \t]+{_STREET}"
             rf"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|#)\.?[ \t]*#?\w+)?"
             rf"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b)?(?:,[ \t]*[{_UP}][{_LO}]+(?:[ \t]+[{_UP}][{_LO}]+){{0,2}})?(?:,?[ \t]+{_US_STATE})?"
             rf"(?:,?[ \t]+\d{{5}}(?:-\d{{4}})?)?"), needs=r"\d"),
    Rule("po_box", "address", "a post-office box", _rx(r"\bP\.?\s?O\.?\s?Box\s+\d+", re.IGNORECASE), needs=r"\d"),
    Rule("city_state_zip", "address", "a city, state and ZIP code (Boston, MA 02115)",
         _rx(rf"\b[{_UP}][{_LO}]+(?:[ \t]+[{_UP}][{_LO}]+){{0,2}},[ \t]*{_US_STATE}\.?[ \t]+\d{{5}}(?:-\d{{4}})?\b"),
         needs=r"\d"),
    Rule("uk_postcode", "address", "a UK postcode (SW1A 1AA)",
         _rx(r"\b(?:[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]?)[ \t]?\d[ABD-HJLNP-UW-Z]{2}\b"), needs=r"\d"),
    Rule("street_de", "address", "a German-style street and number (Hauptstraße 12)",
         _rx(rf"\b[{_UP}][{_LO}]+(?:straße|strasse|str\.|weg|gasse|allee|platz|ring|damm|ufer)[ \t]+\d+[a-z]?\b"
             rf"(?:,?[ \t]+\d{{4,5}}[ \t]+[{_UP}][{_LO}]+)?"),
         needs=r"\d"),
    Rule("street_romance", "address", "a French, Italian, Spanish or Portuguese street (12 Rue de la Paix, Via Roma 22)",
         _rx(rf"\b(?:\d{{1,4}}[a-z]?,?[ \t]+)?(?:Rue|Avenue|Boulevard|Bd|Place|Allée|Chemin|Quai|Via|Viale|Piazza|Corso|"
             rf"Calle|Avenida|Plaza|Paseo|Rua|Travessa|Largo|Carrer)[ \t]+(?:(?:de|del|della|di|da|do|la|le|les|des|du)"
             rf"[ \t]+)*[{_UP}][{_LO}]+(?:[ \t]+[{_UP}][{_LO}]+)?(?:[ \t]+\d{{1,4}}[a-z]?)?"
             rf"(?:,[ \t]*(?:\d{{4,5}}[ \t]+)?[{_UP}][{_LO}]+)?(?<=\w)"), needs=r"\d"),
    Rule("labelled_address", "address", "a value after an address label (Address:, lives at)",
         _rx(r"(?i:\b(?:address|addr|residence|home|lives[ \t]+at|resides[ \t]+at)[ \t]*[:=][ \t]*|"
             r"\b(?:lives|resides)[ \t]+at[ \t]+)(?!\[)(?P<phi>[^\n;\[]{3,80}?)(?=[.;\n\[]|$)"), needs=r"[:tT]"),
    Rule("local_path", "location", "a local file path (folder names often hold accession numbers or names)",
         _rx(r"(?<![\w/.])(?:/(?:home|Users|root|mnt|media|data|srv|tmp|var|work|scratch|nfs|net|Volumes|opt|pacs|"
             r"studies|archive)/\S*|[A-Za-z]:\\\S*|\\\\[A-Za-z0-9]\S*)"), needs=r"[/\\]"),
    Rule("institution", "location", "an institution name",
         _rx(rf"\b(?:(?:[A-Z][A-Za-z'&.-]+\s+){{1,4}}{_INSTITUTION_WORDS}\b{_INSTITUTION_TAIL}"
             rf"|{_INSTITUTION_WORDS}(?=\s+(?:of|de|di|für|der|des|am|[A-Z]))(?:{_INSTITUTION_TAIL})+)")),
    # ages
    Rule("age_over_89", "age", "an age over 89 (HIPAA Safe Harbor), in digits or words",
         _rx(rf"\b{_AGE_NUM}[\s-]*(?:years?|yrs?|y|yo)\.?[\s-]*(?:old|of[\s-]+age)\b|\baged?[ \t]*[:=]?[ \t]*{_AGE_NUM}\b"
             rf"|\b{_AGE_NUM}[ \t]*(?:y/o|yo|y\.o\.|yrs?|years)\b|\b{_AGE_NUM}[ \t]?(?:M|F)\b(?![-/])"
             rf"|\b{_AGE_WORDS}[\s-]+(?:years?|yrs?)(?:[\s-]+old|[\s-]+of[\s-]+age)?\b|\baged?[ \t]*[:=]?[ \t]*{_AGE_WORDS}\b"
             rf"|\bin[ \t]+(?:his|her|their)[ \t]+(?:nineties|90s|90's|hundreds)\b|\b(?:super)?(?:nonagenarian|"
             rf"centenarian)s?\b", re.IGNORECASE)),
)

#: Rules NOT applied to columns that name software (selector model, VQA generator, report segmenter, prompt
#: version): those values come from the build configuration, and model ids carry release dates and numbers
#: (``gpt-4o-2024-08-06``) that are not patient dates or MRNs.
VERSION_NUMBER_RULES = frozenset({"date_dicom", "date_iso", "date_numeric", "date_text", "date_month_year",
                                  "digit_run", "id_code", "phone_intl", "uk_postcode"})

_NEEDS_CACHE: dict[str, re.Pattern[str]] = {}
#: A span of placeholders alone (what de-identification left) is no hit: de-identified text scans clean.
_PLACEHOLDERS_ONLY = re.compile(r"[\s,;:()]*(?:\[(?:NAME|DATE|ID|ADDRESS|CONTACT|AGE|LOCATION)\][\s,;:()]*)+")


def scan_text(text: str, rules: Sequence[Rule] = TEXT_RULES) -> list[TextHit]:
    """Every rule hit in ``text``, sorted by position (overlaps kept: each names its rule)."""
    present: dict[str, bool] = {"": True}
    hits = []
    for rule in rules:
        if rule.needs not in present:
            needs = _NEEDS_CACHE.setdefault(rule.needs, re.compile(rule.needs))
            present[rule.needs] = needs.search(text) is not None
        if present[rule.needs]:
            hits += [TextHit(rule.name, rule.kind, s, e) for s, e in rule.spans(text)
                     if e > s and not _PLACEHOLDERS_ONLY.fullmatch(text, s, e)]
    eponyms = [m.span() for m in _EPONYMS.finditer(text)] if hits else []
    if eponyms:
        hits = [h for h in hits if h.kind != "name" or not any(s <= h.start and h.end <= e for s, e in eponyms)]
    return sorted(set(hits), key=lambda h: (h.start, h.end, h.rule))


def merge_spans(hits: Sequence[TextHit]) -> list[tuple[int, int, str]]:
    """Overlapping hits merged into one span each; the kind of the longest hit names it."""
    merged: list[list] = []
    for h in sorted(hits, key=lambda h: (h.start, -h.end)):
        if merged and h.start < merged[-1][1]:
            if h.end > merged[-1][1]:
                if h.end - h.start > merged[-1][3]:
                    merged[-1][2], merged[-1][3] = h.kind, h.end - h.start
                merged[-1][1] = h.end
        else:
            merged.append([h.start, h.end, h.kind, h.end - h.start])
    return [(s, e, k) for s, e, k, _ in merged]


def replace_spans(text: str, hits: Sequence[TextHit]) -> str:
    """``text`` with each (merged) hit span replaced by its kind's placeholder."""
    out, pos = [], 0
    for start, end, kind in merge_spans(hits):
        out.append(text[pos:start])
        out.append(KIND_TOKENS.get(kind, f"[{kind.upper()}]"))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def scrub_text(text: str, rules: Sequence[Rule] = TEXT_RULES) -> tuple[str, list[TextHit]]:
    """Replace every PHI span by its placeholder; returns the scrubbed text and the hits."""
    hits = scan_text(text, rules)
    return replace_spans(text, hits), hits


@dataclass(frozen=True)
class Deidentified:
    """De-identified text and how many spans of each kind were masked (counts only, never values)."""

    text: str
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_masked(self) -> int:
        return sum(self.counts.values())


def deidentify(text: str) -> Deidentified:
    """The text with every PHI span replaced by ``[NAME]``, ``[DATE]``...; the raw text is not kept."""
    hits = scan_text(text)
    counts = Counter(kind for _, _, kind in merge_spans(hits))
    return Deidentified(replace_spans(text, hits), dict(sorted(counts.items())))


# --------------------------------------------------------------------------- messages

#: keyslice's own pseudonyms (``st-<hex>``, ``se-<hex>:3``) may look like ID numbers; they are safe to keep.
_PSEUDONYM = re.compile(r"\b(?:st|pa|se)-[0-9a-f]{16}(?::\d{1,6})?\b|\b[0-9a-f]{20,64}\b")
_QUOTED_PATH = re.compile(r"""(['"])(?:[A-Za-z]:)?[\\/][^'"\n]*\1""")
_BARE_PATH = re.compile(r"(?<![\w<>])(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'\"]+)+[\\/]?")


def sanitize_message(message: str, private: Iterable[str] = ()) -> str:
    """An error message safe to store: the study's private strings (its folder path and source key, given in
    ``private``) become ``<study>``, any other file path becomes ``<path>``, and the PHI detector masks what is
    left (names, IDs, dates...). keyslice pseudonyms are kept so the message still says which series failed."""
    for value in sorted({v for v in private if v and len(v) > 2}, key=len, reverse=True):
        message = re.sub(rf"(?<![\w.-]){re.escape(value)}(?![\w-])", "<study>", message)
    message = _QUOTED_PATH.sub(lambda m: f"{m.group(1)}<path>{m.group(1)}", message)
    message = _BARE_PATH.sub("<path>", message)
    keep = [m.span() for m in _PSEUDONYM.finditer(message)]
    given, _ = vocabulary()
    lone_names = [TextHit("given_name", "name", m.start(), m.end()) for m in _WORD.finditer(message)
                  if m.group().rstrip(".") in given]  # an error text is not prose: any given name is masked
    hits = [h for h in [*scan_text(message), *lone_names] if not any(s <= h.start and h.end <= e for s, e in keep)]
    return replace_spans(message, hits)
