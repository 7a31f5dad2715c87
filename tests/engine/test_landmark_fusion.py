"""The fusion of per-view landmark lifts against answers known in closed form: the similarity fit of
MediaPipe's 3D face, the rejection of a lift that MediaPipe's depth contradicts, and the move of a
landmark into a fold of the surface (the inner lips of a closed mouth)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from headsculpt_engine.prior.fusion import ViewLift, depth_consistent, fitted_facemesh, into_folds, similarity_fit


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(40, 3))
    rotation = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix()
    target = 1.7 * source @ rotation.T + np.array([0.3, -1.0, 2.0])
    scale, fitted_rotation, shift = similarity_fit(source, target)
    assert np.isclose(scale, 1.7)
    np.testing.assert_allclose(fitted_rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(shift, [0.3, -1.0, 2.0], atol=1e-9)


def synthetic_lift(points: np.ndarray) -> ViewLift:
    """A view whose lifts are `points`, all frontal, and whose MediaPipe face is the true points at
    another scale, turn and place (as FaceMesh reports them in its own image frame)."""
    rotation = Rotation.from_euler("y", 25.0, degrees=True).as_matrix()
    facemesh = (points - 0.1) @ rotation / 3.0
    return ViewLift(face_index=np.zeros(len(points), dtype=np.int64), points=points.copy(),
                    frontality=np.ones(len(points)), facemesh_3d=facemesh)


def test_a_lift_that_mediapipes_depth_contradicts_is_dropped():
    rng = np.random.default_rng(1)
    truth = rng.uniform(-0.3, 0.3, size=(60, 3))
    lift = synthetic_lift(truth)
    lift.points += rng.normal(scale=0.002, size=lift.points.shape)  # the raster's small noise
    lift.points[7, 2] += 0.08  # a depth jump: lifted onto the cheek in front of the contour
    fitted = fitted_facemesh(lift)
    assert fitted is not None
    np.testing.assert_allclose(fitted[0], truth, atol=0.01)  # the fit ignores the wild lift
    assert not fitted[1][7]
    consistent = depth_consistent(lift, fitted)
    assert not consistent[7] and consistent.sum() == len(truth) - 1


def two_layer_mouth() -> tuple[np.ndarray, np.ndarray]:
    """A unit square facing +Z at z = 0 (the lips a camera sees) and, 0.03 behind it, the same
    square (the inside of the lips, in the mouth's slit)."""
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    vertices = np.concatenate([np.c_[square, np.zeros(4)], np.c_[square, np.full(4, -0.03)]])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    return vertices, faces


def test_a_landmark_that_mediapipe_puts_in_a_fold_moves_there_and_others_stay():
    vertices, faces = two_layer_mouth()
    lifted = np.array([[0.1, 0.2, 0.0]] * 5)  # every ray meets the front layer
    expected = np.array([
        [0.1, 0.2, -0.028],  # on the inner layer: moves there
        [0.1, 0.2, -0.015],  # between the layers, on neither: stays
        [0.1, 0.2, -0.004],  # just inside the front layer (MediaPipe's depth noise): stays
        [0.1, 0.2, 0.01],    # in front: stays
        [np.nan] * 3,        # no view fitted it: stays
    ])
    out = into_folds(lifted, expected, vertices, faces)
    np.testing.assert_allclose(out[0], [0.1, 0.2, -0.03], atol=1e-9)
    np.testing.assert_allclose(out[1:], lifted[1:])
