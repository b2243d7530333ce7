"""Which parameters of a torch model a crossbar stores: the rules TorchScript and torch.export
share (recurrent weights, einsum operands, the reason an unmappable product is listed).

A parameter is a crossbar layer when a product reads it as a weight matrix whose rows are the
outputs (a Linear-like role); a parameter read by a product in any other way is listed as
untraced with how to fix it, never skipped. Lookups (Embedding) are listed as kept exact;
additions and norms are not products. No torch import: each format hands ``ProductScan`` the
way to read its graph.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftaudit.models.onnx_graph import UntracedOp

#: recurrent module type (TorchScript's original_name) -> the op shown for its weights
RECURRENT_MODULES = {
    "LSTM": "LSTM",
    "GRU": "GRU",
    "RNN": "RNN",
    "LSTMCell": "LSTM",
    "GRUCell": "GRU",
    "RNNCell": "RNN",
}
#: a recurrent module's weight matrices: input-to-hidden, hidden-to-hidden, LSTM's projection
RECURRENT_WEIGHT = re.compile(r"weight_(ih|hh|hr)(_l\d+)?(_reverse)?")
#: aten recurrent kernels (TorchScript ``aten::`` kinds, torch.export ``aten.`` targets without
#: the overload) -> the op shown for the 2-D tensors of their parameter list
RECURRENT_KERNELS = {
    "lstm": "LSTM",
    "gru": "GRU",
    "rnn_tanh": "RNN",
    "rnn_relu": "RNN",
    "lstm_cell": "LSTM",
    "gru_cell": "GRU",
    "rnn_tanh_cell": "RNN",
    "rnn_relu_cell": "RNN",
}

#: aten product (without namespace or overload) -> {argument index: (op shown, transposed)}:
#: the arguments that, when they are a parameter of the right rank, are a crossbar's weight
#: (transposed: stored (in, out), as the right operand of x @ W)
PRODUCT_WEIGHTS: dict[str, dict[int, tuple[str, bool]]] = {
    "linear": {1: ("Linear", False)},
    "matmul": {0: ("MatMul", False), 1: ("MatMul", True)},
    "mm": {0: ("MatMul", False), 1: ("MatMul", True)},
    "addmm": {1: ("MatMul", False), 2: ("MatMul", True)},
    "mv": {0: ("MatMul", False)},
    "bilinear": {2: ("Bilinear", False)},
    "_native_multi_head_attention": {5: ("MultiheadAttention", False), 7: ("Linear", False)},
    "_transformer_encoder_layer_fwd": {
        3: ("MultiheadAttention", False),
        5: ("Linear", False),
        14: ("Linear", False),
        16: ("Linear", False),
    },
}
#: products whose parameter operands are never mapped (batched and decomposed products): a
#: parameter they read is listed
UNMAPPED_PRODUCTS = ("bmm", "baddbmm", "_trilinear", "tensordot")
#: convolution calls: argument 1 is the weight (any rank; op named by rank and transposition)
CONVOLUTIONS = (
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "_convolution",
    "convolution",
)

#: lookups (an aten name without namespace or overload): argument 0 is the table, read by index
LOOKUPS = ("embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only")
LOOKUP_REASON = (
    "parameter {parameter} is looked up by index (an embedding table), not multiplied by the "
    "data, so a crossbar does not store it and it stays exact"
)

_HOW_TO_FIX = (
    "read the 2-D parameter itself with nn.Linear, F.linear(x, W), x @ W or an einsum with one "
    "output and one summed axis"
)


def conv_op(rank: int, transposed: bool) -> str:
    """The op shown for a convolution weight of this rank ('Conv2d', 'ConvTranspose1d')."""
    return f"{'ConvTranspose' if transposed else 'Conv'}{rank - 2}d"


def weight_rank(op: str) -> int | None:
    """The rank a weight must have to be mapped in a product role (None: any, convolutions)."""
    return 3 if op == "Bilinear" else None if op.startswith("Conv") else 2


def untraced_reason(parameter: str, product: str, how: str, fix: str = "") -> str:
    """Why a parameter read by ``product`` is not perturbed, then how to fix it (after '; ');
    ``fix`` adds the format's own remedy."""
    return (
        f"parameter {parameter} is read by {product} {how}, which ftaudit cannot map onto a "
        f"crossbar's rows and columns; {_HOW_TO_FIX}{fix}"
    )


def einsum_weight_layout(equation: str, operand: int, rank: int) -> bool | None:
    """Whether operand ``operand`` of an einsum is a Linear-like 2-D weight, and how it is stored:
    False for (out, in), True for (in, out); None when it is not Linear-like.

    Linear-like: exactly two distinct subscripts, one kept in the output and read by no other
    operand (the weight's rows: its outputs), the other summed over and shared with another
    operand (its inputs). ``"bi,ji->bj"``: W is (out, in); ``"...i,io->...o"``: (in, out).
    """
    spec = equation.replace(" ", "")
    lhs, arrow, rhs = spec.partition("->")
    inputs = lhs.split(",")
    if rank != 2 or not 0 <= operand < len(inputs):
        return None
    mine = inputs[operand]
    if len(mine) != 2 or mine[0] == mine[1] or not mine.isalpha():
        return None
    others = "".join(s for k, s in enumerate(inputs) if k != operand).replace("...", "")
    if arrow:
        output = rhs.replace("...", "")
    else:  # implicit output: the subscripts that appear once, in alphabetical order
        letters = lhs.replace(",", "").replace("...", "")
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    kept = [c for c in mine if c in output]
    if len(kept) != 1:
        return None
    out = kept[0]
    summed = mine[1] if mine[0] == out else mine[0]
    if out in others or summed not in others:
        return None
    return mine[1] == out


#: calls that hand a tensor on unchanged: the overwritten parameter still reaches the product
TRANSPARENT = {"to", "_to_copy", "contiguous", "detach", "clone", "type_as", "alias"}
#: 2-D transposes (permutes that change nothing are transparent): x @ W.t() reads W as (out, in)
TRANSPOSES = {"t", "numpy_T", "transpose", "permute"}
#: calls a weight may pass through on its way to a product: it is then computed, not mappable
#: (``SCALINGS`` only by a number: a parameter times an activation is no weight)
SCALINGS = {"mul", "div"}
DERIVING = {
    *SCALINGS,
    *TRANSPOSES,
    "view",
    "reshape",
    "_unsafe_view",
    "flatten",
    "unflatten",
    "squeeze",
    "unsqueeze",
    "expand",
    "select",
    "slice",
    "chunk",
    "split",
    "split_with_sizes",
    "unbind",
    "neg",
    "__getitem__",
    "getitem",
    "ListUnpack",
    "TupleUnpack",
}

#: a product's operand -> (the parameter it is, the calls between them), else None
Operand = Callable[[Any], "tuple[str, list[str]] | None"]


@dataclass
class ProductScan:
    """Parameters read by a graph's products, for either torch format: ``mapped`` are crossbar
    weights (op, transposed), ``unmapped`` are listed with why. ``operand`` traces a value back
    to a parameter, ``elements`` opens a list argument, ``constant`` reads a constant argument;
    ``ranks`` holds every float parameter's number of dimensions; ``fix`` ends each listed
    reason with the format's own remedy."""

    ranks: dict[str, int]
    operand: Operand
    elements: Callable[[Any], list[Any]]
    constant: Callable[[Any], Any]
    fix: str = ""
    mapped: dict[str, tuple[str, bool]] = field(default_factory=dict)
    unmapped: dict[str, UntracedOp] = field(default_factory=dict)

    def node(self, op: str, args: Sequence[Any], label: str, kind: str) -> None:
        """One call: ``op`` the aten name without namespace or overload, ``kind`` as shown."""
        if op in RECURRENT_KERNELS:
            role = (RECURRENT_KERNELS[op], False)
            for value in args:
                for item in self.elements(value) or [value]:
                    self.read(item, label, kind, role, "in its parameter list")
        elif op == "einsum" and len(args) > 1:
            equation = str(self.constant(args[0]))
            for k, item in enumerate(self.elements(args[1])):
                found = self.operand(item)
                rank = self.ranks[found[0]] if found else 0
                layout = einsum_weight_layout(equation, k, rank)
                role = None if layout is None else ("Einsum", layout)
                self.read(item, label, kind, role, f"as operand {k} of '{equation}'")
        elif op in CONVOLUTIONS and len(args) > 1:
            transposed = "transpose" in op or (
                op in ("_convolution", "convolution")
                and len(args) > 6
                and bool(self.constant(args[6]))
            )
            found = self.operand(args[1])
            rank = self.ranks[found[0]] if found else 3
            self.read(args[1], label, kind, (conv_op(rank, transposed), False), "as its weight")
        elif op in LOOKUPS and args:
            found = self.operand(args[0])
            if found is not None and self.ranks[found[0]] >= 2:
                reason = LOOKUP_REASON.format(parameter=found[0])
                self.unmapped.setdefault(found[0], UntracedOp(label, kind, reason))
        elif op in PRODUCT_WEIGHTS or op in UNMAPPED_PRODUCTS:
            roles = PRODUCT_WEIGHTS.get(op, {})
            for k, value in enumerate(args):
                self.read(value, label, kind, roles.get(k), f"as operand {k}")

    def read(
        self, value: Any, label: str, kind: str, role: tuple[str, bool] | None, how: str
    ) -> None:
        """One operand: a crossbar weight if it is a parameter in ``role`` of the right rank
        (through one 2-D transpose at most), else listed with ``how`` it is read."""
        found = self.operand(value)
        if found is None:
            return
        name, via = found
        rank = self.ranks[name]
        transposes = rank == 2 and len(via) == 1 and via[0] in TRANSPOSES
        if role is not None and (not via or transposes):
            op, transposed = role
            wanted = weight_rank(op)
            if (wanted is None and rank >= 3) or wanted == rank:
                self.mapped.setdefault(name, (op, transposed != transposes))
                return
            how = f"as a {rank}-D operand"
        elif via:
            how = f"through {', '.join(reversed(via))}"
        if rank >= 2:
            self.unmapped.setdefault(
                name, UntracedOp(label, kind, untraced_reason(name, kind, how, self.fix))
            )
