"""Item content features as ``.npy`` matrices: row ``i`` = item id ``i`` of the processed dataset, float32.

CLI (``python -m dataset_prep.features``; ``--help`` on each sub-command):

* ``text``  -- ``<name>.item.json`` -> transformers encoder, pooled (:mod:`.text`, template in :mod:`.items`);
* ``image`` -- ``<image_dir>/<item>.jpg|.png|.jpeg`` -> open_clip image tower (:mod:`.image`);
* ``codes`` -- ``<name>.index_*.json`` -> one-hot (optionally projected) proxy of the embeddings the
  codes were made from (:mod:`.codes`; the only source available for the shared Amazon data).

A dataset without item content (Arts) gets features from a trained ID model instead: ``python -m
recbole_qrec.tokenize --dataset Arts --checkpoint saved/SASRec-<date>.pth --item_field text_codes`` exports the
checkpoint's item embeddings in this format and tokenizes them (it rebuilds the run's RecBole dataset, which this
package does not import).

Every output comes with ``<stem>.mask.npy`` (False: the item had no input, zero row) and the
progress sidecar ``<stem>.progress.json``; text and image runs are resumable (:mod:`.store`).
Consumers read features with ``recbole_qrec.data.features.load_features`` (re-exported here).
"""

from dataset_prep.features.codes import code_file_features, extract_code_features, read_code_index
from dataset_prep.features.image import ImageOptions, encode_images, extract_image_features
from dataset_prep.features.items import item_text, read_item_json
from dataset_prep.features.text import TextOptions, encode_texts, extract_text_features
from recbole_qrec.data.features import (
    EncodedRows, FeatureProgress, FeatureStateError, NonFiniteFeaturesError, codes_to_features, load_features, load_mask,
)

__all__ = [
    "EncodedRows", "FeatureProgress", "FeatureStateError", "ImageOptions", "NonFiniteFeaturesError", "TextOptions",
    "code_file_features", "codes_to_features", "encode_images", "encode_texts", "extract_code_features", "extract_image_features",
    "extract_text_features", "item_text", "load_features", "load_mask", "read_code_index", "read_item_json",
]
