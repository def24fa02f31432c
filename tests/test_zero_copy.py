"""Bytes that need no transform go file to file: regions are found, copied exactly, cast in chunks, and
NaN/Inf weights are refused whether a tensor is copied by the kernel or computed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.errors import ConversionError
from harness.io import file_regions, writer
from harness.io.file_regions import FileRegion, copy_region
from harness.io.finite import count_nonfinite
from harness.io.tensor_store import TensorSpec, open_safetensors, open_torch
from harness.io.writer import CAST_CHUNK
from harness.registry import family


def test_torch_zip_regions_hold_the_tensor_bytes(tmp_path: Path) -> None:
    base = torch.arange(600, dtype=torch.float32).reshape(60, 10)
    state = {"a": base, "rows": base[10:20], "cols": base[:, 2:5], "b": torch.ones(3, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "x.pt")
    store = open_torch(tmp_path / "x.pt")
    assert set(store.regions) == {"a", "rows", "b"}  # a column slice is not contiguous: ordinary path
    for name, region in store.regions.items():
        assert torch.equal(region.mapped(), state[name]), name


def test_safetensors_regions_hold_the_tensor_bytes(tmp_path: Path) -> None:
    state = {"w": torch.randn(7, 5), "h": torch.randn(3).half()}
    save_file(state, tmp_path / "x.safetensors")
    store = open_safetensors(tmp_path / "x.safetensors")
    assert {k: torch.equal(r.mapped(), state[k]) for k, r in store.regions.items()} == {"w": True, "h": True}


def test_a_region_is_read_into_fresh_memory_bit_for_bit_and_a_short_file_is_an_error(tmp_path: Path) -> None:
    state = {"w": torch.randn(7, 5), "h": torch.randn(3).half(), "b": torch.randn(4, 2).bfloat16()}
    save_file(state, tmp_path / "x.safetensors")
    regions = open_safetensors(tmp_path / "x.safetensors").regions
    for name, region in regions.items():
        got = region.read()
        assert got.dtype == state[name].dtype and torch.equal(got, state[name]), name
        assert got.untyped_storage().data_ptr() != region.mapped().untyped_storage().data_ptr()
    beyond = FileRegion(tmp_path / "x.safetensors", (tmp_path / "x.safetensors").stat().st_size - 8, (4,),
                        torch.float32)
    with pytest.raises(OSError, match="ends inside a tensor"):
        beyond.read()


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "buffered"])
def test_copy_region_is_exact_with_and_without_the_kernel(tmp_path: Path, kernel: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = torch.randint(0, 256, (300_000,), dtype=torch.uint8)
    (tmp_path / "src").write_bytes(b"head" + data.numpy().tobytes())
    if not kernel:
        monkeypatch.setattr(file_regions, "_kernel_copy", lambda *a: None)
    region = FileRegion(tmp_path / "src", 4, (300_000,), torch.uint8)
    with open(tmp_path / "dst", "wb+") as f:
        f.write(b"\0" * 10)
        copy_region(region, f.fileno(), 10)
    assert (tmp_path / "dst").read_bytes()[10:] == data.numpy().tobytes()


def test_conversion_copies_renames_in_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mixtral = family("mixtral")
    mixtral.write(mixtral.tiny(0), tmp_path / "src", container="safetensors")
    copied: list[str] = []
    real = writer.copy_region
    monkeypatch.setattr(writer, "copy_region", lambda r, fd, off: copied.append(r) or real(r, fd, off))
    assert main(["convert", "mixtral", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"]) == 0
    converted = mixtral.convert(mixtral.read(tmp_path / "src"))
    expected = dict(converted.tensors())
    assert load_file(tmp_path / "out" / "model.safetensors").keys() == expected.keys()
    assert all(torch.equal(load_file(tmp_path / "out" / "model.safetensors")[k], t) for k, t in expected.items())
    # Everything but the rotary-permuted q/k projections is a plain rename.
    assert len(copied) == len(expected) - 2 * converted.config["num_hidden_layers"]


@pytest.mark.parametrize("cast_chunk", [CAST_CHUNK, 100], ids=["default", "chunks-cut-rows"])
def test_a_cast_is_written_in_chunks(tmp_path: Path, cast_chunk: int) -> None:
    # the torch path's cast, of a tensor in memory and of a file region, in chunks smaller than every matrix
    state = {"w": torch.randn(37, 11), "v": torch.randn(5, 3, 7), "b": torch.randn(3)}
    save_file(state, tmp_path / "x.safetensors")
    regions = open_safetensors(tmp_path / "x.safetensors").regions
    payloads = [("w", state["w"]), ("v", regions["v"]), ("b", state["b"])]
    specs = [TensorSpec(k, tuple(t.shape), torch.bfloat16) for k, t in payloads]
    writer.write_model_dir(tmp_path / "out", {}, specs, payloads, 1 << 30, cast_chunk=cast_chunk)
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert {k: torch.equal(got[k], t.bfloat16()) for k, t in state.items()} == dict.fromkeys(state, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_nonfinite_counted_in_memory_and_on_disk(tmp_path: Path, dtype: torch.dtype) -> None:
    t = torch.ones(5000, dtype=dtype)
    t[[3, 400, 4999]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    save_file({"t": t}, tmp_path / "x.safetensors")
    assert count_nonfinite(t) == 3
    assert (count_nonfinite(t[3::397]), count_nonfinite(t.reshape(50, 100).T), count_nonfinite(t[3])) == (2, 3, 1)
    assert count_nonfinite(open_safetensors(tmp_path / "x.safetensors").regions["t"]) == 3


@pytest.mark.parametrize(("key", "layout", "options"), [
    ("layers.0.attention.wv.weight", "experts", []), ("layers.1.attention.wq.weight", "experts", []),
    ("layers.0.attention.wv.weight", "experts", ["--dtype", "float16"]),
    ("layers.1.block_sparse_moe.w2", "fused", [])],
    ids=["copied-by-kernel", "gathered-rows", "cast-in-chunks", "transposed-in-chunks"])
def test_nonfinite_weights_are_refused_and_nothing_is_written(tmp_path: Path, key: str, layout: str,
                                                              options: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    mixtral = family("mixtral")
    source = mixtral.tiny(0, layout=layout)
    tensors = dict(source.tensors)
    tensors[key] = tensors[key].clone()
    tensors[key][0, :3] = float("nan")
    mixtral.write(type(source)(source.config, type(source.tensors).from_dict(tensors), source.layout),
                  tmp_path / "src")
    out = tmp_path / "out"
    assert main(["convert", "mixtral", str(tmp_path / "src"), str(out), "--quiet", *options]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights: model." in err and "(3 NaN/Inf)" in err and "--allow-nonfinite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert main(["convert", "mixtral", str(tmp_path / "src"), str(out), "--quiet", "--allow-nonfinite",
                 *options]) == 0
    assert "warning: converted non-finite weights" in capsys.readouterr().err


def test_a_region_past_the_end_of_its_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\0" * 10)
    with pytest.raises(ConversionError, match="ends inside a tensor"):
        count_nonfinite(FileRegion(tmp_path / "short", 0, (100,), torch.float32))
