"""The privacy gate that runs before anything of a corpus is exported. It fails closed.

What it checks, on exactly the rows and images that would be exported:

* **Identifiers** (``study_id``, ``patient_id``, ``series_id``, ``finding_id``, ``qa_id``...) must have the
  shape of keyslice's keyed-hash pseudonyms (:mod:`keyslice.pseudonym`: ``st-<16 hex>``...). A raw
  PatientID, accession number or folder name in an id column is therefore caught whatever it looks like.
* **Every other string** (report sentences, questions, answers, options, DICOM-derived values such as the
  kernel or manufacturer, model ids, image file names) goes through the PHI detector that de-identifies
  reports at ingestion (:mod:`keyslice.deid`, one set of rules for both): names (after titles or labels,
  DICOM ``DOE^JANE``, ``Doe, Jane``, bare ``Jane Doe``), dates in every common format, MRN / accession /
  ID numbers, SSNs, DICOM UIDs, phone numbers, e-mail addresses, URLs, IP addresses, street addresses and
  postcodes, institutions, local file paths (folder names are often accession numbers or patient names)
  and ages over 89 (HIPAA Safe Harbor). A report built with keyslice is already de-identified; the gate is
  the second line, for corpora built before, rows edited by hand and DICOM-derived values.
* **Known DICOM values** (optional): when the source studies are at hand, the patient's name, IDs, birth
  date, accession number, institution and physicians read from the DICOM headers must not appear verbatim
  in any exported string (:func:`dicom_phi_values`).
* **Images**: a key slice must be a PNG whose chunks are only ``IHDR``, ``PLTE``, ``IDAT`` and ``IEND``.
  Other chunks (``tEXt``, ``zTXt``, ``iTXt``, ``eXIf``, ``tIME``...) can carry metadata; they are removed
  by re-encoding (the pixel data is copied unchanged) and the removal is reported. A file that is not a
  valid PNG is a hit.

Any hit stops the publish: :class:`PrivacyError` names the table, the row (``finding_id``/``qa_id``), the
column, the rule and where in the value the spans are, never the value (nor a part of it); the privacy
report on disk (``CORPUS/publish/``) shows the value with every span masked, for fixing the source.

The one exception is opt-in (``keyslice publish --scrub-text``): :func:`scrub_rows` replaces the PHI-looking
spans of report-derived text (finding sentences, questions, answers, options) by ``[KIND]`` placeholders
before the gate runs, and the report lists every value it changed (table, row, column, rules, the scrubbed
value). Identifiers, DICOM-derived columns, header values found with ``--input`` and images are never
scrubbed: a hit there means the source or its de-identification is wrong, and the publish stays refused.
The gate is deliberately strict: a false positive costs a fixed report sentence; a false negative
publishes PHI. Pixel content (text burned into the image) cannot be checked by rules, which is why series
flagged ``BurnedInAnnotation`` and secondary captures are excluded before the gate runs
(:mod:`keyslice.publish.dataset_builder`).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping, MutableMapping, Sequence

from keyslice.deid import (DEID_VERSION, KIND_TOKENS, TEXT_RULES, VERSION_NUMBER_RULES, Rule, TextHit, merge_spans,
                           replace_spans, scan_text, scrub_text)
from keyslice.errors import KeysliceError

RULES_VERSION = f"privacy-rules.v2/{DEID_VERSION}"

# --------------------------------------------------------------------------- identifiers

_HEX16 = r"[0-9a-f]{16}"
ID_FORMATS: dict[str, re.Pattern[str]] = {
    "study_id": re.compile(rf"st-{_HEX16}"),
    "patient_id": re.compile(rf"pa-{_HEX16}"),
    "series_id": re.compile(rf"se-{_HEX16}"),
    "finding_id": re.compile(rf"st-{_HEX16}:\d{{1,6}}"),
    "qa_id": re.compile(r"[0-9a-f]{12,64}"),
    "weights_sha256": re.compile(r"[0-9a-f]{64}|[a-z][a-z-]{0,31}"),
    "image_name": re.compile(rf"st-{_HEX16}_\d{{1,6}}\.png"),
    "context_image_name": re.compile(rf"st-{_HEX16}_se-{_HEX16}_\d{{1,6}}\.png"),
    "stack_image_name": re.compile(rf"st-{_HEX16}_se-{_HEX16}_\d{{1,6}}_stack\d{{3}}\.png"),
}
#: Identifier columns that may be null (``patient_id`` is null when the DICOM has no PatientID; ``mask`` and
#: ``stack_mask`` when the finding has no organ mask).
NULLABLE_IDS = frozenset({"patient_id", "mask", "stack_mask"})

# --------------------------------------------------------------------------- text rules
# The PHI text rules are keyslice.deid's: the gate refuses exactly what ingestion would have masked.

# --------------------------------------------------------------------------- known DICOM values

#: DICOM attributes whose values are direct identifiers (PS3.15 Annex E basic profile, the usual suspects).
DICOM_PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "DeviceSerialNumber",
)
#: Placeholder values that de-identification tools write; they identify no one.
_PLACEHOLDER = re.compile(r"(?i)anon\w*|removed|unknown|none|n/?a|deidentified|de-identified|x+|0+|phantom")


def _value_variants(value: str) -> set[str]:
    """The forms in which a header value could show up in text: as is, each part of a person name,
    each line of an address, and a DA date also as YYYY-MM-DD."""
    value = value.strip()
    out = {value}
    for sep in ("^", "\r\n", "\n", "\\"):
        if sep in value:
            parts = [p.strip() for p in value.split(sep) if p.strip()]
            out |= set(parts)
            out.add(" ".join(parts))
    if re.fullmatch(r"\d{8}", value):
        out.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    # too short or too generic to be a meaningful match ("1", "CT", "ANONYMOUS")
    return {v for v in out if len(v) >= (4 if v.isdigit() else 3) and not _PLACEHOLDER.fullmatch(v)}


def dicom_phi_values(headers: Iterable[Any]) -> set[str]:
    """Identifying values from DICOM datasets (pydicom ``Dataset`` or plain dicts keyed by keyword)."""
    values: set[str] = set()
    for ds in headers:
        for keyword in DICOM_PHI_KEYWORDS:
            raw = ds.get(keyword) if isinstance(ds, Mapping) else getattr(ds, keyword, None)
            if raw is None:
                continue
            items = raw if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
            for item in items:
                values |= _value_variants(str(item))
    return values


def read_study_phi_values(folder: Path) -> set[str]:
    """Identifying header values of every DICOM file under ``folder`` (headers only; non-DICOM files skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from keyslice.dicom.headers import NotDicomError, open_regular
    from keyslice.dicom.index import list_files

    headers = []
    listed, _ = list_files(folder)  # regular files only, each folder once (links may not loop)
    for path, _rel in listed:
        try:
            with open_regular(path) as fh:
                headers.append(pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=list(DICOM_PHI_KEYWORDS)))
        except (InvalidDicomError, NotDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            continue
    return dicom_phi_values(headers)


# --------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALLOWED_PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})


class PngError(ValueError):
    """Bytes that are not a well-formed PNG."""


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk; raises :class:`PngError` on a bad signature, length or CRC."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG (bad signature)")
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(data):
        if pos + 8 > len(data):
            raise PngError("truncated chunk header")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise PngError(f"truncated {ctype!r} chunk")
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(ctype + payload) & 0xFFFFFFFF != crc:
            raise PngError(f"bad CRC in {ctype!r} chunk")
        chunks.append((ctype, payload))
        pos = end
        if ctype == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        raise PngError("PNG must start with IHDR and end with IEND")
    if not any(c == b"IDAT" for c, _ in chunks):
        raise PngError("PNG has no image data")
    if pos != len(data):
        raise PngError("bytes after IEND")
    return chunks


def clean_png(data: bytes) -> tuple[bytes, list[str]]:
    """The PNG with only IHDR/PLTE/IDAT/IEND kept, and the names of the chunks removed.

    The kept chunks are copied byte for byte, so the pixels are exactly the original's. An
    already clean PNG is returned unchanged (same bytes).
    """
    chunks = png_chunks(data)
    removed = [c.decode("latin-1") for c, _ in chunks if c not in ALLOWED_PNG_CHUNKS]
    if not removed:
        return data, []
    out = [PNG_SIGNATURE]
    for ctype, payload in chunks:
        if ctype in ALLOWED_PNG_CHUNKS:
            out.append(struct.pack(">I", len(payload)) + ctype + payload
                       + struct.pack(">I", zlib.crc32(ctype + payload) & 0xFFFFFFFF))
    return b"".join(out), removed


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Hit:
    table: str            # exported configuration (vqa, findings, selections) or "images"
    row: str              # finding_id / qa_id of the row, or the image path
    column: str
    rule: str
    detail: str           # the value with the suspicious spans masked (never the raw value), for the report file
    where: str = ""       # what messages print: the kinds and positions of the spans, nothing of the value

    def __str__(self) -> str:
        return f"{self.table} row {self.row} column {self.column}: {self.rule} ({self.where or 'value withheld'})"


@dataclass
class PrivacyReport:
    rules_version: str = RULES_VERSION
    rows_checked: dict[str, int] = field(default_factory=dict)
    strings_checked: int = 0
    images_checked: int = 0
    hits: list[Hit] = field(default_factory=list)
    png_chunks_removed: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, Any] = field(default_factory=dict)
    scrubbed: list[Hit] = field(default_factory=list)  # --scrub-text: each value changed, as exported

    @property
    def ok(self) -> bool:
        return not self.hits

    def to_dict(self) -> dict[str, Any]:
        """The JSON report; ``rules`` explains, in words, every text rule that fired or scrubbed."""
        data = asdict(self)
        data["ok"] = self.ok
        fired = {name for h in (*self.hits, *self.scrubbed) for name in h.rule.split(", ")}
        data["rules"] = {r.name: r.description for r in TEXT_RULES if r.name in fired}
        return data


class PrivacyError(KeysliceError):
    """The export holds something that looks like PHI: nothing was written or uploaded."""

    def __init__(self, report: PrivacyReport, max_listed: int = 20):
        self.report = report
        lines = [f"privacy gate refused the publish: {len(report.hits)} hit(s); nothing was exported."]
        lines += [f"  - {hit}" for hit in report.hits[:max_listed]]
        if len(report.hits) > max_listed:
            lines.append(f"  ... and {len(report.hits) - max_listed} more (see the privacy report)")
        lines.append("Fix the source (report text, DICOM de-identification), rebuild the affected studies "
                     "(`keyslice build ... --force-stage segment`), and publish again; PHI-looking text in report "
                     "sentences, questions or answers can instead be replaced by placeholders with --scrub-text.")
        super().__init__("\n".join(lines))


def _mask(value: str, hits: Sequence[TextHit] | None = None, limit: int = 160) -> str:
    """The value with the matched spans replaced by ``[KIND]``; a whole-value mask for id mismatches."""
    if hits is None:
        return f"<{len(value)} chars, not a keyslice pseudonym>"
    scrubbed = replace_spans(value, hits)
    return scrubbed if len(scrubbed) <= limit else scrubbed[:limit] + "..."


def _where(value: str, hits: Sequence[TextHit]) -> str:
    """Where the spans are (``[NAME] at 0-22 of 58 chars``): enough to find them, nothing of the value."""
    spans = merge_spans(hits)
    listed = "; ".join(f"{KIND_TOKENS.get(k, '[' + k.upper() + ']')} at {s}-{e}" for s, e, k in spans[:5])
    more = f"; +{len(spans) - 5} more" if len(spans) > 5 else ""
    return f"{listed}{more} of {len(value)} chars"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(column path, string) for every string inside a value (lists and structs included)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, sub in value.items():
            if key == "bytes":
                continue
            yield from _strings(sub, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from _strings(sub, f"{path}[{i}]")


def _known_value_hits(text: str, known: Sequence[re.Pattern[str]]) -> list[TextHit]:
    return [TextHit("dicom_header_value", "dicom", m.start(), m.end())
            for pattern in known for m in pattern.finditer(text)]


def _value_pattern(value: str) -> re.Pattern[str]:
    # whole-word, case-insensitive, any run of spaces for a space
    body = r"\s+".join(re.escape(part) for part in value.split())
    return re.compile(r"(?<![A-Za-z0-9])" + body + r"(?![A-Za-z0-9])", re.IGNORECASE)


def _row_key(row: Mapping[str, Any], key_columns: Sequence[str], n: int) -> str:
    """How a report names a row: its first well-formed key, else ``#n`` (a malformed key, which may be a raw
    identifier, is reported as its own hit and never echoed)."""
    for k in key_columns:
        value = row.get(k)
        if isinstance(value, str) and ID_FORMATS.get(k, ID_FORMATS["finding_id"]).fullmatch(value):
            return value
    return f"#{n}"


def scrub_rows(table: str, rows: Iterable[MutableMapping[str, Any]], key_column: str, columns: Sequence[str],
               rules: Sequence[Rule] = TEXT_RULES) -> list[Hit]:
    """Replace PHI-looking spans in ``columns`` of ``rows`` (in place; strings and lists of strings).

    Returns one :class:`Hit` per changed value whose ``detail`` is the scrubbed value, i.e. exactly
    what gets exported: the report says what was removed and where without repeating it.
    """
    changed = []

    def scrub(key: str, path: str, text: str) -> str:
        scrubbed, hits = scrub_text(text, rules)
        if hits:
            changed.append(Hit(table, key, path, ", ".join(dict.fromkeys(h.rule for h in hits)), scrubbed,
                               _where(text, hits)))
        return scrubbed

    for n, row in enumerate(rows):
        key = _row_key(row, (key_column,), n)
        for column in columns:
            value = row.get(column)
            if isinstance(value, str):
                row[column] = scrub(key, column, value)
            elif isinstance(value, list):
                row[column] = [scrub(key, f"{column}[{i}]", v) if isinstance(v, str) else v
                               for i, v in enumerate(value)]
    return changed


class PrivacyGate:
    """Checks rows and images; collects every hit (so one run lists all of them), then fails closed.

    ``known_phi`` maps a study_id to the identifying DICOM header values of that study
    (:func:`read_study_phi_values`); the study's rows must contain none of them.
    """

    def __init__(self, known_phi: Mapping[str, Iterable[str]] | None = None, rules: Sequence[Rule] = TEXT_RULES):
        self.rules = tuple(rules)
        self.software_rules = tuple(r for r in self.rules if r.name not in VERSION_NUMBER_RULES)
        self.report = PrivacyReport()
        self._memo: dict[tuple[bool, str], list[TextHit]] = {}
        self._known = {sid: [_value_pattern(v) for v in sorted(set(values))]
                       for sid, values in (known_phi or {}).items()}

    # rows ---------------------------------------------------------------------
    def check_rows(self, table: str, rows: Iterable[Mapping[str, Any]], key_columns: Sequence[str],
                   id_columns: Mapping[str, str] | None = None, software_columns: Collection[str] = ()) -> None:
        """Scan rows of one exported table. ``id_columns`` maps a column to its :data:`ID_FORMATS` key;
        ``software_columns`` are checked without :data:`VERSION_NUMBER_RULES`."""
        id_columns = dict(id_columns or {})
        n = 0
        for row in rows:
            key = _row_key(row, key_columns, n)
            n += 1
            known = self._known.get(row.get("study_id"), ()) if isinstance(row.get("study_id"), str) else ()
            for column, value in row.items():
                if column in id_columns:
                    self._check_id(table, key, column, value, id_columns[column])
                    continue
                for path, text in _strings(value, column):
                    self._check_text(table, key, path, text, known, software=column in software_columns)
        self.report.rows_checked[table] = self.report.rows_checked.get(table, 0) + n

    def _check_id(self, table: str, key: str, column: str, value: Any, fmt: str) -> None:
        if isinstance(value, list):  # a list of images (slice context): every file name
            for item in value:
                self._check_id(table, key, column, item, fmt)
            return
        self.report.strings_checked += 1
        if isinstance(value, Mapping):  # an Image feature value: its file name is what gets exported
            column, value = f"{column}.path", value.get("path")
        if value is None:
            if column not in NULLABLE_IDS:
                self._hit(table, key, column, "identifier_missing", "null")
            return
        if not isinstance(value, str) or not ID_FORMATS[fmt].fullmatch(value):
            self._hit(table, key, column, "not_a_pseudonym", _mask(str(value)), _mask(str(value)))

    def _check_text(self, table: str, key: str, column: str, text: str,
                    known: Sequence[re.Pattern[str]] = (), software: bool = False) -> None:
        self.report.strings_checked += 1
        hits = self._memo.get((software, text))
        if hits is None:  # templated questions, answers and options repeat: scan each distinct string once
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            hits = self._memo[(software, text)] = scan_text(text, self.software_rules if software else self.rules)
        if known:
            hits = hits + _known_value_hits(text, known)
        if hits:
            rules = ", ".join(dict.fromkeys(h.rule for h in hits))
            self._hit(table, key, column, rules, _mask(text, hits), _where(text, hits))

    def _hit(self, table: str, row: str, column: str, rule: str, detail: str, where: str = "") -> None:
        self.report.hits.append(Hit(table, row, column, rule, detail, where or detail))

    # images ---------------------------------------------------------------------
    def check_png(self, name: str, data: bytes) -> bytes | None:
        """The clean PNG bytes to export, or None (and a hit) when the file is not a valid PNG."""
        self.report.images_checked += 1
        try:
            cleaned, removed = clean_png(data)
        except PngError as exc:
            self._hit("images", name, "image", "invalid_png", str(exc))
            return None
        if removed:
            self.report.png_chunks_removed[name] = removed
        return cleaned

    # verdict ----------------------------------------------------------------------
    def raise_if_hits(self) -> PrivacyReport:
        if self.report.hits:
            raise PrivacyError(self.report)
        return self.report
