"""``convparity verify`` on Mixtral-8x7B-shaped checkpoints of 1, 2 and 4 layers: time and peak memory.

Run on purpose (it writes up to 2 x 12 GB to disk, one size at a time, and deletes them); prints a table,
asserts nothing:

    python benchmarks/verify_memory.py --layers 1,2,4 --workdir /tmp/convparity-verify-bench
    python benchmarks/verify_memory.py --layers 1 --small --prefetch both     # minutes on a laptop's CPU

Per size: a random bf16 source in Mistral's layout (per-expert keys, 8 ``consolidated.NN.pt`` files) is written
and converted with ``convparity convert``; then, in the same run, the floors of the work verify must do at
least once: reading both directories' bytes, casting every weight to float32 once per side (the upcast), and
the float32 matmuls of both forward passes. Last ``convparity verify`` runs in a child process whose memory
is sampled every 20 ms: peak RSS includes file-backed pages of memory-mapped files, peak anon is what the
process allocated. Verify does more than the floors on purpose: the float64 noise run reads and upcasts the
source a second time.

``--prefetch both`` times verify twice on the same checkpoint, ``--no-prefetch`` first (each unit read when it
runs, the CPU's default), then ``--prefetch`` (the next unit read on a thread while one runs, a GPU's default).
``--small`` divides Mixtral-8x7B's widths and vocabulary by 4 (a 1-layer source of about 0.2 GB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from memory_sampler import sample_memory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# mistralai/Mixtral-8x7B-v0.1 params.json, with n_layers set per run.
SHAPE = dict(dim=4096, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, norm_eps=1e-5, vocab_size=32000,
             rope_theta=1e6, moe=dict(num_experts=8, num_experts_per_tok=2))
# The same layout with dim, hidden_dim, heads and vocabulary divided by 4 (head_dim kept): for a CPU in minutes.
SMALL = {**SHAPE, "dim": 1024, "hidden_dim": 3584, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 8000}
TOKENS = (2, 32)  # verify's default inputs
PREFETCH = {"on": ["--prefetch"], "off": ["--no-prefetch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,2,4", help="comma-separated layer counts (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/convparity-verify-bench"))
    parser.add_argument("--small", action="store_true", help="Mixtral-8x7B's widths and vocabulary divided by 4")
    parser.add_argument("--prefetch", choices=["on", "off", "both"], default="off",
                        help="verify with the read ahead (on), without it (off, the CPU's default), or both, one "
                             "after the other (default: %(default)s)")
    args = parser.parse_args()
    shape = SMALL if args.small else SHAPE
    modes = ["off", "on"] if args.prefetch == "both" else [args.prefetch]
    rows = []
    for n in (int(x) for x in args.layers.split(",")):
        shutil.rmtree(args.workdir, ignore_errors=True)
        args.workdir.mkdir(parents=True)
        try:
            rows += _measure(n, args.workdir, shape, modes)
        finally:
            shutil.rmtree(args.workdir, ignore_errors=True)
        _print(rows)


def _measure(n_layers: int, workdir: Path, shape: dict, modes: list[str]) -> list[dict[str, Any]]:
    """One checkpoint of ``n_layers``, its floors, and a row per verify run (``modes``: prefetch on or off)."""
    from converters.mixtral.source import shapes

    config = {**shape, "n_layers": n_layers}
    source, converted = workdir / "source", workdir / "hf"
    print(f"\n{n_layers} layer(s): writing the source", flush=True)
    write_source(config, source)
    print(f"{n_layers} layer(s): converting", flush=True)
    convert_source(source, converted)
    numel = sum(torch.Size(s).numel() for s in shapes(config).values())
    layer = sum(torch.Size(s).numel() for k, s in shapes(config).items() if k.startswith("layers.0."))
    row: dict[str, Any] = {"layers": n_layers, "bf16 GB": _bytes(source) / 1e9, "fp32 GiB": numel * 4 / 2**30,
                             "fp32 layer GiB": layer * 4 / 2**30}
    print(f"{n_layers} layer(s): floors", flush=True)
    row["read s"] = _read_floor([source, converted])
    row["upcast s"] = 2 * _upcast_floor(numel, shape)
    row["matmul s"] = 2 * _matmul_floor(n_layers, shape)
    return [{**row, "prefetch": mode, **_verify(source, converted, workdir, PREFETCH[mode])} for mode in modes]


def _verify(source: Path, converted: Path, workdir: Path, flags: list[str]) -> dict[str, Any]:
    """``convparity verify`` in a child process: seconds, peak memory, the logits' error and bound."""
    print(f"convparity verify {' '.join(flags)}", flush=True)
    report = workdir / "verify.json"
    cmd = [sys.executable, "-m", "harness.cli", "verify", "mixtral", str(source), str(converted), "--json",
           str(report), *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peaks = sample_memory(proc)
    output = proc.stdout.read() if proc.stdout else ""
    seconds = time.perf_counter() - start
    print(output, flush=True)
    result = json.loads(report.read_text())["results"][0]  # the convparity/1 document holds one verify result
    return {"verify s": seconds, "peak RSS GiB": peaks["VmRSS"] / 2**20, "peak anon GiB": peaks["RssAnon"] / 2**20,
            "logits rel": result["logits"]["rel"], "bound": result["logits"]["bound"],
            "passed": float(result["passed"])}


def write_source(config: dict, folder: Path) -> None:
    """Random bf16 weights of realistic spread in Mistral's layout (per-expert keys, 8 ``consolidated.NN.pt``),
    made one shard at a time by ``write``; ``config`` in params.json's names (``SHAPE`` and ``n_layers``)."""
    from converters.mixtral.source import shapes, write
    from harness.io.tensor_store import TensorStore
    from harness.mapping.conversion import SourceCheckpoint

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape, dtype=torch.bfloat16)
        if name.endswith("norm.weight"):
            return t.normal_(1.0, 0.1)
        if name == "tok_embeddings.weight":
            return t.normal_(0.0, 1.0)
        gain = 1.5 if ".wq." in name or ".wk." in name else 3.0 if "gate" in name else 2.0 if "output" in name else 1
        return t.normal_(0.0, gain / shape[-1] ** 0.5)

    torch.manual_seed(0)
    specs = shapes(config)
    store = TensorStore({k: (lambda k=k, s=s: make(k, s)) for k, s in specs.items()},
                        {k: (s, torch.bfloat16) for k, s in specs.items()})
    write(SourceCheckpoint(config, store, "experts"), folder, container="pt-shards")


def convert_source(source: Path, converted: Path) -> None:
    """``convparity convert mixtral SOURCE CONVERTED``, in a child process."""
    subprocess.run([sys.executable, "-m", "harness.cli", "convert", "mixtral", str(source), str(converted),
                    "--quiet"], check=True, cwd=ROOT)


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _read_floor(folders: list[Path]) -> float:
    """Seconds to read every byte of ``folders`` once (64 MiB reads into one buffer)."""
    buf = bytearray(64 << 20)
    start = time.perf_counter()
    for path in (f for folder in folders for f in sorted(folder.rglob("*")) if f.is_file()):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def _upcast_floor(numel: int, shape: dict) -> float:
    """Seconds to cast ``numel`` bf16 weights to float32, timed on one expert matrix and scaled."""
    w = torch.empty(shape["hidden_dim"], shape["dim"], dtype=torch.bfloat16).normal_()
    start = time.perf_counter()
    for _ in range(4):
        w.float()
    return (time.perf_counter() - start) / (4 * w.numel()) * numel


def _matmul_floor(n_layers: int, shape: dict) -> float:
    """Seconds of one float32 forward's matmuls on verify's tokens: attention, routed experts, head."""
    D, I, hd, E, k = shape["dim"], shape["hidden_dim"], shape["head_dim"], 8, 2  # noqa: E741
    x = torch.randn(TOKENS[0] * TOKENS[1], D)
    per_expert = x[: x.shape[0] * k // E]  # top-2 of 8 experts: a quarter of the tokens each, on average
    q, kv, o = torch.randn(shape["n_heads"] * hd, D), torch.randn(shape["n_kv_heads"] * hd, D), torch.randn(D, D)
    w1, w3, w2, gate = torch.randn(I, D), torch.randn(I, D), torch.randn(D, I), torch.randn(E, D)
    head = torch.randn(shape["vocab_size"], D)
    start = time.perf_counter()
    for _ in range(n_layers):
        x @ q.t(), x @ kv.t(), x @ kv.t(), x @ o.t(), x @ gate.t()
        for _ in range(E):
            ((per_expert @ w1.t()) * (per_expert @ w3.t())) @ w2.t()
    x @ head.t()
    return time.perf_counter() - start


def _print(rows: list[dict[str, Any]]) -> None:
    cols = ["layers", "bf16 GB", "fp32 GiB", "fp32 layer GiB", "prefetch", "verify s", "peak RSS GiB", "peak anon GiB",
            "read s", "upcast s", "matmul s", "logits rel", "bound"]
    print("\n" + " | ".join(cols) + " | floors s | verify / floors | RSS / fp32 layer")
    for r in rows:
        floors = r["read s"] + r["upcast s"] + r["matmul s"]
        cells = [f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print(" | ".join(cells) + f" | {floors:.1f} | {r['verify s'] / floors:.2f} | "
              f"{r['peak RSS GiB'] / r['fp32 layer GiB']:.2f}" + ("" if r["passed"] else " | FAIL"))
    if len({r["layers"] for r in rows}) > 1:
        peaks = [r["peak RSS GiB"] for r in rows]
        print(f"peak RSS spread: {max(peaks) / min(peaks) - 1:.1%} (largest over smallest)")
    runs = {(r["layers"], r["prefetch"]): r for r in rows}
    for (layers, mode), off in runs.items():
        on = runs.get((layers, "on"))
        if mode == "off" and on is not None:
            print(f"{layers} layer(s): verify {off['verify s']:.1f}s without prefetch, {on['verify s']:.1f}s with it "
                  f"({off['verify s'] / on['verify s']:.2f}x); peak RSS {off['peak RSS GiB']:.2f} and "
                  f"{on['peak RSS GiB']:.2f} GiB")


if __name__ == "__main__":
    main()
