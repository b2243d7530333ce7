"""scikit-learn's linear classifiers as crossbar layers: skl2onnx writes LogisticRegression,
LinearSVC, SGDClassifier, RidgeClassifier... as one ``ai.onnx.ml`` ``LinearClassifier`` whose
coefficients are node attributes. In memory that node becomes the standard ops it computes
(ONNX-ML: scores = X @ coefficients^T + intercepts, then the post-transform; label = the class
of the largest score), so the coefficient matrix is an initializer that every path perturbs,
maps to tiles and trains. The file is never modified; ``harden`` writes trained values back
into the node's attributes (``attribute_targets``).

A node whose form this module does not reproduce exactly (one coefficient row for two classes,
the SOFTMAX_ZERO or PROBIT post-transforms) stays as it is and is listed as not perturbed
(``onnx_operands.ATTRIBUTE_REASON``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ML_DOMAIN = "ai.onnx.ml"
#: post-transform -> the standard op applied to the scores (None: the scores as they are)
POST_TRANSFORMS: dict[str, str | None] = {"NONE": None, "LOGISTIC": "Sigmoid", "SOFTMAX": "Softmax"}


def _is_classifier(node: Any) -> bool:
    return node.domain == ML_DOMAIN and node.op_type == "LinearClassifier"


def classifier_prefixes(graph: Any) -> list[str]:
    """The unique name each LinearClassifier node's in-memory values take, in graph order: the
    node's name, or ``LinearClassifier_<k>`` (the k-th) when that is empty or shared. The same
    for the loaded file and its in-memory copy."""
    names = [n.name for n in graph.node if _is_classifier(n)]
    unique = {name for name in names if name and names.count(name) == 1}
    return [name if name in unique else f"LinearClassifier_{k}" for k, name in enumerate(names)]


def coefficients_name(prefix: str) -> str:
    """The in-memory initializer holding a LinearClassifier's coefficients, (features, classes)."""
    return f"{prefix}.coefficients"


def intercepts_name(prefix: str) -> str:
    return f"{prefix}.intercepts"


def unfold_linear_classifiers(model: Any) -> None:
    """Rewrite ``model``'s LinearClassifier nodes in place as MatMul + Add (+ post-transform)
    and ArgMax + Gather for the label, where the result equals the node's exactly in form."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if not any(_is_classifier(n) for n in graph.node):
        return
    types = _elem_types(model)
    prefixes = iter(classifier_prefixes(graph))
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("", 13))  # an ML-only graph
    nodes: list[Any] = []
    for node in graph.node:
        form = _form(node, types, helper)
        prefix = next(prefixes) if _is_classifier(node) else ""
        if form is None:
            nodes.append(node)
            continue
        coefficients, intercepts, labels, post, elem = form
        weight, bias, table = coefficients_name(prefix), intercepts_name(prefix), f"{prefix}/labels"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(coefficients.T), weight),
                numpy_helper.from_array(intercepts, bias),
                numpy_helper.from_array(labels, table),
            ]
        )
        data = node.input[0]
        if elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [data], [f"{prefix}/x"], to=TensorProto.FLOAT))
            data = f"{prefix}/x"
        raw = f"{prefix}/raw_scores"
        nodes += [
            helper.make_node(
                "MatMul", [data, weight], [f"{prefix}/product"], name=f"{prefix}/MatMul"
            ),
            helper.make_node("Add", [f"{prefix}/product", bias], [raw], name=f"{prefix}/Add"),
        ]
        outputs = list(node.output) + [""] * (2 - len(node.output))
        if outputs[1]:
            attrs = {"axis": 1} if post == "Softmax" else {}
            op = post or "Identity"
            nodes.append(helper.make_node(op, [raw], [outputs[1]], name=f"{prefix}/{op}", **attrs))
        if outputs[0]:
            best = f"{prefix}/argmax"
            nodes += [
                helper.make_node("ArgMax", [raw], [best], axis=1, keepdims=0),
                helper.make_node("Gather", [table, best], [outputs[0]], axis=0),
            ]
    del graph.node[:]
    graph.node.extend(nodes)


def _form(node: Any, types: dict[str, int], helper: Any) -> tuple[Any, ...] | None:
    """(coefficients (C, F), intercepts (C,), labels, post-transform op, input type), or None
    when the node is not a LinearClassifier this module reproduces exactly."""
    from onnx import TensorProto

    if node.domain != ML_DOMAIN or node.op_type != "LinearClassifier":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    post = attrs.get("post_transform", b"NONE")
    post = post.decode() if isinstance(post, bytes) else str(post)
    if post not in POST_TRANSFORMS:
        return None
    if "classlabels_ints" in attrs:
        labels = np.asarray(attrs["classlabels_ints"], np.int64)
    elif "classlabels_strings" in attrs:
        labels = np.asarray([s.decode() for s in attrs["classlabels_strings"]], dtype=object)
    else:
        return None
    classes = len(labels)
    flat = np.asarray(attrs.get("coefficients", []), np.float32)
    intercepts = np.asarray(attrs.get("intercepts", np.zeros(classes)), np.float32)
    elem = types.get(node.input[0], TensorProto.UNDEFINED)  # unknown: cast to float, as any
    if classes < 2 or flat.size % classes or not flat.size:  # numeric input can be
        return None  # one row for two classes: ONNX-ML's binary special case, left as it is
    if intercepts.shape != (classes,):
        return None
    return flat.reshape(classes, -1), intercepts, labels, POST_TRANSFORMS[post], elem


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every value whose type the graph declares or inference finds."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):  # declared types only, then
        inferred = model
    graph = inferred.graph
    return {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.WhichOneof("value") == "tensor_type"
    }


def attribute_targets(model: Any) -> dict[str, tuple[Any, bool]]:
    """For the file's LinearClassifier nodes: in-memory initializer name -> (the attribute its
    values are written back to, whether the initializer is the attribute's transpose)."""
    targets: dict[str, tuple[Any, bool]] = {}
    nodes = [node for node in model.graph.node if _is_classifier(node)]
    for prefix, node in zip(classifier_prefixes(model.graph), nodes, strict=True):
        attrs = {a.name: a for a in node.attribute}
        if "coefficients" in attrs:
            targets[coefficients_name(prefix)] = (attrs["coefficients"], True)
        if "intercepts" in attrs:
            targets[intercepts_name(prefix)] = (attrs["intercepts"], False)
    return targets


def write_attribute(attribute: Any, value: np.ndarray, transposed: bool) -> None:
    """Replace a float-list attribute's values with ``value`` (its transpose, flattened in C
    order, when ``transposed``); the count must stay as it is."""
    flat = np.ascontiguousarray(value.T if transposed else value, np.float32).reshape(-1)
    if flat.size != len(attribute.floats):
        raise ValueError(f"{attribute.name}: {flat.size} values for {len(attribute.floats)}")
    del attribute.floats[:]
    attribute.floats.extend(float(v) for v in flat)
