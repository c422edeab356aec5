"""Real-dataset loaders on tiny fixtures written in each dataset's native format."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.data import CANONICAL_CLASSES, Record, list_datasets, load_dataset, load_image, stratified_split
from runtime.errors import DataError

C = {name: i for i, name in enumerate(CANONICAL_CLASSES)}


def write_image(path: Path, height: int = 8, width: int = 8, channels: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (height, width, channels) if channels > 1 else (height, width)
    assert cv2.imwrite(str(path), np.full(shape, 128, np.uint8))
    return path


def counts(index) -> dict[str, int]:
    return {split: len(index.split(split)) for split in ("train", "val", "test")}


def by_id(index) -> dict[str, Record]:
    return {r.id: r for r in index.records}


# --- registry and stratified split ----------------------------------------------------------------


def test_unknown_kind_lists_valid_kinds(tmp_path):
    with pytest.raises(
        DataError, match="valid kinds: .*affectnet.*caer_s.*fer2013.*ferplus.*folder.*kdef.*rafdb.*sfew"
    ):
        load_dataset("imagenet", tmp_path)
    assert {"affectnet", "caer_s", "fer2013", "ferplus", "folder", "kdef", "rafdb", "sfew"} <= set(list_datasets())


@pytest.mark.parametrize("kind", ["affectnet", "caer_s", "fer2013", "ferplus", "folder", "kdef", "rafdb", "sfew"])
def test_unknown_option_is_rejected(tmp_path, kind):
    with pytest.raises(DataError, match="unknown option.*'bogus'"):
        load_dataset(kind, tmp_path, bogus=1)


def test_stratified_split_is_class_stratified_and_seeded():
    records = [Record(f"a{i}", 0, "train") for i in range(10)] + [Record(f"b{i}", 1, "train") for i in range(20)]
    records.append(Record("t0", 1, "test"))
    first = stratified_split(records, 0.2, seed=3)
    val = [r for r in first if r.split == "val"]
    assert sorted(r.label for r in val) == [0, 0, 1, 1, 1, 1]
    assert first[-1].split == "test"  # other splits untouched
    assert [r.id for r in first] == [r.id for r in records]  # order kept
    again = stratified_split(records, 0.2, seed=3)
    assert [r.split for r in again] == [r.split for r in first]
    other = stratified_split(records, 0.2, seed=4)
    assert [r.split for r in other] != [r.split for r in first]


# --- folder ---------------------------------------------------------------------------------------


def test_folder_aliases_and_auto_val(tmp_path):
    for folder, n in {"Anger": 4, "happiness": 6, "SAD": 2, "Contempt": 2}.items():
        for i in range(n):
            write_image(tmp_path / folder / f"{i}.png")
    index = load_dataset("folder", tmp_path, val_fraction=0.25, seed=0)
    assert index.class_names == CANONICAL_CLASSES  # contempt present -> 8 classes
    assert counts(index) == {"train": 9, "val": 5, "test": 0}  # val: 1 + round(1.5) + min 1 + min 1
    assert index.class_counts() == {
        "angry": 4,
        "disgust": 0,
        "fear": 0,
        "happy": 6,
        "sad": 2,
        "surprise": 0,
        "neutral": 0,
        "contempt": 2,
    }
    assert by_id(index)["Anger/0.png"].label == C["angry"]
    assert load_image(index.records[0]).shape == (8, 8, 3)


def test_folder_split_layout_and_numeric_class_order(tmp_path):
    manet_order = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]
    for split, n in {"train": 3, "test": 2}.items():
        for folder in ("0", "6"):
            for i in range(n):
                write_image(tmp_path / split / folder / f"{i}.jpg")
    index = load_dataset("folder", tmp_path, val_fraction=0, class_order=manet_order)
    assert index.class_names == CANONICAL_CLASSES[:7]
    assert counts(index) == {"train": 6, "val": 0, "test": 4}
    assert by_id(index)["train/0/0.jpg"].label == C["neutral"]
    assert by_id(index)["test/6/1.jpg"].label == C["angry"]
    with pytest.raises(DataError, match="need the class_order option"):
        load_dataset("folder", tmp_path)


def test_folder_unknown_class_and_empty_folder(tmp_path):
    write_image(tmp_path / "happy" / "0.png")
    (tmp_path / "joyful").mkdir()
    with pytest.raises(DataError, match=r"joyful.*anger.*happiness.*surprised"):
        load_dataset("folder", tmp_path)
    (tmp_path / "joyful").rmdir()
    (tmp_path / "neutral").mkdir()
    with pytest.raises(DataError, match=r"neutral: class folder contains no images"):
        load_dataset("folder", tmp_path)


# --- FER-2013 -------------------------------------------------------------------------------------


def fer_pixels(value: int) -> str:
    return " ".join([str(value)] * 2304)


def write_fer2013(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows))
    return path


def test_fer2013(tmp_path):
    rows = [
        ("0", fer_pixels(10), "Training"),
        ("3", fer_pixels(20), "Training"),
        ("6", fer_pixels(30), "Training"),
        ("5", fer_pixels(40), "PublicTest"),
        ("4", fer_pixels(50), "PrivateTest"),
    ]
    write_fer2013(tmp_path / "fer2013.csv", rows)
    index = load_dataset("fer2013", tmp_path)
    assert counts(index) == {"train": 3, "val": 1, "test": 1}
    rec = by_id(index)["fer2013.csv:5"]  # line 5 = 4th data row
    assert (rec.label, rec.split) == (C["surprise"], "val")
    img = load_image(rec)
    assert img.shape == (48, 48) and img.dtype == np.uint8 and int(img[0, 0]) == 40
    assert by_id(load_dataset("fer2013", tmp_path / "fer2013.csv"))["fer2013.csv:3"].label == C["happy"]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (("1", " ".join(["1"] * 2303), "Training"), "expected 2304 pixel values, got 2303"),
        (("1", fer_pixels(1).replace("1", "x", 1), "Training"), "pixels must be integers"),
        (("1", fer_pixels(300), "Training"), "pixels must be integers 0..255"),
        (("7", fer_pixels(1), "Training"), "emotion must be 0..6"),
        (("happy", fer_pixels(1), "Training"), "emotion must be an integer"),
        (("1", fer_pixels(1), "Validation"), "Usage must be one of"),
    ],
)
def test_fer2013_malformed_row_names_file_and_line(tmp_path, bad_row, message):
    write_fer2013(tmp_path / "fer2013.csv", [("0", fer_pixels(1), "Training"), bad_row])
    with pytest.raises(DataError, match=rf"fer2013\.csv:3: {message}"):
        load_dataset("fer2013", tmp_path)


def test_fer2013_wrong_header(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,Usage,pixels\n0,Training,1 2\n")
    with pytest.raises(DataError, match=r"fer2013\.csv:1: expected header emotion,pixels,Usage"):
        load_dataset("fer2013", tmp_path)


# --- FER+ -----------------------------------------------------------------------------------------

# (usage, image name, votes neutral..NF, expected canonical label or None when dropped)
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0], "neutral"),
    ("Training", "", [0, 9, 1, 0, 0, 0, 0, 0, 0, 0], None),  # no image name: not in FER+
    ("Training", "fer0000002.png", [0, 4, 4, 1, 0, 0, 0, 0, 1, 0], None),  # tie: unknown -> dropped
    ("Training", "fer0000003.png", [0, 6, 0, 0, 0, 0, 0, 0, 0, 4], "happy"),
    # single votes are zeroed: anger 3 of 3 remaining wins (3 of 6 raw would not be a majority)
    ("PublicTest", "fer0000004.png", [0, 0, 0, 0, 3, 1, 1, 1, 0, 0], "angry"),
    ("PrivateTest", "fer0000005.png", [2, 0, 0, 0, 0, 0, 0, 0, 0, 8], None),  # not-a-face majority
    ("PrivateTest", "fer0000006.png", [4, 0, 0, 0, 0, 0, 0, 6, 0, 0], "contempt"),
]
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"


def write_ferplus_csv(root: Path) -> None:
    write_fer2013(root / "fer2013.csv", [("0", fer_pixels(i), usage) for i, (usage, *_) in enumerate(FERPLUS_ROWS)])
    lines = [f"{usage},{name},{','.join(map(str, votes))}\n" for usage, name, votes, _ in FERPLUS_ROWS]
    (root / "fer2013new.csv").write_text(FERPLUS_HEADER + "".join(lines))


def write_ferplus_folders(root: Path) -> None:
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    for usage, name, votes, _ in FERPLUS_ROWS:
        if name:
            folder = root / folders[usage]
            write_image(folder / name, 48, 48, channels=1)
            with (folder / "label.csv").open("a") as f:
                f.write(f'{name},"(0, 0, 48, 48)",{",".join(map(str, votes))}\n')


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_ferplus_majority_vote(tmp_path, layout):
    (write_ferplus_csv if layout == "csv" else write_ferplus_folders)(tmp_path)
    index = load_dataset("ferplus", tmp_path)
    assert index.info == {"layout": layout, "dropped": 2}  # tie and not-a-face; the nameless row is no sample
    assert index.class_names == CANONICAL_CLASSES
    assert counts(index) == {"train": 2, "val": 1, "test": 1}
    expected = {name: label for _, name, _, label in FERPLUS_ROWS if label is not None}
    assert {r.id: CANONICAL_CLASSES[r.label] for r in index.records} == expected
    rec = by_id(index)["fer0000004.png"]
    assert rec.meta["votes"] == (0, 0, 0, 0, 3, 1, 1, 1, 0, 0)
    assert load_image(rec).shape == (48, 48)
    if layout == "csv":
        assert int(load_image(rec)[0, 0]) == 4  # pixels of fer2013.csv row 4 (0-based), same order


def test_ferplus_malformed_lines(tmp_path):
    write_ferplus_folders(tmp_path)
    label_csv = tmp_path / "FER2013Valid" / "label.csv"
    label_csv.write_text(label_csv.read_text() + 'fer0000004.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0\n')
    with pytest.raises(DataError, match=r"FER2013Valid[/\\]label\.csv:2: vote count must be an integer"):
        load_dataset("ferplus", tmp_path)
    label_csv.write_text('fer0000099.png,"(0, 0, 48, 48)",1,2,0,0,0,0,0,0,0,0\n')
    with pytest.raises(DataError, match=r"label\.csv:1: image 'fer0000099.png' not found"):
        load_dataset("ferplus", tmp_path)

    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    write_ferplus_csv(csv_root)
    new = csv_root / "fer2013new.csv"
    new.write_text(new.read_text().replace("PublicTest,fer0000004.png,0,0,0,0,3", "PublicTest,fer0000004.png,0,0,0,3"))
    with pytest.raises(DataError, match=r"fer2013new\.csv:6: expected 12 fields"):
        load_dataset("ferplus", csv_root)
    write_ferplus_csv(csv_root)
    new.write_text(new.read_text().replace("PublicTest,fer0000004", "Training,fer0000004"))
    with pytest.raises(DataError, match=r"fer2013new\.csv:6: Usage 'Training' differs from fer2013\.csv line 6"):
        load_dataset("ferplus", csv_root)


# --- RAF-DB ---------------------------------------------------------------------------------------


def write_rafdb(root: Path, lines: list[str]) -> None:
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("".join(f"{line}\n" for line in lines))
    for line in lines:
        stem = line.split()[0].rsplit(".", 1)[0]
        write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", 100, 100)


def test_rafdb(tmp_path):
    lines = [f"train_{i:05d}.jpg {label}" for i, label in enumerate([1, 1, 4, 4, 6, 6, 7, 7, 2, 2], start=1)]
    lines += ["test_0001.jpg 5", "test_0002.jpg 3"]
    write_rafdb(tmp_path, lines)
    index = load_dataset("rafdb", tmp_path, val_fraction=0.5, seed=1)
    assert counts(index) == {"train": 5, "val": 5, "test": 2}
    assert index.class_counts("val") == {
        "angry": 1,
        "disgust": 0,
        "fear": 1,
        "happy": 1,
        "sad": 0,
        "surprise": 1,
        "neutral": 1,
    }
    records = by_id(index)
    assert records["Image/aligned/train_00001_aligned.jpg"].label == C["surprise"] == 5
    assert records["Image/aligned/test_0001_aligned.jpg"].label == C["sad"]
    assert records["Image/aligned/test_0002_aligned.jpg"].split == "test"
    assert load_image(records["Image/aligned/test_0002_aligned.jpg"]).shape == (100, 100, 3)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("train_00002.jpg 3 extra", "expected '<image name> <label 1..7>'"),
        ("train_00002.jpg 8", "label must be 1..7, got 8"),
        ("train_00002.jpg x", "label must be an integer"),
        ("val_00002.jpg 3", "must start with train_ or test_"),
    ],
)
def test_rafdb_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    write_rafdb(tmp_path, ["train_00001.jpg 1"])
    label_file = tmp_path / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text() + bad_line + "\n")
    with pytest.raises(DataError, match=rf"list_patition_label\.txt:2: .*{message}"):
        load_dataset("rafdb", tmp_path)


def test_rafdb_missing_image(tmp_path):
    write_rafdb(tmp_path, ["train_00001.jpg 1", "test_00001.jpg 2"])
    (tmp_path / "Image" / "aligned" / "test_00001_aligned.jpg").unlink()
    with pytest.raises(DataError, match=r"test_00001_aligned\.jpg: image listed in .*list_patition_label\.txt line 2"):
        load_dataset("rafdb", tmp_path)


# --- KDEF -----------------------------------------------------------------------------------------


def write_kdef(root: Path) -> None:
    for subject in ("AF01", "BF01", "AM02"):
        for expression in ("AF", "HA", "NE"):
            for view in ("FL", "HL", "S", "HR", "FR"):
                write_image(root / "KDEF" / subject / f"{subject}{expression}{view}.JPG", 12, 9)


def test_kdef_meta_views_and_subjects(tmp_path):
    write_kdef(tmp_path)
    index = load_dataset("kdef", tmp_path, val_fraction=0)
    assert counts(index) == {"train": 45, "val": 0, "test": 0}
    rec = by_id(index)["KDEF/BF01/BF01AFHR.JPG"]
    assert rec.label == C["fear"]
    assert rec.meta == {"view": "half_right", "subject": "BF01", "person": "F01", "session": "B", "gender": "F"}
    assert by_id(index)["KDEF/AM02/AM02HAS.JPG"].meta["view"] == "frontal"
    assert load_image(rec).shape == (12, 9, 3)

    frontal = load_dataset("kdef", tmp_path / "KDEF", views=["frontal", "FL"], test_subjects=["M02"], val_fraction=0)
    assert counts(frontal) == {"train": 12, "val": 0, "test": 6}
    assert {r.meta["view"] for r in frontal.records} == {"frontal", "full_left"}
    assert {r.meta["subject"] for r in frontal.split("test")} == {"AM02"}

    with pytest.raises(DataError, match="unknown KDEF view 'up'"):
        load_dataset("kdef", tmp_path, views=["up"])
    with pytest.raises(DataError, match=r"test_subjects \['M09'\] not found"):
        load_dataset("kdef", tmp_path, test_subjects=["M09"])


def test_kdef_session_subject_warns_about_identity_leak(tmp_path, caplog):
    write_kdef(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runtime.data.kdef"):
        index = load_dataset("kdef", tmp_path, test_subjects=["AF01"], val_fraction=0)
    assert len(index.split("test")) == 15
    assert "F01" in caplog.text and "both train and test" in caplog.text


def test_kdef_bad_name(tmp_path, caplog):
    write_kdef(tmp_path)
    write_image(tmp_path / "KDEF" / "AF01" / "AF01XXS.JPG")
    with pytest.raises(DataError, match=r"AF01XXS\.JPG: not a KDEF file name"):
        load_dataset("kdef", tmp_path)
    with caplog.at_level(logging.WARNING, logger="runtime.data.kdef"):
        index = load_dataset("kdef", tmp_path, on_bad_name="skip", val_fraction=0)
    assert len(index.records) == 45
    assert "AF01XXS.JPG" in caplog.text


# --- AffectNet ------------------------------------------------------------------------------------

AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
)


def write_affectnet(root: Path, train_header: bool, val_header: bool) -> None:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    train_codes = [0, 1, 1, 6, 7, 7, 8, 10]
    val_codes = [0, 7, 9]
    for name, codes, header in (("training.csv", train_codes, train_header), ("validation.csv", val_codes, val_header)):
        rows = []
        for i, code in enumerate(codes):
            sub_path = f"{i % 3}/{name[:5]}{i}.jpg"
            write_image(root / "Manually_Annotated_Images" / sub_path, 60, 50)
            rows.append(f'{sub_path},5,10,30,40,"1.0;2.0;3.0;4.0",{code},0.25,-0.5\n')
        (lists / name).write_text((AFFECTNET_HEADER if header else "") + "".join(rows))


@pytest.mark.parametrize("train_header, val_header", [(True, False), (False, True), (True, True), (False, False)])
def test_affectnet_header_variants(tmp_path, train_header, val_header):
    write_affectnet(tmp_path, train_header, val_header)
    seven = load_dataset("affectnet", tmp_path, val_fraction=0)
    assert seven.class_names == CANONICAL_CLASSES[:7]
    assert counts(seven) == {"train": 4, "val": 0, "test": 1}
    eight = load_dataset("affectnet", tmp_path, num_classes=8, val_fraction=0)
    assert counts(eight) == {"train": 6, "val": 0, "test": 2}
    rec = by_id(eight)["1/valid1.jpg"]
    assert (rec.label, rec.split, rec.bbox) == (C["contempt"], "test", (5, 10, 30, 40))
    assert rec.meta == {"valence": 0.25, "arousal": -0.5}
    assert by_id(eight)["0/train0.jpg"].label == C["neutral"]
    assert load_image(rec).shape == (40, 30, 3)  # cropped to the face box (h, w)


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ('0/x.jpg,5,10,30,40,"1;2",11,0,0', "expression must be 0..10"),
        ('0/x.jpg,5,10,30,"1;2",1,0,0', "expected 9 fields"),
        ('0/x.jpg,5,ten,30,40,"1;2",1,0,0', "face_y must be an integer"),
        ('0/x.jpg,5,10,0,40,"1;2",1,0,0', "positive face size"),
        ('0/x.jpg,5,10,30,40,"1;2",1,high,0', "valence must be a number"),
    ],
)
def test_affectnet_malformed_row_names_file_and_line(tmp_path, bad_row, message):
    write_affectnet(tmp_path, train_header=True, val_header=False)
    val = tmp_path / "Manually_Annotated_file_lists" / "validation.csv"
    val.write_text(val.read_text() + bad_row + "\n")
    with pytest.raises(DataError, match=rf"validation\.csv:4: .*{message}"):
        load_dataset("affectnet", tmp_path)


# --- CAER-S and SFEW ------------------------------------------------------------------------------


def test_caer_s(tmp_path):
    for split, n in {"train": 3, "test": 1}.items():
        for cls in ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            for i in range(n):
                write_image(tmp_path / split / cls / f"{i:04d}.png", 10, 16)
    index = load_dataset("caer_s", tmp_path, val_fraction=1 / 3)
    assert index.class_names == CANONICAL_CLASSES[:7]
    assert counts(index) == {"train": 14, "val": 7, "test": 7}
    assert by_id(index)["test/Anger/0000.png"].label == C["angry"]
    assert load_image(index.records[0]).shape == (10, 16, 3)
    write_image(tmp_path / "test" / "Contempt" / "0000.png")
    with pytest.raises(DataError, match=r"test[/\\]Contempt: unknown class folder 'Contempt'; valid names .*anger"):
        load_dataset("caer_s", tmp_path)


def test_sfew(tmp_path):
    for split, n in {"Train": 4, "Val": 2}.items():
        for cls in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            for i in range(n):
                write_image(tmp_path / split / cls / f"clip_{i}.png", 14, 12)
    write_image(tmp_path / "Test" / "unlabelled_0.png")  # unlabelled test set is not read
    index = load_dataset("sfew", tmp_path)
    assert counts(index) == {"train": 28, "val": 14, "test": 0}
    assert by_id(index)["Val/Surprise/clip_1.png"].label == C["surprise"]
    assert load_image(index.records[-1]).shape == (14, 12, 3)
    (tmp_path / "Val" / "Happy" / "clip_0.png").unlink()
    (tmp_path / "Val" / "Happy" / "clip_1.png").unlink()
    with pytest.raises(DataError, match=r"Val[/\\]Happy: class folder contains no images"):
        load_dataset("sfew", tmp_path)
    with pytest.raises(DataError, match="none of the split folders train, val found"):
        load_dataset("sfew", tmp_path / "Train")
