import numpy as np
import pytest

from expotion.extractors.face import FaceDetector, crop_faces, smooth_track, square_boxes


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """A real photographed face shipped with matplotlib (MTCNN finds nothing in drawings)."""
    import matplotlib.cbook
    from PIL import Image

    return np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))


def test_mtcnn_finds_the_photographed_face_and_not_noise(portrait):
    detector = FaceDetector()
    noise = np.random.default_rng(0).integers(0, 255, portrait.shape, dtype=np.uint8)
    boxes = detector(np.stack([portrait, noise]))
    x0, y0, x1, y1 = boxes[0]
    assert 100 < x0 < x1 < 420 and 60 < y0 < y1 < 420 and (x1 - x0) > 100  # the face, not the whole image
    assert np.isnan(boxes[1]).all()


def test_smoothing_removes_jitter_and_bridges_short_gaps():
    times = np.arange(20) / 5.0
    truth = np.array([100.0, 50.0, 200.0, 150.0])
    boxes = truth + np.random.default_rng(0).normal(0, 1, (20, 4))
    boxes[7] += 60  # one wild detection
    boxes[10:12] = np.nan  # two missed frames
    q = np.arange(0, 3.8, 1 / 80)
    smooth, valid = smooth_track(times, boxes, q)
    assert valid.all()
    assert np.abs(smooth - truth).max() < 5  # the outlier does not leak into the track


def test_track_marks_long_gaps_invalid():
    times = np.arange(30) / 5.0
    boxes = np.tile([10.0, 10.0, 50.0, 50.0], (30, 1))
    boxes[5:25] = np.nan  # 4 s without a face
    _, valid = smooth_track(times, boxes, times, max_gap_s=1.0)
    assert valid[:5].all() and not valid[12:18].any() and valid[25:].all()
    _, none = smooth_track(times, np.full((30, 4), np.nan), times)
    assert not none.any()


def test_square_boxes_stay_inside_the_frame():
    boxes = np.array([[0.0, 0.0, 40.0, 20.0], [290.0, 200.0, 320.0, 256.0]])
    sq = square_boxes(boxes, width=320, height=256)
    sides = sq[:, 2] - sq[:, 0]
    assert np.allclose(sides, sq[:, 3] - sq[:, 1])
    assert (sq[:, :2] >= 0).all() and (sq[:, 2] <= 320).all() and (sq[:, 3] <= 256).all()
    assert sides[0] == pytest.approx(50.0)


def test_crop_faces_resizes_each_box():
    frames = np.zeros((3, 100, 100, 3), np.uint8)
    frames[:, 20:40, 20:40] = 255
    boxes = np.array([[20, 20, 40, 40], [20, 20, 40, 40], [0, 0, 100, 100]], float)
    crops = crop_faces(frames, boxes, 16)
    assert crops.shape == (3, 3, 16, 16)
    assert crops[0].min() > 0.99 and crops[1].min() > 0.99  # box exactly on the white square
    assert 0.02 < crops[2].mean() < 0.1  # the whole frame: the square is 4% of it
