"""The shipped MTCNN face detector: export round trip, cascade pieces, real photos, any image size.

Real photos: ``tests/data/photos`` holds small copies of public sample photos that registry
packages ship (scikit-image, matplotlib, face_recognition; sources and licences in its
``labels.json``) with hand-marked face boxes: 8 faces (portraits, two full figures with small
faces, a 3/4 profile behind a camera, a face cut by the image edge) and 3 photos without a human
face (a cat's face among them). The default detector must find at least 7 of the 8 with at most
one false box, at the stored size and upscaled 3×.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.detect import (
    MIN_FACE,
    WORK_SIDE,
    Box,
    MtcnnDetector,
    make_detector,
    match_faces,
    min_face_pixels,
    mtcnn_unavailable_reason,
    working_copy,
)
from runtime.detectors import mtcnn as M
from runtime.errors import ArtifactError, ConfigError

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"
LABELS = json.loads((PHOTOS / "labels.json").read_text())["photos"]
# Stated bounds (docs: BENCHMARKS.md "Face detector"): faces found and false boxes over the set, per scale.
MIN_RECALL, MAX_FALSE = 7, 1

pytestmark = pytest.mark.skipif(
    bool(mtcnn_unavailable_reason()), reason=f"MTCNN unavailable: {mtcnn_unavailable_reason()}"
)


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    det = make_detector("auto")
    assert isinstance(det, MtcnnDetector), "the default detector is MTCNN"
    yield det
    det.close()


def _score(det, scale: float) -> tuple[int, int, int, list[str]]:
    found = false = total = 0
    misses = []
    for name, entry in LABELS.items():
        img = cv2.imread(str(PHOTOS / name))
        assert img is not None, name
        if scale != 1:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        faces = [[v * scale for v in b] for b in entry["faces"]]
        ignore = [[v * scale for v in b] for b in entry.get("ignore", [])]
        hit, fa = match_faces(det.detect(img), faces, ignore)
        found, false, total = found + hit, false + fa, total + len(faces)
        if hit < len(faces) or fa:
            misses.append(f"{name}: {hit}/{len(faces)} found, {fa} false")
    return found, false, total, misses


@pytest.mark.parametrize("scale", [1, 3])
def test_default_detector_on_real_photos(detector: MtcnnDetector, scale: int) -> None:
    found, false, total, misses = _score(detector, scale)
    assert total == 8
    assert found >= MIN_RECALL and false <= MAX_FALSE, (found, false, misses)


def test_huge_input_is_detected_like_its_working_copy(detector: MtcnnDetector) -> None:
    """An 8000×6000 photo: same boxes as its 1280×960 copy (up to scale), bounded extra memory."""
    base = cv2.imread(str(PHOTOS / "astronaut.jpg"))
    small = cv2.resize(base, (1280, 960), interpolation=cv2.INTER_LINEAR)
    huge = cv2.resize(small, (8000, 6000), interpolation=cv2.INTER_LINEAR)
    ref = detector.detect(cv2.resize(huge, (1280, 960), interpolation=cv2.INTER_AREA))
    tracemalloc.start()
    try:
        got = detector.detect(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == len(ref) >= 1
    for a, b in zip(got, ref):
        assert abs(a.x / 6.25 - b.x) <= 1 and abs(a.y / 6.25 - b.y) <= 1 and abs(a.w / 6.25 - b.w) <= 1.5, (a, b)
    # The 144 MB input is not copied: the working copy is 3.7 MB, the pyramid and crops a few MB more.
    assert peak < 40e6, f"detection on an 8000×6000 input allocated {peak / 1e6:.0f} MB"


def test_min_face_is_relative_to_the_image_or_in_pixels() -> None:
    assert min_face_pixels(0.05, (480, 640)) == pytest.approx(24.0)
    assert min_face_pixels(40, (480, 640)) == 40.0
    assert MIN_FACE < 1 and WORK_SIDE >= 640
    with pytest.raises(ConfigError, match="min-face"):
        make_detector("mtcnn", min_face=0)
    with pytest.raises(ConfigError, match="detect-size"):
        make_detector("mtcnn", work_side=10)
    img = np.zeros((600, 2000, 3), np.uint8)
    work, s = working_copy(img, 1000)
    assert work.shape[:2] == (300, 1000) and s == 0.5
    assert working_copy(img, 4000)[0] is img


def test_a_face_smaller_than_min_face_is_not_reported(detector: MtcnnDetector) -> None:
    img = cv2.imread(str(PHOTOS / "obama3.jpg"))  # face ~81 px wide in a 393×640 photo
    assert len(make_detector("mtcnn", min_face=0.04).detect(img)) == 1
    big = make_detector("mtcnn", min_face=0.5)  # half the shorter side: 196 px
    try:
        assert big.detect(img) == []
    finally:
        big.close()


def test_gray_and_bgra_inputs(detector: MtcnnDetector) -> None:
    img = cv2.imread(str(PHOTOS / "astronaut.jpg"))
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    assert len(detector.detect(gray)) == 1 and len(detector.detect(bgra)) == 1
    assert detector.detect(np.zeros((5, 7, 3), np.uint8)) == []  # smaller than P-Net's 12-pixel cell


def test_nms_regress_square_and_pyramid() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert M.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]  # box 1 overlaps box 0 by IoU 0.68
    assert M.nms(boxes, scores, 0.5, mode="min").tolist() == [3, 2]  # nested boxes go in "min" mode
    assert M.nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0
    r = M.regress(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([[0.1, -0.1, 0.0, 0.5]]))
    assert r.tolist() == [[12.0, 16.0, 30.0, 80.0]]
    assert M.square(np.array([[0.0, 0.0, 10.0, 20.0]])).tolist() == [[-5.0, 0.0, 15.0, 20.0]]
    scales = M.pyramid_scales(480, 24)
    assert scales[0] == pytest.approx(0.5) and 480 * scales[-1] >= 12 > 480 * scales[-1] * M.PYRAMID_FACTOR
    crops = M.crops(np.full((20, 20, 3), 200, np.uint8), np.array([[-10.0, -10.0, 10.0, 10.0]]), 24)
    assert crops.shape == (1, 3, 24, 24) and crops[0, :, 0, 0].max() == 0 and crops[0, :, -1, -1].min() == 200


def test_missing_network_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="export_mtcnn"):
        M.MtcnnNets(tmp_path)
    with pytest.raises(ConfigError, match="ort-trt"):
        M.MtcnnNets(backend="trt")


def test_shipped_files_match_their_sidecar_and_carry_the_contract() -> None:
    import onnx

    from runtime.artifacts import sha256_file

    side = json.loads((M.MODEL_DIR / "mtcnn.json").read_text())
    assert "MIT" in side["licence"]["weights"]
    notice = (M.MODEL_DIR / "LICENSE").read_text()
    assert "Copyright (c) 2016 Kaipeng Zhang" in notice and "Copyright (c) 2019 Timothy Esler" in notice
    total = 0
    for net in M.NETS:
        path = M.MODEL_DIR / f"{net}.onnx"
        total += path.stat().st_size
        assert side["nets"][net]["sha256"] == sha256_file(path)
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        contract = json.loads(meta["ferdeploy.detector"])
        assert contract["net"] == net and contract["weights_sha256"] == side["nets"][net]["weights_sha256"]
    assert total < 2.5e6


def test_reexport_matches_the_shipped_onnx(tmp_path: Path) -> None:
    """The export script's path: state dicts (rebuilt from the shipped weights) -> export_mtcnn -> same outputs."""
    pytest.importorskip("torch")
    import onnxruntime as ort
    import torch

    from export.mtcnn import build_net, export_mtcnn, state_dict_from_onnx

    weights = tmp_path / "weights"
    weights.mkdir()
    for net in M.NETS:
        torch.save(state_dict_from_onnx(M.MODEL_DIR / f"{net}.onnx", net), weights / f"{net}.pt")
    body = export_mtcnn(weights, tmp_path / "out")
    assert sorted(body["nets"]) == sorted(M.NETS) and (tmp_path / "out" / "mtcnn.json").is_file()
    rng = np.random.default_rng(0)
    shapes = {"pnet": [(1, 3, 37, 53), (2, 3, 12, 12)], "rnet": [(3, 3, 24, 24)], "onet": [(2, 3, 48, 48)]}
    for net in M.NETS:
        shipped = M.MODEL_DIR / f"{net}.onnx"
        module = build_net(net, state_dict_from_onnx(shipped, net))
        a = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(str(tmp_path / "out" / f"{net}.onnx"), providers=["CPUExecutionProvider"])
        for shape in shapes[net]:
            x = (rng.random(shape) * 255).astype(np.float32)
            ya, yb = a.run(None, {"input": x}), b.run(None, {"input": x})
            with torch.no_grad():
                yt = module(torch.from_numpy(x))
            for u, v, t in zip(ya, yb, yt):
                np.testing.assert_allclose(u, v, atol=1e-5)
                np.testing.assert_allclose(u, t.numpy(), atol=1e-4)
            assert np.allclose(ya[0].sum(axis=1), 1.0, atol=1e-5)  # softmax over face / not face
    # The detector runs on the re-exported files and finds the same face.
    img = cv2.imread(str(PHOTOS / "astronaut.jpg"))
    again = MtcnnDetector(tmp_path / "out")
    try:
        ref = make_detector("mtcnn")
        assert again.detect(img) == ref.detect(img) and len(ref.detect(img)) == 1
    finally:
        again.close()


def test_boxes_map_back_and_clip() -> None:
    from runtime.detect import boxes_to_original

    got = boxes_to_original(np.array([[-5.0, 10.0, 50.0, 40.0], [0.0, 0.0, 0.2, 0.2]]), [0.9, 0.8], 0.5, (60, 90))
    assert got == [Box(0, 20, 90, 40, 0.9)]  # clipped to the 90×60 image; the sub-pixel box dropped


def test_shipped_weights_are_the_facenet_pytorch_ones() -> None:
    """With the facenet-pytorch wheel at hand (FERDEPLOY_FACENET_WHEEL=path), the shipped tensors are its state dicts."""
    import os

    wheel = os.environ.get("FERDEPLOY_FACENET_WHEEL", "")
    if not wheel or not Path(wheel).is_file():
        pytest.skip("set FERDEPLOY_FACENET_WHEEL to the facenet-pytorch wheel to compare the weights at their source")
    pytest.importorskip("torch")
    import torch

    from export.mtcnn import read_state_dicts, state_dict_from_onnx

    side = json.loads((M.MODEL_DIR / "mtcnn.json").read_text())
    for net, (sd, digest) in read_state_dicts(wheel).items():
        assert digest == side["nets"][net]["weights_sha256"]
        shipped = state_dict_from_onnx(M.MODEL_DIR / f"{net}.onnx", net)
        assert all(torch.equal(shipped[k], v.float()) for k, v in sd.items())


def test_two_threads_ask_the_backend_not_to_spin() -> None:
    class Accepts:
        def __init__(self, path, **opts):
            self.opts = opts

    class Rejects(Accepts):
        def __init__(self, path, **opts):
            if "spinning" in opts:
                raise ConfigError("unknown ort backend option(s) ['spinning']; valid: provider, threads")
            super().__init__(path, **opts)

    class Broken(Accepts):
        def __init__(self, path, **opts):
            raise ConfigError("threads must be >= 1")

    assert M.make_backend(Accepts, Path("p.onnx"), {"threads": 2}).opts == {"threads": 2, "spinning": False}
    assert M.make_backend(Accepts, Path("p.onnx"), {"threads": 1}).opts == {"threads": 1}
    assert M.make_backend(Rejects, Path("p.onnx"), {"threads": 2}).opts == {"threads": 2}
    with pytest.raises(ConfigError, match="threads must be"):
        M.make_backend(Broken, Path("p.onnx"), {"threads": 2})
