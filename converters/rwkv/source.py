"""BlinkDL's RWKV-4 release format: one flat ``.pth`` state dict, no config file, sizes only in tensor shapes.

Mirrors what RWKV-LM ``RWKV-v4neo/src/model.py`` (@ 524481d5) ``state_dict()`` saves and what the ``rwkv``
pip runtime 0.8.32 (``rwkv/model.py`` L642-679) reads: the hyper-parameters are recovered from shapes, and
the model version from which keys exist. Storage is fp32, bf16 or fp16 (RWKV-LM trains with bf16).

Reading needs no torch: a release file (a torch zip archive) is indexed as it lies, so its tensors, which the
conversion only renames, go file to file on the byte path. torch is imported to draw or write a tiny model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConversionError
from harness.family.cases import Case
from harness.io.raw_dtypes import raw_dtype
from harness.io.tensor_store import TensorStore, load_pickle, open_torch, state_dict_problem
from harness.mapping.conversion import SourceCheckpoint

if TYPE_CHECKING:
    import torch

__all__ = ["CASES", "HUB_FILES", "OPTIONS", "RESCALE_EVERY", "SIZES", "detect_version", "read", "shapes", "tiny",
           "write"]

# What `convert`/`verify` fetch for a Hub id as SOURCE: one BlinkDL .pth; sizes come from shapes.
HUB_FILES = ("*.pth",)

STORAGE = ("float32", "bfloat16", "float16")  # what ``tiny`` stores its weights as
# The runtime rescales exactly when it computes in fp16 (pkg L634): 6 for fp16-stored files, else 0 (by the
# storage dtype's name). Why this choice and the figures behind it: converters/rwkv/convert.py.
RESCALE_EVERY = {"float16": 6}
CTX_LEN = 1024  # RWKV-LM train.py default; not in the file (releases put it in the name, "...-ctx4096.pth")

# Released RWKV-4 "Pile" sizes (the old transformers converter's NUM_HIDDEN_LAYERS_MAPPING/HIDEN_SIZE_MAPPING,
# convert_rwkv_checkpoint_to_hf.py @ 0851a87d, and the RWKV paper, Table 1): vocab 50277 (GPT-NeoX-20B
# tokenizer), dim_ffn = 4 * n_embd, dim_att = n_embd.
SIZES: dict[str, dict[str, Any]] = {
    name: dict(n_layer=layers, n_embd=C, dim_att=C, dim_ffn=4 * C, vocab_size=50277)
    for name, layers, C in (("169m", 12, 768), ("430m", 24, 1024), ("1b5", 24, 2048), ("3b", 32, 2560),
                            ("7b", 32, 4096), ("14b", 40, 5120))
}

TINY: dict[str, Any] = dict(n_layer=2, n_embd=32, dim_att=32, dim_ffn=128, vocab_size=96)

CASES: dict[str, Case] = {
    "base": Case("2 layers, fp32 storage, dim_ffn = 4 * n_embd", {}),
    "ffn-bf16": Case("dim_ffn 80 != 4 * 48, odd vocab, bf16 storage (as RWKV-LM saves)",
                     dict(n_embd=48, dim_att=48, dim_ffn=80, vocab_size=101, n_layer=3, storage="bfloat16")),
    "deep-fp16": Case("13 layers: two rescale_every=6 halvings; fp16 storage",
                      dict(n_layer=13, n_embd=16, dim_att=16, dim_ffn=48, vocab_size=64, storage="float16")),
}

# Extra `convparity convert rwkv` flags, passed to `read`.
OPTIONS: dict[str, dict[str, Any]] = {
    "--rescale-every": dict(type=int, default=None, metavar="N",
                            help="halve hidden states every N blocks at inference (default: 6 for an fp16 file, "
                                 "else 0 = never, exact fp32/bf16 parity); pass 6 to run a deep model in fp16"),
    "--ctx-len": dict(type=int, default=CTX_LEN, metavar="N",
                      help="context length, as in the release file name (ctx4096); sizes only the CUDA kernel"),
}


def shapes(config: dict[str, Any], layout: str = "default") -> dict[str, tuple[int, ...]]:
    """Every tensor, in BlinkDL's key order (RWKV-LM model.py ``Block``/``RWKV_TimeMix``/``RWKV_ChannelMix``)."""
    C, A, F, V = config["n_embd"], config["dim_att"], config["dim_ffn"], config["vocab_size"]
    out: dict[str, tuple[int, ...]] = {"emb.weight": (V, C)}
    for i in range(config["n_layer"]):
        p = f"blocks.{i}."
        out |= {p + f"{ln}.{w}": (C,) for ln in ("ln1", "ln2", "ln0")[: 3 if i == 0 else 2] for w in ("weight", "bias")}
        out |= {p + "att.time_decay": (A,), p + "att.time_first": (A,)}
        out |= {p + f"att.time_mix_{c}": (1, 1, C) for c in "kvr"}
        out |= {p + "att.key.weight": (A, C), p + "att.value.weight": (A, C), p + "att.receptance.weight": (A, C),
                p + "att.output.weight": (C, A)}
        out |= {p + "ffn.time_mix_k": (1, 1, C), p + "ffn.time_mix_r": (1, 1, C), p + "ffn.key.weight": (F, C),
                p + "ffn.receptance.weight": (C, C), p + "ffn.value.weight": (C, F)}
    return out | {"ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}


def tiny(seed: int = 0, layout: str = "default", storage: str = "float32", **overrides: Any) -> SourceCheckpoint:
    """A random RWKV-4 with BlinkDL-like time parameters, stored in ``storage`` (float32, bfloat16, float16)."""
    import torch

    from harness.io.tiny import random_weights

    if storage not in STORAGE:
        raise ConversionError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGE)}")
    config = {**TINY, **overrides}
    weights = random_weights(shapes(config), seed, norms=["*.ln*.weight"], embeddings=["emb.weight"],
                             gains={"head.weight": 2.0})
    L, C, A = config["n_layer"], config["n_embd"], config["dim_att"]
    for i in range(L):
        weights |= _time_params(f"blocks.{i}.", i / max(L - 1, 1), 1 - i / L, C, A, seed + 1)
    tensors = {k: t.to(getattr(torch, storage)) for k, t in weights.items()}
    rescale = config.pop("rescale_every", None)
    config |= {"rescale_every": _rescale_every(rescale, storage), "ctx_len": CTX_LEN}
    return SourceCheckpoint(config, TensorStore.from_dict(tensors))


def read(path: Path, config: Path | None = None, rescale_every: int | None = None,
         ctx_len: int = CTX_LEN) -> SourceCheckpoint:
    """Read a ``.pth`` file (or the directory holding exactly one); sizes from shapes, RWKV-4 only."""
    if config is not None:
        raise ConversionError(f"rwkv .pth files have no config file, every size is read from tensor shapes; "
                              f"drop --config {config}")
    file = _pth_file(path)
    tensors = _open(file)
    version = detect_version({k: tensors.raw_meta(k)[0] for k in tensors})
    if version != "4":
        raise _not_v4(file, version)
    sizes = _sizes_from_shapes(tensors, file)
    storage = raw_dtype(tensors.raw_meta("emb.weight")[1])
    rescale = _rescale_every(rescale_every, storage.name if storage is not None else "")
    notes = [] if rescale or rescale_every is not None else [
        "rescale_every=0 (exact fp32/bf16 parity with the rwkv runtime); to run this model in float16, convert "
        "with --rescale-every 6, or deep models overflow"]
    return SourceCheckpoint(sizes | {"rescale_every": rescale, "ctx_len": ctx_len}, tensors, path=file,
                            notes=notes)


def _open(file: Path) -> TensorStore:
    """The file's tensors, indexed in place where it is a flat state dict of tensors. Anything else is unpickled
    (data only) to say what it is: another RWKV version (the runtime's own converted files carry non-tensor
    entries), something that is not a state dict, or one with entries that are not tensors."""
    try:
        return open_torch(file)
    except ConversionError as declined:
        import torch

        obj = load_pickle(file)
        if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
            found = "keys that are not strings" if obj and isinstance(obj, dict) else type(obj).__name__
            raise ConversionError(f"{file} is not a state dict (found {found}); expected BlinkDL's "
                                  f"RWKV-4 .pth, a dict of tensors such as emb.weight, "
                                  f"blocks.0.att.key.weight") from None
        version = detect_version({k: tuple(v.shape) if isinstance(v, torch.Tensor) else v for k, v in obj.items()})
        if version != "4":
            raise _not_v4(file, version) from None
        not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            raise ConversionError(f"{file} holds non-tensor entries {not_tensors[:5]}; expected a flat state "
                                  f"dict") from None
        problem = state_dict_problem(obj)
        if problem is not None:
            raise ConversionError(f"{file} is not a flat state dict of tensors: {problem}") from None
        raise declined from None


def _not_v4(file: Path, version: str) -> ConversionError:
    return ConversionError(f"{file} is an RWKV-{version} checkpoint; this converter handles RWKV-4 only "
                           f"(transformers' RwkvForCausalLM); convert the original RWKV-4 .pth release")


def _rescale_every(chosen: int | None, storage: str) -> int:
    return RESCALE_EVERY.get(storage, 0) if chosen is None else chosen


def write(checkpoint: SourceCheckpoint, path: Path, container: str = "default") -> None:
    """``torch.save`` the flat state dict into ``path/RWKV-4-Pile-<size>.pth`` (tensors as stored)."""
    import torch

    if container != "default":
        raise ConversionError(f"unknown container {container!r}; rwkv has one: a flat .pth (choose 'default')")
    path.mkdir(parents=True, exist_ok=True)
    c = checkpoint.config
    name = f"RWKV-4-Pile-L{c['n_layer']}-D{c['n_embd']}-ctx{c.get('ctx_len', CTX_LEN)}.pth"
    torch.save({k: checkpoint.tensors[k].contiguous() for k in checkpoint.tensors}, path / name)


def detect_version(entries: Mapping[str, Any]) -> str:
    """The RWKV version that the keys reveal, as the runtime decides it (pkg L663-679), plus v7 and converted files.

    ``entries``: each tensor's shape (a tuple), any other entry as it is. "converted" marks a file the runtime
    itself rewrote (``convert_and_save_and_exit``, pkg L647-656).

    >>> detect_version({"blocks.0.att.time_decay": (4, 8)})
    '5.2 (it has blocks.0.att.time_decay)'
    """
    keys = list(entries)
    if "_strategy" in entries or "_version" in entries:
        return f"converted (by the rwkv runtime, strategy {entries.get('_strategy')!r}; not a release file)"
    found = {
        "7": [k for k in keys if k.endswith(("att.r_k", "att.w0", "att.x_r"))],  # pkg RWKV_x070 keys
        "6": [k for k in keys if "time_maa" in k],
        "5.2": [k for k in keys if k.endswith("att.time_decay") and isinstance(shape := entries[k], tuple)
                and len(shape) > 1 and shape[1] > 1],
        "5.1": [k for k in keys if "gate.weight" in k],
        "5": [k for k in keys if "ln_x" in k or "time_faaaa" in k],
    }
    for version, hits in found.items():
        if hits:
            return f"{version} (it has {hits[0]})"
    return "4"


def _time_params(p: str, ratio_0_to_1: float, ratio_1_to_0: float, C: int, A: int,
                 seed: int) -> dict[str, torch.Tensor]:
    """RWKV-LM ``RWKV_TimeMix.__init__`` (model.py L463-489) init shapes, with noise so that nothing is symmetric.

    Upstream uses powers (``h ** (0.7 + 1.3 r)``, ``x ** r``); these are replaced by blends of ``h``, ``h^2`` and
    ``sqrt(x)`` of the same range and monotonicity, because vectorised ``pow`` differs in its last bits between
    CPUs and tiny sources must be identical on every host (harness.io.tiny).
    """
    import torch

    from harness.io.tiny import random_normal

    h = torch.arange(A, dtype=torch.float64) / max(A - 1, 1)
    decay = -5 + 8 * (h * (1 - ratio_0_to_1) + h * h * ratio_0_to_1)  # -5 .. 3 across channels: raw w, before -exp
    zigzag = 0.5 * (((torch.arange(A, dtype=torch.float64) + 1) % 3) - 1)
    x = (torch.arange(C, dtype=torch.float64) / C)[None, None, :]  # (1, 1, C)
    x_r = x * ratio_1_to_0 + x.sqrt() * (1 - ratio_1_to_0)  # stands for x ** ratio_1_to_0

    def noise(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return random_normal(shape, seed, p + name)

    def mix(name: str, base: torch.Tensor) -> torch.Tensor:
        return (base + 0.05 * noise(name, tuple(base.shape))).clamp(0.01, 0.99)

    params = {
        "att.time_decay": decay + 0.3 * noise("att.time_decay", (A,)),
        "att.time_first": _LOG_0_3 + zigzag + 0.1 * noise("att.time_first", (A,)),
        "att.time_mix_k": mix("att.time_mix_k", x_r), "att.time_mix_v": mix("att.time_mix_v", x_r + 0.3 * ratio_0_to_1),
        "att.time_mix_r": mix("att.time_mix_r", 0.5 * (x_r + x)),
        "ffn.time_mix_k": mix("ffn.time_mix_k", x_r), "ffn.time_mix_r": mix("ffn.time_mix_r", x_r),
    }
    return {p + k: v.to(torch.float32) for k, v in params.items()}


_LOG_0_3 = -1.2039728043259361  # math.log(0.3), written out so that no libm is involved


def _pth_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConversionError(f"source {path} does not exist; expected an RWKV-4 .pth file or its directory")
    found = sorted(path.glob("*.pth"))
    if len(found) != 1:
        raise ConversionError(f"expected exactly one .pth file in {path}, found {len(found)}"
                              f"{' (' + ', '.join(f.name for f in found) + ')' if found else ''}; pass the file")
    return found[0]


def _sizes_from_shapes(tensors: TensorStore, file: Path) -> dict[str, int]:
    """n_layer, n_embd, dim_att, dim_ffn, vocab_size from shapes, as the runtime does (pkg L658-666)."""
    needed = ("emb.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight")
    missing = [k for k in needed if k not in tensors or len(tensors.raw_meta(k)[0]) != 2]
    if missing:
        raise ConversionError(f"{file} has no 2-D {', '.join(missing)}; expected BlinkDL's RWKV-4 state dict "
                              f"(keys emb.weight, blocks.N.att.*, blocks.N.ffn.*, ln_out.*, head.weight)")
    blocks = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    if len(blocks) != max(blocks) + 1:  # the layer count is the largest block number + 1: a gap is a missing block
        gap = min(set(range(len(blocks) + 1)) - blocks)
        raise ConversionError(f"{file} has blocks numbered up to {max(blocks)} but no blocks.{gap}.* "
                              f"({max(blocks) + 1 - len(blocks)} missing); expected blocks.0 to blocks.{max(blocks)}")
    (V, C), (A, _), (F, _) = (tensors.raw_meta(k)[0] for k in needed)
    return dict(n_layer=1 + max(blocks), n_embd=C, dim_att=A, dim_ffn=F, vocab_size=V)
