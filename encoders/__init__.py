"""Content encoders: ResNet / EfficientNet-Lite0 image, BERT text, VGGish / YAMNet audio -> one concatenated
content embedding per item.

Modality order is fixed: text, image, audio. ``encode_corpus`` writes a resumable sharded embedding store.
"""
from semrec.encoders.common import EncodeError, WeightsHashError, file_sha256, l2_normalize, verify_sha256
from semrec.encoders.text import DEFAULT_TEXT_MODEL, MINILM_SHA256, TextEncoder, load_tf_bert, resolve_text_model
from semrec.encoders.torch_pickle import load_legacy_state_dict
from semrec.encoders.efficientnet import build_efficientnet_lite0, lite0_weight_map, load_lite0_weights
from semrec.encoders.image import ImageEncoder, build_resnet18
from semrec.encoders.audio import (AudioEncoder, LogMelSpectrogram, build_vggish, load_vggish_checkpoint,
                                   prepare_waveform, vggish_mel_matrix, waveform_to_patches)
from semrec.encoders.media import read_image, read_wav
from semrec.encoders.lexical import LexicalEncoder, LexicalEncoderConfig
from semrec.encoders.multimodal import (MODALITY_ORDER, EncodedBatch, EncoderConfig, ItemContent, ModalityProjection,
                                        MultimodalEncoder, build_encoder, item_contents)
from semrec.encoders.store import (EmbeddingStore, StoreContents, StorePlan, encode_corpus, encode_shard,
                                    finalize_store, plan_store, prepare_store, read_shard, write_shard)

__all__ = [
    "EncodeError", "WeightsHashError", "file_sha256", "l2_normalize", "verify_sha256", "DEFAULT_TEXT_MODEL",
    "MINILM_SHA256", "TextEncoder", "load_tf_bert", "resolve_text_model", "load_legacy_state_dict",
    "build_efficientnet_lite0", "lite0_weight_map", "load_lite0_weights",
    "ImageEncoder", "build_resnet18", "AudioEncoder", "LogMelSpectrogram", "build_vggish", "load_vggish_checkpoint",
    "prepare_waveform", "vggish_mel_matrix", "waveform_to_patches", "read_image", "read_wav", "LexicalEncoder",
    "LexicalEncoderConfig", "MODALITY_ORDER",
    "EncodedBatch", "EncoderConfig", "ItemContent", "ModalityProjection", "MultimodalEncoder", "build_encoder",
    "item_contents", "EmbeddingStore", "StoreContents", "StorePlan", "encode_corpus", "encode_shard", "finalize_store",
    "plan_store", "prepare_store", "read_shard", "write_shard",
]
