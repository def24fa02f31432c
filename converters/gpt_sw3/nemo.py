"""NeMo's containers: the DictConfig cfg loaded data-only, the ``.nemo`` tar, the sentencepiece piece count.

Split from source.py to keep each file readable in one sitting; everything here is about bytes on disk.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import Any

import torch
import yaml

from harness.errors import ConversionError, brief
from harness.io.sniff import container, describe_file, wide_text
from harness.io.tensor_store import TensorStore, load_pickle, state_dict_problem

__all__ = ["count_pieces", "dictconfig_classes", "load_nemo_pickle", "parse_yaml", "plain", "read_ckpt", "read_nemo",
           "sentencepiece_model", "state_store", "write_ckpt", "write_nemo"]


def dictconfig_classes() -> list[Any]:
    """Exactly the globals a pickled NeMo DictConfig refers to: the allow-list for ``weights_only`` loading."""
    import collections
    import typing

    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.dictconfig import DictConfig
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode

    return [DictConfig, ContainerMetadata, typing.Any, dict, collections.defaultdict, AnyNode, Metadata, ListConfig,
            list, int]


def load_nemo_pickle(path: Path) -> Any:
    """``torch.load`` data only, admitting exactly the classes of a NeMo DictConfig (oracle README fact 15)."""
    try:
        return load_pickle(path)
    except ConversionError as err:
        if "GLOBAL omegaconf." not in str(err):
            raise
    try:
        allowed = dictconfig_classes()
    except ImportError:
        raise ConversionError(f"{path} stores its cfg as an omegaconf DictConfig, and omegaconf is not installed; "
                              "omegaconf is a dependency of convparity: pip install 'omegaconf>=2.2' and run again"
                              ) from None
    with torch.serialization.safe_globals(allowed):
        return load_pickle(path)


def read_nemo(path: Path) -> tuple[dict[str, Any], TensorStore, tuple[str, bytes] | None]:
    """The cfg, the lazy state dict and (name, bytes) of the tokenizer model of a ``.nemo`` archive."""
    if container(path) not in ("tar", "gzip"):  # NeMo < 1.7 gzipped its archives
        raise ConversionError(f"{path} is not a .nemo archive: expected a tar of model_config.yaml and "
                              f"model_weights.ckpt, found {describe_file(path)}")
    # torch.load memory-maps only real files: unpack the weights next to nothing else, removed with the store.
    folder = Path(tempfile.mkdtemp(prefix="convparity-nemo-"))
    try:
        cfg, tokenizer = _unpack(path, folder)
        store = state_store(load_nemo_pickle(folder / "model_weights.ckpt"), path)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(store, shutil.rmtree, folder, ignore_errors=True)
    return cfg, store, tokenizer


def _unpack(path: Path, folder: Path) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """The cfg and tokenizer of a ``.nemo``; its weights are copied to ``folder/model_weights.ckpt``."""
    try:
        with tarfile.open(path, "r:*") as tar:
            files = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            if "model_weights.ckpt" not in files and any(n.endswith("/model_weights.ckpt") for n in files):
                raise ConversionError(f"{path} holds tensor-parallel shards (mp_rank_*/model_weights.ckpt); merge "
                                      "them to one rank first (NeMo megatron_change_num_partitions.py)")
            missing = [n for n in ("model_config.yaml", "model_weights.ckpt") if n not in files]
            if missing:
                raise ConversionError(f"{path} has no {' or '.join(missing)}; found {sorted(files)[:6]}")
            cfg = parse_yaml(tar.extractfile(files["model_config.yaml"]).read(), path)
            tok = cfg.get("tokenizer")
            name = str((tok.get("model") if isinstance(tok, dict) else None) or "").removeprefix("nemo:")
            tokenizer = (name, tar.extractfile(files[name]).read()) if name in files else None
            with tar.extractfile(files["model_weights.ckpt"]) as src, open(folder / "model_weights.ckpt", "wb") as dst:
                shutil.copyfileobj(src, dst)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ConversionError(f"cannot read {path} as a .nemo archive: it is {describe_file(path)}, but "
                              f"{brief(err)}; is it truncated or corrupt?") from None
    except OSError as err:
        raise ConversionError(f"cannot read {path} as a .nemo archive: {brief(err)}") from None
    return cfg, tokenizer


def read_ckpt(path: Path) -> tuple[dict[str, Any], TensorStore]:
    """The cfg (a plain dict) and the lazy state dict of a Lightning ``.ckpt`` (oracle README fact 1)."""
    ckpt = load_nemo_pickle(path)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "cfg" not in hparams or "state_dict" not in ckpt:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(f"{path} is not a NeMo checkpoint: expected 'state_dict' and 'hyper_parameters': "
                              f"{{'cfg': ...}}, found {found}; pass a NeMo GPT .ckpt or .nemo")
    return plain(hparams["cfg"]), state_store(ckpt["state_dict"], path)


def state_store(state: Any, path: Path) -> TensorStore:
    """A NeMo state dict as a TensorStore; non-tensor ``_extra_state`` entries hold no weights and are left out."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ConversionError(f"{path}: the state dict is not a dict of tensors by name; "
                              f"{state_dict_problem(state) or 'found ' + type(state).__name__}")
    # megatron_amp_O2 wraps the model in Float16Module: model.module.language_model.* (megatron_gpt_model.py L111)
    state = {k.replace("model.module.", "model.", 1): v for k, v in state.items()
             if not (k.endswith("._extra_state") and not isinstance(v, torch.Tensor))}  # None/bytes: no weights
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConversionError(f"{path}: state dict entries {bad[:5]} are not tensors; expected only tensors")
    problem = state_dict_problem(state)
    if problem is not None:
        raise ConversionError(f"{path}: the state dict is not a dict of tensors by name; {problem}")
    return TensorStore.from_dict(state, origin=str(path))


def write_ckpt(path: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor], dictconfig: bool) -> None:
    """A Lightning ``.ckpt`` as NeMo saves it; ``dictconfig`` stores the cfg as NeMo does (modelPT.py L93, L118)."""
    if dictconfig:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
        OmegaConf.set_struct(cfg, True)
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.9.0", "hparams_name": "kwargs",
                "hyper_parameters": {"cfg": cfg}, "state_dict": state}, path)


def write_nemo(path: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor], vocab_size: int) -> None:
    """A ``.nemo`` tar (uncompressed, as NeMo >= 1.7 writes it) with a ``vocab_size``-piece tokenizer model."""
    tokenizer = str(cfg.get("tokenizer", {}).get("model") or "nemo:tokenizer.model").removeprefix("nemo:")
    with tarfile.open(path, "w:") as tar:
        _add(tar, "model_config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
        _add(tar, "model_weights.ckpt", _saved(state))
        _add(tar, tokenizer, sentencepiece_model(vocab_size))


def count_pieces(data: bytes) -> int | None:
    """``ModelProto.pieces`` count (field 1) of a sentencepiece model, by walking the protobuf wire format.

    This is what ``SentencePieceProcessor.GetPieceSize()`` returns, without needing sentencepiece; None when
    ``data`` is not a protobuf message (a BPE vocab file, say).
    """
    count, i = 0, 0
    try:
        while i < len(data):
            key, i = _varint(data, i)
            wire = key & 7
            if wire == 0:
                i = _varint(data, i)[1]
            elif wire == 2:
                size, i = _varint(data, i)
                i += size
                count += key >> 3 == 1
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                return None
    except IndexError:
        return None
    return count if i == len(data) and count else None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
        if byte < 0x80:
            return value, i


def sentencepiece_model(n: int) -> bytes:
    """A minimal sentencepiece ``ModelProto`` of ``n`` pieces: (piece=1, score=2, type=3) per entry of field 1."""
    kinds = {0: 2, 1: 3, 2: 3}  # <unk> UNKNOWN, <s> and </s> CONTROL, the rest NORMAL (1)
    out = b""
    for i in range(n):
        text = ("<unk>", "<s>", "</s>")[i].encode() if i < 3 else f"\u2581t{i}".encode()
        body = b"\x0a" + _encode_varint(len(text)) + text + b"\x15\x00\x00\x00\x00\x18" + bytes([kinds.get(i, 1)])
        out += b"\x0a" + _encode_varint(len(body)) + body
    return out


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def plain(cfg: Any) -> dict[str, Any]:
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # omegaconf's own errors: an interpolation that does not resolve, ...
            raise ConversionError(f"the NeMo cfg cannot be resolved to plain values: {brief(err)}") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"the NeMo cfg is a {type(cfg).__name__}, expected a mapping of model fields")
    return cfg


def parse_yaml(text: bytes, where: Path) -> dict[str, Any]:
    wide, decoded = wide_text(text), None
    try:
        decoded = text.decode("utf-8") if wide is None else None  # as OmegaConf.load reads it
    except UnicodeDecodeError as err:
        wide = f"byte {text[err.start]:#04x} at offset {err.start}"
    if decoded is None:
        raise ConversionError(f"{where}: model config is not UTF-8 text: expected YAML in UTF-8, found {wide}; "
                              f"save it as UTF-8")
    try:
        cfg = yaml.safe_load(decoded)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConversionError(f"{where}: model config is not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and "hidden_size" not in cfg:
        cfg = cfg["model"]  # a whole training config: the model is its `model:` section
    if not isinstance(cfg, dict):
        raise ConversionError(f"{where}: model config holds a {type(cfg).__name__}, expected a mapping of model "
                              f"fields")
    return plain(cfg)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"./{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _saved(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()

