"""Property-based tests (hypothesis) for the dataset parsers in runtime/data/.

Two properties per format:

* round trip: a generated record set, written in the dataset's native format (with the format's
  harmless variations: BOM, CRLF, blank lines, padding, header or not, upper/lower case), parses
  back to exactly the labels, ids, splits, boxes and counts that were written;
* robustness: a mutated file (random text or bytes in a line, dropped or extra fields, non-numeric
  or out-of-range values, wrong pixel counts, bad UTF-8, truncation) either parses into valid
  records or raises `DataError` whose message names the file and a line number inside it; never
  IndexError, ValueError, UnicodeDecodeError, KeyError or another exception type.

Each example writes into its own fresh folder below one module-scoped temporary folder (pytest's
``tmp_path`` is per test function, not per hypothesis example).
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runtime.data.affectnet import AFFECTNET_LABELS, _parse_float, _read_list, load_affectnet
from runtime.data.affectnet import COLUMNS as AFFECTNET_COLUMNS
from runtime.data.base import CANONICAL_CLASSES, IMAGE_SUFFIXES
from runtime.data.caer_s import CAER_S_CLASSES, load_caer_s
from runtime.data.fer2013 import FER2013_LABELS, FER2013_USAGE, LABEL_INDEX, load_fer2013, parse_pixels, read_fer2013
from runtime.data.ferplus import (
    CSV_HEADER,
    FERPLUS_FOLDERS,
    FERPLUS_USAGE,
    VOTE_LABELS,
    _parse_rect,
    _parse_votes,
    _read_csv,
    _read_folders,
    load_ferplus,
    majority_vote,
)
from runtime.data.folder import FOLDER_ALIASES, SPLIT_ALIASES, load_folder, parse_int, read_csv_rows
from runtime.data.kdef import KDEF_EXPRESSIONS, KDEF_VIEWS, load_kdef
from runtime.data.rafdb import RAF_LABELS, load_rafdb
from runtime.data.sfew import SFEW_CLASSES, load_sfew
from runtime.errors import DataError

PROPS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(PROPS, max_examples=20)  # examples that write many files

C = {name: i for i, name in enumerate(CANONICAL_CLASSES)}
SIDE = 48


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parser_props")


def fresh(scratch: Path) -> Path:
    """A new empty folder for one hypothesis example."""
    return Path(tempfile.mkdtemp(dir=scratch))


# --- checking errors --------------------------------------------------------------------------------


def physical_lines(raw: bytes) -> int:
    """Lines of a file as a text reader with universal newlines counts them."""
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1


def assert_names_file_and_line(exc: BaseException, files: dict[Path, bytes]) -> None:
    """``exc`` is a DataError whose message names one of ``files`` and a line inside it."""
    assert type(exc) is DataError, f"{type(exc).__name__} instead of DataError: {exc!r}"
    msg = str(exc)
    for path, raw in files.items():
        m = re.search(re.escape(str(path)) + r"(?::| line )(\d+)\b", msg)
        if m:
            assert 1 <= int(m.group(1)) <= physical_lines(raw), (msg, physical_lines(raw))
            return
    pytest.fail(f"error does not name file and line of {[p.name for p in files]}: {msg}")


def run_parser(fn, files: dict[Path, bytes]):
    """``fn()``'s result, or None after checking that it failed with a file-and-line DataError."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the property is about the exception type
        assert_names_file_and_line(exc, files)
        return None


# --- mutating files ---------------------------------------------------------------------------------

TOKENS = [
    "",
    " ",
    ",",
    '"',
    "-1",
    "256",
    "999999999999999999999",
    "1.5",
    "1e3",
    "nan",
    "inf",
    "x",
    "None",
    "\t",
    "\x00",
    "\u0663",
    "\uff17",
    "é",
    "\u2028",
    "\x85",
    "0x10",
    "+2",
    "1_0",
    "()",
    "(1, 2)",
]
BYTES = [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xef\xbb\xbf", b"\r", b"\n", b"\x00", b'"']


@st.composite
def mutations(draw, n_max: int = 3):
    """A list of edits to apply to a file's lines (positions are fractions of the line count)."""
    edit = st.one_of(
        st.tuples(st.just("token"), st.floats(0, 1), st.integers(0, 3000), st.sampled_from(TOKENS)),
        st.tuples(st.just("drop_field"), st.floats(0, 1), st.integers(0, 3000), st.just("")),
        st.tuples(st.just("add_field"), st.floats(0, 1), st.integers(0, 3000), st.sampled_from(TOKENS)),
        st.tuples(st.just("text_line"), st.floats(0, 1), st.just(0), st.text(max_size=30)),
        st.tuples(st.just("bytes"), st.floats(0, 1), st.integers(0, 3000), st.sampled_from(BYTES)),
        st.tuples(st.just("raw_line"), st.floats(0, 1), st.just(0), st.binary(max_size=20)),
        st.tuples(st.just("truncate"), st.floats(0, 1), st.integers(0, 3000), st.just("")),
        st.tuples(st.just("dup_line"), st.floats(0, 1), st.just(0), st.just("")),
        st.tuples(st.just("del_line"), st.floats(0, 1), st.just(0), st.just("")),
        st.tuples(st.just("latin1"), st.floats(0, 1), st.just(0), st.sampled_from(["é", "ü", "ß", "ñ"])),
    )
    return draw(st.lists(edit, min_size=1, max_size=n_max))


def mutate(raw: bytes, edits, sep: bytes = b",") -> bytes:
    lines = raw.split(b"\n")
    for kind, where, at, payload in edits:
        k = min(int(where * len(lines)), len(lines) - 1)
        line = lines[k]
        fields = line.split(sep)
        j = at % len(fields)
        if kind == "token":
            fields[j] = payload.encode()
        elif kind == "drop_field" and len(fields) > 1:
            del fields[j]
        elif kind == "add_field":
            fields.insert(j, payload.encode())
        elif kind == "text_line":
            lines[k] = payload.encode()
            continue
        elif kind == "raw_line":
            lines[k] = payload
            continue
        elif kind == "bytes":
            pos = at % (len(line) + 1)
            lines[k] = line[:pos] + payload + line[pos:]
            continue
        elif kind == "truncate":
            lines = lines[:k] + [line[: at % (len(line) + 1)]]
            continue
        elif kind == "dup_line":
            lines.insert(k, line)
            continue
        elif kind == "del_line" and len(lines) > 1:
            del lines[k]
            continue
        elif kind == "latin1":
            lines[k] = line + payload.encode("latin-1")
            continue
        lines[k] = sep.join(fields)
    return b"\n".join(lines)


@st.composite
def file_format(draw) -> dict:
    """Harmless variations every reader must accept."""
    return {
        "newline": draw(st.sampled_from(["\n", "\r\n"])),
        "bom": draw(st.booleans()),
        "blank_after": draw(st.sets(st.integers(0, 8), max_size=2)),
    }


def render_lines(lines: list[str], fmt: dict) -> tuple[bytes, list[int]]:
    """Encode ``lines`` with ``fmt``; also return the line number each one ends up on."""
    out, numbers, n = [], [], 0
    for i, text in enumerate(lines):
        n += 1
        out.append(text)
        numbers.append(n)
        if i in fmt["blank_after"]:
            out.append("   " if i % 2 else "")
            n += 1
    data = fmt["newline"].join(out) + fmt["newline"]
    return (b"\xef\xbb\xbf" if fmt["bom"] else b"") + data.encode("utf-8"), numbers


# --- folder.py: read_csv_rows and parse_int -------------------------------------------------------


csv_field = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)


@PROPS
@given(
    rows=st.lists(st.lists(csv_field, min_size=1, max_size=4), max_size=6),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_read_csv_rows_round_trip(scratch, rows, newline, bom) -> None:
    buf = io.StringIO(newline="")
    # QUOTE_MINIMAL leaves a lone "\r" unquoted when the line terminator is "\n": not valid csv.
    quoting = csv.QUOTE_ALL if any("\r" in f for r in rows for f in r) else csv.QUOTE_MINIMAL
    csv.writer(buf, lineterminator=newline, quoting=quoting).writerows(rows)
    path = fresh(scratch) / "rows.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    got = list(read_csv_rows(path))
    assert [fields for _, fields in got] == [r for r in rows if any(f.strip() for f in r)]
    numbers = [n for n, _ in got]
    assert numbers == sorted(set(numbers))  # strictly increasing line numbers
    assert all(1 <= n <= physical_lines(path.read_bytes()) for n in numbers)


@PROPS
@given(
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))),
    edits=mutations(),
)
def test_read_csv_rows_on_arbitrary_bytes(scratch, raw, edits) -> None:
    path = fresh(scratch) / "junk.csv"
    data = mutate(raw, edits)
    path.write_bytes(data)
    got = run_parser(lambda: list(read_csv_rows(path)), {path: data})
    if got is not None:
        assert all(isinstance(f, str) for _, row in got for f in row)
        assert all(not re.search("[\udc80-\udcff]", f) for _, row in got for f in row)  # no undecoded bytes


@PROPS
@given(n=st.integers(-(10**30), 10**30), pad=st.sampled_from(["", " ", "\t", "  "]))
def test_parse_int_round_trip(n, pad) -> None:
    assert parse_int(f"{pad}{n}{pad}", Path("f.csv"), 7, "value") == n


@PROPS
@given(text=st.text(max_size=30), line=st.integers(1, 10**6))
def test_parse_int_is_an_int_or_a_line_error(text, line) -> None:
    path = Path("dir/labels.csv")
    try:
        value = parse_int(text, path, line, "the field")
    except DataError as exc:
        assert str(exc).startswith(f"{path}:{line}: the field must be an integer, got {text!r}")
    else:
        assert isinstance(value, int) and not isinstance(value, bool)


# --- FER-2013 -----------------------------------------------------------------------------------------

fer_rows = st.lists(
    st.tuples(
        st.sampled_from(sorted(FER2013_LABELS)), st.sampled_from(sorted(FER2013_USAGE)), st.integers(0, 2**32 - 1)
    ),
    max_size=4,
)


def fer_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)


def fer_lines(rows, pad: str = "", quote: bool = False) -> list[str]:
    q = '"' if quote else ""
    return ["emotion,pixels,Usage"] + [
        f"{pad}{e}{pad},{q}{' '.join(map(str, fer_image(seed).ravel()))}{q},{pad}{usage}" for e, usage, seed in rows
    ]


@FEW
@given(rows=fer_rows, fmt=file_format(), pad=st.sampled_from(["", " "]), quote=st.booleans())
def test_fer2013_round_trip(scratch, rows, fmt, pad, quote) -> None:
    root = fresh(scratch)
    data, numbers = render_lines(fer_lines(rows, pad, quote), fmt)
    (root / "fer2013.csv").write_bytes(data)
    parsed = list(read_fer2013(root / "fer2013.csv"))
    assert len(parsed) == len(rows)
    for got, (emotion, usage, seed), line in zip(parsed, rows, numbers[1:]):
        assert (got.emotion, got.split, got.line) == (emotion, FER2013_USAGE[usage], line)
        assert got.pixels.dtype == np.uint8
        np.testing.assert_array_equal(got.pixels, fer_image(seed))
    if rows:
        index = load_fer2013(root)
        assert [r.id for r in index.records] == [f"fer2013.csv:{n}" for n in numbers[1:]]
        assert [r.label for r in index.records] == [LABEL_INDEX[e] for e, _, _ in rows]
        assert [CANONICAL_CLASSES[r.label] for r in index.records] == [FER2013_LABELS[e] for e, _, _ in rows]


@FEW
@given(rows=fer_rows.filter(bool), edits=mutations())
def test_fer2013_malformed_rows(scratch, rows, edits) -> None:
    path = fresh(scratch) / "fer2013.csv"
    data = mutate(("\n".join(fer_lines(rows)) + "\n").encode(), edits)
    path.write_bytes(data)
    parsed = run_parser(lambda: list(read_fer2013(path)), {path: data})
    for row in parsed or []:
        assert row.emotion in FER2013_LABELS and row.split in FER2013_USAGE.values()
        assert row.pixels.shape == (SIDE, SIDE) and row.pixels.dtype == np.uint8
        assert 2 <= row.line <= physical_lines(data)


@PROPS
@given(
    tokens=st.lists(st.one_of(st.integers(-300, 600).map(str), st.sampled_from(TOKENS)), max_size=2400),
    n_valid=st.sampled_from([0, SIDE * SIDE - 1, SIDE * SIDE, SIDE * SIDE + 1]),
    seed=st.integers(0, 99),
)
def test_parse_pixels_is_an_image_or_a_line_error(tokens, n_valid, seed) -> None:
    values = np.random.default_rng(seed).integers(0, 256, size=n_valid)
    text = " ".join([*map(str, values), *tokens])
    path = Path("fer2013.csv")
    try:
        img = parse_pixels(text, path, 5)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
        assert type(exc) is DataError and str(exc).startswith(f"{path}:5: "), repr(exc)
    else:
        # Only 2,304 integers 0..255 may pass, and they must be exactly the ones written.
        ints = [int(t) for t in text.split()]
        assert len(ints) == SIDE * SIDE and all(0 <= v <= 255 for v in ints)
        assert img.shape == (SIDE, SIDE) and img.dtype == np.uint8
        assert img.ravel().tolist() == ints


# --- FER+ ---------------------------------------------------------------------------------------------

votes_st = st.lists(st.integers(0, 10), min_size=10, max_size=10)


@PROPS
@given(votes=st.one_of(votes_st, st.lists(st.integers(0, 10**20), min_size=10, max_size=10)))
def test_majority_vote_follows_the_ferplus_rule(votes) -> None:
    label = majority_vote(votes)
    kept = [v if v > 1 else 0 for v in votes]  # votes of one or less are outliers
    winners = [i for i, v in enumerate(kept) if 2 * v > sum(kept)]
    if label is None:
        assert not winners or VOTE_LABELS[winners[0]] is None
    else:
        assert winners and VOTE_LABELS[winners[0]] == label
        assert 0 <= label < len(CANONICAL_CLASSES)


@PROPS
@given(votes=st.lists(st.integers(0, 10), max_size=14).filter(lambda v: len(v) != 10))
def test_majority_vote_wrong_length_is_a_data_error(votes) -> None:
    with pytest.raises(DataError, match=f"expected 10 vote counts.*got {len(votes)}"):
        majority_vote(votes)


@PROPS
@given(rect=st.tuples(*[st.integers(-100, 100)] * 4), spaces=st.sampled_from(["", " "]))
def test_parse_rect_round_trip_or_error(rect, spaces) -> None:
    left, top, right, bottom = rect
    text = f"({left},{spaces}{top},{spaces}{right},{spaces}{bottom})"
    try:
        box = _parse_rect(text, Path("label.csv"), 3)
    except DataError as exc:
        assert str(exc).startswith("label.csv:3: ") and (right <= left or bottom <= top)
    else:
        assert box == (left, top, right - left, bottom - top)


@PROPS
@given(text=st.text(max_size=30))
def test_parse_rect_and_votes_never_raise_other_errors(text) -> None:
    path = Path("label.csv")
    for fn in (lambda: _parse_rect(text, path, 9), lambda: _parse_votes(text.split(","), path, 9)):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
            assert type(exc) is DataError and str(exc).startswith(f"{path}:9: "), repr(exc)


ferplus_rows = st.lists(
    st.tuples(st.sampled_from(sorted(FERPLUS_USAGE)), st.booleans(), votes_st, st.integers(0, 2**32 - 1)), max_size=5
)


def write_ferplus_csv(root: Path, rows, fmt) -> tuple[Path, Path, list[int]]:
    pixels = root / "fer2013.csv"
    pixels.write_bytes(("\n".join(fer_lines([(0, usage, seed) for usage, _, _, seed in rows])) + "\n").encode())
    lines = [",".join(CSV_HEADER)] + [
        f"{usage},{f'fer{i:07d}.png' if named else ''},{','.join(map(str, votes))}"
        for i, (usage, named, votes, _) in enumerate(rows)
    ]
    data, numbers = render_lines(lines, fmt)
    (root / "fer2013new.csv").write_bytes(data)
    return root / "fer2013new.csv", pixels, numbers


@FEW
@given(rows=ferplus_rows, fmt=file_format())
def test_ferplus_csv_round_trip(scratch, rows, fmt) -> None:
    root = fresh(scratch)
    new, pixels, _ = write_ferplus_csv(root, rows, fmt)
    parsed = list(_read_csv(new, pixels))
    named = [(i, r) for i, r in enumerate(rows) if r[1]]
    assert [rec.id for rec, _ in parsed] == [f"fer{i:07d}.png" for i, _ in named]
    assert [votes for _, votes in parsed] == [r[2] for _, r in named]
    assert [rec.split for rec, _ in parsed] == [FERPLUS_USAGE[r[0]] for _, r in named]
    for (rec, _), (_, r) in zip(parsed, named):
        np.testing.assert_array_equal(rec.pixels, fer_image(r[3]))
    if rows:
        index = load_ferplus(root)
        expected = [(f"fer{i:07d}.png", majority_vote(r[2])) for i, r in named]
        assert [(rec.id, rec.label) for rec in index.records] == [e for e in expected if e[1] is not None]
        assert index.info["dropped"] == sum(1 for e in expected if e[1] is None)
        assert index.class_names == tuple(CANONICAL_CLASSES)


@FEW
@given(rows=ferplus_rows.filter(bool), edits=mutations(), which=st.sampled_from(["labels", "pixels"]))
def test_ferplus_csv_malformed(scratch, rows, edits, which) -> None:
    root = fresh(scratch)
    new, pixels, _ = write_ferplus_csv(root, rows, {"newline": "\n", "bom": False, "blank_after": set()})
    target = new if which == "labels" else pixels
    target.write_bytes(mutate(target.read_bytes(), edits))
    files = {new: new.read_bytes(), pixels: pixels.read_bytes()}
    for rec, votes in run_parser(lambda: list(_read_csv(new, pixels)), files) or []:
        assert rec.split in FERPLUS_USAGE.values() and len(votes) == 10 and min(votes) >= 0
        assert rec.pixels.shape == (SIDE, SIDE)


folder_rows = st.lists(
    st.tuples(st.sampled_from(sorted(FERPLUS_FOLDERS)), st.tuples(*[st.integers(0, 60)] * 4), votes_st), max_size=6
)


def write_ferplus_folders(root: Path, rows, fmt) -> dict[Path, bytes]:
    per_folder: dict[str, list[str]] = {}
    for i, (folder, (left, top, dw, dh), votes) in enumerate(rows):
        name = f"fer{i:07d}.png"
        (root / folder).mkdir(exist_ok=True)
        (root / folder / name).write_bytes(b"")  # only existence is checked at load time
        rect = f'"({left}, {top}, {left + dw + 1}, {top + dh + 1})"'
        per_folder.setdefault(folder, []).append(f"{name},{rect},{','.join(map(str, votes))}")
    files = {}
    for folder, lines in per_folder.items():
        data, _ = render_lines(lines, fmt)
        (root / folder / "label.csv").write_bytes(data)
        files[root / folder / "label.csv"] = data
    return files


@FEW
@given(rows=folder_rows, fmt=file_format())
def test_ferplus_folders_round_trip(scratch, rows, fmt) -> None:
    root = fresh(scratch)
    write_ferplus_folders(root, rows, fmt)
    parsed = {rec.id: (rec, votes) for rec, votes in _read_folders(root)}
    assert len(parsed) == len(rows)
    for i, (folder, (left, top, dw, dh), votes) in enumerate(rows):
        rec, got_votes = parsed[f"fer{i:07d}.png"]
        assert rec.split == FERPLUS_FOLDERS[folder] and got_votes == votes
        assert rec.bbox == (left, top, dw + 1, dh + 1)
        assert rec.path == root / folder / rec.id


@FEW
@given(rows=folder_rows.filter(bool), edits=mutations(), long_name=st.booleans())
def test_ferplus_folders_malformed(scratch, rows, edits, long_name) -> None:
    root = fresh(scratch)
    files = write_ferplus_folders(root, rows, {"newline": "\n", "bom": False, "blank_after": set()})
    path = next(iter(files))
    data = mutate(files[path], edits)
    if long_name:  # an image name longer than the file system allows
        data = b"x" * 300 + b".png" + data[data.index(b",") :] if b"," in data else data
    path.write_bytes(data)
    files[path] = data
    for rec, votes in run_parser(lambda: list(_read_folders(root)), files) or []:
        assert rec.path.is_file() and rec.path.parent.parent == root
        assert len(votes) == 10 and min(votes) >= 0
        x, y, w, h = rec.bbox
        assert w > 0 and h > 0


# --- AffectNet ------------------------------------------------------------------------------------------

finite_meta = st.floats(-2.0, 1.0, allow_nan=False)
affectnet_rows = st.lists(
    st.tuples(
        st.sampled_from(sorted(AFFECTNET_LABELS)),
        st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(1, 500), st.integers(1, 500)),
        finite_meta,
        finite_meta,
    ),
    max_size=6,
)


def affectnet_lines(rows, split_tag: str, header: bool) -> list[str]:
    lines = [",".join(AFFECTNET_COLUMNS)] if header else []
    for i, (code, (x, y, w, h), valence, arousal) in enumerate(rows):
        landmarks = ";".join(str(float(v)) for v in range(6))
        lines.append(f"{i}/{split_tag}{i:04d}.jpg,{x},{y},{w},{h},{landmarks},{code},{valence!r},{arousal!r}")
    return lines


@FEW
@given(
    train=affectnet_rows,
    val=affectnet_rows,
    headers=st.tuples(st.booleans(), st.booleans()),
    fmt=file_format(),
    num_classes=st.sampled_from([7, 8]),
)
def test_affectnet_round_trip(scratch, train, val, headers, fmt, num_classes) -> None:
    root = fresh(scratch)
    (root / "Manually_Annotated_Images").mkdir()
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir()
    for name, rows, tag, header in (
        ("training.csv", train, "tr", headers[0]),
        ("validation.csv", val, "va", headers[1]),
    ):
        (lists / name).write_bytes(render_lines(affectnet_lines(rows, tag, header), fmt)[0])
    index = load_affectnet(root, num_classes=num_classes)
    classes = CANONICAL_CLASSES[:num_classes]
    expected = [
        (f"{i}/{tag}{i:04d}.jpg", C[AFFECTNET_LABELS[code]], split, bbox, valence, arousal)
        for rows, tag, split in ((train, "tr", "train"), (val, "va", "test"))
        for i, (code, bbox, valence, arousal) in enumerate(rows)
        if AFFECTNET_LABELS[code] in classes
    ]
    got = [(r.id, r.label, r.split, r.bbox, r.meta["valence"], r.meta["arousal"]) for r in index.records]
    assert got == expected
    assert all(r.path == root / "Manually_Annotated_Images" / r.id for r in index.records)


@FEW
@given(rows=affectnet_rows.filter(bool), header=st.booleans(), edits=mutations())
def test_affectnet_malformed(scratch, rows, header, edits) -> None:
    root = fresh(scratch)
    path = root / "validation.csv"
    data = mutate(("\n".join(affectnet_lines(rows, "va", header)) + "\n").encode(), edits)
    path.write_bytes(data)
    images = root / "images"
    records = run_parser(lambda: _read_list(path, "test", images, CANONICAL_CLASSES), {path: data})
    for r in records or []:
        assert 0 <= r.label < len(CANONICAL_CLASSES) and r.split == "test"
        assert r.id and r.bbox[2] > 0 and r.bbox[3] > 0
        assert all(math.isfinite(v) for v in r.meta.values()), r.meta  # no NaN/Inf valence or arousal


@PROPS
@given(
    text=st.one_of(st.text(max_size=12), st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "0.5", " -2 "]))
)
def test_affectnet_parse_float_is_finite_or_a_line_error(text) -> None:
    try:
        value = _parse_float(text, Path("training.csv"), 4, "valence")
    except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
        assert type(exc) is DataError and str(exc).startswith("training.csv:4: valence"), repr(exc)
    else:
        assert math.isfinite(value) and value == float(text)


# --- RAF-DB ---------------------------------------------------------------------------------------------

raf_rows = st.lists(st.tuples(st.sampled_from(["train", "test"]), st.sampled_from(sorted(RAF_LABELS))), max_size=6)


def write_rafdb(root: Path, rows, images: str) -> list[str]:
    names = []
    for i, (split, _) in enumerate(rows):
        name = f"{split}_{i:05d}.jpg"
        stored = f"{split}_{i:05d}_aligned.jpg" if images == "aligned" else name
        folder = root / "Image" / images
        folder.mkdir(parents=True, exist_ok=True)
        (folder / stored).write_bytes(b"")
        names.append(name)
    (root / "EmoLabel").mkdir()
    return [f"{name} {code}" for name, (_, code) in zip(names, rows)]


@FEW
@given(
    rows=raf_rows,
    fmt=file_format(),
    images=st.sampled_from(["aligned", "original"]),
    sep=st.sampled_from([" ", "\t", "  "]),
)
def test_rafdb_round_trip(scratch, rows, fmt, images, sep) -> None:
    root = fresh(scratch)
    lines = [line.replace(" ", sep) for line in write_rafdb(root, rows, images)]
    (root / "EmoLabel" / "list_patition_label.txt").write_bytes(render_lines(lines, fmt)[0])
    index = load_rafdb(root, images=images)
    want = [
        (f"Image/{images}/{split}_{i:05d}{'_aligned' if images == 'aligned' else ''}.jpg", C[RAF_LABELS[code]], split)
        for i, (split, code) in enumerate(rows)
    ]
    assert [(r.id, r.label, r.split) for r in index.records] == want


@FEW
@given(rows=raf_rows.filter(bool), edits=mutations(), images=st.sampled_from(["aligned", "original"]))
def test_rafdb_malformed(scratch, rows, edits, images) -> None:
    root = fresh(scratch)
    lines = write_rafdb(root, rows, images)
    path = root / "EmoLabel" / "list_patition_label.txt"
    data = mutate(("\n".join(lines) + "\n").encode(), edits, sep=b" ")
    path.write_bytes(data)
    index = run_parser(lambda: load_rafdb(root, images=images), {path: data})
    for r in index.records if index else []:
        assert r.split in ("train", "test") and 0 <= r.label < 7 and r.path.is_file()


# --- KDEF file names --------------------------------------------------------------------------------------

kdef_codes = st.tuples(
    st.sampled_from("AB"),
    st.sampled_from("FM"),
    st.integers(1, 35),
    st.sampled_from(sorted(KDEF_EXPRESSIONS)),
    st.sampled_from(sorted(KDEF_VIEWS)),
)


def kdef_name(code) -> str:
    session, gender, person, expression, view = code
    return f"{session}{gender}{person:02d}{expression}{view}"


@FEW
@given(
    codes=st.lists(kdef_codes, min_size=1, max_size=8, unique_by=kdef_name),
    lower=st.lists(st.booleans(), min_size=8, max_size=8),
    suffix=st.sampled_from([".JPG", ".jpg", ".png", ".JPEG"]),
)
def test_kdef_names_round_trip(scratch, codes, lower, suffix) -> None:
    root = fresh(scratch)
    expected = {}
    for code, low in zip(codes, lower):
        stem = kdef_name(code)
        folder = root / "KDEF" / stem[:4]
        folder.mkdir(parents=True, exist_ok=True)
        name = (stem.lower() if low else stem) + suffix
        (folder / name).write_bytes(b"")
        expected[f"KDEF/{stem[:4]}/{name}"] = code
    index = load_kdef(root)
    assert len(index.records) == len(codes)
    for r in index.records:
        session, gender, person, expression, view = expected[r.id]
        assert r.label == C[KDEF_EXPRESSIONS[expression]] and r.split == "train"
        assert r.meta == {
            "view": KDEF_VIEWS[view],
            "subject": f"{session}{gender}{person:02d}",
            "person": f"{gender}{person:02d}",
            "session": session,
            "gender": gender,
        }


name_chars = st.characters(exclude_categories=("Cs",), exclude_characters="/\x00")


@FEW
@given(
    code=kdef_codes,
    edits=st.lists(
        st.tuples(
            st.integers(0, 9),
            st.sampled_from(["del", "ins", "sub"]),
            st.one_of(name_chars, st.sampled_from(list("0123456789ABFMSLHRX٠١٣３ſı"))),
        )
    ),
    stem=st.one_of(st.none(), st.text(name_chars, min_size=1, max_size=12), st.just("digit")),
    digit=st.tuples(st.sampled_from([2, 3]), st.characters(categories=("Nd",))),
)
def test_kdef_bad_names_are_rejected_or_parsed_correctly(scratch, code, edits, stem, digit) -> None:
    if stem == "digit":  # any script's decimal digit in the person number ("AF1٣AFS")
        chars = list(kdef_name(code))
        chars[digit[0]] = digit[1]
        stem = "".join(chars)
    elif stem is None:
        chars = list(kdef_name(code))
        for pos, op, ch in edits:
            pos %= len(chars) + 1
            if op == "ins":
                chars.insert(pos, ch)
            elif chars and pos < len(chars):
                chars[pos : pos + 1] = [] if op == "del" else [ch]
        stem = "".join(chars)
    assume(stem and not stem.startswith(".") and len((stem + ".jpg").encode()) < 250)
    root = fresh(scratch)
    path = root / f"{stem}.jpg"
    path.write_bytes(b"")
    try:
        index = load_kdef(root)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
        assert type(exc) is DataError, repr(exc)
        assert str(path) in str(exc) and "not a KDEF file name" in str(exc)
        return
    # Accepted: the name must be a real KDEF code, and the meta exactly what it encodes.
    (r,) = index.records
    m = r.meta
    assert m["session"] in "AB" and m["gender"] in "FM" and len(m["session"]) == len(m["gender"]) == 1
    assert m["person"][1:] in {f"{i:02d}" for i in range(1, 36)}, m
    view_code = {v: c for c, v in KDEF_VIEWS.items()}[m["view"]]
    expr = [c for c, name in KDEF_EXPRESSIONS.items() if C[name] == r.label]
    assert stem.upper() in {f"{m['subject']}{e}{view_code}" for e in expr}


# --- ImageFolder, CAER-S, SFEW ------------------------------------------------------------------------------


@st.composite
def class_trees(draw, table: dict[str, str], splits: list[str] | None):
    """{split folder or "": {class folder: [file names]}} with class folders from ``table``."""

    # Two folders naming one split ("val", "Validation") are rejected on purpose: draw distinct splits.
    def unique(n):
        return SPLIT_ALIASES[n.lower()]

    split_names = (
        draw(st.lists(st.sampled_from(splits), min_size=1, max_size=len(splits), unique_by=unique)) if splits else [""]
    )
    tree = {}
    for split in split_names:
        folders = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=4, unique_by=lambda n: table[n]))
        case = draw(st.sampled_from([str.lower, str.upper, str.title]))
        tree[split] = {
            case(f): draw(
                st.lists(
                    st.tuples(
                        st.text("abcxyz019_-", min_size=1, max_size=8), st.sampled_from(IMAGE_SUFFIXES), st.booleans()
                    ).map(lambda t: t[0] + (t[1].upper() if t[2] else t[1])),
                    min_size=1,
                    max_size=3,
                    unique=True,
                )
            )
            for f in folders
        }
    return tree


def write_tree(root: Path, tree) -> dict[str, tuple[str, str]]:
    """Create the files; return relative path -> (class folder, split folder)."""
    expected = {}
    for split, classes in tree.items():
        for folder, files in classes.items():
            (root / split / folder).mkdir(parents=True)
            (root / split / folder / ".ipynb_checkpoints").mkdir()  # hidden: ignored
            (root / split / folder / "notes.txt").write_text("not an image")
            for name in files:
                (root / split / folder / name).write_bytes(b"")
                expected[(Path(split) / folder / name).as_posix()] = (folder, split)
    return expected


def check_tree(index, expected, table, split_table) -> None:
    got = {r.id: (r.label, r.split) for r in index.records}
    want = {
        rel: (C[table[folder.lower()]], split_table[split.lower()] if split else "train")
        for rel, (folder, split) in expected.items()
    }
    assert got == want
    assert len(index.records) == len(expected)


@FEW
@given(
    tree=st.one_of(
        class_trees(FOLDER_ALIASES, None), class_trees(FOLDER_ALIASES, ["train", "Val", "TEST", "validation"])
    )
)
def test_image_folder_round_trip(scratch, tree) -> None:
    root = fresh(scratch)
    expected = write_tree(root, tree)
    check_tree(load_folder(root), expected, FOLDER_ALIASES, SPLIT_ALIASES)


@FEW
@given(tree=class_trees(CAER_S_CLASSES, ["train", "Test"]))
def test_caer_s_round_trip(scratch, tree) -> None:
    root = fresh(scratch)
    expected = write_tree(root, tree)
    check_tree(load_caer_s(root), expected, CAER_S_CLASSES, {"train": "train", "test": "test"})


@FEW
@given(tree=class_trees(SFEW_CLASSES, ["Train", "val"]))
def test_sfew_round_trip(scratch, tree) -> None:
    root = fresh(scratch)
    expected = write_tree(root, tree)
    check_tree(load_sfew(root), expected, SFEW_CLASSES, {"train": "train", "val": "val"})


@FEW
@given(
    loader=st.sampled_from(["folder", "caer_s", "sfew"]),
    folders=st.lists(
        st.one_of(st.text(name_chars, min_size=1, max_size=10), st.sampled_from(sorted(FOLDER_ALIASES))),
        min_size=1,
        max_size=4,
        unique_by=str.lower,
    ),
    empty=st.booleans(),
)
def test_class_folders_are_known_or_a_clear_error(scratch, loader, folders, empty) -> None:
    assume(all(f not in (".", "..") and len(f.encode()) < 200 for f in folders))
    root = fresh(scratch)
    split = {"folder": "", "caer_s": "train", "sfew": "train"}[loader]
    for i, f in enumerate(folders):
        (root / split / f).mkdir(parents=True)
        if not (empty and i == 0):
            (root / split / f / "a.png").write_bytes(b"")
    fn = {"folder": load_folder, "caer_s": load_caer_s, "sfew": load_sfew}[loader]
    table = {"folder": FOLDER_ALIASES, "caer_s": CAER_S_CLASSES, "sfew": SFEW_CLASSES}[loader]
    try:
        index = fn(root)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
        assert type(exc) is DataError, repr(exc)
        assert str(root) in str(exc)  # names the folder it could not use
        return
    visible = [f for f in folders if not f.startswith(".")]
    assert not (empty and not folders[0].startswith(".")), "an empty class folder was accepted"
    assert all(f.lower() in table for f in visible)  # only known class names are accepted
    assert all(r.label == C[table[Path(r.id).parent.name.lower()]] for r in index.records)
