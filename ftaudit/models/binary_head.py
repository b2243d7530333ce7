"""Binary classifiers with one output column, read as two classes.

A model whose output is one score per input (shape (N, 1) or (N,): a logit trained with
BCEWithLogits, a LinearSVC's decision function, or a Sigmoid's probability) predicts class 1
when the logit is above 0 (the probability above 0.5). ftaudit's engine counts the argmax of
class scores, so such an output is read as the two-class logits ``[0, z]``: argmax is 1 exactly
when z > 0 (a tie goes to class 0, as scikit-learn's ``decision_function > 0`` does), and the
cross-entropy that ``harden`` trains with equals binary cross-entropy on z. For a Sigmoid's
output z is its input: in ONNX the graph is read up to the Sigmoid (through shape-only ops);
a torch module's probability p is mapped back with z = log(p) - log(1 - p).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftaudit.models.tensor_spec import TensorSpec

#: the in-memory ONNX graph's two-class output
TWO_CLASS_NAME = "ftaudit_two_class_logits"
#: ops that only move a value's elements around (walked through to find a Sigmoid)
_SHAPE_ONLY = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
#: smallest and largest probability mapped back to a logit (float32: 1 - 1e-7 is not 1)
_EPS = 1e-7


def one_column(shape: tuple[int | None, ...] | None) -> bool:
    """A declared output shape of one score per input: (N,) or (N, 1)."""
    return shape is not None and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))


def two_class_numpy(scores: np.ndarray, probability: bool = False) -> np.ndarray:
    """(N, 1) or (N,) scores as (N, 2) logits [0, z]; other shapes unchanged."""
    if not (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)):
        return scores
    z = scores.reshape(-1).astype(np.float32)
    if probability:
        p = np.clip(z, _EPS, 1 - _EPS)
        z = np.log(p) - np.log1p(-p)
    return np.stack([np.zeros_like(z), z], axis=1)


def two_class_tensor(torch: Any, scores: Any, probability: bool = False) -> Any:
    """The torch twin of ``two_class_numpy`` (differentiable, for training)."""
    if not (scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 1)):
        return scores
    z = scores.reshape(-1)
    if probability:
        p = z.clamp(_EPS, 1 - _EPS)
        z = torch.log(p) - torch.log1p(-p)
    return torch.stack([torch.zeros_like(z), z], dim=1)


def onnx_two_class(model: Any, spec: TensorSpec) -> TensorSpec | None:
    """Add the two-class output of a one-column ``spec`` to ``model``'s graph (in memory) and
    return its spec; None when ``spec`` is not one column."""
    import onnx
    from onnx import helper, numpy_helper

    if not one_column(spec.shape):
        return None
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    score = spec.name
    walked = score
    while walked in producers and producers[walked].op_type in _SHAPE_ONLY:
        walked = producers[walked].input[0]
    if walked in producers and producers[walked].op_type == "Sigmoid":
        score = producers[walked].input[0]  # the logit the sigmoid squashes
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    name = TWO_CLASS_NAME
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 1], np.int64), f"{name}/shape"))
    graph.node.extend(
        [
            helper.make_node("Reshape", [score, f"{name}/shape"], [f"{name}/z"]),
            helper.make_node("Shape", [f"{name}/z"], [f"{name}/dims"]),
            helper.make_node(
                "ConstantOfShape",
                [f"{name}/dims"],
                [f"{name}/zeros"],
                value=numpy_helper.from_array(np.zeros(1, np.dtype(spec.dtype))),
            ),
            helper.make_node("Concat", [f"{name}/zeros", f"{name}/z"], [name], axis=1),
        ]
    )
    batch = spec.shape[0] if spec.shape else None
    graph.output.append(onnx.helper.make_tensor_value_info(name, elem, [batch, 2]))
    return TensorSpec(name, (batch, 2), spec.dtype)


def onnx_output_op(model: Any, name: str) -> str | None:
    """The op that computes output ``name`` (through shape-only ops and scikit-learn's L1
    Normalizer, which leaves a softmax as it is): 'Softmax', 'Sigmoid', ...; None for an
    input or initializer."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(name)
    while node is not None and (
        node.op_type in _SHAPE_ONLY or (node.op_type == "Normalizer" and _l1(node))
    ):
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


def _l1(node: Any) -> bool:
    norm = next((a.s for a in node.attribute if a.name == "norm"), b"MAX")
    return norm in (b"L1", "L1")


def train_on_log(torch: Any, out: Any) -> Any:
    """Log-probabilities of a softmax output: cross-entropy over them is cross-entropy over the
    logits (softmax(log softmax(z)) = softmax(z)), where over the probabilities it is not."""
    return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))


def output_activation(kinds: list[str]) -> str | None:
    """'sigmoid' or 'softmax' when the torch op that made the output (``kinds[0]``, e.g.
    'aten::sigmoid' or 'softmax'; views skipped by the caller) is one; else None."""
    op = kinds[0].split("::")[-1].split(".")[0].rstrip("_") if kinds else ""
    return {"sigmoid": "sigmoid", "softmax": "softmax", "_softmax": "softmax"}.get(op)
