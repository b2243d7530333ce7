"""ftaudit.evaluation: audit takes name globs or resolved crossbar layers, with the same result."""

from __future__ import annotations

import pytest

from ftaudit.evaluation import audit, choose_layers, exact_name_glob, layer_globs
from ftaudit.models import load_model


def test_resolved_layers_audit_like_their_exact_globs(mlp_onnx, blobs_npz):
    model = load_model(mlp_onnx)
    first = model.layers[0]
    options = {"sigmas": [0.5], "samples": 6, "seed": 4}
    by_object = audit(model, blobs_npz, layers=[first], **options)
    by_glob = audit(model, blobs_npz, layers=[exact_name_glob(first.name)], **options)
    assert by_object.options["layers"] == [exact_name_glob(first.name)]
    assert [r.to_dict() for r in by_object.results] == [r.to_dict() for r in by_glob.results]


def test_choose_layers_keeps_the_models_order(mlp_onnx):
    model = load_model(mlp_onnx)
    assert len(model.layers) >= 2
    backwards = list(reversed(model.layers))
    assert [la.name for la in choose_layers(model, backwards, None)] == [
        la.name for la in model.layers
    ]
    assert layer_globs(None) is None
    assert layer_globs(["fc*", model.layers[0]]) == ["fc*", exact_name_glob(model.layers[0].name)]


@pytest.mark.parametrize("name", ["a*b", "w[0]", "x?"])
def test_exact_glob_of_a_layer_name_with_metacharacters(name):
    import fnmatch

    assert fnmatch.fnmatchcase(name, exact_name_glob(name))
