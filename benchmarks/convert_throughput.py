"""Conversion throughput and peak memory on a large Mixtral-shaped checkpoint, against a plain ``cp``.

Run on purpose (it writes GBs to disk); prints figures, asserts nothing:

    python benchmarks/convert_throughput.py --gb 3.4 --workdir /tmp/convparity-bench

The source is bf16, Hub layout (fused experts) in 8 ``consolidated.NN.pt`` shards. ``convparity convert`` runs
in a child process whose resident memory is sampled every 20 ms: ``peak RSS`` includes file-backed pages of
the memory-mapped source (reclaimable page cache), ``peak anon`` is the private memory the process allocated.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from converters.mixtral.source import write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="approximate checkpoint size in GB (default 1)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/convparity-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    source = args.workdir / "source"
    config = _config(args.gb)
    print(f"building a {args.gb:g} GB bf16 checkpoint: {config}", flush=True)
    write(_lazy_checkpoint(config), source, container="pt-shards")
    size = sum(f.stat().st_size for f in source.iterdir())

    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(args.workdir / "copy")], check=True)
    cp_s = time.perf_counter() - start
    shutil.rmtree(args.workdir / "copy")

    cmd = [sys.executable, "-m", "harness.cli", "convert", "mixtral", str(source), str(args.workdir / "hf"), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peaks = _sample_memory(proc)
    if proc.wait() != 0:
        sys.exit(f"conversion failed with exit status {proc.returncode}")
    convert_s = time.perf_counter() - start

    print(f"checkpoint   {size / 1e9:.2f} GB in 8 files")
    print(f"cp           {cp_s:.1f} s ({size / 1e6 / cp_s:.0f} MB/s)")
    print(f"convert      {convert_s:.1f} s ({size / 1e6 / convert_s:.0f} MB/s), {cp_s / convert_s:.2f}x cp speed")
    print(f"peak RSS     {peaks['VmRSS'] / 2**20:.2f} GiB ({peaks['VmRSS'] * 2**10 / size:.2f}x the checkpoint)")
    print(f"peak anon    {peaks['RssAnon'] / 2**20:.2f} GiB")
    if not args.keep:
        shutil.rmtree(args.workdir)


def _config(gb: float) -> dict:
    dim, hidden, experts, vocab = 1024, 3584, 8, 32000
    per_layer = 2 * (3 * experts * hidden * dim + 3 * dim * dim)  # bf16 experts + q, o, and k/v at 8:2 GQA
    layers = max(1, round((gb * 1e9 - 2 * 2 * vocab * dim) / per_layer))
    return dict(dim=dim, n_layers=layers, head_dim=128, hidden_dim=hidden, n_heads=8, n_kv_heads=2, norm_eps=1e-5,
                vocab_size=vocab, rope_theta=1e6, moe=dict(num_experts=experts, num_experts_per_tok=2))


def _lazy_checkpoint(config: dict):
    """Random bf16 tensors made on demand by ``write``, so building the source needs no more than one shard."""
    from converters.mixtral.source import shapes
    from harness.conversion import SourceCheckpoint
    from harness.tensor_store import TensorStore

    def make(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.bfloat16).normal_(std=0.02)

    specs = shapes(config, "fused")
    return SourceCheckpoint(config, TensorStore({k: (lambda s=s: make(s)) for k, s in specs.items()},
                                                {k: (s, torch.bfloat16) for k, s in specs.items()}), "fused")


def _sample_memory(proc: subprocess.Popen) -> dict[str, int]:
    peaks = {"VmRSS": 0, "RssAnon": 0}

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]))  # kB
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait()
    thread.join()
    return peaks


if __name__ == "__main__":
    main()
