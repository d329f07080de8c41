"""Benchmark of the key-slice selector (step 3), three numbers from one run on one machine.

(a) model-only: slices/s of ``encoder.encode_images`` on already preprocessed tensors;
(b) end-to-end: slices/s from DICOM files on disk to SliceChoices (``load_volume`` +
    ``select_key_slices`` for all findings: headers, pixels streamed in chunks by the decode
    workers, preprocessing on the encoder's device, overlapped with encoding), and again with
    the headers already read, as the pipeline's step 3 gets them from step 2's index;
(c) reference: a straightforward loop — pydicom per file (sequential), then for EACH finding
    PIL/torchvision preprocessing per slice and encoding every slice again, one at a time.

It prints b/a (target >= 0.9: the pipeline keeps the model busy) and b/c (target >= 10).
Throughputs count slice images through the model: (b) encodes each slice once per window
used by the findings (``--windows``), (c) once per finding. (a) is measured just before and
just after (b) and averaged, so that load drifting on a shared machine does not bias b/a;
the parts of (b) that are not slice encoding (reading + decoding the series, encoding the
sentences) are then timed alone and printed, to show where (b) loses against (a).

The model defaults to open_clip ``ViT-B-16`` with RANDOM weights (``open_clip.create_model``,
no download): speed does not depend on the weights. ``--model`` also takes ``tiny`` (the
test model) or any ``load_model`` spec. The series defaults to the real 20-slice JPEG 2000
Siemens series of the test data; ``--slices N`` uses its first N slices, or, when N is larger,
a SYNTHETIC PHANTOM series of N slices (a water cylinder with a "lesion", uncompressed DICOM
written to a temp dir, real header fields from that series). On this project's shared 2-core CPU
machine ViT-B-16 runs at 0.5-1.8 slices/s (depending on the other jobs), so the default
settings take 5-10 minutes there, most of it the reference loop (c).

    python benchmarks/bench_selector.py                         # CPU, ViT-B-16, 20 real slices, 8 findings
    python benchmarks/bench_selector.py --model tiny --slices 200          # the host path alone
    python benchmarks/bench_selector.py --model tiny --image-size 224 --slices 200   # b/a stand-in
    python benchmarks/bench_selector.py --device cuda --slices 512   # bf16 autocast on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keyslice.dicom.headers import read_header  # noqa: E402
from keyslice.sample import data_dir  # noqa: E402
from keyslice.selector import (  # noqa: E402
    Query,
    SelectorConfig,
    load_model,
    load_volume,
    save_tiny_checkpoint,
    select_key_slices,
)
from keyslice.selector.model import ClipEncoder, resolve_device, resolve_precision  # noqa: E402
from keyslice.selector.pixels import decode_workers  # noqa: E402
from keyslice.selector.preprocess import reference_preprocess  # noqa: E402
from keyslice.selector.select import (  # noqa: E402
    PREPARE_WORKERS,
    auto_batch_size,
    prepared_chunks,
    window_for_query,
)
from keyslice.selector.windows import choose_window, get_window  # noqa: E402

DATA = data_dir()  # $KEYSLICE_DATA_DIR, else shared/data beside the checkout
SERIES = DATA / "totalsegmentator_reference" / "tests" / "reference_files" / "example_ct_dicom"
CAPTIONS = DATA / "roco_ct_captions" / "captions.json"
ORGAN_SETS = [["liver"], ["lung"], ["vertebrae_L1"], ["aorta"], ["brain"], ["liver"], ["pancreas"], ["kidney_left"]]


def build_encoder(spec: str, device: str, precision: str, image_size: int = 64) -> ClipEncoder:
    if spec == "tiny":
        folder = save_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bench-tiny-")), image_size=image_size)
        return load_model(str(folder), device=device, precision=precision)
    if spec in ("ViT-B-16", "ViT-B-32", "ViT-L-14"):
        import open_clip

        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        model = open_clip.create_model(spec, device=dev)  # random weights, no download
        cfg = model.visual.preprocess_cfg
        return ClipEncoder(model, open_clip.get_tokenizer(spec), model_id=f"{spec}-random", weights_sha256="random",
                           device=dev, precision=prec, image_size=model.visual.image_size[0]
                           if isinstance(model.visual.image_size, tuple) else model.visual.image_size,
                           mean=cfg["mean"], std=cfg["std"], context_length=77)
    return load_model(spec, device=device, precision=precision)


def synthetic_phantom(n: int, out: Path) -> list[Path]:
    """N-slice SYNTHETIC phantom series (uncompressed), headers copied from slice 0 of the real series."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = pydicom.dcmread(sorted(SERIES.iterdir())[0])
    src.decompress()
    rows, cols = int(src.Rows), int(src.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    rng = np.random.default_rng(0)
    series_uid = generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n):
        img = np.full((rows, cols), -1000.0)
        body = (yy - rows / 2) ** 2 / (0.38 * rows) ** 2 + (xx - cols / 2) ** 2 / (0.45 * cols) ** 2 < 1
        img[body] = 40
        r = 30 * np.exp(-((k - n / 2) / (n / 6)) ** 2)  # a "lesion" that grows then shrinks along z
        img[(yy - rows * 0.45) ** 2 + (xx - cols * 0.4) ** 2 < r ** 2] = -20
        img += rng.normal(0, 10, img.shape)
        ds = src.copy()
        ds.PixelData = (np.clip(img, -1024, 3071) + 1024).astype(np.uint16).tobytes()
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.ImagePositionPatient = [float(src.ImagePositionPatient[0]), float(src.ImagePositionPatient[1]), -1000.0 + 2 * k]
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesDescription = "SYNTHETIC PHANTOM (benchmark only)"
        path = out / f"phantom_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def sentences(n: int) -> list[str]:
    items = json.loads(CAPTIONS.read_text())
    return [it["caption"] for it in items][:n]


def sync(encoder: ClipEncoder) -> None:
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()


def bench_model_only(encoder: ClipEncoder, n: int, batch: int, min_seconds: float = 2.0) -> float:
    """Encode ``n`` slices in the pipeline's batches, repeated until ``min_seconds`` have passed
    (a fast model needs several passes for a stable number)."""
    x = torch.randn(min(batch, n), 3, encoder.image_size, encoder.image_size)
    if encoder.device.type == "cuda":
        x = x.pin_memory()
    encoder.encode_images(x[: min(4, len(x))])  # warm-up
    sync(encoder)
    t = time.perf_counter()
    total = 0
    while True:
        done, out = 0, []
        while done < n:  # like the pipeline: results stay on the device, one copy back per series
            b = min(batch, n - done)
            out.append(encoder.encode_images(x[:b], keep_on_device=True))
            done += b
        torch.cat(out).cpu()
        total += n
        if time.perf_counter() - t >= min_seconds:
            break
    sync(encoder)
    return total / (time.perf_counter() - t)


def bench_end_to_end(encoder: ClipEncoder, files: list[Path], queries: list[Query], batch,
                     prefetch: int = 2, prepare_workers: int = PREPARE_WORKERS,
                     headers: dict | None = None) -> tuple[float, float, int]:
    """(b): ``headers`` None reads the headers inside the timing; step 2's headers skip that, as
    the pipeline's step 3 does (``load_volume(files, headers=index.headers)``)."""
    encoder.__dict__.pop("_text_memo", None)
    t = time.perf_counter()
    vol = load_volume(files, headers=headers)
    choices = select_key_slices(vol, queries, encoder, SelectorConfig(batch_size=batch, prefetch_batches=prefetch,
                                                                      prepare_workers=prepare_workers))
    sync(encoder)
    dt = time.perf_counter() - t
    n_windows = len({c.window for c in choices})
    return vol.n_slices * n_windows / dt, dt, n_windows


def bench_reference(encoder: ClipEncoder, files: list[Path], queries: list[Query]) -> tuple[float, float]:
    import pydicom

    t = time.perf_counter()
    slices = []
    for f in files:  # pydicom per file, sequential
        ds = pydicom.dcmread(f)
        slices.append((float(ds.ImagePositionPatient[2]),
                       ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
    slices.sort(key=lambda s: s[0])
    model = encoder.model
    count = 0
    with torch.inference_mode():
        for q in queries:  # every finding re-encodes every slice
            window = get_window(choose_window(q.organs))
            tok = encoder.tokenizer([q.text], context_length=encoder.context_length).to(encoder.device)
            with encoder._autocast():
                te = torch.nn.functional.normalize(model.encode_text(tok).float(), dim=-1)
            scores = []
            for _, hu in slices:
                x = reference_preprocess(hu, window, encoder.image_size, encoder.mean, encoder.std)
                with encoder._autocast():
                    ie = torch.nn.functional.normalize(model.encode_image(x[None].to(encoder.device)).float(), dim=-1)
                scores.append(float(ie @ te[0]))
                count += 1
            int(np.argmax(scores))
    sync(encoder)
    dt = time.perf_counter() - t
    return count / dt, dt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-16", help="ViT-B-16 (random weights), tiny, or a load_model spec")
    ap.add_argument("--image-size", type=int, default=64,
                    help="input size of the tiny model (64: a GPU-fast stand-in; 224: ~1,000 slices/s on 2 cores)")
    ap.add_argument("--slices", type=int, default=20, help="<= 20: first N real slices; more: synthetic phantom")
    ap.add_argument("--findings", type=int, default=8)
    ap.add_argument("--windows", type=int, default=1, help="distinct display windows among the findings (1-5)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16")
    ap.add_argument("--batch-size", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads, shared by the encoder and the preprocessing thread (0: torch's default, "
                         "one per core); 1 on a 2-core machine gives the encoder one core and the host path the other, "
                         "as on a GPU machine where the encoder uses no host core")
    ap.add_argument("--prefetch", type=int, default=2,
                    help="SelectorConfig.prefetch_batches: chunks read (CPU encoder: and preprocessed, in a background "
                         "thread) ahead of the encoder; 0 = read, preprocess and encode in turn in one thread")
    ap.add_argument("--prepare-workers", type=int, default=PREPARE_WORKERS,
                    help="SelectorConfig.prepare_workers: chunks preprocessed at once on a CPU encoder")
    ap.add_argument("--repeat", type=int, default=5,
                    help="(b) runs; the median is reported (one sub-second run swings by 30 %% on a shared machine)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    real = sorted(p for p in SERIES.iterdir() if p.is_file())
    tmp = None
    if args.slices <= len(real):
        files, source = real[: args.slices], f"real Siemens JPEG 2000 series, {args.slices} slices"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-phantom-")
        files = synthetic_phantom(args.slices, Path(tmp.name))
        source = f"SYNTHETIC PHANTOM, {args.slices} uncompressed slices"
    encoder = build_encoder(args.model, args.device, args.precision, args.image_size)
    organ_sets = ORGAN_SETS[: max(1, min(5, args.windows))]
    queries = [Query(f"f{i}", s, organ_sets[i % len(organ_sets)], []) for i, s in enumerate(sentences(args.findings))]
    hw = (512, 512)
    batch = auto_batch_size(encoder, hw) if args.batch_size == "auto" else int(args.batch_size)

    print(f"machine: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, "
          f"device {encoder.device} ({torch.cuda.get_device_name(encoder.device) if encoder.device.type == 'cuda' else 'cpu'}), "
          f"precision {encoder.precision}")
    print(f"model: {args.model} ({encoder.model_id}), input {encoder.image_size}px, batch {batch}, "
          f"decode workers {decode_workers()}, prefetch {args.prefetch}"
          + (f" (preprocessing ahead of the encoder by {args.prepare_workers} thread(s))"
             if args.prefetch and encoder.device.type == "cpu" else ""))
    print(f"series: {source}; findings: {len(queries)} in {len(organ_sets)} window(s)")
    n_model = len(files) * len(organ_sets)
    # Warm-up (first-call kernel setup, tokenizer, decoder plugins): 2 slices, untimed.
    select_key_slices(load_volume(files[:2]), queries[:1], encoder, SelectorConfig(batch_size=2))
    # (a) is measured before and after (b) and averaged: on a shared machine the load drifts
    # between measurements, and bracketing keeps that drift out of b/a.
    a1 = bench_model_only(encoder, n_model, batch)
    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(encoder.device)
    runs = sorted(bench_end_to_end(encoder, files, queries, batch, args.prefetch, args.prepare_workers)
                  for _ in range(max(args.repeat, 1)))
    b, b_dt, n_windows = runs[len(runs) // 2]
    step2 = {f: read_header(f) for f in files}
    b2 = sorted(bench_end_to_end(encoder, files, queries, batch, args.prefetch, args.prepare_workers, step2)[0]
                for _ in range(max(args.repeat, 1)))[max(args.repeat, 1) // 2]
    peak_gpu = torch.cuda.max_memory_allocated(encoder.device) if encoder.device.type == "cuda" else None
    a2 = bench_model_only(encoder, n_model, batch)
    a = (a1 + a2) / 2
    print(f"(a) model-only encode:     {a:9.2f} slices/s  ({n_model}-slice passes; {a1:.2f} before and {a2:.2f} "
          f"after (b))")
    print(f"(b) end-to-end from DICOM: {b:9.2f} slices/s  ({len(files)} slices x {n_windows} window(s) in {b_dt:.1f} s, "
          f"{len(queries)} findings -> {len(files) / b_dt:.2f} series slices/s; median of {len(runs)} runs, "
          f"{runs[0][0]:.0f}-{runs[-1][0]:.0f})")
    print(f"    b/a = {b / a:.2f}  (target >= 0.9)")
    print(f"    from step 2's headers (the pipeline's step 3): {b2:.2f} slices/s, b/a = {b2 / a:.2f} "
          f"(median of {max(args.repeat, 1)} runs)")
    out = {"a_model_only": a, "a_before": a1, "a_after": a2, "b_end_to_end": b, "b_seconds": b_dt,
           "b_from_step2_headers": b2,
           "b_over_a": b / a, "b_runs": [run[0] for run in runs], "model": args.model, "device": str(encoder.device), "precision": encoder.precision,
           "slices": len(files), "findings": len(queries), "windows": n_windows, "batch": batch, "source": source}
    if peak_gpu is not None:
        print(f"    peak GPU memory during (b): {peak_gpu / 2**30:.2f} GiB (torch.cuda.max_memory_allocated)")
        out["peak_gpu_mem_gib"] = peak_gpu / 2**30
    # What (b) does besides encoding slices, each timed alone (on a CPU encoder all of it runs on the
    # host's cores; on a GPU the preprocessing runs on the device, so it is left out there).
    t = time.perf_counter()
    vol = load_volume(files)
    t_headers = time.perf_counter() - t
    t = time.perf_counter()
    for chunk in vol.chunks(batch):  # stored values, as (b) streams them
        chunk.release()
    t_decode = time.perf_counter() - t
    encoder.__dict__.pop("_text_memo", None)
    t = time.perf_counter()
    encoder.encode_texts([q.text for q in queries])
    sync(encoder)
    t_text = time.perf_counter() - t
    out.update({"headers_seconds": t_headers, "decode_seconds": t_decode, "text_seconds": t_text})
    print(f"    parts of (b) alone: headers {t_headers:.2f} s, read+decode the series {t_decode:.2f} s, encode "
          f"{len(queries)} sentences {t_text:.2f} s, slices at the (a) rate {n_model / a:.2f} s")
    if encoder.device.type == "cpu":
        windows = [get_window(w) for w in dict.fromkeys(window_for_query(q, SelectorConfig(), encoder)
                                                         for q in queries)]
        t = time.perf_counter()
        for _ in prepared_chunks(vol, encoder, windows, batch, workers=args.prepare_workers):  # no encoder
            pass
        t_prep = time.perf_counter() - t
        host = len(files) * len(windows) / t_prep
        # Perfect overlap: headers and sentences first, then the slower of (read + preprocess) and the encoder.
        bound = n_model / (t_headers + t_text + max(t_prep, n_model / a))
        print(f"    host path alone (read + decode + preprocess, no encoder): {host:.0f} slices/s "
              f"({t_prep:.2f} s); with perfect overlap (b) <= {bound:.0f} slices/s, b/a <= {bound / a:.2f}")
        out.update({"prep_seconds": t_prep, "host_rate": host, "b_bound": bound})
    if not args.skip_reference:
        c, c_dt = bench_reference(encoder, files, queries)
        print(f"(c) reference loop:        {len(files) / c_dt:9.2f} series slices/s  ({len(files) * len(queries)} "
              f"slice encodings in {c_dt:.1f} s, {c:.2f}/s)")
        speedup = c_dt / b_dt  # same work: all findings of the study answered
        print(f"    b/c = {speedup:.2f}  (series slices/s of the same study, all findings answered; target >= 10)")
        out.update({"c_reference": c, "c_seconds": c_dt, "b_over_c": speedup})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
