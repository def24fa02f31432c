"""The streamed model reads the next unit on a thread while one runs, and ``verify --reference-device`` runs the
reference beside the converted model; neither changes a bit of what is computed.

- each unit after the first is read off the main thread, and its read is under way before the unit ahead of it
  computes; at most two units' weights are in memory at once (one without the read ahead);
- a wrong guess of the next unit costs a read (waited for and let go before the right one), not a bit of the logits;
- an error in the reading thread is raised unchanged in the main one (one line from the CLI), and Ctrl-C neither
  waits for a read under way nor stays blocked in a wait for one;
- the reference on its own device runs on its own thread, at the same time as the converted model, to the same
  numbers and verdict; a device that does not exist is a one-line error.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from harness.cli import main
from harness.errors import ConversionError
from harness.parity import streamed_model
from harness.parity import verify as verify_module
from harness.parity.parity import make_tokens
from harness.parity.streamed_model import StreamedModel
from harness.parity.verify import verify
from harness.registry import families

FAMILIES = families()
FIRST = [(f, next(iter(fam.cases))) for f, fam in FAMILIES.items()]
MAIN = threading.main_thread()


class Reads:
    """Instruments the streamed model: which units are read (and on which thread) and which are in memory, from
    the start of their read to their free."""

    def __init__(self, model: StreamedModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self.unit = {id(u.keys): i for i, u in enumerate(model.units)}  # tied units share keys
        self.lock = threading.Lock()
        self.live: set[int] = set()
        self.peak = 0
        self.threads: dict[int, list[threading.Thread]] = {}
        self.started = {i: threading.Event() for i in range(len(model.units))}
        read, free = streamed_model.read_tensors, StreamedModel._free

        def counted_read(files: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
            i = self.unit[id(keys)]
            with self.lock:
                self.live.add(i)
                self.peak = max(self.peak, len(self.live))
                self.threads.setdefault(i, []).append(threading.current_thread())
            self.started[i].set()
            return read(files, keys)

        def counted_free(model: StreamedModel, unit: streamed_model.Unit) -> None:
            free(model, unit)
            with self.lock:
                self.live.discard(self.unit[id(unit.keys)])

        monkeypatch.setattr(streamed_model, "read_tensors", counted_read)
        monkeypatch.setattr(StreamedModel, "_free", counted_free)


@pytest.fixture
def llama(convparity_round_trip: Callable) -> Any:
    return convparity_round_trip("llama", next(iter(FAMILIES["llama"].cases)))


@pytest.mark.parametrize(("family", "case"), FIRST, ids=[f"{f}-{c}" for f, c in FIRST])
def test_the_next_unit_is_read_on_a_thread_while_one_runs_and_two_at_most_are_held(
        family: str, case: str, convparity_round_trip: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = convparity_round_trip(family, case)
    model = StreamedModel(rt.model_dir, loading=FAMILIES[family].loading, prefetch=True)
    reads = Reads(model, monkeypatch)
    waited: list[bool] = []
    for i, unit in enumerate(model.units):  # after the model's own hook (load, then the read ahead starts)
        if i in model._next:
            model.model.get_submodule(unit.path).register_forward_pre_hook(
                lambda *_, following=model._next[i]: waited.append(reads.started[following].wait(timeout=30)))
    out = model(make_tokens(rt.vocab_size))
    assert waited and all(waited)  # every read ahead was under way before the unit ahead of it computed
    first = min(model._next, key=lambda i: i in model._next.values())
    assert [t is MAIN for t in reads.threads.pop(first)] == [True]
    assert all(t is not MAIN for threads in reads.threads.values() for t in threads)
    assert reads.peak == 2 and not reads.live  # two units at the peak, none once the run is over
    assert len(out.block_states) == len(model.block_names)


def test_without_prefetch_one_unit_is_held_and_the_logits_are_the_same(
        llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = make_tokens(llama.vocab_size)
    ahead = StreamedModel(llama.model_dir, prefetch=True)(tokens).logits
    model = StreamedModel(llama.model_dir, prefetch=False)
    reads = Reads(model, monkeypatch)
    assert torch.equal(model(tokens).logits, ahead)
    assert reads.peak == 1 and all(t is MAIN for threads in reads.threads.values() for t in threads)


def test_a_wrong_guess_of_the_next_unit_costs_a_read_not_a_bit(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = make_tokens(llama.vocab_size)
    model = StreamedModel(llama.model_dir, prefetch=True)
    expected = model(tokens).logits
    learned = dict(model._next)
    model._next = {i: i for i in range(len(model.units))}  # every guess wrong: the unit that has just run
    reads = Reads(model, monkeypatch)
    assert torch.equal(model(tokens).logits, expected)
    assert model._next == learned  # the order is learned again from the run
    # each unit read when it runs, on the main thread, then once more for nothing, ahead, on a thread
    assert {i: [t is MAIN for t in threads] for i, threads in reads.threads.items()} == dict.fromkeys(
        range(len(model.units)), [True, False])


def test_an_error_in_the_reading_thread_is_raised_unchanged(llama: Any, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    read = streamed_model.read_tensors

    def failing(files: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
        if any(".layers.1." in k for k in keys):
            raise ConversionError("cannot read model.layers.1 from its file")
        return read(files, keys)

    monkeypatch.setattr(streamed_model, "read_tensors", failing)
    model = StreamedModel(llama.model_dir, prefetch=True)
    with pytest.raises(ConversionError, match="^cannot read model.layers.1 from its file$"):
        model(make_tokens(llama.vocab_size))
    assert all(p.device.type == "meta" for p in model.model.parameters())  # what was loaded is freed
    source = llama.model_dir.parent / "source"
    assert main(["verify", "llama", str(source), str(llama.model_dir), "--quiet"]) == 2
    assert capsys.readouterr().err == "convparity: error: cannot read model.layers.1 from its file\n"


def test_ctrl_c_does_not_wait_for_a_read_under_way(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with _slow_block_1(monkeypatch) as read:
        model = StreamedModel(llama.model_dir, prefetch=True)
        block_0 = model.model.get_submodule("model.layers.0")
        block_0.register_forward_hook(lambda *_: _interrupt())  # Ctrl-C while block 1 is being read
        with pytest.raises(KeyboardInterrupt):
            model(make_tokens(llama.vocab_size))
        assert not read["finished"].is_set()  # the read under way was never waited for


def test_ctrl_c_interrupts_a_wait_for_a_read(llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with _slow_block_1(monkeypatch) as read:
        model = StreamedModel(llama.model_dir, prefetch=True)
        previous = signal.signal(signal.SIGALRM, lambda *_: _interrupt())
        model.model.get_submodule("model.layers.0").register_forward_hook(lambda *_: signal.alarm(1))
        try:
            with pytest.raises(KeyboardInterrupt):
                model(make_tokens(llama.vocab_size))  # block 1 waits for its read, which waits for the test
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        assert not read["finished"].is_set()  # interrupted while the read it waited for was still under way


def test_the_reference_on_its_own_device_runs_beside_the_converted_model_to_the_same_numbers(
        llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = llama.model_dir.parent / "source"
    alone = verify(FAMILIES["llama"], source, llama.model_dir).as_dict()
    converted_started = threading.Event()
    threads: list[threading.Thread] = []
    reference = verify_module._reference
    streamed_before = StreamedModel._before

    def watched_reference(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        assert threads[-1] is not MAIN and converted_started.wait(timeout=30)  # the two sides at once
        return reference(*args, **kwargs)

    def watched_before(model: StreamedModel, index: int) -> Callable[..., None]:
        hook = streamed_before(model, index)
        return lambda *args: (converted_started.set(), hook(*args))[1]

    monkeypatch.setattr(verify_module, "_reference", watched_reference)
    monkeypatch.setattr(StreamedModel, "_before", watched_before)
    beside = verify(FAMILIES["llama"], source, llama.model_dir, reference_device="cpu").as_dict()
    assert len(threads) == 2 and all(t is not MAIN for t in threads)  # the float32 run, then the noise run
    assert beside.pop("device") == "cpu, reference on cpu" and alone.pop("device") == "cpu"
    for timing in ("seconds", "peak_rss_gib"):
        beside.pop(timing), alone.pop(timing)
    assert beside == alone and beside["verdict"] == "PASS"


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="a second CUDA device is present")
@pytest.mark.parametrize(("flags", "message"), [
    (["--reference-device", "cuda:1"], "--reference-device cuda:1: "),
    (["--device", "cuda:1"], "--device cuda:1: "),
    (["--reference-device", "gpu"], "--reference-device gpu: not a device torch knows; expected cpu, cuda or cuda:N"),
], ids=["reference-cuda-1", "device-cuda-1", "not-a-device"])
def test_a_device_that_does_not_exist_is_one_line(flags: list[str], message: str, llama: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["verify", "llama", str(llama.model_dir.parent / "source"), str(llama.model_dir), "--quiet", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convparity: error: {message}") and err.count("\n") == 1
    assert "no CUDA device" in err or "CUDA device(s)" in err or "not a device" in err


@contextmanager
def _slow_block_1(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, threading.Event]]:
    """``read_tensors`` of block 1 blocks until the test ends (a slow disk): events ``release`` and ``finished``."""
    events = {"release": threading.Event(), "finished": threading.Event()}
    read = streamed_model.read_tensors

    def slow(files: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
        if any(".layers.1." in k for k in keys):
            events["release"].wait(timeout=20)
            events["finished"].set()
        return read(files, keys)

    monkeypatch.setattr(streamed_model, "read_tensors", slow)
    try:
        yield events
    finally:
        events["release"].set()


def _interrupt() -> None:
    raise KeyboardInterrupt
