"""Image features: an ``open_clip`` image tower on ``<image_dir>/<item>.jpg|.png|.jpeg`` (suffix in any case).

``pretrained`` is an open_clip tag (``openai``, ``laion2b_s32b_b82k``, ...) or a local checkpoint
file. Weights stay fp32; on CUDA the forward pass runs under fp16/bf16 autocast. An item without
an image file, or with one PIL cannot decode, gets a zero row and False in the mask; the
undecodable ones are listed in the progress file (``unreadable``). An EXIF orientation is applied,
16-bit grey images are scaled to 8 bits and transparent pixels read as white. Vectors are not normalised.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from dataset_prep.features.encoding import (
    EncodedRows, ItemEncoder, UnreadableItemError, autocast, compute_dtype, encode_all, to_numpy,
)
from dataset_prep.features.items import IMAGE_DIR_SOURCE, IMAGE_SUFFIXES, check_image_dir, find_images, read_item_json
from dataset_prep.features.store import DEFAULT_CHUNK_SIZE, FeatureProgress, inputs_digest, write_features
from recbole_qrec.devices import resolve_device
from recbole_qrec.errors import ConfigError, DatasetNotFoundError, MissingDependencyError

DEFAULT_IMAGE_MODEL = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"


@dataclass(frozen=True)
class ImageOptions:
    """open_clip model name and weights (a tag, a checkpoint path, or None for random init)."""

    model: str = DEFAULT_IMAGE_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    batch_size: int = 64
    dtype: str = "fp16"
    device: str | None = None


def weights_id(pretrained: str | None) -> str | None:
    """A checkpoint file as an absolute path (so reruns from elsewhere match), else the tag."""
    return str(Path(pretrained).resolve()) if pretrained and Path(pretrained).is_file() else pretrained


def read_image(path: Path | None) -> Image.Image | None:
    """The RGB image at ``path``; None without a path; :class:`UnreadableItemError` if PIL cannot decode it."""
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)  # a photo stored sideways with an EXIF orientation: turned upright
            if image.mode.startswith("I"):  # 16-bit grey (I;16, I): convert("RGB") clips all above 255 to white
                image = image.convert("I").point(lambda value: value / 257)
            if image.has_transparency_data:  # transparent pixels: the white a viewer shows, not their hidden colour
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableItemError(f"{path}: {err}") from err


class ImageEncoder:
    """A loaded open_clip model and its evaluation transform."""

    def __init__(self, options: ImageOptions) -> None:
        try:
            import open_clip  # imported on use: loading features needs none of it
        except ModuleNotFoundError as err:
            raise MissingDependencyError(
                f"image features need the module '{err.name}', which is not installed — pip install "
                "'recbole-qrec[image]' with the torchvision built for your torch (e.g. torch==2.14.1 torchvision==0.29.1)"
            ) from None

        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = compute_dtype(self.device, options.dtype)
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(options.model, pretrained=options.pretrained)
        except (RuntimeError, AssertionError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            if isinstance(err, (pickle.UnpicklingError, EOFError)):
                reason = "the file is not a readable PyTorch checkpoint (damaged, or not written by torch.save)"
            raise ConfigError(f"cannot create open_clip model {options.model!r} (pretrained={options.pretrained!r}: "
                              f"{reason}) — give an open_clip model name and a pretrained tag or a checkpoint of "
                              "that model") from err
        self.model = model.to(self.device).eval()
        self.dim = self.encode([self.preprocess(Image.new("RGB", (32, 32)))]).shape[1]

    def load(self, path: Path | None) -> torch.Tensor | None:
        """The preprocessed image tensor of one item, or None without an image."""
        image = read_image(path)
        return None if image is None else self.preprocess(image)

    @torch.inference_mode()
    def encode(self, images: list[torch.Tensor]) -> np.ndarray:
        """``[len(images), dim]`` float32 image embeddings in one forward pass."""
        with autocast(self.device, self.dtype):
            return to_numpy(self.model.encode_image(torch.stack(images).to(self.device)))

    def item_encoder(self, paths: Sequence[Path | None]) -> ItemEncoder:
        """Encoder of item ids whose image file is ``paths[item]`` (None: no image)."""
        return ItemEncoder(self.dim, self.options.batch_size, lambda item: self.load(paths[item]), self.encode)


def image_settings(options: ImageOptions, paths: Sequence[Path | None]) -> dict[str, Any]:
    """What identifies an image run in its progress file (batch size and device do not change vectors)."""
    return {"model": options.model, "pretrained": weights_id(options.pretrained),
            "dtype": compute_dtype(resolve_device(options.device), options.dtype),
            "inputs_sha256": inputs_digest([path.name if path else None for path in paths])}


def encode_images(paths: Sequence[str | os.PathLike | None], options: ImageOptions = ImageOptions(),
                  progress: bool = False) -> EncodedRows:
    """Features of the image files ``paths`` in memory (None or an unreadable file: zero row, present False)."""
    paths = [Path(path) if path is not None else None for path in paths]
    return encode_all(ImageEncoder(options).item_encoder(paths), len(paths), "image features", progress)


def extract_image_features(item_json: str | os.PathLike, image_dir: str | os.PathLike, out: str | os.PathLike,
                           options: ImageOptions = ImageOptions(), *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                           overwrite: bool = False, max_chunks: int | None = None, progress: bool = True) -> FeatureProgress:
    """Encode the image of every item of ``item_json`` found in ``image_dir`` into ``out``, resumably."""
    n_items = len(read_item_json(item_json))
    image_dir = check_image_dir(image_dir)
    paths = find_images(image_dir, n_items)
    if not any(paths):
        raise DatasetNotFoundError(f"image folder {image_dir} holds no image of any of the {n_items:,} items (files "
                                   f"<item id>{'|'.join(IMAGE_SUFFIXES)}, e.g. 0.jpg) — give the folder the images were "
                                   f"downloaded to; {IMAGE_DIR_SOURCE}")
    return write_features(out, "image", image_settings(options, paths), n_items,
                          lambda: ImageEncoder(options).item_encoder(paths), chunk_size=chunk_size,
                          overwrite=overwrite, max_chunks=max_chunks, progress_bar=progress)
