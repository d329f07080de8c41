"""Fine-tune an open_clip model on organ-level (and lesion-level) pairs; resumable.

Run layout (``out_dir``)::

    config.yaml                  the resolved config of the run
    init_model/                  the starting weights when the spec is "tiny" or "open_clip:ARCH[:TAG]"
    pairs.parquet                training rows (kind, source, slice, label, organ, text, group)
    pair_stats.parquet           per organ: slices inside/outside, positive/negative rows
    checkpoints/step_XXXXXXX.pt  model + optimizer + scheduler + step + RNG state + metrics so far
    metrics/train_steps.parquet  one row per step: loss, lr, logit scale, grad norm, seconds
    model/                       the fine-tuned model, loadable with keyslice.selector.load_model
                                 (``keyslice build --model OUT/model``), + keyslice_finetune.json (provenance)

Determinism: every random draw of step ``t`` (rows, prompts, augmentation) comes from
generators seeded by ``(seed, t)``, so a run resumed from a checkpoint at step k draws exactly
what the uninterrupted run drew; with the optimizer, scheduler and model state restored, the
resumed run reaches the same weights (bit-identical on CPU in our tests). Mixed precision: bf16
``torch.autocast`` on CUDA (``precision: auto``), fp32 on CPU; ``precision: fp16`` (GPUs without
bf16) adds dynamic loss scaling (``torch.amp.GradScaler``, saved in the checkpoints).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from keyslice.finetune.config import FinetuneConfig

Progress = Callable[[str], None]
CKPT_PREFIX = "step_"


# --------------------------------------------------------------------------- model


def prepare_initial_model(cfg: FinetuneConfig) -> str:
    """The load_model spec of the starting weights; "tiny" and "open_clip:..." are materialised
    under ``out_dir/init_model`` (deterministically from the seed)."""
    spec = cfg.model.spec
    dest = cfg.out / "init_model"
    if spec == "tiny":
        if not (dest / "READY").exists():
            from keyslice.selector.tiny import save_tiny_checkpoint

            _clean(dest)
            save_tiny_checkpoint(dest, seed=cfg.tiny_seed, image_size=cfg.model.tiny_image_size, name="tiny-clip")
            (dest / "READY").write_text("ok\n")
        return str(dest.resolve())
    if spec.startswith("open_clip:"):
        if not (dest / "READY").exists():
            _clean(dest)
            _save_open_clip_arch(spec[len("open_clip:"):], dest, cfg.seed)
            (dest / "READY").write_text("ok\n")
        return str(dest.resolve())
    return spec


def _clean(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def _save_open_clip_arch(arch_tag: str, dest: Path, seed: int) -> None:
    """open_clip architecture (+ optional pretrained tag) -> a config-layout folder load_model reads."""
    import open_clip

    from keyslice.errors import ModelWeightsMissingError

    arch, _, tag = arch_tag.partition(":")
    mcfg = open_clip.get_model_config(arch)
    if mcfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=tag or None, device="cpu")
    except RuntimeError as e:
        raise ModelWeightsMissingError(f"cannot get open_clip {arch} pretrained={tag!r}: {e}") from e
    finally:
        torch.random.set_rng_state(state)
    full = dict(mcfg, model_name=arch.replace("/", "-"))
    pcfg = getattr(model.visual, "preprocess_cfg", None)
    if pcfg:
        full["preprocess_cfg"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pcfg.items()}
    if tag:
        pre = open_clip.get_pretrained_cfg(arch, tag) or {}
        if pre.get("quick_gelu"):
            full["quick_gelu"] = True
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{full['model_name']}.json").write_text(json.dumps(full, indent=1))
    torch.save(model.state_dict(), dest / f"{full['model_name']}.pt")


def export_model(model: torch.nn.Module, init_spec: str, encoder, dest: Path, provenance: dict) -> Path:
    """Write the fine-tuned weights in the layout of the starting model so that
    ``keyslice.selector.load_model(str(dest))`` loads them: a local folder (config or hub layout) is
    copied with its weights file replaced; an open_clip preset becomes a config-layout folder."""
    from keyslice.selector.model import PRESETS
    from keyslice.selector.loaders import _find_weights

    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = dest.with_name(f".{dest.name}.tmp")
    _clean(tmp)
    tmp.mkdir(parents=True)
    src_dir: Path | None = None
    p = Path(init_spec[len("local-dir:"):] if init_spec.startswith("local-dir:") else init_spec).expanduser()
    if p.is_dir():
        src_dir = p
    elif encoder.weights_path and (Path(encoder.weights_path).parent / "open_clip_config.json").is_file():
        src_dir = Path(encoder.weights_path).parent            # an hf-hub snapshot folder
    if src_dir is not None:
        weights = _find_weights(src_dir)
        for f in sorted(src_dir.iterdir()):
            if f.is_file() and f != weights and f.name not in ("READY", "keyslice_finetune.json"):
                shutil.copy(f, tmp / f.name)
        name = weights.name if weights is not None else "open_clip_pytorch_model.bin"
        if name.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(sd, str(tmp / name))
        else:
            torch.save(sd, tmp / name)
    elif init_spec in PRESETS and PRESETS[init_spec].arch:
        import open_clip

        preset = PRESETS[init_spec]
        full = dict(open_clip.get_model_config(preset.arch), model_name=f"{preset.name}-finetuned")
        if preset.quick_gelu:
            full["quick_gelu"] = True
        (tmp / f"{full['model_name']}.json").write_text(json.dumps(full, indent=1))
        torch.save(sd, tmp / f"{full['model_name']}.pt")
    else:
        raise ValueError(f"cannot export a model fine-tuned from {init_spec!r}: use a preset, a local folder "
                         f"or an hf-hub model whose files are in the local cache")
    (tmp / "keyslice_finetune.json").write_text(json.dumps(provenance, indent=1, default=str))
    _clean(dest)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- helpers


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**62)


def param_groups(model: torch.nn.Module, weight_decay: float, freeze: tuple[str, ...]):
    """AdamW groups as open_clip's training script: no decay on gains, biases, norms, logit scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if any(n.startswith(f) for f in freeze):
            p.requires_grad_(False)
            continue
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_lambda_factory(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(1.0, max(0.0, progress))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _rng_state() -> dict:
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out: Path) -> list[Path]:
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{CKPT_PREFIX}*.pt"))


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    from keyslice.corpus.atomic import write_parquet_atomic

    write_parquet_atomic(path, pa.Table.from_pylist(rows) if rows else pa.table({}))


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path | None      # None while the run is not finished (max_steps stopped it early)
    init_spec: str
    step: int
    total_steps: int
    final_loss: float
    train_seconds: float        # optimisation steps only, summed over resumes
    setup_seconds: float
    resumed_from: int | None


class _Run:
    """Everything one training process builds from the config (fresh objects on every resume)."""

    def __init__(self, cfg: FinetuneConfig, progress: Progress):
        from keyslice.finetune.augment import SliceBank
        from keyslice.finetune.pairs import (build_organ_pairs, build_station_pairs, collect_lesion_labels,
                                             default_organs, lesion_pairs, load_source, pairs_table, slice_organs,
                                             slice_stations, stats_rows)
        from keyslice.selector.loaders import load_model
        from keyslice.selector.model import resolve_device, resolve_precision

        t0 = time.perf_counter()
        self.cfg = cfg
        out = cfg.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.init_spec = prepare_initial_model(cfg)
        self.encoder = load_model(self.init_spec, device="cpu", precision="fp32")
        torch.manual_seed(cfg.seed)
        self.model = copy.deepcopy(self.encoder.model).to(self.device).train()

        self.sources = [load_source(s) for s in cfg.train_sources]
        if cfg.pairs.reviews:  # the series judged in `keyslice review`, read from the studies
            from keyslice.finetune.pairs import review_sources

            self.sources += review_sources(Path(cfg.pairs.reviews), Path(cfg.pairs.reviews_input))
        self.by_name = {s.name: s for s in self.sources}
        enc = self.encoder
        self.bank = SliceBank(self.sources, enc.image_size, enc.mean, enc.std, enc.resize_mode, self.device,
                              spatial=cfg.spatial)
        self.anatomy = cfg.train.alignment == "anatomy"
        organs = list(cfg.pairs.organs) or default_organs(self.sources)
        organ_pairs, self.stats = build_organ_pairs(self.sources, organs, pairs_per_organ=cfg.pairs.pairs_per_organ,
                                                    seed=cfg.seed, min_slices=cfg.pairs.min_slices)
        self.organs = [s.organ for s in self.stats if s.skipped is None]
        if not cfg.pairs.organ_pairs:
            organ_pairs = []
        elif self.anatomy:
            # a region exists only where the organ is on the slice: positive rows with in-plane mask pixels
            organ_pairs = [p for p in organ_pairs if p.label == 1 and self.bank.has_region(p.source, p.organ, p.slice)]
        lesion = lesion_pairs(collect_lesion_labels(cfg.pairs, self.sources))
        self.stations = {s.name: slice_stations(s) for s in self.sources}
        self.slice_organs = {s.name: slice_organs(s, self.organs) for s in self.sources}
        station = build_station_pairs(self.sources, cfg.pairs.station_pairs, cfg.seed)
        self.pairs = organ_pairs + lesion + station
        if not self.pairs:
            raise ValueError("no training pairs: no organ of the list has slices in the training masks (or "
                             "pairs.organ_pairs is false) and no lesion labels were given")
        self.regions = [p.organ if self.anatomy and p.kind in ("organ", "lesion")
                        and self.bank.has_region(p.source, p.organ, p.slice) else None for p in self.pairs]
        from keyslice.corpus.atomic import write_parquet_atomic

        write_parquet_atomic(out / "pairs.parquet", pairs_table(self.pairs))
        _write_parquet(out / "pair_stats.parquet", stats_rows(self.stats))
        w = [cfg.pairs.lesion_weight if p.kind == "lesion" else 1.0 for p in self.pairs]
        self.row_weights = torch.tensor(w, dtype=torch.float64)

        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay, cfg.train.freeze),
                                           lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=cfg.train.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_factory(cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio))
        # fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.metrics: list[dict] = []
        self.train_seconds = 0.0
        self.resumed_from: int | None = None
        self.setup_seconds = time.perf_counter() - t0
        n_neg = sum(1 for p in lesion if p.label == 0)
        progress(f"{len(self.pairs)} training rows ({len(organ_pairs)} organ, {len(lesion)} lesion of which {n_neg} "
                 f"negative, {len(station)} station) over {len(self.organs)} organs from {len(self.sources)} CT(s); "
                 f"{cfg.train.alignment}-level alignment, spatial normalisation "
                 f"{'on' if cfg.spatial.enabled else 'off'}; model {self.init_spec} on {self.device} ({self.precision})")

    # ------------------------------------------------------------ batches
    def _window(self, pair) -> str:
        from keyslice.selector.windows import DEFAULT_WINDOW, choose_window

        if self.cfg.train.window != "organ":
            return self.cfg.train.window
        if pair.organ:
            return choose_window([pair.organ])
        return self.encoder.training_window or DEFAULT_WINDOW

    def _inside(self, source: str, k: int, organ: str | None) -> bool:
        if organ is None:
            return False
        return bool(self.by_name[source].inside(organ)[k])

    def _station(self, source: str, k: int) -> str | None:
        return self.stations[source][k]

    def batch(self, step: int):
        from keyslice.finetune.loss import target_matrix
        from keyslice.finetune.prompts import augmented_prompt, canonical_prompt, station_prompt

        cfg = self.cfg
        g = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        rng = random.Random(step_seed(cfg.seed, step))
        b = cfg.train.batch_size
        idx = torch.multinomial(self.row_weights, b, replacement=len(self.pairs) < b, generator=g).tolist()
        rows = [self.pairs[i] for i in idx]
        regions = [self.regions[i] for i in idx]
        texts = []
        for r in rows:
            if r.kind == "lesion":
                texts.append(r.text)
            elif r.kind == "station":
                texts.append(station_prompt(r.group.split(":", 1)[1], self.slice_organs[r.source][r.slice], rng))
            elif cfg.prompts.language_augment:
                texts.append(augmented_prompt(r.organ, rng, tuple(cfg.prompts.styles)))
            else:
                texts.append(canonical_prompt(r.organ, rng.choice(tuple(cfg.prompts.styles))))
        images = self.bank.render([r.source for r in rows], [r.slice for r in rows], [self._window(r) for r in rows],
                                  cfg.augment, g, regions=regions)
        tokens = self.encoder.tokenizer(texts, context_length=self.encoder.context_length).to(self.device)
        targets = torch.from_numpy(target_matrix(rows, self._inside, soft=cfg.train.soft_targets,
                                                 false_negatives=cfg.train.false_negatives,
                                                 station_lookup=self._station, regions=regions)).to(self.device)
        self.last_regions = regions      # the region organ of each row of the batch just drawn (loss_on's default)
        return images, tokens, targets, texts

    def loss_on(self, images, tokens, targets, regions: list[str | None] | None = None) -> torch.Tensor:
        from keyslice.finetune.loss import anatomy_clip_loss, soft_clip_loss

        amp = self.precision in ("bf16", "fp16")
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=amp):
            img = self.model.encode_image(images)
            txt = self.model.encode_text(tokens)
        img = F.normalize(img.float(), dim=-1)
        txt = F.normalize(txt.float(), dim=-1)
        scale = self.model.logit_scale.exp().float()
        if self.anatomy:
            return anatomy_clip_loss(img, txt, scale, targets, regions if regions is not None else self.last_regions)
        return soft_clip_loss(img, txt, scale, targets)

    def train_step(self, step: int) -> dict:
        t0 = time.perf_counter()
        images, tokens, targets, _ = self.batch(step)
        loss = self.loss_on(images, tokens, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for grp in self.optimizer.param_groups for p in grp["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else 1e12)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)           # skipped (and the scale lowered) on inf/NaN gradients in fp16
        self.scaler.update()
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.train_seconds += dt
        return {"step": step + 1, "loss": float(loss.detach()), "lr": float(lr),
                "logit_scale": float(self.model.logit_scale.exp().detach()), "grad_norm": float(gn),
                "n_targets": int((targets > 0).sum()), "seconds": dt}

    # ------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        folder = self.cfg.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{CKPT_PREFIX}{self.step:07d}.pt"
        state = {
            "step": self.step, "fingerprint": self.cfg.fingerprint(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": _rng_state(), "metrics": self.metrics,
            "train_seconds": self.train_seconds, "init_spec": self.init_spec,
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        for old in checkpoints(self.cfg.out)[:-max(1, self.cfg.train.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        return path

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["fingerprint"] != self.cfg.fingerprint():
            raise ValueError(f"{path} belongs to a run with another config (fingerprint {state['fingerprint']} != "
                             f"{self.cfg.fingerprint()}); use another out_dir or --restart to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.metrics = list(state["metrics"])
        self.train_seconds = float(state["train_seconds"])
        self.resumed_from = self.step


def data_provenance(cfg: FinetuneConfig) -> list[dict]:
    """Name, paths and sha256 of each training / evaluation CT and mask (a folder: hash of its files' hashes)."""
    import hashlib

    from keyslice.selector.model import file_sha256

    def digest(p: str | None) -> str | None:
        if not p:
            return None
        path = Path(p)
        if path.is_file():
            return file_sha256(path)
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(x for x in path.rglob("*") if x.is_file()):
                h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_sha256(f).encode())
            return h.hexdigest()
        return None

    out = []
    for split, srcs in (("train", cfg.train_sources), ("eval", cfg.eval_sources)):
        for s in srcs:
            masks = list(s.masks) if isinstance(s.masks, tuple) else [s.masks]
            out.append({"split": split, "name": s.name, "ct": s.ct, "ct_sha256": digest(s.ct), "masks": s.masks,
                        "masks_sha256": [digest(m) for m in masks] if len(masks) > 1 else digest(masks[0]),
                        "labels": s.labels, "aorta_report": s.aorta_report,
                        "aorta_report_sha256": digest(s.aorta_report)})
    return out


def train(cfg: FinetuneConfig, *, max_steps: int | None = None, restart: bool = False,
          progress: Progress = print) -> TrainResult:
    """Train (or resume) the run of ``cfg`` up to ``cfg.train.steps`` steps, or stop after ``max_steps``
    steps in total (a checkpoint is written there; call again to resume)."""
    import keyslice
    import open_clip

    out = cfg.out
    if restart:
        for sub in ("checkpoints", "model"):
            _clean(out / sub)
    run = _Run(cfg, progress)
    existing = checkpoints(out)
    if existing:
        run.resume(existing[-1])
        progress(f"resumed from {existing[-1].name} (step {run.step})")
    total = cfg.train.steps
    stop = total if max_steps is None else min(total, int(max_steps))
    every = max(1, cfg.train.checkpoint_every)
    while run.step < stop:
        row = run.train_step(run.step)
        run.metrics.append(row)
        run.step += 1
        if run.step % max(1, cfg.train.log_every) == 0 or run.step == stop:
            progress(f"step {run.step}/{total} loss {row['loss']:.4f} lr {row['lr']:.2e} "
                     f"scale {row['logit_scale']:.1f} ({run.train_seconds:.1f} s)")
        if run.step % every == 0 or run.step == stop:
            run.save()
    _write_parquet(out / "metrics" / "train_steps.parquet", run.metrics)
    final_loss = run.metrics[-1]["loss"] if run.metrics else math.nan
    model_dir = None
    if run.step >= total:
        provenance = {
            "kind": "keyslice-finetune", "name": cfg.name, "seed": cfg.seed, "fingerprint": cfg.fingerprint(),
            "init_model": run.init_spec, "init_weights_sha256": run.encoder.weights_sha256, "steps": run.step,
            "final_loss": final_loss,
            "mean_loss_last_10": float(np.mean([m["loss"] for m in run.metrics[-10:]])) if run.metrics else None,
            "train_seconds": round(run.train_seconds, 2), "device": str(run.device), "precision": run.precision,
            "organs": run.organs, "n_pairs": len(run.pairs), "data": data_provenance(cfg),
            "config": cfg.to_dict(), "versions": {"keyslice": getattr(keyslice, "__version__", "?"),
                                                  "torch": torch.__version__, "open_clip": open_clip.__version__},
        }
        model_dir = export_model(run.model, run.init_spec, run.encoder, out / "model", provenance)
        progress(f"fine-tuned model written to {model_dir} ({run.step} steps, {run.train_seconds:.1f} s of training)")
    return TrainResult(out, model_dir, run.init_spec, run.step, total, final_loss, run.train_seconds,
                       run.setup_seconds, run.resumed_from)
