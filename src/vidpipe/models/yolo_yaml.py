"""A YOLO model YAML read as data: the checks made before Ultralytics builds a model from it.

In: a YAML file path (``--model my.yaml``), whether the user trusts it, and the names of Ultralytics'
model layers. Out: the model's dictionary as Ultralytics' ``DetectionModel(cfg=...)`` takes it, or
:class:`~vidpipe.errors.VidpipeError` in one line. Ultralytics builds a model from a YAML by looking
its layer names up in its own module and by evaluating the ``activation`` string as Python (a YAML
from the internet could run any code that way). So unless ``trust`` (``--trust-weights``), layers
must be Ultralytics' model layers or ``torch.nn`` modules and the activation a ``torch.nn``
activation called with literal numbers. The file must be a regular file of at most ``MAX_BYTES``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from ..errors import VidpipeError
from ..inputs import check_model_file

MAX_BYTES = 1 << 20  # Ultralytics' largest model YAMLs are ~3 kB
ACTIVATIONS = {"SiLU", "ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "GELU", "Mish", "ELU", "SELU",
               "CELU", "PReLU", "Sigmoid", "Tanh", "Softplus", "Identity"}
# Ultralytics' layers that would fetch or build something beyond the file (torchvision weights).
UNSAFE_LAYERS = {"TorchVision"}
_KNOWN_ARGS = {"nc", "anchors", "None", "True", "False", "nearest", "bilinear"}


def _activation_ok(text: str) -> bool:
    """``nn.X(...)`` or ``torch.nn.X(...)`` for an activation X of :data:`ACTIVATIONS`, literal numbers only."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return False
    owner = ast.unparse(call.func.value)
    values = [*call.args, *(k.value for k in call.keywords)]
    return (owner in ("nn", "torch.nn") and call.func.attr in ACTIVATIONS
            and all(isinstance(v, ast.Constant) and isinstance(v.value, (int, float, bool)) for v in values))


def _layer(row: object, where: str, path: str, layers: set[str], trust: bool) -> None:
    if not (isinstance(row, list) and len(row) == 4):
        raise VidpipeError(f"--model {path}: {where} is not [from, number, module, args]")
    source, number, module, args = row
    if not (isinstance(source, int) or (isinstance(source, list) and source
                                        and all(isinstance(s, int) for s in source))):
        raise VidpipeError(f"--model {path}: {where}: 'from' must be a layer index or a list of them")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise VidpipeError(f"--model {path}: {where}: 'number' must be a whole number >= 1")
    if not isinstance(module, str) or not isinstance(args, list):
        raise VidpipeError(f"--model {path}: {where}: 'module' must be a name and 'args' a list")
    if trust:
        return
    import torch

    known = module in layers and module not in UNSAFE_LAYERS
    torch_layer = module.startswith("nn.") and isinstance(getattr(torch.nn, module[3:], None), type) and issubclass(
        getattr(torch.nn, module[3:]), torch.nn.Module)
    if not (known or torch_layer):
        raise VidpipeError(f"--model {path}: {where}: layer {module!r} is not one of Ultralytics' model layers; "
                           "pass --trust-weights to build it anyway if you trust where the file came from")
    for a in args:
        if isinstance(a, str) and a not in _KNOWN_ARGS:
            try:
                ast.literal_eval(a)
            except (ValueError, SyntaxError):
                raise VidpipeError(f"--model {path}: {where}: argument {a!r} is neither a number nor a name "
                                   "Ultralytics defines") from None


def read_model_yaml(path: str | os.PathLike, trust: bool, layers: set[str]) -> dict:
    """The model dictionary of the YAML at ``path`` (see the module docstring)."""
    import yaml

    file = check_model_file(path, "--model", MAX_BYTES)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise VidpipeError(f"--model {path}: not UTF-8 text (byte {e.start})") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise VidpipeError(f"--model {path}: not valid YAML{where}") from None
    if not isinstance(d, dict):
        raise VidpipeError(f"--model {path}: a model YAML is a mapping with 'backbone' and 'head' lists, "
                           f"not {'an empty file' if d is None else 'a ' + type(d).__name__}")
    for part in ("backbone", "head"):
        if not isinstance(d.get(part), list) or not d[part]:
            raise VidpipeError(f"--model {path}: '{part}' must be a non-empty list of layers")
        for i, row in enumerate(d[part]):
            _layer(row, f"{part}[{i}]", str(path), layers, trust)
    nc = d.get("nc", 80)
    if not isinstance(nc, int) or isinstance(nc, bool) or not 1 <= nc <= 100_000:
        raise VidpipeError(f"--model {path}: 'nc' (classes) must be a whole number from 1 to 100,000")
    scales = d.get("scales")
    if scales is not None and not (isinstance(scales, dict) and scales and all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        and x > 0 for x in v) for v in scales.values())):
        raise VidpipeError(f"--model {path}: 'scales' must map each scale to [depth, width, max_channels]")
    for key in ("depth_multiple", "width_multiple"):
        if key in d and not (isinstance(d[key], (int, float)) and not isinstance(d[key], bool) and d[key] > 0):
            raise VidpipeError(f"--model {path}: '{key}' must be a number > 0")
    act = d.get("activation")
    if act is not None and not isinstance(act, str):
        raise VidpipeError(f"--model {path}: 'activation' must be text such as nn.SiLU()")
    if act is not None and not trust and not _activation_ok(act):
        raise VidpipeError(f"--model {path}: activation {act!r} is not a torch.nn activation called with numbers "
                           "(Ultralytics would run it as Python); pass --trust-weights if you trust the file")
    d["yaml_file"] = str(Path(path))
    return d
