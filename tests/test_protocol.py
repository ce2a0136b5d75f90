"""The wire format: named messages, one sans-IO framer, and max_message_size.

The first half unit-tests genro_tasks_worker._protocol and ._framing with hypothesis
(random messages cut at random chunk boundaries); the second half checks
the promises with real worker processes: a frame header is not a memory
grant, and a message over the limit fails only its own task.
"""

from __future__ import annotations

import random
import resource
import tracemalloc

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genro_tasks import MessageTooLarge, RemoteError, TaskManager, TaskStatus, WorkerCrashed
from genro_tasks_worker._framing import Framer
from genro_tasks_worker._protocol import (
    DONE_OK,
    HEADER_SIZE,
    JOB,
    MIN_MAX_MESSAGE_SIZE,
    PROGRESS,
    WORKER_KINDS,
    DoneBadResult,
    DoneError,
    DoneOk,
    DoneTooLarge,
    Failure,
    FrameTooLarge,
    InitFailed,
    Job,
    Message,
    Progress,
    ProtocolError,
    Ready,
    Started,
    WorkerMessage,
    decode,
    encode,
    encode_within,
    pack_header,
)
from jobs import simple_task, slow_task
from jobs_proto import (
    blob_size,
    claim_frame_for_other_task,
    claim_huge_result,
    raise_huge_error,
    report_huge_progress,
    return_bytes,
    worker_pid,
)

ALL_KINDS = WORKER_KINDS | {JOB}
GiB = 1 << 30
MiB = 1 << 20

# ------------------------------------------------------------------ strategies
seqs = st.integers(0, 2**64 - 1)
# Any code point, lone surrogates included (the worker may hold such text).
texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=50)
big_blobs = st.integers(60_000, 400_000).map(lambda n: random.Random(n).randbytes(n))
blobs = st.binary(max_size=200) | big_blobs
failures = st.builds(Failure, st.none() | blobs, texts, texts, texts)
worker_messages: st.SearchStrategy[WorkerMessage] = st.one_of(
    st.builds(Ready, seqs),
    st.builds(Started, seqs),
    st.builds(Progress, seqs, st.none() | st.floats(0.0, 1.0), st.none() | texts),
    st.builds(DoneOk, seqs, blobs),
    st.builds(DoneError, seqs, failures),
    st.builds(DoneBadResult, seqs, texts, texts),
    st.builds(DoneTooLarge, seqs, texts, seqs),
    st.builds(InitFailed, seqs, failures),
)
messages: st.SearchStrategy[Message] = worker_messages | st.builds(Job, seqs, blobs)
chunk_sizes = st.lists(st.integers(1, 100_000), min_size=1, max_size=20) | st.just([1])

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _stream(msgs: list[Message]) -> bytes:
    return b"".join(header + body for header, body in map(encode, msgs))


def _feed_in_chunks(framer: Framer, data: bytes, sizes: list[int], out: list[Message]) -> None:
    pos = 0
    turn = 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        turn += 1
        framer.feed(data[pos : pos + size], out)
        pos += size


def _same(got: list[Message], want: list[Message]) -> None:
    assert [type(m) for m in got] == [type(m) for m in want]
    assert got == want


# ------------------------------------------------------------------ properties
@PROPERTY
@given(st.lists(messages, max_size=12), chunk_sizes)
def test_round_trip_at_any_chunk_boundaries(msgs: list[Message], sizes: list[int]) -> None:
    data = _stream(msgs)
    if sizes == [1] and len(data) > 50_000:
        sizes = [7]  # byte by byte only for streams that stay quick
    framer = Framer(ALL_KINDS, 1 << 40)
    out: list[Message] = []
    _feed_in_chunks(framer, data, sizes, out)
    _same(out, msgs)
    assert framer.idle


@PROPERTY
@given(st.lists(st.binary(max_size=40) | texts.map(lambda t: t.encode("utf-8", "surrogatepass")), max_size=30))
def test_round_trip_byte_by_byte(bodies: list[bytes]) -> None:
    msgs: list[Message] = [DoneOk(i, b) for i, b in enumerate(bodies)]
    msgs += [Progress(i, None, b.decode("latin-1")) for i, b in enumerate(bodies)]
    framer = Framer(ALL_KINDS, MIN_MAX_MESSAGE_SIZE)
    out: list[Message] = []
    for byte in _stream(msgs):
        framer.feed(bytes([byte]), out)
    _same(out, msgs)


@PROPERTY
@given(st.lists(worker_messages, max_size=5), st.integers(0, 255), seqs, st.integers(0, 2**64 - 1), chunk_sizes)
def test_corrupt_header_is_detected(
    msgs: list[WorkerMessage], kind: int, seq: int, length: int, sizes: list[int]
) -> None:
    framer = Framer(WORKER_KINDS, 1 << 40)
    bad_kind = kind if kind not in WORKER_KINDS else JOB  # a kind the parent never accepts
    data = _stream(list(msgs)) + pack_header(bad_kind, seq, length) + b"junk" * 10
    out: list[Message] = []
    with pytest.raises(ProtocolError, match=r"corrupt frame header|over max_message_size"):
        _feed_in_chunks(framer, data, sizes, out)
    _same(out, list(msgs))  # everything before the bad header, nothing after it
    with pytest.raises(ProtocolError, match="already broke"):
        framer.feed(b"x", out)


@PROPERTY
@given(st.lists(worker_messages, max_size=5), st.sampled_from(sorted(WORKER_KINDS)), seqs, st.integers(1, 10_000))
def test_over_limit_header_raises_before_any_body(msgs: list[WorkerMessage], kind: int, seq: int, excess: int) -> None:
    limit = 5_000
    framer = Framer(WORKER_KINDS, limit)
    out: list[Message] = []
    small = [m for m in msgs if len(encode(m)[1]) <= limit]
    framer.feed(_stream(list(small)), out)
    header = pack_header(kind, seq, limit + excess)
    framer.feed(header[:-1], out)  # one byte short of a header: nothing to decide yet
    with pytest.raises(FrameTooLarge) as caught:
        framer.feed(header[-1:], out)  # no body byte was ever offered
    assert (caught.value.kind, caught.value.seq, caught.value.length) == (kind, seq, limit + excess)
    assert f"max_message_size={limit:,}" in str(caught.value)
    _same(out, list(small))


@PROPERTY
@given(messages, st.integers(1, 64))
def test_header_check_runs_before_the_body_is_buffered(msg: Message, first: int) -> None:
    header, body = encode(msg)
    data = header + body
    calls: list[tuple[int, int, int]] = []

    def refuse(kind: int, seq: int, length: int) -> None:
        calls.append((kind, seq, length))
        raise ProtocolError("not this worker's task")

    framer = Framer(ALL_KINDS, 1 << 40, refuse)
    out: list[Message] = []
    cut = HEADER_SIZE + first
    if len(data) <= cut:  # arrives whole: simply delivered
        framer.feed(data, out)
        _same(out, [msg])
        assert calls == []
        return
    with pytest.raises(ProtocolError, match="not this worker's"):
        framer.feed(data[:cut], out)
    kind, _seq, length = calls[0]
    assert (kind, length) == (header[0], len(body))
    assert out == []


@PROPERTY
@given(st.sampled_from(sorted(ALL_KINDS)), seqs, st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(kind: int, seq: int, body: bytes) -> None:
    try:
        msg = decode(kind, seq, body)
    except ProtocolError:
        return
    header, _body = encode(msg)
    assert header[0] == kind


def test_unknown_kind_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown message kind 99"):
        decode(99, 1, b"")


def test_a_huge_claim_costs_memory_only_as_bytes_arrive() -> None:
    """A header claiming 2 GiB within the limit: the buffer grows with the data."""
    framer = Framer(WORKER_KINDS, 4 * GiB)
    out: list[Message] = []
    tracemalloc.start()
    try:
        framer.feed(pack_header(DONE_OK, 7, 2 * GiB) + b"x" * 100, out)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 4 * MiB
        chunk = b"y" * MiB
        for _ in range(8):  # 8 MiB more: the buffer at most doubles past what arrived
            framer.feed(chunk, out)
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 64 * MiB
    finally:
        tracemalloc.stop()
    assert out == []
    assert not framer.idle


@pytest.mark.parametrize(
    ("msg", "what"),
    [
        (DoneOk(5, b"r" * (2 * MiB)), DoneTooLarge(5, "result", 2 * MiB)),
        (DoneError(5, Failure(b"p" * MiB, "ValueError", "m" * MiB, "t" * MiB)), DoneError),
        (InitFailed(5, Failure(None, "E" * 2 * MiB, "m", "t")), InitFailed),
        (DoneBadResult(5, "T", "why" * MiB), DoneBadResult),
        (Progress(5, 0.5, "\U0001f600" * MiB), Progress),
    ],
)
def test_a_worker_never_sends_over_the_limit(msg: WorkerMessage, what: object) -> None:
    limit = MIN_MAX_MESSAGE_SIZE
    header, body = encode_within(msg, limit)
    assert len(body) <= limit
    got = decode(header[0], 5, body)
    if isinstance(what, DoneTooLarge):
        assert got == what
        return
    assert isinstance(got, what)  # type: ignore[arg-type]
    if isinstance(got, DoneError):
        assert got.failure.exc_bytes is None
        assert got.failure.type_name == "ValueError"
        assert "cut to fit max_message_size" in got.failure.message
        assert got.failure.traceback.endswith("t" * 100)


def test_progress_kind_is_sent_small() -> None:
    header, body = encode(Progress(3, 0.25, "half"))
    assert header[0] == PROGRESS
    assert len(body) == 9 + 4


# ------------------------------------------------------------------ real processes
def _max_rss() -> int:
    """Peak resident memory of this (the parent) process, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def test_a_2_gib_header_fails_only_its_task(tasks: TaskManager) -> None:
    """A worker sends 100 bytes under a header claiming 2 GiB (over the default 1 GiB limit)."""
    bystander = tasks.submit(slow_task, 0.5)
    before = _max_rss()
    tid = tasks.submit(claim_huge_result, 2 * GiB, False)  # then keeps running
    with trio.fail_after(30), pytest.raises(MessageTooLarge, match=r"2,147,483,648 bytes, over max_message_size"):
        await tasks.result(tid)
    assert _max_rss() - before < 256 * MiB
    info = await tasks.info(tid)
    assert info.status is TaskStatus.FAILED
    with trio.fail_after(30):
        assert await tasks.result(bystander) == "done"
        assert await tasks.run(simple_task, 21) == 42
    assert tasks.statistics().worker_crashes == 0  # its worker was replaced, not counted as a crash


async def test_a_claim_within_the_limit_is_buffered_only_as_it_arrives() -> None:
    async with TaskManager(1, max_message_size=4 * GiB) as tm:
        before = _max_rss()
        tid = tm.submit(claim_huge_result, 2 * GiB, True)  # 100 bytes, then exit(9)
        with trio.fail_after(30), pytest.raises(WorkerCrashed, match="exited with code 9"):
            await tm.result(tid)
        assert _max_rss() - before < 256 * MiB
        with trio.fail_after(30):
            assert await tm.run(simple_task, 1) == 2


async def test_a_frame_about_another_task_is_refused_at_its_header(tasks: TaskManager) -> None:
    """512 MiB claimed (within the limit) for a task the worker does not run; the body never comes."""
    before = _max_rss()
    tid = tasks.submit(claim_frame_for_other_task, 512 * MiB)
    with trio.fail_after(30), pytest.raises(WorkerCrashed, match=r"corrupt message.*not this worker's"):
        await tasks.result(tid)
    assert _max_rss() - before < 256 * MiB
    with trio.fail_after(30):
        assert await tasks.run(simple_task, 21) == 42


async def test_a_result_over_the_limit_fails_its_task_and_the_worker_serves_on() -> None:
    async with TaskManager(1, max_message_size=MiB) as tm:
        with trio.fail_after(30):
            pid = await tm.run(worker_pid)
            with pytest.raises(
                MessageTooLarge, match=r"its result is 2,097,1\d\d bytes, over max_message_size=1,048,576"
            ):
                await tm.run(return_bytes, 2 * MiB)
            assert await tm.run(worker_pid) == pid  # the worker refused to send it and lived on
            assert await tm.run(return_bytes, 1000) == b"x" * 1000


async def test_an_error_report_over_the_limit_is_cut_to_fit() -> None:
    async with TaskManager(1, max_message_size=MiB) as tm:
        tid = tm.submit(raise_huge_error, 3 * MiB)
        with trio.fail_after(30), pytest.raises(RemoteError, match="cut to fit max_message_size") as caught:
            await tm.result(tid)
        assert caught.value.type_name == "ValueError"
        assert (await tm.info(tid)).status is TaskStatus.FAILED


async def test_a_progress_message_over_the_limit_is_refused_at_the_call() -> None:
    async with TaskManager(1, max_message_size=MiB) as tm:
        with trio.fail_after(30):
            error = await tm.run(report_huge_progress, 2 * MiB)
    assert "max_message_size=1,048,576" in error


async def test_submit_refuses_a_job_over_the_limit() -> None:
    async with TaskManager(1, max_message_size=MiB) as tm:
        with pytest.raises(MessageTooLarge, match=r"Task 'big'.*blob_size.*over max_message_size=1,048,576"):
            tm.submit(blob_size, b"x" * (2 * MiB), task_id="big")
        assert tm.list_tasks() == []
        with trio.fail_after(30):
            assert await tm.run(return_bytes, 10) == b"x" * 10


@pytest.mark.parametrize("bad", [True, 1.5, "1048576", 1000, MiB - 1, (1 << 40) + 1, None])
def test_max_message_size_is_validated_at_the_call(bad: object) -> None:
    with pytest.raises(ValueError, match="max_message_size must be an int of bytes"):
        TaskManager(1, max_message_size=bad)  # type: ignore[arg-type]


def test_message_too_large_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(MessageTooLarge("t1", "result", 3 * MiB, MiB)))
    assert (error.task_id, error.what, error.size, error.limit) == ("t1", "result", 3 * MiB, MiB)
    assert "max_message_size=1,048,576" in str(error)
