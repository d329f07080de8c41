"""Read the header fields step 2 needs from one DICOM file, never its pixels.

Two readers return the same :class:`Header`:

* ``"fast"`` (default): a small element walker over the raw bytes (little-endian
  transfer syntaxes, explicit or implicit VR, with or without the 128-byte preamble).
  It reads only up to the Pixel Data element and keeps only the ~40 tags listed in
  :data:`TAGS`; sequences are skipped without being parsed. Anything it does not
  understand (big endian, deflate, a malformed element) falls back to pydicom.
* ``"pydicom"``: ``pydicom.dcmread(stop_before_pixels=True, force=True, specific_tags=...)``.

Both decode values through the same function from the element's raw bytes (pydicom's
elements are taken raw with ``Dataset.get_item``), so the two readers agree value for value;
a test checks this on every real file. Both record where the (little-endian) Pixel Data value
starts and its length (``extra["pixel_offset"]``, ``extra["pixel_length"]``, 0xFFFFFFFF when
encapsulated): step 3 reads pixels from there without parsing the file again
(:mod:`keyslice.selector.pixels`). The fast reader exists because pydicom's general
parser costs about 1 ms per file, which is as slow as reading and converting an
uncompressed 512x512 slice; the walker is ~10x faster.

A file is accepted as DICOM only if it has the ``DICM`` marker at offset 128, or (no
preamble) starts with a group 0002/0008 element, *and* it carries essential tags
(a non-empty Modality or SOPClassUID). Truncated files are detected cheaply: the
native Pixel Data length is compared with the file size, and an encapsulated one must
end with the sequence delimiter.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# keyword -> (tag, VR); the VR is needed for implicit-VR files.
TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "SeriesDate": (0x00080021, "DA"),
    "AcquisitionDate": (0x00080022, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "SeriesTime": (0x00080031, "TM"),
    "AcquisitionTime": (0x00080032, "TM"),
    "AcquisitionDateTime": (0x0008002A, "DT"),
    "Modality": (0x00080060, "CS"),
    "Manufacturer": (0x00080070, "LO"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientID": (0x00100020, "LO"),
    "ContrastBolusAgent": (0x00180010, "LO"),
    "BodyPartExamined": (0x00180015, "CS"),
    "SliceThickness": (0x00180050, "DS"),
    "SpacingBetweenSlices": (0x00180088, "DS"),
    "ProtocolName": (0x00181030, "LO"),
    "ContrastBolusRoute": (0x00181040, "LO"),
    "ContrastBolusVolume": (0x00181041, "DS"),
    "ContrastBolusStartTime": (0x00181042, "TM"),
    "GantryDetectorTilt": (0x00181120, "DS"),
    "ConvolutionKernel": (0x00181210, "SH"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "AcquisitionNumber": (0x00200012, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "FrameOfReferenceUID": (0x00200052, "UI"),
    "SliceLocation": (0x00201041, "DS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "PhotometricInterpretation": (0x00280004, "CS"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "PixelSpacing": (0x00280030, "DS"),
    "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "BurnedInAnnotation": (0x00280301, "CS"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}
TAG_TO_KEY = {tag: (kw, vr) for kw, (tag, vr) in TAGS.items()}
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float, Double Float
TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "PN", "UC"}

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DICOMDIR_SOP = "1.2.840.10008.1.3.10"

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
VALID_VRS = LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_SEQ_DELIM_BYTES = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


class NotDicomError(Exception):
    """The file is not a DICOM instance we can use; ``str(exc)`` is the skip reason."""


class _Fallback(Exception):
    """The fast walker met something it does not handle; use pydicom."""


class RawValues(Mapping[str, Any]):
    """Keyword -> value of the tags a reader kept, each decoded from its raw bytes when first read.

    A CT header keeps ~45 tags and a series' geometry reads about 10 of them: decoding on
    demand takes a quarter off parsing a header (about 0.05 of 0.2 ms).
    """

    def __init__(self, raw: dict[int, tuple[bytes, str | None]], little_endian: bool):
        self._raw = {TAG_TO_KEY[tag][0]: item for tag, item in raw.items()}
        self._little_endian = little_endian
        self._decoded: dict[str, Any] = {}
        self._encodings: list[str] | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self._decoded:
            return self._decoded[key]
        raw, vr = self._raw[key]
        vr = vr if vr and vr != "UN" else TAGS[key][1]
        if self._encodings is None:
            charset = self._raw.get("SpecificCharacterSet")
            self._encodings = _encodings(charset[0] if charset else None)
        try:
            value = decode_value(raw, vr, self._little_endian, self._encodings)
        except Exception:
            value = None
        self._decoded[key] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass
class Header:
    """The raw-ish header fields of one file: strings (multi-values split on backslash), ints for US."""

    values: Mapping[str, Any]
    transfer_syntax: str | None
    has_preamble: bool
    truncated: str | None = None          # why the pixel data is incomplete, None when complete
    reader: str = "fast"
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key, default)
        return default if value is None else value

    def text(self, key: str) -> str | None:
        """Single string value (multi-values joined by backslash), None when absent or empty."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, list):
            value = "\\".join(str(v) for v in value)
        value = str(value).strip()
        return value or None

    def strings(self, key: str) -> list[str]:
        value = self.values.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            return [str(v).strip() for v in value]
        return [str(value).strip()]

    def floats(self, key: str) -> list[float] | None:
        cache = self.extra.setdefault("_floats", {})
        if key in cache:
            return cache[key]
        try:
            out = [float(v) for v in self.strings(key) if v != ""] or None
        except ValueError:
            out = None
        cache[key] = out
        return out

    def float(self, key: str) -> float | None:
        vals = self.floats(key)
        return vals[0] if vals else None

    def int(self, key: str) -> int | None:
        value = self.values.get(key)
        if isinstance(value, int):
            return value
        s = self.text(key)
        if s is None:
            return None
        try:
            return int(float(s.split("\\")[0]))
        except ValueError:
            return None


# --------------------------------------------------------------------------- decoding


def _encodings(raw_charset: bytes | None) -> list[str]:
    if not raw_charset:
        return ["iso8859"]
    from pydicom.charset import convert_encodings

    terms = [t.strip() for t in raw_charset.decode("ascii", "replace").split("\\")]
    try:
        return convert_encodings(terms)
    except Exception:  # unknown term: pydicom warns; use latin-1 which never fails
        return ["latin_1"]


def decode_value(raw: bytes, vr: str, little_endian: bool, encodings: list[str]) -> Any:
    """Decode one element's value bytes the same way for both readers."""
    if vr in ("US", "SS", "UL", "SL"):
        fmt = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}[vr]
        size = struct.calcsize(fmt)
        if len(raw) < size:
            return None
        vals = list(struct.unpack(("<" if little_endian else ">") + fmt * (len(raw) // size), raw[: len(raw) // size * size]))
        return vals[0] if len(vals) == 1 else vals
    if vr in TEXT_VRS and not (raw.isascii() and b"\x1b" not in raw):
        from pydicom.charset import decode_bytes

        text = decode_bytes(raw, encodings, set())
    else:
        text = raw.decode("latin_1")
    text = text.rstrip("\x00 ").strip()
    if "\\" in text and vr not in ("ST", "LT", "UT"):
        return [p.strip() for p in text.split("\\")]
    return text


# --------------------------------------------------------------------------- opening files


def open_regular(path: Path):
    """Open ``path`` for reading only if it is a regular file, without ever blocking.

    ``open()`` of a FIFO waits for a writer forever and a character device (``/dev/zero``) never
    ends, so a study holding either would hang the build: the file is opened non-blocking, checked
    with ``fstat`` on the open descriptor (no race with a rename) and refused unless regular.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotDicomError(f"not a regular file ({_file_kind(mode)}); skipped unread")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


# --------------------------------------------------------------------------- fast walker


class _Truncated(Exception):
    """The file ends inside an element."""


class _Buf:
    """Grow-on-demand read buffer over an open file (``data`` is immutable bytes)."""

    def __init__(self, fh, first: bytes):
        self.fh = fh
        self.data = bytes(first)
        self.size = os.fstat(fh.fileno()).st_size

    def need(self, end: int) -> bytes:
        if end > len(self.data):
            if end > self.size:  # never ask the OS for a corrupt length's worth of bytes
                raise _Truncated("file ends inside the header")
            self.data += self.fh.read(min(max(end - len(self.data), 65536), self.size - len(self.data)))
            if end > len(self.data):
                raise _Truncated("file ends inside the header")
        return self.data

    def at_eof(self, pos: int) -> bool:
        if pos < len(self.data):
            return False
        self.data += self.fh.read(65536)
        return pos >= len(self.data)


def _looks_like_dicom_start(b: bytes) -> bool:
    """A preamble-less file must start with a group 0002 or 0008 element (LE or BE)."""
    if len(b) < 8:
        return False
    group_le = b[0] | (b[1] << 8)
    group_be = (b[0] << 8) | b[1]
    return group_le in (0x0002, 0x0008) or group_be == 0x0008


def looks_like_dicom(path: Path) -> bool:
    """Whether a file starts like DICOM (the ``DICM`` marker at byte 128, or a preamble-less first
    element): a cheap first look that reads 132 bytes, not a validation of the file."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(132)
    except OSError:
        return False
    return (len(first) >= 132 and first[128:132] == b"DICM") or _looks_like_dicom_start(first)


_S_EXPLICIT = struct.Struct("<HH2sH")   # group, element, VR, short length
_S_IMPLICIT = struct.Struct("<HHI")     # group, element, length
_S_U32 = struct.Struct("<I")


def _walk(buf: _Buf, pos: int, explicit: bool, stop_group: int | None, want: dict[int, tuple[str, str]],
          out: dict[int, tuple[bytes, str]], depth: int = 0):
    """Walk elements from ``pos``; collect wanted top-level values. Returns (pos, pixel_info).

    The hot loop of the fast reader: one struct call per element, no object per element
    except for the values it keeps.
    """
    data = buf.data
    n = len(data)
    long_vrs, valid_vrs, undefined = LONG_VRS, VALID_VRS, UNDEFINED
    expl_unpack, impl_unpack, u32_unpack = _S_EXPLICIT.unpack_from, _S_IMPLICIT.unpack_from, _S_U32.unpack_from
    top = depth == 0
    while True:
        if pos + 12 > n:
            if top and buf.at_eof(pos):
                return pos, None  # clean end of a file without pixel data (SR, PR...)
            try:
                data = buf.need(pos + 12)
            except _Truncated:
                data = buf.need(pos + 8)  # an 8-byte delimiter at the very end is fine
            n = len(data)
        if explicit:
            group, elem, vr, length = expl_unpack(data, pos)
            if stop_group is not None and group != stop_group:
                return pos, None  # end of the file meta group (the dataset may be implicit VR)
            if group == 0xFFFE:
                length = u32_unpack(data, pos + 4)[0]
                hdr = 8
                vr = None
            elif vr in long_vrs:
                length = u32_unpack(data, pos + 8)[0]
                hdr = 12
            elif vr in valid_vrs:
                hdr = 8
            else:
                raise _Fallback(f"bad VR {vr!r} at offset {pos}")
        else:
            group, elem, length = impl_unpack(data, pos)
            hdr = 8
            vr = None
        if stop_group is not None and group != stop_group:
            return pos, None
        tag = (group << 16) | elem
        if group == 0xFFFE and (tag == ITEM_END or tag == SEQ_END):
            return pos + 8, None
        vpos = pos + hdr
        if top and group >= 0x7FE0 and tag in PIXEL_TAGS:
            return pos, (tag, vpos, length)
        if length == undefined:
            # sequence (or UN of undefined length, which is implicit VR inside): walk its items
            pos = _walk_items(buf, vpos, explicit and vr != b"UN", depth)
            data = buf.data
            n = len(data)
            continue
        pos = vpos + length
        if top and tag in want:
            if pos > n:
                data = buf.need(pos)
                n = len(data)
            out[tag] = (data[vpos:pos], vr.decode("ascii") if vr else want[tag][1])


def _walk_items(buf: _Buf, pos: int, explicit: bool, depth: int) -> int:
    if depth > 32:
        raise _Fallback("sequences nested too deep")
    while True:
        data = buf.need(pos + 8)
        tag_g, tag_e, length = _S_IMPLICIT.unpack_from(data, pos)
        tag = (tag_g << 16) | tag_e
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise _Fallback(f"unexpected tag {tag:08X} inside a sequence")
        if length == UNDEFINED:
            pos, _ = _walk(buf, pos, explicit, None, {}, {}, depth + 1)
        else:
            pos += length


def _read_fast(path: Path) -> Header:
    with open_regular(path) as fh:
        first = fh.read(16384)
        has_preamble = len(first) >= 132 and first[128:132] == b"DICM"
        if not has_preamble and not _looks_like_dicom_start(first):
            raise NotDicomError("not DICOM (no DICM marker at byte 128 and no DICOM element at the start)")
        buf = _Buf(fh, first)
        pos = 132 if has_preamble else 0
        meta: dict[int, tuple[bytes, str]] = {}
        want_meta = {0x00020002: ("MediaStorageSOPClassUID", "UI"), 0x00020010: ("TransferSyntaxUID", "UI")}
        # the file meta group is always explicit VR little endian
        if buf.data[pos: pos + 2] == b"\x02\x00":
            pos, _ = _walk(buf, pos, True, 0x0002, want_meta, meta)
        ts = meta[0x00020010][0].decode("ascii", "replace").strip("\x00 ") if 0x00020010 in meta else None
        media_sop = meta[0x00020002][0].decode("ascii", "replace").strip("\x00 ") if 0x00020002 in meta else None
        if ts in (EXPLICIT_BE, DEFLATED_LE):
            raise _Fallback(f"transfer syntax {ts}")
        if ts is None:
            # no meta: guess explicit vs implicit from the first element's VR bytes
            buf.need(pos + 8)
            if buf.data[pos + 1] == 0x08 and buf.data[pos] == 0x00:
                raise _Fallback("big endian without file meta")
            explicit = bytes(buf.data[pos + 4: pos + 6]) in VALID_VRS
        else:
            explicit = ts != IMPLICIT_LE
        out: dict[int, tuple[bytes, str]] = {}
        try:
            pos, pixel = _walk(buf, pos, explicit, None, TAG_TO_KEY, out)
        except _Truncated as exc:
            if not out:
                raise NotDicomError(f"unreadable DICOM ({exc})") from None
            hdr = _make_header(out, ts, has_preamble, media_sop, str(exc))
            hdr.extra["pixel_data"] = False
            return hdr
        truncated = None
        if pixel is not None:
            truncated = _check_pixels(fh, buf, pixel, explicit)
        hdr = _make_header(out, ts, has_preamble, media_sop, truncated)
        hdr.extra["pixel_data"] = pixel is not None
        if pixel is not None and pixel[0] == 0x7FE00010:
            hdr.extra["pixel_offset"], hdr.extra["pixel_length"] = pixel[1], pixel[2]
        return hdr


def _check_pixels(fh, buf: _Buf | None, pixel: tuple[int, int, int], explicit: bool) -> str | None:
    _tag, vpos, length = pixel
    size = buf.size if buf is not None else os.fstat(fh.fileno()).st_size
    if length == UNDEFINED:
        if size < vpos + 8:
            return "file ends inside the encapsulated pixel data"
        fh.seek(max(size - 8, 0))
        if fh.read(8) != _SEQ_DELIM_BYTES:
            return "encapsulated pixel data does not end with a sequence delimiter"
        return None
    if size < vpos + length:
        return f"pixel data has {max(size - vpos, 0)} of {length} bytes"
    return None


def _make_header(out: dict[int, tuple[bytes, str]], ts: str | None, has_preamble: bool,
                 media_sop: str | None, truncated: str | None, reader: str = "fast",
                 little_endian: bool = True) -> Header:
    hdr = Header(RawValues(out, little_endian), ts, has_preamble, truncated, reader)
    hdr.extra["media_sop_class"] = media_sop
    return hdr


# --------------------------------------------------------------------------- pydicom reader


def _raw_uid(ds, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds.get_item(tag).value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    return str(value).strip("\x00 ") or None


def _read_pydicom(path: Path) -> Header:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with open_regular(path) as fh:
        first = fh.read(132)
        has_preamble = len(first) >= 132 and first[128:132] == b"DICM"
        if not has_preamble and not _looks_like_dicom_start(first):
            raise NotDicomError("not DICOM (no DICM marker at byte 128 and no DICOM element at the start)")
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True,
                                 specific_tags=[t for t, _ in TAGS.values()])
        except (InvalidDicomError, EOFError, OSError, ValueError, struct.error, OverflowError) as exc:
            raise NotDicomError(f"unreadable DICOM ({type(exc).__name__}: {exc})") from None
        ts = None
        media_sop = None
        fm = getattr(ds, "file_meta", None)
        if fm is not None:  # raw bytes: no pydicom value validation (its warnings quote the values)
            ts = _raw_uid(fm, 0x00020010)
            media_sop = _raw_uid(fm, 0x00020002)
        little = getattr(ds, "is_little_endian", None)
        if little is None:
            little = True
        out: dict[int, tuple[bytes, str]] = {}
        for tag in TAG_TO_KEY:
            if tag not in ds:
                continue
            elem = ds.get_item(tag)
            raw = getattr(elem, "value", None)
            if isinstance(raw, (bytes, bytearray)):
                vr = elem.VR if isinstance(elem.VR, str) else None
                out[tag] = (bytes(raw), vr)
            elif raw is None:
                out[tag] = (b"", None)
            else:  # already converted (deflate path): re-encode to text
                out[tag] = (("\\".join(map(str, raw)) if isinstance(raw, list) else str(raw)).encode("utf-8"), "UC")
        # truncation check from the position where pydicom stopped (at Pixel Data)
        truncated = None
        pos = fh.tell()
        head = fh.read(12)
        pixel_found = len(head) >= 8 and head[:4] in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
        if pixel_found:
            explicit = head[4:6] in VALID_VRS
            if little and explicit:
                length, vpos = struct.unpack_from("<I", head, 8)[0] if len(head) >= 12 else UNDEFINED, pos + 12
            elif little:
                length, vpos = struct.unpack_from("<I", head, 4)[0], pos + 8
            else:
                length, vpos = None, None
            if length is not None and ts != DEFLATED_LE:
                truncated = _check_pixels(fh, None, (0x7FE00010, vpos, length), explicit)
            else:
                vpos = None
    hdr = _make_header(out, ts, has_preamble, media_sop, truncated, "pydicom", little)
    # a deflated dataset cannot be followed to its Pixel Data from the file position: not checked
    hdr.extra["pixel_data"] = pixel_found or ts == DEFLATED_LE
    if pixel_found and vpos is not None and head[:4] == b"\xe0\x7f\x10\x00":
        hdr.extra["pixel_offset"], hdr.extra["pixel_length"] = vpos, length
    return hdr


# --------------------------------------------------------------------------- entry point

# SOP class prefixes of objects that carry no pixel data (SR, PR, KO, RT plans/structures, PDF...)
_NO_PIXEL_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.",
                          "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.66.1", "1.2.840.10008.5.1.4.1.1.9.")
_NO_PIXEL_MODALITIES = {"SR", "PR", "KO", "DOC", "RTPLAN", "RTSTRUCT", "RTRECORD", "REG", "FID", "ECG", "AU", "PLAN"}


def _expects_pixels(hdr: Header, sop: str | None) -> bool:
    if hdr.get("Rows") is not None:
        return True
    if sop and sop.startswith(_NO_PIXEL_SOP_PREFIXES):
        return False
    return (hdr.text("Modality") or "").upper() not in _NO_PIXEL_MODALITIES



def read_header(path: Path, reader: str = "fast") -> Header:
    """Header of one file, or :class:`NotDicomError` with the reason it is skipped."""
    path = Path(path)
    try:
        if reader == "fast":
            try:
                hdr = _read_fast(path)
            except (_Fallback, struct.error, IndexError, KeyError, UnicodeDecodeError):
                hdr = _read_pydicom(path)
                hdr.reader = "pydicom(fallback)"
        elif reader == "pydicom":
            hdr = _read_pydicom(path)
        else:
            raise ValueError(f"unknown header reader {reader!r}; use 'fast' or 'pydicom'")
    except OSError as exc:
        raise NotDicomError(f"unreadable file ({type(exc).__name__}: {exc.strerror or exc})") from None
    sop = hdr.text("SOPClassUID") or hdr.extra.get("media_sop_class")
    if sop == DICOMDIR_SOP or hdr.extra.get("media_sop_class") == DICOMDIR_SOP:
        raise NotDicomError("DICOMDIR (media storage directory), not an image instance")
    if not (hdr.text("Modality") or hdr.text("SOPClassUID")):
        raise NotDicomError("not a DICOM instance (no Modality and no SOPClassUID)")
    if not hdr.truncated and not hdr.extra.get("pixel_data", True) and _expects_pixels(hdr, sop):
        hdr.truncated = "image instance without a Pixel Data element: file cut short?"
    return hdr


def read_headers(paths: Iterable[Path], reader: str = "fast") -> Iterator[Header | NotDicomError]:
    """The header of each path, in order, or the :class:`NotDicomError` saying why it is skipped;
    a reader bug on one file is that file's error, never raised.

    One thread parses: parsing is pure Python and holds the GIL. Spread over threads, 200
    cached CT files took 74-85 ms instead of 36 ms on 2 cores (the threads queue for the GIL);
    ``benchmarks/bench_dicom_index.py`` prints the same comparison on the real test files.
    Reading the files' heads ahead in I/O threads while this thread parses cost 30 % on cached
    files and gained 0-15 % with the page cache dropped (local disk), so it is not done.
    """
    return (_parse(Path(p), reader) for p in paths)


def _parse(path: Path, reader: str) -> Header | NotDicomError:
    try:
        return read_header(path, reader)
    except NotDicomError as exc:
        return exc
    except Exception as exc:  # a reader bug must not lose the study: it is this file's error
        return NotDicomError(f"unreadable DICOM ({type(exc).__name__}: {str(exc)[:120]})")
