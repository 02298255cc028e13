"""Table-driven weight mapping between PyTorch state dicts and NNX parameters.

A conversion is a list of ``Rule``s, one per PyTorch tensor: its state-dict
key and shape, the NNX path and shape it becomes, and its layout:
  SAME    copied as is (biases, norms, positional embeddings)
  LINEAR  torch Linear (out, in) -> (in, out), then reshaped (e.g. fused qkv
          (3D, D) -> (D, 3, heads, head_dim))
  CONV    torch Conv2d (out, in, kh, kw) -> (kh, kw, in, out), then reshaped
          (e.g. a patch embedding -> (kh*kw*in, out))
Both directions follow from the table, so a round trip is exact by
construction. Checking is all-or-nothing: every missing, unexpected or
mis-shaped key is collected and reported at once, never skipped or filled.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from etils import epath
from flax import traverse_util

SAME, LINEAR, CONV = "same", "linear", "conv"
_PERM = {SAME: None, LINEAR: (1, 0), CONV: (2, 3, 1, 0)}


class ConversionError(ValueError):
    """A state dict that does not match the model it should become."""


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_key: str
    path: tuple  # NNX pure-dict path, e.g. ("in_blocks", 0, "attn", "qkv")
    torch_shape: tuple[int, ...]
    jax_shape: tuple[int, ...]
    layout: str = SAME

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        perm = _PERM[self.layout]
        x = x if perm is None else np.transpose(x, perm)
        return np.ascontiguousarray(x.reshape(self.jax_shape))

    def to_torch(self, y: np.ndarray) -> np.ndarray:
        perm = _PERM[self.layout]
        if perm is None:
            return np.ascontiguousarray(np.reshape(y, self.torch_shape))
        permuted = tuple(self.torch_shape[i] for i in perm)
        return np.ascontiguousarray(np.transpose(np.reshape(y, permuted), np.argsort(perm)))


class Job(NamedTuple):
    """One file to convert: ``write(convert(state_dict))`` puts it at ``target``."""

    label: str
    source: epath.Path
    target: epath.Path
    convert: Callable[[Mapping], dict]
    write: Callable[[dict], object]


def linear(torch_key, path, dout, din, jax_shape=None) -> Rule:
    return Rule(torch_key, path, (dout, din), jax_shape or (din, dout), LINEAR)


def conv(torch_key, path, dout, din, k, jax_shape=None) -> Rule:
    return Rule(torch_key, path, (dout, din, k, k), jax_shape or (k, k, din, dout), CONV)


def copy(torch_key, path, shape) -> Rule:
    return Rule(torch_key, path, tuple(shape), tuple(shape), SAME)


# ---------------------------------------------------------------------------
# Checking a state dict against a table.
# ---------------------------------------------------------------------------


def _shape(x) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _sorted_keys(keys):
    """Natural order, so ``in_blocks.10`` follows ``in_blocks.9``."""
    return sorted(keys, key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])


def problems(rules: Sequence[Rule], state_dict: Mapping) -> list[str]:
    """Every missing, unexpected and mis-shaped key, one line each."""
    expected = {r.torch_key: r for r in rules}
    missing = _sorted_keys(k for k in expected if k not in state_dict)
    unexpected = _sorted_keys(k for k in state_dict if k not in expected)
    shaped = []
    for key in _sorted_keys(k for k in state_dict if k in expected):
        got, want = _shape(state_dict[key]), expected[key].torch_shape
        if got != want:
            hint = " (transposed?)" if got == tuple(reversed(want)) else ""
            shaped.append(f"{key}: shape {got}, expected {want}{hint}")
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s):")
        lines += [f"    {k} {expected[k].torch_shape}" for k in missing]
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected key(s):")
        lines += [f"    {k} {_shape(state_dict[k])}" for k in unexpected]
    if shaped:
        lines.append(f"{len(shaped)} mis-shaped key(s):")
        lines += [f"    {s}" for s in shaped]
    return lines


def raise_problems(what: str, lines: Sequence[str], hints: Sequence[str] = ()) -> None:
    if lines:
        body = "\n".join([f"  {h}" for h in hints] + [f"  {line}" for line in lines])
        raise ConversionError(f"cannot convert {what}:\n{body}")


def check_table(rules: Sequence[Rule], model_params: Mapping, what: str) -> None:
    """The table must cover every model parameter once, with its shape.

    A failure here means the converter and the model have drifted apart (a
    code bug, not a bad checkpoint), so it is reported as such.
    """
    flat = {k: _shape(v) for k, v in traverse_util.flatten_dict(dict(model_params)).items()}
    table = {r.path: r for r in rules}
    lines = [f"model parameter {'/'.join(map(str, p))} {s} has no rule" for p, s in flat.items() if p not in table]
    lines += [f"rule {r.torch_key} -> {'/'.join(map(str, p))} names no model parameter"
              for p, r in table.items() if p not in flat]
    lines += [f"rule {r.torch_key} -> {'/'.join(map(str, p))} gives {r.jax_shape}, the model has {flat[p]}"
              for p, r in table.items() if p in flat and flat[p] != r.jax_shape]
    if len(table) != len(rules):
        lines.append("two rules write the same model parameter")
    if lines:
        raise AssertionError(f"{what}: the conversion table does not match the model code:\n  " + "\n  ".join(lines))


def to_nnx(rules: Sequence[Rule], state_dict: Mapping, what: str, hints: Sequence[str] = ()) -> dict:
    """State dict (numpy arrays) -> nested NNX pure dict, float32."""
    raise_problems(what, problems(rules, state_dict), hints)
    flat = {r.path: r.to_jax(np.asarray(state_dict[r.torch_key], np.float32)) for r in rules}
    return traverse_util.unflatten_dict(flat)


def to_state_dict(rules: Sequence[Rule], params: Mapping, what: str) -> dict[str, np.ndarray]:
    """Nested NNX pure dict -> state dict of numpy arrays (the inverse of ``to_nnx``)."""
    flat = traverse_util.flatten_dict(dict(params))
    lines = [f"no parameter {'/'.join(map(str, r.path))} for {r.torch_key}" for r in rules if r.path not in flat]
    known = {r.path for r in rules}
    lines += [f"parameter {'/'.join(map(str, p))} has no rule" for p in flat if p not in known]
    lines += [f"{'/'.join(map(str, r.path))}: shape {_shape(flat[r.path])}, expected {r.jax_shape}"
              for r in rules if r.path in flat and _shape(flat[r.path]) != r.jax_shape]
    raise_problems(what, lines)
    return {r.torch_key: r.to_torch(np.asarray(flat[r.path], np.float32)) for r in rules}
