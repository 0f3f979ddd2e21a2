"""Encoders: VGGish front end vs NumPy, VGGish/ResNet/BERT shapes, weights loading, determinism, text parity,
multimodal concatenation, masking and bad-input handling."""
import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from semrec.config import from_dict, to_dict
from semrec.data import write_wav
from semrec.encoders import (AudioEncoder, EncodeError, EncoderConfig, ImageEncoder, ItemContent, LogMelSpectrogram,
                             ModalityProjection, TextEncoder, build_vggish, item_contents, prepare_waveform,
                             read_image, read_wav, resolve_text_model, vggish_mel_matrix, waveform_to_patches)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# --- An independent NumPy log-mel, written after VGGish's mel_features.py / vggish_input.py. ---

def np_frame(data, window_length, hop_length):
  num_frames = 1 + int(np.floor((data.shape[0] - window_length) / hop_length))
  shape = (num_frames, window_length) + data.shape[1:]
  strides = (data.strides[0] * hop_length,) + data.strides
  return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides)


def np_periodic_hann(n):
  return 0.5 - 0.5 * np.cos(2 * np.pi / n * np.arange(n))


def np_hertz_to_mel(f):
  return 1127.0 * np.log(1.0 + f / 700.0)


def np_mel_matrix(num_mel_bins=64, num_spectrogram_bins=257, sample_rate=16000, lower=125.0, upper=7500.0):
  bins_mel = np_hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins))
  edges = np.linspace(np_hertz_to_mel(lower), np_hertz_to_mel(upper), num_mel_bins + 2)
  w = np.empty((num_spectrogram_bins, num_mel_bins))
  for i in range(num_mel_bins):
    lo, center, hi = edges[i:i + 3]
    w[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (center - lo), (hi - bins_mel) / (hi - center)))
  w[0, :] = 0.0
  return w


def np_vggish_examples(data, sample_rate=16000):
  """waveform -> [P, 96, 64] like vggish_input.waveform_to_examples (16 kHz input)."""
  win = int(round(sample_rate * 0.025))
  hop = int(round(sample_rate * 0.010))
  fft = 2 ** int(np.ceil(np.log(win) / np.log(2.0)))
  spec = np.abs(np.fft.rfft(np_frame(data, win, hop) * np_periodic_hann(win), fft))
  log_mel = np.log(np.dot(spec, np_mel_matrix(num_spectrogram_bins=spec.shape[1])) + 0.01)
  return log_mel, np_frame(log_mel, 96, 96)


def _signal(seconds, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(int(16000 * seconds)) / 16000
  return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
          + rng.normal(0, 0.05, t.size)).astype(np.float32)


class FrontEndTest(tf.test.TestCase):

  def test_constants_match_vggish(self):
    from semrec.encoders import audio
    # 25 ms / 10 ms at 16 kHz -> 400 / 160 samples; FFT = next power of two >= 400 = 512.
    self.assertEqual((audio.WINDOW_LENGTH, audio.HOP_LENGTH, audio.FFT_LENGTH), (400, 160, 512))
    self.assertEqual((audio.PATCH_FRAMES, audio.MIN_SAMPLES), (96, 400 + 95 * 160))

  def test_mel_matrix_matches_numpy(self):
    m = vggish_mel_matrix().numpy()
    self.assertEqual(m.shape, (257, 64))
    self.assertAllClose(m, np_mel_matrix(), atol=1e-12, rtol=0)
    self.assertAllEqual(m[0], np.zeros(64))  # DC bin carries no weight
    # every band has weight; the 7500 Hz edge is below Nyquist so the top bins are empty
    self.assertTrue((m.sum(axis=0) > 0).all())
    self.assertAllEqual(m[-1], np.zeros(64))

  def test_log_mel_and_patches_match_numpy(self):
    x = _signal(2.1)
    ref_log_mel, ref_patches = np_vggish_examples(x.astype(np.float64))
    log_mel = LogMelSpectrogram()(x).numpy()
    # frames = 1 + (33600 - 400) // 160 = 208 -> 2 patches of 96 (16 frames dropped, like VGGish)
    self.assertEqual(log_mel.shape, (208, 64))
    self.assertAllClose(log_mel, ref_log_mel, atol=1e-5, rtol=0)  # float32 rounding only
    patches = waveform_to_patches(x).numpy()
    self.assertEqual(patches.shape, (2, 96, 64))
    self.assertEqual(patches.dtype, np.float32)
    self.assertAllClose(patches, ref_patches, atol=1e-5, rtol=0)

  def test_silence_is_log_offset(self):
    log_mel = LogMelSpectrogram()(np.zeros(16000, np.float32)).numpy()
    self.assertAllClose(log_mel, np.full_like(log_mel, np.log(0.01)))

  def test_layer_config_round_trip(self):
    layer = LogMelSpectrogram(name="fe")
    clone = LogMelSpectrogram.from_config(layer.get_config())
    x = _signal(1.0)
    self.assertAllEqual(layer(x), clone(x))
    self.assertIs(tf.keras.utils.get_registered_object("semrec>LogMelSpectrogram"), LogMelSpectrogram)

  def test_prepare_waveform(self):
    # int16 full scale -> [-1, 1); stereo -> mono mean; short clips zero-padded to one patch (15600 samples).
    pcm = np.array([[32767, -32768], [16384, 16384]] * 100, np.int16)
    y = prepare_waveform(pcm, 16000)
    self.assertEqual(y.shape, (15600,))
    self.assertAllClose(y[:4], [(32767 - 32768) / 2 / 32768, 0.5, (32767 - 32768) / 2 / 32768, 0.5])
    self.assertAllEqual(y[200:], np.zeros(15400))
    self.assertEqual(waveform_to_patches(y).shape, (1, 96, 64))
    with self.assertRaisesRegex(EncodeError, "'x'.*'audio_path'.*no samples"):
      prepare_waveform(np.zeros(0, np.int16), 16000, "x")
    with self.assertRaisesRegex(EncodeError, "sample rate"):
      prepare_waveform(np.zeros(100), 0, "x")

  def test_resampling_keeps_the_spectrum(self):
    # A 440 Hz tone at 8 kHz, resampled to 16 kHz, has (nearly) the log-mel of the same tone at 16 kHz.
    t8, t16 = np.arange(16000) / 8000, np.arange(32000) / 16000
    a = waveform_to_patches(prepare_waveform(np.sin(2 * np.pi * 440 * t8), 8000)).numpy()
    b = waveform_to_patches(prepare_waveform(np.sin(2 * np.pi * 440 * t16), 16000)).numpy()
    self.assertEqual(a.shape, b.shape)
    self.assertEqual(np.argmax(a[0, 50]), np.argmax(b[0, 50]))
    self.assertAllClose(a[0, 10:90, :40], b[0, 10:90, :40], atol=0.2)


class AudioEncoderTest(tf.test.TestCase):

  def test_vggish_architecture(self):
    model = build_vggish("vggish")
    # conv1 640 + conv2 73,856 + conv3 295,168 + 590,080 + conv4 1,180,160 + 2,359,808
    # + fc1 (6*4*512=12288 -> 4096) 50,335,744 + 16,781,312 + fc2 524,416 = 72,141,184 (VGGish's count).
    self.assertEqual(model.count_params(), 72_141_184)
    self.assertEqual(model.output_shape, (None, 128))
    self.assertEqual(model.get_layer("flatten").output_shape, (None, 6 * 4 * 512))

  def test_shapes_determinism_and_mean_pooling(self):
    enc = AudioEncoder("random", "vggish-small", seed=3)
    clips = [_signal(2.0, 0), _signal(0.5, 1), (_signal(1.0, 2) * 32767).astype(np.int16)]
    out = enc.encode(clips, [16000, 16000, 16000])
    self.assertEqual(out.shape, (3, 128))
    self.assertEqual(out.dtype, np.float32)
    self.assertAllEqual(out, AudioEncoder("random", "vggish-small", seed=3).encode(clips))
    self.assertNotAllClose(out, AudioEncoder("random", "vggish-small", seed=4).encode(clips))
    # 2.0 s -> 2 patches; the clip vector is the mean of the patch vectors.
    patches = enc.patch_embeddings(prepare_waveform(clips[0], 16000))
    self.assertEqual(patches.shape, (2, 128))
    self.assertAllClose(out[0], patches.mean(axis=0), rtol=1e-3, atol=1e-4)
    self.assertTrue(enc.info["random_init"])

  def test_needs_weights(self):
    with self.assertRaisesRegex(ValueError, "random"):
      AudioEncoder(None)
    with self.assertRaisesRegex(FileNotFoundError, "not found"):
      AudioEncoder(os.path.join(self.get_temp_dir(), "nope.h5"))

  def test_h5_and_slim_checkpoint_weights(self):
    src = AudioEncoder("random", "vggish-small", seed=7)
    clip = [_signal(1.0)]
    expected = src.encode(clip)
    h5 = os.path.join(self.get_temp_dir(), "vggish_small.h5")
    src.model.save_weights(h5)
    from_h5 = AudioEncoder(h5, "vggish-small")
    self.assertAllEqual(from_h5.encode(clip), expected)
    self.assertFalse(from_h5.info["random_init"])
    # A checkpoint with the variable names of the original vggish_model.ckpt (slim scopes).
    from semrec.encoders.audio import _CKPT_SCOPES
    names, tensors = [], []
    for layer, scope in _CKPT_SCOPES.items():
      kernel, bias = src.model.get_layer(layer).get_weights()
      names += [f"{scope}/weights", f"{scope}/biases"]
      tensors += [tf.constant(kernel), tf.constant(bias)]
    prefix = os.path.join(self.get_temp_dir(), "vggish_model.ckpt")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    from_ckpt = AudioEncoder(prefix, "vggish-small")
    self.assertAllEqual(from_ckpt.encode(clip), expected)
    with self.assertRaisesRegex(ValueError, "shape"):
      AudioEncoder(prefix, "vggish")  # full-width model, small checkpoint


  def test_hub_directory_weights(self):
    # A local Hub/SavedModel VGGish stand-in: waveform [S] -> [P, 128], one row per 0.96 s (15360 samples),
    # row p = mean(abs(patch p)) * [0, 1, ..., 127]. The encoder mean-pools the rows of each clip.
    class Vggish(tf.Module):
      @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
      def __call__(self, waveform):
        patches = tf.signal.frame(waveform, 15360, 15360)
        return tf.reduce_mean(tf.abs(patches), axis=1, keepdims=True) * tf.range(128, dtype=tf.float32)[None]

    hub_dir = os.path.join(self.get_temp_dir(), "vggish_hub")
    tf.saved_model.save(Vggish(), hub_dir)
    enc = AudioEncoder(hub_dir)
    self.assertEqual(enc.info["model"], "vggish-tfhub")
    clip = np.concatenate([np.full(15360, 0.5), np.full(15360, -0.25)]).astype(np.float32)
    out = enc.encode([clip, clip[::2]], [16000, 8000])
    self.assertEqual(out.shape, (2, 128))
    # patch means |0.5| and |-0.25| -> clip mean 0.375; the 8 kHz copy is resampled to the same clip.
    self.assertAllClose(out[0], 0.375 * np.arange(128), rtol=1e-6)
    self.assertAllClose(out[1], 0.375 * np.arange(128), rtol=2e-2)


class ImageEncoderTest(tf.test.TestCase):

  def test_shapes_determinism_and_video(self):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)]
    video = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    enc = ImageEncoder("random", "resnet18", image_size=32, seed=1)
    out = enc.encode(images + [video])
    self.assertEqual(out.shape, (3, 512))
    self.assertEqual(out.dtype, np.float32)
    self.assertTrue(np.isfinite(out).all())
    self.assertAllEqual(out, ImageEncoder("random", "resnet18", image_size=32, seed=1).encode(images + [video]))
    frames = enc.encode(list(video))
    # Batch composition changes oneDNN's summation order, so equality holds to float32 noise only.
    self.assertAllClose(out[2], frames.mean(axis=0), rtol=1e-3, atol=1e-3)
    self.assertAllClose(enc.encode_video(video), out[2], rtol=1e-3, atol=1e-3)
    self.assertEqual(enc.info["model"], "resnet18")
    self.assertTrue(enc.info["random_init"])
    with self.assertRaisesRegex(EncodeError, "'bad'.*image_path.*shape"):
      enc.encode([np.zeros((4, 4))], item_ids=["bad"])

  def test_imagenet_missing_from_keras_cache_fails_clearly(self):
    home = self.get_temp_dir()
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv("KERAS_HOME", os.path.join(home, "keras"))
      mp.setenv("HOME", home)
      with self.assertRaisesRegex(FileNotFoundError, "Keras cache.*random"):
        ImageEncoder("imagenet", "resnet50", image_size=32, allow_download=False)
      with self.assertRaisesRegex(ValueError, "resnet50 only"):
        ImageEncoder("imagenet", "resnet18", image_size=32)

  @pytest.mark.slow
  def test_imagenet_from_keras_cache(self):
    home = self.get_temp_dir()
    env = {"KERAS_HOME": os.path.join(home, "keras"), "HOME": home}
    with pytest.MonkeyPatch.context() as mp:
      for k, v in env.items():
        mp.setenv(k, v)
      # A file at the cache path is used (here a random ResNet50 saved there).
      src = ImageEncoder("random", "resnet50", image_size=32, seed=5)
      self.assertEqual(src.dim, 2048)  # ResNet50, global average pool
      os.makedirs(os.path.join(home, "keras", "models"))
      cached = os.path.join(home, "keras", "models", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
      src.model.save_weights(cached)
      enc = ImageEncoder("imagenet", "resnet50", image_size=32)
      self.assertEqual(enc.info["weights"], cached)
      self.assertFalse(enc.info["random_init"])
      x = [np.full((32, 32, 3), 100, np.uint8)]
      self.assertAllClose(enc.encode(x), src.encode(x))

  def test_h5_and_hub_directory_weights(self):
    src = ImageEncoder("random", "resnet18", image_size=32, seed=2)
    h5 = os.path.join(self.get_temp_dir(), "r18.h5")
    src.model.save_weights(h5)
    x = [np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    self.assertAllEqual(ImageEncoder(h5, "resnet18", image_size=32).encode(x), src.encode(x))
    with self.assertRaisesRegex(FileNotFoundError, "not 'pretrained', 'imagenet'"):
      ImageEncoder(os.path.join(self.get_temp_dir(), "missing.h5"), "resnet18", image_size=32)

    # A local TF Hub / SavedModel feature-vector model: inputs in [0, 1], here mean colour x fixed matrix.
    class Features(tf.Module):
      def __init__(self):
        self.w = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32), [3, 4]))

      @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
      def __call__(self, images):
        return tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.w)

    hub_dir = os.path.join(self.get_temp_dir(), "hub_model")
    tf.saved_model.save(Features(), hub_dir)
    enc = ImageEncoder(hub_dir, image_size=32)
    self.assertEqual(enc.dim, 4)
    self.assertEqual(enc.info["model"], "tfhub")
    img = np.full((32, 32, 3), [51, 102, 255], np.uint8)  # -> [0.2, 0.4, 1.0] in [0, 1]
    # [0.2, 0.4, 1.0] @ [[0,1,2,3],[4,5,6,7],[8,9,10,11]] = [9.6, 11.2, 12.8, 14.4]
    self.assertAllClose(enc.encode([img])[0], [9.6, 11.2, 12.8, 14.4], rtol=1e-5)


class MediaTest(tf.test.TestCase):

  def test_read_image_still_gif_and_frame_dir(self):
    from PIL import Image
    d = self.get_temp_dir()
    Image.fromarray(np.full((8, 6, 3), 200, np.uint8)).save(os.path.join(d, "a.png"))
    self.assertEqual(read_image(os.path.join(d, "a.png")).shape, (1, 8, 6, 3))
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 100, 200)]
    frames[0].save(os.path.join(d, "v.gif"), save_all=True, append_images=frames[1:])
    self.assertEqual(read_image(os.path.join(d, "v.gif")).shape, (3, 8, 8, 3))
    os.makedirs(os.path.join(d, "frames"))
    for i, f in enumerate(frames * 2):
      f.save(os.path.join(d, "frames", f"{i:03d}.png"))
    self.assertEqual(read_image(os.path.join(d, "frames"), max_frames=4).shape, (4, 8, 8, 3))

  def test_bad_files_name_item_and_field(self):
    d = self.get_temp_dir()
    bad = os.path.join(d, "bad.png")
    with open(bad, "wb") as f:
      f.write(b"\x89PNG not really")
    with self.assertRaisesRegex(EncodeError, "'i1'.*'image_path'.*cannot read image"):
      read_image(bad, "i1")
    with self.assertRaisesRegex(EncodeError, "'i2'.*'image_path'.*not found"):
      read_image(os.path.join(d, "none.png"), "i2")
    with self.assertRaisesRegex(EncodeError, "'i3'.*'audio_path'.*cannot read WAV"):
      read_wav(bad, "i3")
    with self.assertRaisesRegex(EncodeError, "'i4'.*'audio_path'.*not found"):
      read_wav(os.path.join(d, "none.wav"), "i4")
    wav = os.path.join(d, "ok.wav")
    write_wav(wav, np.arange(100, dtype=np.int16), 22050)
    samples, rate = read_wav(wav)
    self.assertEqual(rate, 22050)
    self.assertAllEqual(samples, np.arange(100))


@pytest.fixture(scope="module")
def minilm(synthetic_encoder):
  """The real all-MiniLM-L6-v2 TextEncoder (shared with the session's synthetic encoder: one load, one trace)."""
  return synthetic_encoder.encoders["text"]


def test_text_parity_with_sentence_transformers(minilm):
  """The TF MiniLM (packaged files, hashes checked by TextEncoder) matches the sentence-transformers reference
  stored in tests/fixtures (no torch here)."""
  import hashlib
  ref = np.load(os.path.join(FIXTURES, "text_parity.npz"))
  with open(os.path.join(resolve_text_model("all-MiniLM-L6-v2"), "model.safetensors"), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == str(ref["safetensors_sha256"]), "different model copy"
  out = minilm.encode([str(s) for s in ref["sentences"]])
  assert out.shape == (8, 384) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  cos = (out * ref["embeddings"]).sum(axis=1) / np.linalg.norm(ref["embeddings"], axis=1)
  assert cos.min() > 0.9999, cos  # measured >= 0.99999 (float32 TF vs torch)
  assert minilm.info["sha256_checked"] == sorted(["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"])


def test_text_determinism_batching_and_empty(minilm):
  texts = ["a short title", "a much longer title about pasta recipes and dinner", "x"]
  a = minilm.encode(texts)
  np.testing.assert_array_equal(a, minilm.encode(texts))
  one_by_one = np.concatenate([minilm.encode([t]) for t in texts])
  np.testing.assert_allclose(a, one_by_one, atol=1e-5)  # padding to the batch's longest text changes nothing
  assert minilm.encode([]).shape == (0, 384)
  with pytest.raises(EncodeError, match="'m7'.*'text'.*empty"):
    minilm.encode(["ok", "  "], item_ids=["m6", "m7"])
  assert minilm.info["model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_text_local_tf_h5_bert_dir(tmp_path, minilm):
  """Any local HF BERT directory loads: here a tiny random BERT saved as tf_model.h5 + MiniLM's tokenizer."""
  from transformers import BertConfig, TFBertModel
  model_dir = str(tmp_path / "tiny_bert")
  cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)
  model = TFBertModel(cfg)
  model(model.dummy_inputs)
  model.save_pretrained(model_dir)
  minilm.tokenizer.save_pretrained(model_dir)
  enc = TextEncoder(model_dir, max_length=16)
  assert enc.dim == 32 and enc.weights_file.endswith("tf_model.h5")
  out = enc.encode(["hello world", "semantic ids"])
  tok = enc.tokenizer(["hello world", "semantic ids"], padding=True, return_tensors="np")
  hidden = model(dict(tok), training=False).last_hidden_state.numpy()
  m = tok["attention_mask"][:, :, None]
  ref = (hidden * m).sum(1) / m.sum(1)
  np.testing.assert_allclose(out, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
  with pytest.raises(FileNotFoundError, match="neither"):
    TextEncoder(str(tmp_path / "no_such_model"))


# --- MultimodalEncoder ---

def test_config_validation_and_presets():
  assert EncoderConfig().modalities == ("text",)
  syn = EncoderConfig.synthetic()
  assert syn.modalities == ("text", "image", "audio") and syn.image_weights == "pretrained"
  assert syn.image_architecture == "efficientnet_lite0" and syn.audio_weights == "random" and syn.image_size == 224
  assert EncoderConfig(modalities=("audio", "text"), audio_weights="random").modalities == ("text", "audio")
  assert from_dict(EncoderConfig, to_dict(syn)) == syn
  with pytest.raises(ValueError, match="audio_weights is required"):
    EncoderConfig(modalities=("text", "audio"))
  with pytest.raises(ValueError, match="subset"):
    EncoderConfig(modalities=("video",))
  with pytest.raises(ValueError, match="on_bad_input"):
    EncoderConfig(on_bad_input="ignore")
  with pytest.raises(ValueError, match="projection_dims"):
    EncoderConfig(projection_dims={"image": 8})


def test_multimodal_shapes_order_and_norms(synthetic_encoder, synthetic_small):
  enc = synthetic_encoder
  assert enc.modalities == ("text", "image", "audio")
  assert enc.dims == {"text": 384, "image": 512, "audio": 128} and enc.dim == 1024
  assert enc.offsets == {"text": (0, 384), "image": (384, 896), "audio": (896, 1024)}
  items = item_contents(synthetic_small)[:6]
  out = enc.encode(items)
  assert out.embeddings.shape == (6, 1024) and out.embeddings.dtype == np.float32
  assert out.mask.shape == (6, 3) and out.mask.dtype == np.float32
  np.testing.assert_array_equal(out.mask, np.ones((6, 3)))
  assert list(out.item_ids) == [it.item_id for it in items] and out.fallbacks == []
  for m, (lo, hi) in enc.offsets.items():
    np.testing.assert_allclose(np.linalg.norm(out.embeddings[:, lo:hi], axis=1), 1.0, atol=1e-5)
  # The text block is the TextEncoder's output; the batch is deterministic.
  np.testing.assert_allclose(out.embeddings[:, :384], enc.encoders["text"].encode([it.text for it in items]),
                             atol=1e-6)
  np.testing.assert_array_equal(out.embeddings, enc.encode(items).embeddings)
  info = enc.info
  assert info["random_init"] == {"text": False, "image": True, "audio": True}
  assert info["modality_order"] == ["text", "image", "audio"]


def test_missing_modality_is_zero_and_masked(synthetic_encoder, synthetic_small):
  it = item_contents(synthetic_small)[0]
  out = synthetic_encoder.encode([ItemContent(it.item_id, it.text, "", it.audio_path),
                                  ItemContent("t_only", "just text")])
  np.testing.assert_array_equal(out.mask, [[1, 0, 1], [1, 0, 0]])
  np.testing.assert_array_equal(out.embeddings[:, 384:896], 0.0)
  np.testing.assert_array_equal(out.embeddings[1, 896:], 0.0)
  assert out.fallbacks == []  # absence is not an error


def _write_float_wav(path, samples, rate):
  from scipy.io import wavfile
  wavfile.write(path, rate, np.asarray(samples, np.float32))


def test_bad_inputs_mask_or_raise(synthetic_encoder, synthetic_small, tmp_path):
  good = item_contents(synthetic_small)[1]
  corrupt_png = tmp_path / "corrupt.png"
  corrupt_png.write_bytes(b"GIF89a garbage")
  corrupt_wav = tmp_path / "corrupt.wav"
  corrupt_wav.write_bytes(b"RIFF\x00\x00")
  silent, empty, nan_wav, slow, short = (str(tmp_path / n) for n in ("s.wav", "e.wav", "n.wav", "8k.wav", "t.wav"))
  write_wav(silent, np.zeros(16000, np.int16), 16000)
  with wave.open(empty, "wb") as w:
    w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
  _write_float_wav(nan_wav, np.full(16000, np.nan), 16000)
  samples, rate = read_wav(good.audio_path)
  write_wav(slow, samples[::2], 8000)  # wrong rate: resampled, not an error
  write_wav(short, samples[:3000], 16000)  # 0.19 s: padded to one patch, not an error
  items = [
      ItemContent("empty_text", "   ", good.image_path, good.audio_path),
      ItemContent("missing_img", good.text, str(tmp_path / "nope.png"), good.audio_path),
      ItemContent("corrupt_img", good.text, str(corrupt_png), good.audio_path),
      ItemContent("corrupt_wav", good.text, good.image_path, str(corrupt_wav)),
      ItemContent("silent_wav", good.text, good.image_path, silent),
      ItemContent("empty_wav", good.text, good.image_path, empty),
      ItemContent("nan_wav", good.text, good.image_path, nan_wav),
      ItemContent("8k_wav", good.text, good.image_path, slow),
      ItemContent("short_wav", good.text, good.image_path, short),
      good,
  ]
  out = synthetic_encoder.encode(items)
  expected = [("empty_text", "text"), ("missing_img", "image_path"), ("corrupt_img", "image_path"),
              ("corrupt_wav", "audio_path"), ("silent_wav", "audio_path"), ("empty_wav", "audio_path"),
              ("nan_wav", "audio_path")]
  assert [(f["item_id"], f["field"]) for f in out.fallbacks] == expected
  assert "NaN/inf samples" in out.fallbacks[-1]["reason"] and "silent" in out.fallbacks[4]["reason"]
  np.testing.assert_array_equal(out.mask, [[0, 1, 1], [1, 0, 1], [1, 0, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0],
                                           [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
  assert np.isfinite(out.embeddings).all()
  np.testing.assert_array_equal(out.embeddings[0, :384], 0.0)
  # 8 kHz copy of the same clip encodes close to the 16 kHz original
  a8, a16 = out.embeddings[7, 896:], out.embeddings[9, 896:]
  assert float(a8 @ a16) > 0.9
  for k in range(len(expected)):
    with pytest.raises(EncodeError, match=f"'{expected[k][0]}'.*'{expected[k][1]}'"):
      synthetic_encoder.encode([items[k]], on_bad_input="raise")


def test_projection_layer_and_projected_encoder(tmp_path):
  layer = ModalityProjection(8, seed=3)
  x = tf.random.stateless_normal([4, 20], seed=[1, 2])
  y = layer(x)
  assert y.shape == (4, 8)
  np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
  k = layer.kernel.numpy()
  np.testing.assert_allclose(k.T @ k, np.eye(8), atol=1e-5)  # orthonormal columns
  clone = ModalityProjection.from_config(layer.get_config())
  np.testing.assert_array_equal(clone(x), y)
  assert not layer.trainable_weights
  from semrec.encoders import build_encoder
  enc = build_encoder(EncoderConfig(modalities=("image",), image_weights="random", image_architecture="resnet18",
                                    image_size=32, projection_dims={"image": 16}))
  assert enc.dim == 16
  from PIL import Image
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "b.png")
  out = enc.encode([ItemContent("a", image_path=""), ItemContent("b", image_path=str(tmp_path / "b.png"))])
  assert out.embeddings.shape == (2, 16) and out.mask.shape == (2, 1)
  np.testing.assert_array_equal(out.mask[:, 0], [0, 1])
  np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), [0, 1], atol=1e-6)
  raw = enc.encoders["image"].encode([np.asarray(Image.open(tmp_path / "b.png"))])
  raw /= np.linalg.norm(raw)
  proj = raw @ enc.projections["image"].kernel.numpy()
  np.testing.assert_allclose(out.embeddings[1], proj[0] / np.linalg.norm(proj), atol=1e-5)


def test_nan_output_is_masked_or_raised(tmp_path, synthetic_small):
  """A broken weights file (a NaN bias) makes the encoder output NaN: masked and recorded, or raised."""
  from semrec.encoders import build_encoder
  src = AudioEncoder("random", "vggish-small")
  kernel, bias = src.model.get_layer("fc2").get_weights()
  bias[5] = np.nan
  src.model.get_layer("fc2").set_weights([kernel, bias])
  h5 = str(tmp_path / "broken.h5")
  src.model.save_weights(h5)
  enc = build_encoder(EncoderConfig(modalities=("audio",), audio_weights=h5, audio_architecture="vggish-small"))
  item = item_contents(synthetic_small)[0]
  out = enc.encode([item])
  assert out.fallbacks == [{"item_id": item.item_id, "field": "audio_path",
                            "reason": "audio encoder output has NaN/inf values"}]
  np.testing.assert_array_equal(out.mask, [[0]])
  np.testing.assert_array_equal(out.embeddings, np.zeros((1, 128)))
  with pytest.raises(EncodeError, match=f"'{item.item_id}'.*'audio_path'.*NaN"):
    enc.encode([item], on_bad_input="raise")


def test_item_contents_of_movielens_and_synthetic(movielens, synthetic_small):
  ml = item_contents(movielens)
  assert len(ml) == movielens.num_items
  assert all(c.text.strip() and c.image_path == "" and c.audio_path == "" for c in ml)
  assert ml[0].text == movielens.item_texts()[0]
  syn = item_contents(synthetic_small)
  assert all(os.path.isfile(c.image_path) and c.audio_path.endswith(".wav") for c in syn)
