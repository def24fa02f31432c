"""Safe reading and atomic, streamed writing."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.errors import ConversionError
from harness.io.assembly import Assembly
from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import BY_NAME
from harness.io.sniff import container
from harness.io.tensor_store import TensorSpec, TensorStore, open_safetensors, open_torch
from harness.io.writer import parse_size, plan_shards, write_model_dir


class _RunsCode:
    def __reduce__(self):  # what a malicious checkpoint does: call a function while unpickling
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    evil = _RunsCode()
    evil.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": evil}, f)
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        open_torch(tmp_path / "evil.pth")
    assert not evil.marker.exists()


def test_torch_files_are_memory_mapped_and_unwrapped(tmp_path: Path) -> None:
    torch.save({"model_state_dict": {"w": torch.ones(2, 3)}}, tmp_path / "m.ckpt")
    store = open_torch(tmp_path / "m.ckpt", key="model_state_dict")
    assert store.meta("w") == ((2, 3), torch.float32) and torch.equal(store["w"], torch.ones(2, 3))
    with pytest.raises(ConversionError, match="no 'state_dict' entry; found keys \\['model_state_dict'\\]"):
        open_torch(tmp_path / "m.ckpt", key="state_dict")


def test_a_tensor_with_a_region_is_copied_out_of_it_without_unpickling(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"w": base, "b": torch.randn(5).to(torch.bfloat16), "ids": torch.arange(3), "t": base.t()}
    torch.save(saved, tmp_path / "m.pth")
    store = open_torch(tmp_path / "m.pth")
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    for name in ("w", "b", "ids"):
        got = store[name]
        assert got.dtype == saved[name].dtype and torch.equal(got, saved[name]), name
        got.zero_()  # a copy: the file is untouched
    assert not loads
    assert torch.equal(store["w"], base)
    assert torch.equal(store["t"], base.t()) and loads  # a transposed view is no one region: torch reads it


def test_safetensors_store_reads_metadata_without_data(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(4, dtype=torch.bfloat16)}, tmp_path / "x.safetensors")
    store = open_safetensors(tmp_path / "x.safetensors")
    assert store.meta("a") == ((4,), torch.bfloat16)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConversionError, match=r"bad.safetensors is not a safetensors file: .* found text \('not a"):
        open_safetensors(tmp_path / "bad.safetensors")


def test_merge_refuses_a_key_in_two_files() -> None:
    a = TensorStore.from_dict({"w": torch.zeros(1)}, origin="a.pt")
    b = TensorStore.from_dict({"w": torch.zeros(1)}, origin="b.pt")
    with pytest.raises(ConversionError, match="'w' is in both a.pt and b.pt"):
        TensorStore.merge([a, b])


def _specs(n: int, size: int = 4) -> list[TensorSpec]:
    return [TensorSpec(f"t{i}", (size,), torch.float32) for i in range(n)]


def test_shard_plan_packs_in_order_and_names_files() -> None:
    plan = plan_shards(_specs(5), max_shard_size=40)  # 16 bytes each: 2 per shard
    assert list(plan.filename_to_tensors) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert plan.tensor_to_filename["t4"] == "model-00003-of-00003.safetensors" and plan.total_size == 80
    assert list(plan_shards(_specs(2), 10**9).filename_to_tensors) == ["model.safetensors"]


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("100") == 100
    with pytest.raises(ConversionError, match="write it like 5GB"):
        parse_size("five gigs")


def test_writer_streams_shards_with_an_index(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.full((4,), float(i)) for i in range(5)}
    write_model_dir(tmp_path / "out", {"model_type": "x"}, _specs(5), iter(tensors.items()), max_shard_size=40)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 80
    loaded = {}
    for name in sorted(set(index["weight_map"].values())):
        loaded |= load_file(tmp_path / "out" / name)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"model_type": "x"}


def test_writer_reports_every_byte_once_whatever_the_payload(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(torch.arange(16, dtype=torch.float32).numpy().tobytes())
    f32, bf16 = BY_NAME["float32"], BY_NAME["bfloat16"]
    region = FileRegion(tmp_path / "src", 0, (4,), torch.float32)  # copied file to file
    cast = Assembly((FileRegion(tmp_path / "src", 16, (12,), f32),), (12,), bf16)  # computed in chunks
    specs = [TensorSpec("r", (4,), torch.float32), TensorSpec("a", (12,), torch.bfloat16),
             TensorSpec("t", (4,), torch.float32)]
    reported: list[int] = []
    write_model_dir(tmp_path / "out", {}, specs, iter([("r", region), ("a", cast), ("t", torch.ones(4))]),
                    max_shard_size=10**9, progress=reported.append)
    assert sorted(reported) == [16, 16, 24]
    loaded = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(loaded["a"], torch.arange(4, 16, dtype=torch.float32).to(torch.bfloat16))


def test_writer_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    def stream():
        yield "t0", torch.zeros(4)
        raise RuntimeError("converter crashed half way")

    with pytest.raises(RuntimeError, match="half way"):
        write_model_dir(tmp_path / "out", {}, _specs(2), stream(), max_shard_size=40)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_an_existing_output_and_a_stream_that_breaks_the_plan(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        write_model_dir(tmp_path / "out", {}, _specs(1), iter([]), 10)
    with pytest.raises(RuntimeError, match="planned t0"):
        write_model_dir(tmp_path / "new", {}, _specs(1), iter([("t0", torch.zeros(5))]), 100)
    assert not (tmp_path / "new").exists()


def test_a_safetensors_header_that_looks_like_a_pickle_opcode_is_safetensors(tmp_path: Path) -> None:
    # A header of 896 bytes (0x0380) makes the file start 80 03, as a protocol-3 pickle does.
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode().ljust(896)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", 1.5))
    assert path.read_bytes()[:2] == b"\x80\x03"
    assert container(path) == "safetensors"
    assert open_safetensors(path)["w"].tolist() == [1.5]
