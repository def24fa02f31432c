"""A transformers model run straight from its checkpoint files, one unit at a time: memory near two blocks.

The model is built empty from ``config.json`` (accelerate's ``init_empty_weights``: parameters on the meta
device, buffers real). Its units, the decoder blocks and every other module with parameters (embeddings, final
norm, head), are loaded just before they run, through transformers' own loading code (5.x
``convert_and_load_state_dict_in_model``: renames, fused experts; 4.x ``_get_key_renaming_mapping`` and
``_load_state_dict_into_meta_model``), and put back on the meta device once they have run; the forward is the
model's own. Weights stored narrower than the compute dtype are loaded and converted as stored, then upcast,
largest first: ~1.2x a float32 block at the peak rather than 2x when experts are stacked in float32, and the
same values, as the conversions only move data. Tied weights load with the unit that uses them. In-place
updates a forward makes outside any unit (RWKV's ``_rescale_layers``) are recorded on the meta parameters and
replayed on each load. ``tests/test_verify.py`` pins this: logits equal to ``from_pretrained``'s bit for bit
on every family's cases, float32 and bfloat16 checkpoints, transformers 4.57 and 5.x.

Reading overlaps computing: once a unit is loaded, the next one's tensors are read from disk, as stored, on a
thread (``ReadAhead``), while this one runs; loading them (renames, stacking, the device) stays on the main thread.
The next unit is guessed from the order the units are defined in, then from the order the last run called them;
a wrong guess only costs a read. At the peak: the unit running and the next one's stored bytes.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from harness.errors import ConversionError
from harness.parity.background import ReadAhead
from harness.parity.checkpoint_files import by_file, read_tensors, weight_files

__all__ = ["StreamedModel", "StreamedOutput", "Unit"]


@dataclass
class Unit:
    """What is loaded and freed together: a module's parameters and the checkpoint keys they come from."""

    path: str  # module path, e.g. "model.layers.3"
    params: list[str]  # every parameter name it holds, with the names tied to them
    keys: list[str]  # checkpoint keys that load them
    block: int | None  # index in the block list; None for embeddings, norms, head


@dataclass
class StreamedOutput:
    """Logits [B, T, V] and, per block, the hidden state it passes on [B, T, D]; float32, on the CPU."""

    logits: torch.Tensor
    block_states: list[torch.Tensor]


class StreamedModel:
    """``AutoModelForCausalLM`` over ``model_dir`` with one unit loaded at a time (and the next one read ahead).

    ``loading`` is a family's hook around model construction (``converters/rwkv/loading.py``).

    >>> out = StreamedModel(Path("mixtral-hf"))(torch.tensor([[1, 2, 3]]))  # doctest: +SKIP
    >>> out.logits.shape, len(out.block_states)  # doctest: +SKIP
    (torch.Size([1, 3, 32000]), 32)
    """

    def __init__(self, model_dir: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 loading: Callable[[dict[str, Any]], AbstractContextManager[Any]] | None = None,
                 config: Any = None, tensors: dict[str, torch.Tensor] | None = None,
                 prefetch: bool | None = None) -> None:
        """``config`` (a transformers config) and ``tensors`` (checkpoint key -> tensor) stand in for the files of
        ``model_dir`` where given: ``verify --power`` runs planted copies of a few units this way. ``prefetch``
        reads the next unit on a thread while one runs (two units in memory at the peak instead of one); by default
        on a GPU, where it hides the read behind the device's compute, and not on the CPU, where it measured no
        faster and the memory of one unit is what lets a full-size model be verified on an ordinary machine."""
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.model_dir, self.device, self.dtype = Path(model_dir), torch.device(device), dtype
        if tensors is None:
            self.files, dtypes = weight_files(self.model_dir)
        else:
            self.files, dtypes = dict(tensors), {k: t.dtype for k, t in tensors.items()}
        self.stored = dtypes  # checkpoint key -> the dtype it is stored in
        if config is None:  # trust_remote_code=False: a directory asking for its own code is refused, never prompted
            config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=False)
        with loading(config.to_dict()) if loading else nullcontext(), init_empty_weights():
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        self.model.eval()
        self.model.tie_weights()
        for module in self.model.modules():  # non-persistent buffers (rotary tables) are real: place them
            module._buffers.update({k: b.to(self.device) for k, b in module._buffers.items() if b is not None})
        self._meta = dict(self.model.named_parameters(remove_duplicate=False))
        five = importlib.util.find_spec("transformers.core_model_loading") is not None  # transformers 5's loading
        self._loader = (_Transformers5 if five else _Transformers4)(self.model, self.files, self.device, dtype)
        renamed = self._loader.rename()
        self.renamed = renamed  # checkpoint key -> the parameter it loads into (diagnosis maps tensors to modules)
        self.units = _plan_units(self.model, self.model_dir, renamed)
        self._narrow = _narrow_params(self._meta, {renamed[k]: d for k, d in dtypes.items() if k in renamed})
        self._log = _InPlaceLog({id(p): n for n, p in self.model.named_parameters()})
        self._calls: list[tuple[int, torch.Tensor | None]] = []
        self.prefetch = torch.device(device).type == "cuda" if prefetch is None else prefetch
        self._reads = ReadAhead(lambda i: read_tensors(self.files, self.units[i].keys))
        position = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        order = sorted(range(len(self.units)), key=lambda i: position[self.units[i].path])
        self._next = dict(zip(order, order[1:], strict=False))  # the unit read ahead of each: as defined, then as run
        for i, unit in enumerate(self.units):
            module = self.model.get_submodule(unit.path)
            module.register_forward_pre_hook(self._before(i), with_kwargs=True)
            module.register_forward_hook(lambda *_, unit=unit: self._free(unit))

    @property
    def block_names(self) -> list[str]:
        """The blocks as the checkpoint keys name them, e.g. ``model.layers.0``."""
        return [u.path for u in self.units if u.block is not None]

    @property
    def unit_bytes(self) -> list[int]:
        """Each unit's size once loaded (floating parameters in the compute dtype)."""
        def size(p: torch.Tensor) -> int:
            return p.numel() * (self.dtype.itemsize if p.is_floating_point() else p.element_size())
        return [sum(size(p) for p in {id(p): p for p in map(self._meta.get, u.params)}.values()) for u in self.units]

    def read(self, key: str) -> torch.Tensor | None:
        """The checkpoint's tensor ``key`` as stored (None where the directory has no such key)."""
        if key not in self.files:
            return None
        _, found = next(by_file(self.files, [key]))
        t = found[key]
        return t if torch.is_tensor(t) else t[...]

    def __call__(self, tokens: torch.Tensor) -> StreamedOutput:
        """The model's own forward on ``tokens`` [B, T], each unit loaded just before its call and freed after."""
        self._calls = []
        try:
            with torch.no_grad(), self._log:
                logits = self.model(input_ids=tokens.to(self.device), use_cache=False).logits
        finally:
            self._reads.drop()  # a read ahead of a unit that will not run now
        self._next = {a: b for (a, _), (b, _) in zip(self._calls, self._calls[1:], strict=False)}
        states = []
        for pos, (index, _) in enumerate(self._calls):  # what a block passes on is what the next unit receives
            if self.units[index].block is not None:
                following = self._calls[pos + 1][1] if pos + 1 < len(self._calls) else None
                if following is None:
                    raise ConversionError(f"cannot see what {self.units[index].path} passes on: no module with "
                                          f"parameters takes it as its first input")
                states.append(following)
        return StreamedOutput(logits.float().cpu(), states)

    def _before(self, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("hidden_states")
            self._calls.append((index, x.detach().float().cpu().clone() if torch.is_tensor(x) else None))
            self._log.recording = False
            try:
                self._load(index)
            finally:
                self._log.recording = True
        return hook

    def _load(self, index: int) -> None:
        unit, tensors = self.units[index], self._reads.take(index)
        for name in unit.params:
            if name in self._narrow:  # load as stored, upcast below
                _set_param(self.model, name, self._narrow[name])
        try:
            self._loader.load(tensors)
        except BaseException:
            self._free(unit)
            raise
        finally:
            tensors.clear()  # the parameters hold what they need: a narrow copy goes at its upcast below
        for name in unit.params:  # tied names share whichever of them the checkpoint loaded
            group = [n for n in unit.params if self._meta[n] is self._meta[name]]
            real = {id(p): p for p in map(self.model.get_parameter, group) if p.device.type != "meta"}
            if len(real) == 1:
                for n in group:
                    _set_param(self.model, n, next(iter(real.values())))
        missing = [n for n in unit.params if self.model.get_parameter(n).device.type == "meta"]
        if missing:
            self._free(unit)
            raise ConversionError(f"{self.model_dir} does not load cleanly: missing in the checkpoint: "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        for name in sorted(unit.params, key=lambda n: -self._meta[n].numel()):  # largest first: least held at once
            p, wanted = self.model.get_parameter(name), self._meta[name].dtype
            if p.dtype != wanted:  # narrow as stored: upcast, and let the narrow copy go (no other reference)
                names = [n for n in unit.params if self.model.get_parameter(n) is p]
                upcast = nn.Parameter(p.detach().to(wanted), requires_grad=p.requires_grad)
                for n in names:
                    _set_param(self.model, n, upcast)
            del p
        self._log.replay(self.model, unit.params)
        if self.prefetch and index in self._next:  # after the upcast: this unit and the next at the peak
            self._reads.start(self._next[index])

    def _free(self, unit: Unit) -> None:
        for name in unit.params:
            _set_param(self.model, name, self._meta[name])


class _InPlaceLog(TorchFunctionMode):
    """Records in-place ops on the meta parameters (no-ops there), to replay them on each load."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names, self.ops, self.recording = names, {}, True

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.recording and args and id(args[0]) in self.names and re.fullmatch(r"[a-z0-9]\w*[a-z0-9]_", name):
            self.ops.setdefault(self.names[id(args[0])], []).append((func, args[1:], kwargs))
        return func(*args, **kwargs)

    def replay(self, model: nn.Module, params: list[str]) -> None:
        with torch.no_grad():
            for name in params:
                for func, args, kwargs in self.ops.get(name, []):
                    func(model.get_parameter(name), *args, **kwargs)


def _set_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    path, _, leaf = name.rpartition(".")
    model.get_submodule(path)._parameters[leaf] = param


def _narrow_params(meta: dict[str, nn.Parameter], stored: dict[str, torch.dtype]) -> dict[str, nn.Parameter]:
    """Meta parameters in the checkpoint's dtype, for those stored narrower than computed (tied names share)."""
    out: dict[int, nn.Parameter] = {}
    for name, dtype in stored.items():
        p = meta.get(name)
        if p is not None and p.is_floating_point() and dtype.is_floating_point and dtype.itemsize < p.element_size():
            out.setdefault(id(p), nn.Parameter(torch.empty(p.shape, dtype=dtype, device="meta"), requires_grad=False))
    return {n: out[id(p)] for n, p in meta.items() if id(p) in out}


def _plan_units(model: nn.Module, folder: Path, renamed: dict[str, str]) -> list[Unit]:
    """Every unit with its checkpoint keys; the blocks are the module list holding the most parameters."""
    lists = [(sum(p.numel() for p in m.parameters()), -name.count("."), name)
             for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ConversionError(f"cannot find the blocks of {type(model).__name__}: it has no module list")
    blocks = max(lists)[2]
    paths = [(f"{blocks}.{i}", i) for i in range(len(model.get_submodule(blocks)))]
    paths += [(p, None) for p in _outer_modules(model, "", blocks)]
    by_param = dict(model.named_parameters(remove_duplicate=False))
    units = []
    for path, block in paths:
        own = [n for n in by_param if n.startswith(path + ".")]
        params = sorted({m for n in own for m, q in by_param.items() if q is by_param[n]})
        keys = [k for k, r in renamed.items() if r in params or r.startswith(path + ".")]
        units.append(Unit(path, params, keys, block))
    placed = {k for u in units for k in u.keys}
    ignore = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    unexpected = sorted(k for k in renamed if k not in placed and not any(re.search(p, k) for p in ignore))
    if unexpected:
        raise ConversionError(f"{folder} does not load cleanly: unexpected keys {', '.join(unexpected[:5])}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    return units


def _outer_modules(module: nn.Module, prefix: str, blocks: str) -> Iterator[str]:
    """Modules holding parameters outside the block list, as high up as possible without containing it."""
    if prefix and any(True for _ in module.parameters(recurse=False)):
        raise ConversionError(f"{prefix.rstrip('.')} holds parameters beside the blocks; it cannot be streamed")
    for name, child in module.named_children():
        path = prefix + name
        if blocks.startswith(path + "."):
            yield from _outer_modules(child, path + ".", blocks)
        elif path != blocks and any(True for _ in child.parameters()):
            yield path


class _Transformers5:
    """transformers 5.x: ``convert_and_load_state_dict_in_model`` with the model's conversion mapping."""

    def __init__(self, model: Any, files: dict[str, Path], device: torch.device, dtype: torch.dtype) -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping

        self.model, self.files, self.device, self.dtype = model, files, device, dtype
        self.mapping = get_model_conversion_mapping(model, None, None)

    def rename(self) -> dict[str, str]:
        """Checkpoint key -> the parameter it loads into, decided as ``convert_and_load_state_dict_in_model`` does."""
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        renamings = [m for m in self.mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in self.mapping if isinstance(m, WeightConverter)]
        meta, prefix = self.model.state_dict(), self.model.base_model_prefix
        out = {}
        for key in self.files:
            out[key], _ = rename_source_key(key, renamings, converters, prefix, meta)
            if out[key] not in meta and key in meta:
                out[key], _ = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta)
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig

        config = LoadStateDictConfig(device_map={"": str(self.device)}, dtype=self.dtype, weight_mapping=self.mapping,
                                     dtype_plan=self.model._get_dtype_plan(self.dtype))
        with patch.dict(os.environ, {"HF_DEACTIVATE_ASYNC_LOAD": "1"}):  # the tensors are read: no thread pool
            info, _ = convert_and_load_state_dict_in_model(self.model, tensors, config)
        problems = sorted(info.mismatched_keys) + list(info.conversion_errors.items())
        if problems:
            raise _unclean(self.files, problems[0])


class _Transformers4:
    """transformers 4.x: ``_get_key_renaming_mapping``, then ``_load_state_dict_into_meta_model``."""

    def __init__(self, model: Any, files: dict[str, Path], device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.files, self.device, self.dtype = model, files, device, dtype
        modules = list(model._keep_in_fp32_modules or []) if dtype == torch.float16 else []
        if dtype in (torch.float16, torch.bfloat16):  # as from_pretrained builds keep_in_fp32_regex
            modules += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
        self.keep_fp32 = re.compile("|".join(rf"((^|\.){m}($|\.))" for m in modules)) if modules else None
        self.renamed: dict[str, str] = {}

    def rename(self) -> dict[str, str]:
        """Checkpoint key -> parameter name, decided as ``_load_pretrained_model`` does (prefix included)."""
        keys, prefix = list(self.files), self.model.base_model_prefix
        has = bool(prefix) and any(k.startswith(prefix) for k in keys)
        expects = bool(prefix) and hasattr(self.model, prefix)
        self.renamed = self.model._get_key_renaming_mapping(keys, None, has and not expects, expects and not has)
        return self.renamed

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        from transformers.modeling_utils import _load_state_dict_into_meta_model

        expected = self.model.state_dict()
        found = [k for k in tensors if k in self.renamed]
        for key in found:
            target, shape = self.renamed[key], tuple(tensors[key].shape)
            if tuple(expected[target].shape) != shape:
                raise _unclean(self.files, (target, shape, tuple(expected[target].shape)))
        _load_state_dict_into_meta_model(self.model, {self.renamed[k]: tensors[k] for k in found}, "",
                                         {self.renamed[k]: k for k in found}, device_map={"": str(self.device)},
                                         keep_in_fp32_regex=self.keep_fp32)


def _unclean(files: dict[str, Any], problem: tuple[Any, ...]) -> ConversionError:
    folder = next((f.parent for f in files.values() if isinstance(f, Path)), "the planted tensors")
    if len(problem) == 3:  # (name, shape in the checkpoint, shape the model expects)
        return ConversionError(f"{folder} does not load cleanly: {problem[0]} has shape {tuple(problem[1])} in the "
                               f"checkpoint; the model expects {tuple(problem[2])}")
    return ConversionError(f"{folder} does not load cleanly: {problem[0]}: {problem[1]}")
