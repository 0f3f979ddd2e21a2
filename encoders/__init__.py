"""Content encoders: ResNet image, BERT text, VGGish audio -> one concatenated content embedding per item.

Modality order is fixed: text, image, audio. ``encode_corpus`` writes a resumable sharded embedding store.
"""
from semrec.encoders.common import EncodeError, l2_normalize
from semrec.encoders.text import DEFAULT_TEXT_MODEL, TextEncoder, load_tf_bert, resolve_text_model
from semrec.encoders.image import ImageEncoder, build_resnet18
from semrec.encoders.audio import (AudioEncoder, LogMelSpectrogram, build_vggish, load_vggish_checkpoint,
                                   prepare_waveform, vggish_mel_matrix, waveform_to_patches)
from semrec.encoders.media import read_image, read_wav
from semrec.encoders.multimodal import (MODALITY_ORDER, EncodedBatch, EncoderConfig, ItemContent, ModalityProjection,
                                        MultimodalEncoder, build_encoder, item_contents)
from semrec.encoders.store import (EmbeddingStore, StoreContents, StorePlan, encode_corpus, encode_shard,
                                    finalize_store, plan_store, prepare_store, read_shard, write_shard)

__all__ = [
    "EncodeError", "l2_normalize", "DEFAULT_TEXT_MODEL", "TextEncoder", "load_tf_bert", "resolve_text_model",
    "ImageEncoder", "build_resnet18", "AudioEncoder", "LogMelSpectrogram", "build_vggish", "load_vggish_checkpoint",
    "prepare_waveform", "vggish_mel_matrix", "waveform_to_patches", "read_image", "read_wav", "MODALITY_ORDER",
    "EncodedBatch", "EncoderConfig", "ItemContent", "ModalityProjection", "MultimodalEncoder", "build_encoder",
    "item_contents", "EmbeddingStore", "StoreContents", "StorePlan", "encode_corpus", "encode_shard", "finalize_store",
    "plan_store", "prepare_store", "read_shard", "write_shard",
]
