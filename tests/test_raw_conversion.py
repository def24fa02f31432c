"""The torch-free byte path: it writes exactly the bytes the torch path writes (as stored and cast), every byte plan
is its rule's forward, and the file indexes describe what torch reads (or decline, without running anything)."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from harness.io import assembly
from harness.io.bit_casts import cast_bits
from harness.io.file_regions import FileRegion
from harness.io.raw_dtypes import BY_NAME
from harness.io.row_gather import GATHER_BUFFER, KERNEL_RUN, RowGather, write_gather
from harness.io.safetensors_index import index_safetensors
from harness.io.stored_tensor import NotIndexableError
from harness.io.tensor_store import TensorStore
from harness.io.torch_zip_index import index_torch_zip
from harness.mapping import output
from harness.mapping.byte_plans import PlannedPiece, Run, TransposedRun, byte_plan
from harness.mapping.conversion import SourceCheckpoint
from harness.mapping.raw_conversion import raw_conversion
from harness.mapping.rules import (
    CutVocab,
    Dims,
    GroupQKV,
    MergeRanks,
    MergeRotary,
    Rename,
    Replicated,
    Rotary,
    Rule,
    Split,
    Transpose,
    Unstack,
)
from harness.mapping.rules.moves_data import MovesData
from harness.registry import families

CASES = [(name, case) for name, fam in families().items() for case in fam.cases]
# The cases that need torch: int8 weights are dequantized (gemma quant), a NeMo pickle holds more than tensors and
# its qkv is regrouped and transposed (gpt_sw3).
TORCH = {("gemma", "quant"), *(("gpt_sw3", c) for c in families()["gpt_sw3"].cases)}
CASTS = [None, "float16", "bfloat16", "float32"]


def _source(tmp_path: Path, family: str, case: str):  # noqa: ANN202 - a family's SourceCheckpoint
    fam, spec = families()[family], families()[family].cases[case]
    fam.write(fam.tiny(0, layout=spec.layout, **spec.config), tmp_path / "src", container=spec.container)
    return fam, fam.read(tmp_path / "src")


@pytest.mark.parametrize("dtype", CASTS, ids=[str(d) for d in CASTS])
@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_the_byte_path_writes_what_the_torch_path_writes(tmp_path: Path, family: str, case: str, dtype: str | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fam, source = _source(tmp_path, family, case)
    raw = raw_conversion(fam.convert(source), dtype)
    assert (raw is None) == ((family, case) in TORCH)
    if raw is None:
        pytest.skip("a step computes: the torch path alone")
    # many chunks, cut inside rows, written by several threads; longer runs are cast straight from the mapped file,
    # in blocks that cut them
    engine = assembly.AssemblyEngine(chunk=97, direct=16, block=20)
    output.write_converted(fam.convert(source), tmp_path / "raw", dtype=dtype, max_shard_size=20_000, engine=engine)
    monkeypatch.setattr(output, "raw_conversion", lambda *a: None)
    output.write_converted(fam.convert(source), tmp_path / "torch", dtype=dtype, max_shard_size=20_000, cast_chunk=97)
    files = sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert len(files) > 2  # several shards and an index
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == files
    for name in files:
        assert (tmp_path / "raw" / name).read_bytes() == (tmp_path / "torch" / name).read_bytes(), name


def test_a_cast_the_raw_bits_cannot_make_takes_the_torch_path(tmp_path: Path) -> None:
    mixtral = families()["mixtral"]
    tiny = mixtral.tiny(0)
    doubles = TensorStore.from_dict({k: tiny.tensors[k].double() for k in tiny.tensors})
    mixtral.write(SourceCheckpoint(tiny.config, doubles, tiny.layout), tmp_path / "src", container="pt-shards")
    converted = mixtral.convert(mixtral.read(tmp_path / "src"))
    assert raw_conversion(converted, "float16") is None  # float64 -> float16 rounds once in torch, not via float32
    assert raw_conversion(converted) is not None  # as stored: bytes only


@pytest.mark.parametrize(("family", "case"), CASES, ids=[f"{f}-{c}" for f, c in CASES])
def test_every_byte_plan_is_its_rules_forward(tmp_path: Path, family: str, case: str) -> None:
    fam, source = _source(tmp_path, family, case)
    converted = fam.convert(source)
    planned = 0
    for step in converted.steps:
        inputs = [source.tensors[k] for k in step.sources]
        plan = byte_plan(step.rule, [tuple(t.shape) for t in inputs], converted.dims)
        if plan is None:
            continue
        planned += 1
        flat = [t.contiguous().reshape(-1) for t in inputs]
        for expected, (shape, pieces) in zip(step.run(inputs, converted.dims), plan, strict=True):
            got = torch.cat([_piece(flat, p) for p in pieces]).reshape(shape)
            assert torch.equal(got, expected), step
    assert planned or (family, case) in TORCH


@st.composite
def _rule_and_input(draw: st.DrawFn) -> tuple[Rule, dict[str, int], tuple[int, ...]]:
    """A data-movement rule of each kind with drawn sizes, and an input of a shape its forward accepts."""
    heads, kv, hd = draw(st.integers(1, 4)), draw(st.integers(1, 3)), 2 * draw(st.integers(1, 4))
    ranks, experts, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    rest = draw(st.sampled_from([(), (cols,), (cols, 2)]))
    dims = {"n_heads": heads, "n_kv_heads": kv, "head_dim": hd, "n_experts": experts, "vocab_size": 1 + kv,
            "padded_vocab_size": 2 + kv + heads, "ranks": ranks}
    kind = draw(st.sampled_from(["rename", "rotary", "split", "unstack", "unstack-t", "transpose", "cut", "group",
                                 "group-t", "merge0", "merge1", "merge2", "merge-rotary", "replicated"]))
    rules: dict[str, tuple[Rule, tuple[int, ...]]] = {
        "rename": (Rename("a", "b"), (heads, *rest)),
        "rotary": (Rotary("a", "b", heads="n_heads"), (heads * hd, *rest)),
        "split": (Split("a", ["q", "k", "v"]), ((heads + 2 * kv) * hd, *rest)),
        "unstack": (Unstack("a", "b.{expert}"), (experts * hd, *rest)),
        "unstack-t": (Unstack("a", "b.{expert}", transpose_blocks=True), (experts * hd, cols)),
        "transpose": (Transpose("a", "b"), (hd, cols)),
        "cut": (CutVocab("a", "b"), (2 + kv + heads, *rest)),
        "group": (GroupQKV("a", "b"), (3 * heads * hd, *rest)),
        "group-t": (GroupQKV("a", "b", transpose=True), (3 * heads * hd, cols)),
        "merge0": (MergeRanks("a", "b", dim=0, ranks="ranks"), (ranks, hd, *rest)),
        "merge1": (MergeRanks("a", "b", dim=1, ranks="ranks"), (ranks, hd, *(rest or (cols,)))),
        "merge2": (MergeRanks("a", "b", dim=2, ranks="ranks"), (ranks, hd, cols, 2)),
        "merge-rotary": (MergeRotary("a", "b", heads="n_heads", ranks="ranks"), (ranks, heads * hd, *rest)),
        "replicated": (Replicated("a", "b", ranks="ranks"), (ranks, hd, *rest)),
    }
    if kind == "merge-rotary":  # each rank holds whole heads: the merged rows are ranks x heads heads
        dims["n_heads"] = ranks * heads
    rule, shape = rules[kind]
    return rule, dims, shape


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(drawn=_rule_and_input())
def test_byte_plans_are_the_forward_on_drawn_layouts_and_shapes(drawn: tuple[Rule, dict[str, int], tuple]) -> None:
    rule, dims, shape = drawn
    x = torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    plan = byte_plan(rule, [shape], dims)
    if plan is None:  # only a transposed matrix of several runs is left to the torch path
        assert isinstance(rule, GroupQKV) and rule.transposes and dims[rule.heads] > 1, (rule, shape)
        return
    expected = rule.forward([x], dims)
    assert len(plan) == len(expected)
    for want, (out_shape, pieces) in zip(expected, plan, strict=True):
        got = torch.cat([_piece([x.reshape(-1)], p) for p in pieces]).reshape(out_shape)
        assert torch.equal(got, want), (rule, shape)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(drawn=_rule_and_input())
def test_the_inverse_derived_from_a_layout_undoes_its_forward(drawn: tuple[Rule, dict[str, int], tuple]) -> None:
    rule, dims, shape = drawn
    x = torch.arange(1, 1 + int(np.prod(shape)), dtype=torch.float32).reshape(shape)
    if isinstance(rule, Replicated):  # every rank holds the same copy (the family's reader checks that)
        x = x[:1].expand(shape).clone()
    out = rule.forward([x], dims)
    back = rule.inverse(out, dims)
    if rule.inverse_exact:
        assert len(back) == 1 and torch.equal(back[0], x), (rule, shape)
    else:  # what the forward drops comes back as zeros; what it keeps comes back where it was
        again = rule.forward(back, dims)
        assert all(torch.equal(a, b) for a, b in zip(again, out, strict=True)), (rule, shape)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(drawn=_rule_and_input(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_shapes_planned_from_a_layout_are_the_forwards_on_meta(drawn: tuple[Rule, dict[str, int], tuple],
                                                                dtype: torch.dtype) -> None:
    rule, dims, shape = drawn
    assert rule.planned([(shape, dtype)], dims) == Rule.planned(rule, [(shape, dtype)], dims), (rule, shape)


class _Interleave(MovesData):
    """A row layout no family uses: the rows of two halves interleaved (``reshape``/``swapaxes`` only)."""

    def __init__(self) -> None:
        super().__init__("a", ["b"])

    def layout(self, x: Any, dims: Dims) -> list:
        return [x.reshape(2, x.shape[0] // 2, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)]


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 4))
def test_a_new_row_layout_gets_its_byte_plan_and_inverse_for_free(rows: int, cols: int) -> None:
    rule, x = _Interleave(), torch.arange(2 * rows * cols, dtype=torch.float32).reshape(2 * rows, cols)
    (shape, pieces), = byte_plan(rule, [tuple(x.shape)], {})
    (out,) = rule.forward([x], {})
    assert torch.equal(torch.cat([_piece([x.reshape(-1)], p) for p in pieces]).reshape(shape), out)
    assert torch.equal(rule.inverse([out], {})[0], x)


def _piece(flat: list[torch.Tensor], piece: PlannedPiece) -> torch.Tensor:
    source = flat[piece.input]
    if isinstance(piece, Run):
        return source[piece.first: piece.first + piece.count]
    if isinstance(piece, TransposedRun):
        block = source[piece.first: piece.first + piece.rows * piece.cols]
        return block.reshape(piece.rows, piece.cols).t().reshape(-1)
    blocks = source.reshape(piece.blocks, piece.rows, -1)
    return torch.cat(list(blocks), dim=1).reshape(-1)


def test_the_zip_index_describes_what_torch_loads(tmp_path: Path) -> None:
    base = torch.arange(600, dtype=torch.float32).reshape(60, 10)
    state = {"a": base, "rows": base[10:20], "cols": base[:, 2:5], "b": torch.ones(3, dtype=torch.bfloat16),
             "p": torch.nn.Parameter(torch.randn(4, 4)), "empty": torch.empty(0, 3), "i8": torch.ones(5).char()}
    torch.save({"model": state, "step": 3, "note": "text"}, tmp_path / "x.pt")
    found = index_torch_zip(tmp_path / "x.pt", key="model")
    assert {k: (t.shape, str(t.dtype)) for k, t in found.items()} == \
        {k: (tuple(t.shape), str(t.dtype)) for k, t in state.items()}
    assert {k for k, t in found.items() if t.region is not None} == {"a", "rows", "b", "p", "i8"}
    assert all(torch.equal(t.region.mapped(), state[k].detach()) for k, t in found.items() if t.region)
    with pytest.raises(NotIndexableError, match="not a flat state dict"):
        index_torch_zip(tmp_path / "x.pt")  # the top level holds an int and a string too


class _Boom:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path("/tmp/convparity-index-ran-code"),))


@pytest.mark.parametrize("payload", [_Boom(), torch.float32], ids=["code", "dtype-global"])
def test_the_zip_index_declines_other_globals_without_running_them(tmp_path: Path, payload: object) -> None:
    marker = Path("/tmp/convparity-index-ran-code")
    marker.unlink(missing_ok=True)
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    with zipfile.ZipFile(tmp_path / "x.pt") as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    records[pkl] = pickle.dumps({"w": payload}, protocol=2)
    with zipfile.ZipFile(tmp_path / "y.pt", "w", zipfile.ZIP_STORED) as z:
        for name, data in records.items():
            z.writestr(name, data)
    with pytest.raises(NotIndexableError, match="data.pkl names"):
        index_torch_zip(tmp_path / "y.pt")
    assert not marker.exists()


def test_the_safetensors_index_checks_the_header(tmp_path: Path) -> None:
    state = {"w": torch.randn(7, 5), "h": torch.randn(3).half()}
    save_file(state, tmp_path / "x.safetensors")
    found = index_safetensors(tmp_path / "x.safetensors")
    assert all(torch.equal(found[k].region.mapped(), t) for k, t in state.items())
    raw = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-4])  # the last tensor ends past the file
    with pytest.raises(NotIndexableError, match="data_offsets"):
        index_safetensors(tmp_path / "cut.safetensors")
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + raw[8:])
    with pytest.raises(NotIndexableError, match="header length"):
        index_safetensors(tmp_path / "long.safetensors")


@pytest.mark.parametrize(("buffer", "kernel_run"), [(GATHER_BUFFER, KERNEL_RUN), (64, 40), (64, KERNEL_RUN)],
                         ids=["default", "small-buffer-and-kernel-runs", "small-buffer"])
def test_a_row_gather_writes_its_parts_in_order(tmp_path: Path, buffer: int, kernel_run: int) -> None:
    data = bytes(torch.randint(0, 256, (4000,), dtype=torch.uint8).tolist())
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data[::-1])
    u8 = BY_NAME["uint8"]
    spans = [("a", 0, 10), ("b", 5, 50), ("a", 10, 3), ("a", 13, 7), ("a", 100, 1000), ("b", 0, 5), ("a", 30, 60)]
    parts = tuple(FileRegion(tmp_path / f, off, (n,), u8) for f, off, n in spans)
    gather = RowGather(parts, (sum(n for _, _, n in spans),), u8)
    with open(tmp_path / "out", "wb+") as f:
        f.write(b"\xff" * 7)
        write_gather(gather, f.fileno(), 7, buffer=buffer, kernel_run=kernel_run)
    source = {"a": data, "b": data[::-1]}
    assert (tmp_path / "out").read_bytes() == b"\xff" * 7 + b"".join(source[f][o: o + n] for f, o, n in spans)


@pytest.mark.parametrize("in_memfd", [True, False], ids=["buffered-in-memfd", "pwrite"])
@pytest.mark.parametrize("rows", [16, 13], ids=["grouped-rows", "ungrouped-rows"])
def test_assembled_transposes_and_joins_move_every_bit_pattern(tmp_path: Path, rows: int, in_memfd: bool) -> None:
    # chunks that cut output rows, on several threads; without memfd (or /proc): plain memory, written with pwrite
    engine = assembly.AssemblyEngine(chunk=29, tile=4, memfd=None if in_memfd else False)
    bits = np.random.default_rng(0).integers(0, 1 << 16, rows * 24, dtype=np.uint16)
    bits[:4] = [0x7C01, 0xFC01, 0x7E00, 0xFFFF]  # float16 NaN patterns: moved as they are, never as values
    (tmp_path / "src").write_bytes(b"\0" * 6 + bits.tobytes())
    f16 = BY_NAME["float16"]
    matrix = FileRegion(tmp_path / "src", 6, (rows, 24), f16)
    halves = tuple(FileRegion(tmp_path / "src", 6 + h * rows * 24, (rows, 12), f16) for h in (0, 1))
    pieces = (assembly.Transposed(matrix), assembly.Interleaved(halves, rows))
    with open(tmp_path / "out", "wb+") as f:
        assembly.write_assembly(assembly.Assembly(pieces, (2 * rows * 24,), f16), f.fileno(), 0, engine)
    source = bits.reshape(rows, 24)
    expected = np.concatenate([source.T.reshape(-1), np.hstack([bits[: rows * 12].reshape(rows, 12),
                                                                bits[rows * 12:].reshape(rows, 12)]).reshape(-1)])
    assert np.array_equal(np.frombuffer((tmp_path / "out").read_bytes(), dtype=np.uint16), expected)


@pytest.mark.parametrize("in_memfd", [True, False], ids=["buffered-in-memfd", "pwrite"])
def test_an_assembled_cast_writes_each_block_in_its_place(tmp_path: Path, in_memfd: bool) -> None:
    # the long region is cast from its file, the short one copied first
    engine = assembly.AssemblyEngine(chunk=23, direct=8, block=5, memfd=None if in_memfd else False)
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)[::97]  # bfloat16 patterns of every kind
    (tmp_path / "src").write_bytes(bits.tobytes())
    bf16, f16 = BY_NAME["bfloat16"], BY_NAME["float16"]
    pieces = (FileRegion(tmp_path / "src", 0, (bits.size - 6,), bf16),
              FileRegion(tmp_path / "src", 2 * (bits.size - 6), (6,), bf16))
    made = assembly.Assembly(pieces, (bits.size,), f16)
    with open(tmp_path / "out", "wb+") as f:
        assembly.write_assembly(made, f.fileno(), 0, engine)
    expected = cast_bits(bits, bf16, f16)
    assert np.array_equal(np.frombuffer((tmp_path / "out").read_bytes(), dtype=np.uint16), expected)
    assert made.nonfinite == [int(((bits & 0x7F80) == 0x7F80).sum())]


def test_progress_counts_only_bytes_already_in_the_file(tmp_path: Path) -> None:
    engine = assembly.AssemblyEngine(chunk=64)  # a chunk per output row, on several threads
    bits = np.arange(1, 64 * 64 + 1, dtype=np.uint16)  # no zero: a zero in the output is a byte not written yet
    (tmp_path / "src").write_bytes(bits.tobytes())
    f16 = BY_NAME["float16"]
    made = assembly.Assembly((assembly.Transposed(FileRegion(tmp_path / "src", 0, (64, 64), f16)),), (64 * 64,), f16)
    expected = bits.reshape(64, 64).T.reshape(-1)
    reported: list[int] = []
    with open(tmp_path / "out", "wb+") as f:
        f.truncate(expected.nbytes)

        def progress(nbytes: int) -> None:  # runs on a worker thread; a failure here fails ``finish``
            reported.append(nbytes)
            in_file = np.frombuffer(os.pread(f.fileno(), expected.nbytes, 0), dtype=np.uint16)
            assert np.count_nonzero(in_file == expected) * 2 >= sum(reported)

        writes = assembly.Writes(progress, engine=engine)
        writes.start(made, f.fileno(), 0)
        writes.finish()
    assert reported == [128] * 64


def test_an_engine_used_again_in_a_forked_child_starts_its_own_threads(tmp_path: Path) -> None:
    bits = np.arange(1, 8 * 8 + 1, dtype=np.uint16)
    (tmp_path / "src").write_bytes(bits.tobytes())
    f16 = BY_NAME["float16"]
    made = assembly.Assembly((assembly.Transposed(FileRegion(tmp_path / "src", 0, (8, 8), f16)),), (64,), f16)
    engine = assembly.AssemblyEngine(chunk=8, threads=2)
    with open(tmp_path / "parent", "wb+") as f:
        assembly.write_assembly(made, f.fileno(), 0, engine)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: the parent's worker threads are not here; a stale pool would hang or fail
        code = 1
        try:
            with open(tmp_path / "child", "wb+") as f:
                assembly.write_assembly(made, f.fileno(), 0, engine)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert (tmp_path / "child").read_bytes() == (tmp_path / "parent").read_bytes() == bits.reshape(8, 8).T.tobytes()


def test_an_assembly_past_the_end_of_its_file_is_an_io_error(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\0" * 10)
    f16 = BY_NAME["float16"]
    piece = assembly.Transposed(FileRegion(tmp_path / "short", 0, (4, 4), f16))
    with open(tmp_path / "out", "wb") as f, pytest.raises(OSError, match="short ended inside a tensor"):
        assembly.write_assembly(assembly.Assembly((piece,), (4, 4), f16), f.fileno(), 0)
