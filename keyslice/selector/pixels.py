"""CT pixel data straight from the file into a caller's array: stored values, no per-slice pydicom.

Step 2's header reader (:func:`keyslice.dicom.headers.read_header`) already walks each file
up to its Pixel Data element, so it knows the transfer syntax and the byte offset of the
pixel data. With that, one slice is read as follows:

* **uncompressed little endian** (implicit or explicit VR): one ``readinto`` of
  ``rows * cols * bytes`` at that offset, straight into the destination array (a chunk of
  a preallocated, possibly pinned, buffer). No copy, no Python object per pixel row;
* **compressed** (JPEG 2000 and HTJ2K, JPEG lossless and baseline, JPEG-LS, RLE): the
  single frame's fragments are read from that offset (pydicom's encapsulation parser) and
  decoded by `imagecodecs <https://github.com/cgohlke/imagecodecs>`_ (OpenJPEG,
  libjpeg-turbo, CharLS and its own DICOM RLE codec). imagecodecs releases the GIL while
  decoding, so a thread pool decodes several slices at once. JPEG 2000 can instead be
  decoded on the GPU by nvImageCodec (:func:`j2k_decoder`);
* **anything else** (big endian, deflate, a header the byte-level reader had to leave to
  pydicom, float pixel data): ``pydicom.dcmread(...).pixel_array``, as before.

Values are the *stored* values, exactly what ``pydicom``'s ``pixel_array`` returns (the
same sign handling for JPEG 2000 codestreams whose signedness disagrees with Pixel
Representation, and for JPEG-LS); HU is ``stored * RescaleSlope + RescaleIntercept``, applied
later on the encoder's device (:func:`keyslice.selector.preprocess.hu_from_stored`), so the
host moves 2 bytes per pixel instead of 4.

:class:`ChunkStream` decodes a series in fixed-size chunks with a worker pool, a bounded
number of chunk buffers ahead of the consumer: memory does not grow with the series.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
NATIVE_LE = frozenset({IMPLICIT_LE, EXPLICIT_LE})

#: Compressed transfer syntax -> imagecodecs decoder. JPEG 2000 includes HTJ2K (OpenJPEG >= 2.5);
#: JPEG lossless (processes 14 and 14 SV1) and baseline/extended go through libjpeg-turbo 3.
CODECS: dict[str, str] = {
    "1.2.840.10008.1.2.4.90": "jpeg2k",   # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "jpeg2k",   # JPEG 2000
    "1.2.840.10008.1.2.4.201": "jpeg2k",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "jpeg2k",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "jpeg2k",  # HTJ2K
    "1.2.840.10008.1.2.4.57": "jpeg8",    # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": "jpeg8",    # JPEG lossless, process 14 SV1
    "1.2.840.10008.1.2.4.50": "jpeg8",    # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "jpeg8",    # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.80": "jpegls",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "jpegls",   # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "dicomrle",    # RLE lossless
}
JPEG2000 = frozenset(ts for ts, c in CODECS.items() if c == "jpeg2k")
JPEGLS = frozenset(ts for ts, c in CODECS.items() if c == "jpegls")


def decode_workers() -> int:
    """Decode threads: ``$KEYSLICE_DECODE_WORKERS``, else the CPUs this process may use (at most 16)."""
    env = os.environ.get("KEYSLICE_DECODE_WORKERS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"KEYSLICE_DECODE_WORKERS must be a positive integer, not {env!r}") from None
        if n < 1:
            raise ValueError(f"KEYSLICE_DECODE_WORKERS must be a positive integer, not {env!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 2
    return max(1, min(16, cpus))


def j2k_decoder() -> str:
    """JPEG 2000 decoder: ``$KEYSLICE_J2K_DECODER``, ``imagecodecs`` (default, CPU threads) or
    ``nvimgcodec`` (nvImageCodec / nvJPEG2000 on the current CUDA device; ``pip install
    'keyslice[gpu-decode]'``). The GPU decoder hands the pixels back to the host chunk buffer,
    so everything downstream is unchanged."""
    name = os.environ.get("KEYSLICE_J2K_DECODER", "imagecodecs").strip() or "imagecodecs"
    if name not in ("imagecodecs", "nvimgcodec"):
        raise ValueError(f"KEYSLICE_J2K_DECODER must be 'imagecodecs' or 'nvimgcodec', not {name!r}")
    return name


_thread_state = threading.local()


def _nvimgcodec_decode(data: bytes) -> np.ndarray:
    from nvidia import nvimgcodec

    decoder = getattr(_thread_state, "nvimgcodec", None)
    if decoder is None:  # one decoder per decode thread
        decoder = _thread_state.nvimgcodec = nvimgcodec.Decoder()
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True)
    image = decoder.decode(nvimgcodec.CodeStream(data), params=params)
    if image is None:
        raise ValueError("nvImageCodec could not decode the JPEG 2000 stream")
    arr = np.asarray(image.cpu())
    return arr.reshape(arr.shape[:2]) if arr.ndim == 3 and arr.shape[2] == 1 else arr


def stored_dtype(bits_allocated: int, pixel_representation: int) -> np.dtype:
    """The numpy dtype pydicom gives a native image of this Bits Allocated / Pixel Representation."""
    if bits_allocated not in (8, 16, 32):
        raise ValueError(f"unsupported Bits Allocated {bits_allocated} (expected 8, 16 or 32)")
    return np.dtype(f"{'i' if pixel_representation == 1 else 'u'}{bits_allocated // 8}").newbyteorder("<")


@dataclass(frozen=True)
class SlicePixels:
    """Where one slice's pixel data is and how to turn it into stored values."""

    path: Path
    transfer_syntax: str | None
    offset: int | None            # byte offset of the Pixel Data value (None: unknown, use pydicom)
    length: int | None            # its length (0xFFFFFFFF when encapsulated)
    rows: int
    cols: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int

    @classmethod
    def from_header(cls, path: Path, hdr) -> SlicePixels:
        """From a :class:`keyslice.dicom.headers.Header` (Rows, Columns and BitsAllocated present)."""
        bits = hdr.int("BitsAllocated")
        return cls(Path(path), hdr.transfer_syntax, hdr.extra.get("pixel_offset"), hdr.extra.get("pixel_length"),
                   hdr.int("Rows"), hdr.int("Columns"), bits, hdr.int("BitsStored") or bits,
                   hdr.int("PixelRepresentation") or 0)

    @property
    def dtype(self) -> np.dtype:
        return stored_dtype(self.bits_allocated, self.pixel_representation)

    @property
    def method(self) -> str:
        """``native``, an imagecodecs codec name, or ``pydicom``."""
        if self.offset is None:
            return "pydicom"
        if self.transfer_syntax in NATIVE_LE or self.transfer_syntax is None:
            return "native" if self.length != 0xFFFFFFFF else "pydicom"
        return CODECS.get(self.transfer_syntax, "pydicom")


def read_stored(sp: SlicePixels, out: np.ndarray) -> None:
    """Fill ``out`` (``[rows, cols]``, any integer or float dtype) with the slice's stored values.

    Raises on anything that cannot be read or decoded; the caller decides what a bad slice becomes.
    """
    if out.shape != (sp.rows, sp.cols):
        raise ValueError(f"destination has shape {out.shape}, the slice is {(sp.rows, sp.cols)}")
    method = sp.method
    if method == "native":
        _read_native(sp, out)
    elif method == "pydicom":
        _read_pydicom(sp, out)
    else:
        out[...] = _decode_compressed(sp, method)


def _read_native(sp: SlicePixels, out: np.ndarray) -> None:
    dtype = sp.dtype
    nbytes = sp.rows * sp.cols * dtype.itemsize
    if out.dtype == dtype and out.flags.c_contiguous:
        target = out
    else:
        target = np.empty((sp.rows, sp.cols), dtype=dtype)
    view = memoryview(target).cast("B")
    got = 0
    with open(sp.path, "rb", buffering=0) as fh:
        fh.seek(sp.offset)
        while got < nbytes:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    if got != nbytes:
        raise ValueError(f"truncated pixel data ({got} of {nbytes} bytes)")
    if target is not out:
        out[...] = target


def encapsulated_frame(path: Path, offset: int) -> bytes:
    """The bytes of the single frame of an encapsulated Pixel Data value starting at ``offset``."""
    from pydicom.encaps import generate_fragmented_frames

    with open(path, "rb") as fh:
        fh.seek(offset)
        buffer = fh.read()
    fragments = next(generate_fragmented_frames(buffer, number_of_frames=1), None)
    if not fragments:
        raise ValueError("encapsulated pixel data holds no frame")
    return fragments[0] if len(fragments) == 1 else b"".join(fragments)


def _decode_compressed(sp: SlicePixels, codec: str) -> np.ndarray:
    import imagecodecs

    data = encapsulated_frame(sp.path, sp.offset)
    dtype = sp.dtype
    if codec == "dicomrle":
        arr = np.frombuffer(imagecodecs.dicomrle_decode(data, dtype.str), dtype=dtype).reshape(sp.rows, sp.cols)
    elif codec == "jpeg2k":
        arr = (_nvimgcodec_decode(data) if j2k_decoder() == "nvimgcodec"
               else imagecodecs.jpeg2k_decode(data, numthreads=1))
        arr = _j2k_sign(arr, data, sp)
    else:
        arr = getattr(imagecodecs, f"{codec}_decode")(data)
        if codec == "jpegls" and sp.pixel_representation == 1:
            arr = _shift_sign(arr.astype(dtype), sp.bits_stored)
    if arr.shape != (sp.rows, sp.cols):
        raise ValueError(f"decoded image has shape {arr.shape}, the header says {(sp.rows, sp.cols)}")
    return arr.astype(dtype, copy=False)


def _shift_sign(arr: np.ndarray, precision: int) -> np.ndarray:
    """Reinterpret the low ``precision`` bits as a number of the array's signedness (pydicom's rule)."""
    shift = 8 * arr.dtype.itemsize - precision
    if shift:
        arr = np.left_shift(arr, shift)
        np.right_shift(arr, shift, out=arr)
    return arr


def _j2k_sign(arr: np.ndarray, data: bytes, sp: SlicePixels) -> np.ndarray:
    """pydicom's JPEG 2000 sign correction: when the codestream's signedness disagrees with Pixel
    Representation, reinterpret its ``precision`` bits in the dataset's signedness."""
    signed, precision = _j2k_siz(data)
    arr = arr.astype(sp.dtype, copy=False)
    if signed is None or int(signed) == sp.pixel_representation:
        return arr
    return _shift_sign(arr.copy(), precision or sp.bits_stored)


def _j2k_siz(data: bytes) -> tuple[bool | None, int | None]:
    """(signed, precision) of the first component from a J2K codestream's SIZ marker."""
    start = data.find(b"\xff\x51")  # SIZ: marker, Lsiz, Rsiz, 8 x 4-byte sizes, Csiz, then Ssiz
    if start < 0 or len(data) < start + 41:
        return None, None
    ssiz = data[start + 40]
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1


def _read_pydicom(sp: SlicePixels, out: np.ndarray) -> None:
    import pydicom

    arr = pydicom.dcmread(sp.path).pixel_array
    if arr.shape != (sp.rows, sp.cols):
        raise ValueError(f"decoded array has shape {arr.shape}, expected {(sp.rows, sp.cols)}")
    out[...] = arr


# --------------------------------------------------------------------------- streaming


@dataclass
class Chunk:
    """Slices ``start..stop`` of a series: stored values in a reused buffer, valid until the consumer
    asks for the next chunk or calls :meth:`release`."""

    start: int
    stop: int
    stored: np.ndarray                 # [stop - start, rows, cols], a view of a pool buffer
    valid: np.ndarray                  # bool [stop - start]
    _buffer: object = field(default=None, repr=False)
    _free: queue.Queue | None = field(default=None, repr=False)

    def release(self, wait: Callable[[], None] | None = None) -> None:
        """Give the buffer back to the stream. ``wait`` (e.g. a CUDA event's ``synchronize``) is
        called before the buffer is written again, so an asynchronous copy from it can finish."""
        if self._free is not None:
            self._free.put((self._buffer, wait))
            self._free = None


class ChunkStream:
    """Decode slices ``0..n`` in chunks of ``chunk`` with ``workers`` threads, at most ``buffers``
    chunks in memory (decoded ahead, or held by the consumer) at any time.

    ``decode(k, out)`` fills ``out`` (``[rows, cols]``) with slice k and raises when it cannot;
    a failed slice is reported through ``on_error(k, exc)`` and its chunk row marked invalid.
    ``allocate(n)`` makes a buffer of ``n`` slices (pinned host memory for CUDA); buffers are
    reused, so a stream over 2,000 slices holds the same memory as one over 50. A chunk's buffer
    goes back to the pool when the next chunk is requested, or earlier through
    :meth:`Chunk.release` (with a ``wait`` for an asynchronous device copy still reading it).
    With ``release_on_next=False`` only :meth:`Chunk.release` gives it back, so a consumer can
    hand chunks to other threads and hold several at once (fewer than ``buffers``, or the
    stream waits for one).
    """

    def __init__(self, n: int, chunk: int, decode: Callable[[int, np.ndarray], None],
                 allocate: Callable[[int], tuple[object, np.ndarray]], *, workers: int | None = None,
                 buffers: int = 3, on_error: Callable[[int, BaseException], None] | None = None,
                 release_on_next: bool = True):
        if chunk < 1 or buffers < 1:
            raise ValueError("chunk and buffers must be >= 1")
        self.release_on_next = release_on_next
        self.n, self.chunk = n, chunk
        self.decode, self.on_error = decode, on_error
        self.workers = workers or decode_workers()
        self.n_buffers = min(buffers, max(1, -(-n // chunk)))
        self.allocate = allocate

    def __iter__(self) -> Iterator[Chunk]:
        free: queue.Queue = queue.Queue()
        for _ in range(self.n_buffers):
            free.put((self.allocate(self.chunk), None))
        ready: queue.Queue = queue.Queue()
        stop = threading.Event()
        starts = list(range(0, self.n, self.chunk))

        def fill(k: int, view: np.ndarray, valid: np.ndarray, i: int) -> None:
            try:
                self.decode(k, view[i])
            except Exception as exc:  # corrupt stream, missing codec, truncated file...
                valid[i] = False
                if self.on_error is not None:
                    self.on_error(k, exc)

        def produce() -> None:
            try:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="keyslice-decode") as pool:
                    for s in starts:
                        item = free.get()
                        if stop.is_set():
                            return
                        (buffer, array), wait = item
                        if wait is not None:
                            wait()
                        e = min(self.n, s + self.chunk)
                        view = array[: e - s]
                        valid = np.ones(e - s, dtype=bool)
                        futures = [pool.submit(fill, k, view, valid, k - s) for k in range(s, e)]
                        for f in futures:
                            f.result()
                        ready.put(Chunk(s, e, view, valid, (buffer, array), free))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                ready.put(exc)

        thread = threading.Thread(target=produce, name="keyslice-chunks", daemon=True)
        thread.start()
        previous: Chunk | None = None
        try:
            for _ in starts:
                if previous is not None and self.release_on_next:
                    previous.release()  # a chunk is the consumer's until it asks for the next one
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                previous = item
                yield item
        finally:
            stop.set()
            free.put(((None, None), None))  # wake a producer waiting for a buffer
            thread.join()
