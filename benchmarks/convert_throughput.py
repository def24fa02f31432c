"""Conversion throughput and peak memory on every write path, each against ``cp`` and ``cat`` of the same bytes.

Run on purpose (it writes several GB per path); prints a table, asserts nothing:

    python benchmarks/convert_throughput.py --gb 3.4 --workdir /tmp/convparity-bench
    python benchmarks/convert_throughput.py --paths experts,fused --runs 2 --repo /path/to/older/checkout --repo .

Paths: ``experts`` (Mixtral, 8 ``consolidated.NN.pt``, per-expert keys: every byte but q/k is a rename),
``fused`` (the Hub's fused layout: w2's row blocks transposed), ``safetensors`` (one
``consolidated.safetensors``), ``cast`` (``experts`` converted with ``--dtype float16``), ``gemma`` (one
``model.ckpt`` pickle with its complex ``freqs_cis``, fused qkv split by rows), ``llama-mp8`` (8 model-parallel
rank files merged), ``rwkv`` (one bf16 ``.pth``, every tensor renamed) and ``mistral`` (a Mistral-7B-v0.3-shaped
dense model in 3 ``consolidated-NNNNN-of-00003.safetensors`` shards: renames and q/k rotary rows). Each measurement
is the best of ``--runs`` runs, alternating ``cp -r``, ``cat`` into one file, and ``convparity convert`` of each
``--repo`` (several checkouts: a before/after table from one run), each followed by ``sync`` (warm page cache for all).
``convparity convert`` runs in a child process whose memory is sampled every 20 ms: peak RSS includes
file-backed pages of the memory-mapped source, peak anon is what the process allocated.

Every timed command waits ``--settle`` seconds first. On a virtual machine that hands freed memory back to its
host (virtio-balloon free page reporting, which waits about 2 s), the pages that the previous run's output
freed are cheap to reuse only for a moment: writing 3.4 GB of new page cache took 1.1-1.5 s straight after a
delete and 3.8-5.2 s after a pause, on the same host. Without the wait, whichever command starts soonest after a
delete gets the discount (a ``cp`` straight after ``rm`` does; a conversion that first starts Python may not). The
wait gives every command the state a fresh process meets; ``--settle 0`` measures back to back.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from memory_sampler import sample_memory

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("experts", "fused", "safetensors", "cast", "gemma", "llama-mp8", "rwkv", "mistral")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="approximate checkpoint size in GB (default 1)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=2, help="runs per measurement, best kept (default 2)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/convparity-bench"))
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait before each timed command, so each starts from the same memory state "
                             "(default %(default)s; see above)")
    parser.add_argument("--repo", type=Path, action="append",
                        help="checkout whose convparity is measured (default: this one); repeat to compare checkouts "
                             "in the same run, e.g. an older commit and this one")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    repos = [r.resolve() for r in args.repo or [ROOT]]
    print(f"{'path':<12} {'repo':<16} {'GB':>5} {'cp s':>6} {'cat s':>6} {'convert s':>9} {'x cp':>5} {'x cat':>5} "
          f"{'peak RSS GiB':>12} {'peak anon GiB':>13}", flush=True)
    for path in args.paths.split(","):
        build = _BUILDERS.get(path)
        if build is None:
            sys.exit(f"unknown path {path!r}; choose from {', '.join(PATHS)}")
        workdir = args.workdir / path
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        try:
            made = build(workdir / "source", args.gb)
            if made is None:
                print(f"{path:<12} skipped: the family is not installed", flush=True)
                continue
            family, options = made
            _measure(path, family, options, workdir, args.runs, repos, args.settle)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(path: str, family: str, options: list[str], workdir: Path, runs: int, repos: list[Path],
             settle: float) -> None:
    source = workdir / "source"
    size = sum(f.stat().st_size for f in source.iterdir())
    files = sorted(str(f) for f in source.iterdir())
    cp: list[float] = []
    cat: list[float] = []
    convert: dict[Path, list[float]] = {repo: [] for repo in repos}
    peaks = {repo: {"VmRSS": 0, "RssAnon": 0} for repo in repos}
    for _ in range(runs):
        time.sleep(settle)
        cp.append(_timed(["cp", "-r", str(source), str(workdir / "copy")]))
        shutil.rmtree(workdir / "copy")
        time.sleep(settle)
        cat.append(_timed(["sh", "-c", 'cat "$@" > "$0"', str(workdir / "cat.bin"), *files]))
        (workdir / "cat.bin").unlink()
        for repo in repos:
            time.sleep(settle)
            seconds, run_peaks = _convert(path, repo, [family, str(source), str(workdir / "hf"), *options])
            convert[repo].append(seconds)
            peaks[repo] = {k: max(v, run_peaks[k]) for k, v in peaks[repo].items()}
            shutil.rmtree(workdir / "hf")
    best_cp, best_cat = min(cp), min(cat)
    for repo in repos:
        best, peak = min(convert[repo]), peaks[repo]
        print(f"{path:<12} {repo.name[-16:]:<16} {size / 1e9:5.2f} {best_cp:6.2f} {best_cat:6.2f} {best:9.2f} "
              f"{best_cp / best:5.2f} {best_cat / best:5.2f} {peak['VmRSS'] / 2**20:12.2f} "
              f"{peak['RssAnon'] / 2**20:13.2f}", flush=True)


def _convert(path: str, repo: Path, args: list[str]) -> tuple[float, dict[str, int]]:
    """Seconds of one ``convparity convert`` (in ``repo``, then ``sync``) and its peak memory."""
    cmd = [sys.executable, "-m", "harness.cli", "convert", *args, "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    peaks = sample_memory(proc)
    if proc.returncode != 0:
        sys.exit(f"{path}: conversion in {repo} failed with exit status {proc.returncode}")
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start, peaks


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start


def _mixtral(layout: str, container: str) -> Callable[[Path, float], tuple[str, list[str]]]:
    def build(source: Path, gb: float) -> tuple[str, list[str]]:
        from converters.mixtral.source import shapes, write

        dim, hidden, experts, vocab = 1024, 3584, 8, 32000
        per_layer = 2 * (3 * experts * hidden * dim + 3 * dim * dim)  # bf16 experts + q, o, and k/v at 8:2 GQA
        layers = max(1, round((gb * 1e9 - 2 * 2 * vocab * dim) / per_layer))
        config = dict(dim=dim, n_layers=layers, head_dim=128, hidden_dim=hidden, n_heads=8, n_kv_heads=2,
                      norm_eps=1e-5, vocab_size=vocab, rope_theta=1e6,
                      moe=dict(num_experts=experts, num_experts_per_tok=2))
        write(_lazy(config, shapes(config, layout), layout), source, container=container)
        return "mixtral", []

    return build


def _cast(source: Path, gb: float) -> tuple[str, list[str]]:
    family, options = _mixtral("experts", "pt-shards")(source, gb)
    return family, [*options, "--dtype", "float16"]


def _gemma(source: Path, gb: float) -> tuple[str, list[str]]:
    from converters.gemma.source import TINY, shapes, write

    dim = 2048
    per_layer = 2 * (dim * 3 * dim + dim * dim + 3 * dim * 8192)
    layers = max(1, round((gb * 1e9 - 2 * 256000 * dim) / per_layer))
    config = {**TINY, "hidden_size": dim, "intermediate_size": 8192, "num_hidden_layers": layers,
              "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 256000}
    # freqs_cis: the complex rotary buffer released checkpoints carry (dropped by the conversion)
    write(_lazy(config, shapes(config), "default", {"freqs_cis": torch.complex64}), source, container="ckpt")
    return "gemma", []


def _llama_mp8(source: Path, gb: float) -> tuple[str, list[str]] | None:
    try:
        from converters.llama.source import shapes, write  # noqa: F401 - present once the family exists
    except ImportError:
        return None
    from converters.llama import source as llama

    dim, hidden, vocab = 4096, 11008, 32000
    per_layer = 2 * (4 * dim * dim + 3 * dim * hidden)
    layers = max(1, round((gb * 1e9 - 2 * 2 * vocab * dim) / per_layer))
    config = {"dim": dim, "n_layers": layers, "n_heads": 32, "multiple_of": 256, "norm_eps": 1e-5,
              "vocab_size": vocab}
    llama.write(_lazy(config, llama.shapes(config), "default"), source, container="mp8")
    return "llama", []


def _rwkv(source: Path, gb: float) -> tuple[str, list[str]]:
    from converters.rwkv import source as rwkv

    dim, vocab = 2048, 50277
    per_layer = 2 * sum(math.prod(s) for k, s in rwkv.shapes({**rwkv.SIZES["1b5"], "n_layer": 1}).items()
                        if k.startswith("blocks."))
    layers = max(1, round((gb * 1e9 - 2 * 2 * vocab * dim) / per_layer))
    config = {**rwkv.SIZES["1b5"], "n_layer": layers}
    rwkv.write(_lazy(config, rwkv.shapes(config), "default"), source)
    return "rwkv", []


def _mistral(source: Path, gb: float) -> tuple[str, list[str]]:
    from converters.mistral import source as mistral

    size = mistral.SIZES["7b-v0.3"]
    per_layer = 2 * sum(math.prod(s) for k, s in mistral.shapes({**size, "n_layers": 1}).items()
                        if k.startswith("layers."))
    layers = max(1, round((gb * 1e9 - 2 * 2 * size["vocab_size"] * size["dim"]) / per_layer))
    config = {**size, "n_layers": layers}
    mistral.write(_lazy(config, mistral.shapes(config), "default"), source, container="sharded")
    return "mistral", []


def _lazy(config: dict[str, Any], specs: dict[str, tuple[int, ...]], layout: str,
          dtypes: dict[str, torch.dtype] | None = None) -> Any:
    """Random tensors (bf16 unless ``dtypes`` says otherwise) made on demand by ``write``, so building the source
    needs no more than one shard."""
    from harness.io.tensor_store import TensorStore
    from harness.mapping.conversion import SourceCheckpoint

    kinds = {k: (dtypes or {}).get(k, torch.bfloat16) for k in specs}

    def make(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype).normal_(std=0.02)

    return SourceCheckpoint(config, TensorStore({k: (lambda k=k, s=s: make(s, kinds[k])) for k, s in specs.items()},
                                                {k: (s, kinds[k]) for k, s in specs.items()}), layout)


_BUILDERS: dict[str, Callable[[Path, float], Any]] = {
    "experts": _mixtral("experts", "pt-shards"), "fused": _mixtral("fused", "pt-shards"),
    "safetensors": _mixtral("experts", "safetensors"), "cast": _cast, "gemma": _gemma, "llama-mp8": _llama_mp8,
    "rwkv": _rwkv, "mistral": _mistral,
}


if __name__ == "__main__":
    main()
