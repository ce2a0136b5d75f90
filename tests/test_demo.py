"""The README's main job, `python -m genro_tasks demo`: in a pipe (as CI runs it) and in a terminal."""

from __future__ import annotations

import fcntl
import functools
import os
import re
import signal
import struct
import subprocess
import sys
import termios

import pyte
import pytest
import trio

DEMO = [sys.executable, "-m", "genro_tasks", "demo"]
FRAME = b" done on "  # in the title of each frame of the live table
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9]|[=>78])")


async def run_plain(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        result = await trio.run_process(
            [*DEMO, *args], capture_stdout=True, capture_stderr=True, stdin=subprocess.DEVNULL, check=False
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_demo_runs_non_interactively() -> None:
    code, out, err = await run_plain()
    assert code == 0, out + err
    assert "\x1b[" not in out  # plain lines when stdout is not a terminal
    assert "PENDING" in out  # queued jobs are visibly pending
    assert "reindex-search    CANCELLED" in out
    assert "WorkerCrashed" in out
    assert "SIGSEGV" in out
    assert "TaskTimeout" in out
    assert "1 cancelled, 5 completed, 2 failed" in out


async def test_plain_output_has_no_trailing_spaces_and_whole_words() -> None:
    code, out, err = await run_plain("--plain")
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    # Into a pipe nothing is cut: every outcome is in the summary whole.
    summary = "\n".join(lines[lines.index("Summary") :])
    assert "killed by SIGSEGV (signal 11)" in summary
    assert "exceeded its timeout of 2s and was killed" in summary


# ------------------------------------------------------------------ command line
async def test_help_is_plain_text() -> None:
    for args in (["--help"], ["demo", "--help"]):
        result = await trio.run_process(
            [sys.executable, "-m", "genro_tasks", *args], capture_stdout=True, capture_stderr=True
        )
        text = result.stdout.decode()
        assert result.returncode == 0
        for markup in ("``", ":mod:", ":func:", ":class:"):
            assert markup not in text, text
    assert "Ctrl-C" in text
    assert "--workers N" in text


@pytest.mark.parametrize("value", ["0", "-1", "three", "1000"])
async def test_bad_worker_count_is_an_argument_error(value: str) -> None:
    code, _out, err = await run_plain("--workers", value)
    assert code == 2
    assert "Traceback" not in err
    assert "error: argument --workers:" in err
    assert err.count("\n") == 2  # usage line and error line


# ------------------------------------------------------------------ terminal
def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """The demo in a real pseudo-terminal of a given size, its output fed to a VT100 emulator."""

    def __init__(self, columns: int, lines: int) -> None:
        self.columns = columns
        self.lines = lines
        self.raw = bytearray()
        self.screen = pyte.HistoryScreen(columns, lines, history=1000)
        self.stream = pyte.ByteStream(self.screen)
        self.size = struct.pack("HHHH", lines, columns, 0, 0)
        self.resized_at: int | None = None

    async def run(
        self,
        *args: str,
        interrupt_after: bytes | None = None,
        resize_after: bytes | None = None,
        resize_to: tuple[int, int] = (80, 24),
        frames_before_telling: int = 0,
        command: list[str] = DEMO,
    ) -> int:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, self.size)
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        try:
            # A session of its own whose controlling terminal is the pty, as a shell would start
            # it: a Ctrl-C typed on the terminal then reaches it as SIGINT (and is echoed as ^C).
            proc = await trio.lowlevel.open_process(
                [*command, *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        finally:
            os.close(slave)
        stream = trio.lowlevel.FdStream(master)
        interrupted = told = False
        with trio.fail_after(60):
            while True:
                try:
                    chunk = await stream.receive_some()
                except trio.BrokenResourceError:  # EIO: every process holding the terminal has gone
                    chunk = b""
                if not chunk:
                    break
                self.raw += chunk
                self.stream.feed(chunk)
                if interrupt_after is not None and not interrupted and interrupt_after in self.raw:
                    os.write(master, b"\x03")  # Ctrl-C typed on the terminal
                    interrupted = True
                if resize_after is not None and self.resized_at is None and resize_after in self.raw:
                    # The emulator shrinks its grid, then tells the program: at once, or once that
                    # many frames of the live table, drawn for the old size, have arrived.
                    self.screen.resize(*reversed(resize_to))
                    self.columns, self.lines = resize_to
                    self.resized_at = len(self.raw)
                if (
                    self.resized_at is not None
                    and not told
                    and self.raw[self.resized_at :].count(FRAME) >= frames_before_telling
                ):
                    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", self.lines, self.columns, 0, 0))
                    told = True
            await stream.aclose()
            return await proc.wait()

    def transcript(self, since: int | None = None) -> list[str]:
        """Every line the terminal shows, scrolled-off ones first, without trailing blanks.

        With ``since``, what a terminal of the current size shows of the output from
        that offset on alone, as if it had been blank then.
        """
        screen = self.screen
        if since is not None:
            screen = pyte.HistoryScreen(self.columns, self.lines, history=1000)
            pyte.ByteStream(screen).feed(bytes(self.raw[since:]))
        rows = ["".join(line[x].data for x in range(self.columns)) for line in screen.history.top] + screen.display
        text = [row.rstrip() for row in rows]
        while text and not text[-1]:
            text.pop()
        return text


@pytest.mark.parametrize(("columns", "lines"), [(80, 24), (100, 30), (140, 40)])
async def test_live_view_fits_the_terminal(columns: int, lines: int) -> None:
    term = Terminal(columns, lines)
    code = await term.run()
    text = term.transcript()
    assert code == 0, "\n".join(text)
    # Nothing the demo wrote is wider than the terminal (so nothing wrapped), at any moment.
    plain = ANSI.sub("", term.raw.decode())
    for piece in re.split(r"[\r\n]", plain):
        assert len(piece) <= columns, piece
    check_final_screen(text)


@pytest.mark.parametrize("frames", [0, 3], ids=["told-at-once", "told-late"])
async def test_live_view_redraws_after_the_terminal_narrows(frames: int) -> None:
    term = Terminal(140, 40)
    code = await term.run(resize_after=b"RUNNING", resize_to=(80, 24), frames_before_telling=frames)
    text = term.transcript()
    assert code == 0, "\n".join(text)
    assert term.resized_at is not None
    after = term.raw[term.resized_at :].decode(errors="replace")
    # The screen is cleared (rows already drawn may have been re-wrapped by the terminal),
    # then everything is drawn again for 80 columns.
    assert "\x1b[2J" in after
    drawn_again = after[after.index("\x1b[2J") :]
    for piece in re.split(r"[\r\n]", ANSI.sub("", drawn_again)):
        assert len(piece) <= 80, piece
    # Judged from the clear on. What the terminal kept from before is its own business: a
    # terminal that shrinks keeps its top rows, and the rows of the 140-column table still
    # arriving when it shrank, wrapped in two, can scroll them (the first intro among them)
    # into the scrollback before the clear: by chance when told at once, always when told late.
    cleared = term.resized_at + term.raw[term.resized_at :].index(b"\x1b[2J")
    check_final_screen(term.transcript(since=cleared))


def check_final_screen(text: list[str]) -> None:
    """The terminal holds each thing once, in order: intro, final table, summary."""
    assert sum(line.startswith("genro-tasks demo: 8 jobs") for line in text) == 1
    header = [i for i, line in enumerate(text) if re.match(r"task +progress +% status +time", line)]
    assert len(header) == 1, "\n".join(text)
    table = text[header[0] + 1 : header[0] + 9]
    assert [row.split()[0] for row in table] == [
        "export-report",
        "resize-images",
        "reindex-search",
        "train-model",
        "native-plugin",
        "sync-mailbox",
        "crunch-numbers",
        "build-thumbnails",
    ]
    crashed = table[4]  # it segfaults at 60%: its bar stops there, in the FAILED colour
    assert "FAILED" in crashed
    assert re.search(r" [1-6]0% FAILED", crashed), crashed
    assert "░" in crashed
    assert text[header[0] - 1].startswith("8/8 done")
    assert text[header[0] + 9] == ""
    assert text[header[0] + 10] == "Summary"
    assert text[-1].startswith("1 cancelled, 5 completed, 2 failed in")


async def test_ctrl_c_cancels_the_running_jobs_and_exits_130() -> None:
    term = Terminal(80, 24)
    code = await term.run(interrupt_after=b"RUNNING")
    text = term.transcript()
    assert code == 130, "\n".join(text)
    assert "Traceback" not in term.raw.decode()
    assert re.match(r"Interrupted: [1-3] running jobs and \d queued ones were cancelled", text[-1]), text[-1]
    assert sum("Interrupted" in line for line in text) == 1
    # The echoed ^C did not push the table down a line (which would leave a stray copy of its title).
    assert sum(re.match(r"\d/8 done on 3 workers", line) is not None for line in text) == 1, "\n".join(text)


@pytest.mark.parametrize("when", [b" RUNNING ", b"reindex-search    CANCELLED"])
async def test_ctrl_c_in_a_pipe_is_one_line_too(when: bytes) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            proc = await nursery.start(
                functools.partial(trio.run_process, DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            )
            assert proc.stdout is not None
            assert proc.stderr is not None
            out = b""
            while when not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, out
                out += chunk
            proc.send_signal(signal.SIGINT)
            async for chunk in proc.stdout:
                out += chunk
            err = b"".join([chunk async for chunk in proc.stderr])
    assert proc.returncode == 130, (out + err).decode()
    assert err == b""
    last = out.decode().splitlines()[-1]
    expected = r"Interrupted: [1-3] running jobs and [0-7] queued ones were cancelled; no worker is left\."
    assert re.fullmatch(expected, last), last


WITHOUT_RICH = [
    sys.executable,
    "-c",
    "import sys; sys.modules['rich'] = None; from genro_tasks._demo import main; sys.exit(main(['demo']))",
]


async def test_without_rich_a_terminal_gets_plain_lines_that_fit() -> None:
    term = Terminal(80, 24)
    code = await term.run(command=WITHOUT_RICH)
    text = term.transcript()
    assert code == 0, "\n".join(text)
    assert any("pip install 'genro-tasks[demo]'" in line for line in text)
    plain = ANSI.sub("", term.raw.decode())
    assert "\x1b[" not in term.raw.decode()
    for piece in re.split(r"[\r\n]", plain):
        assert len(piece) <= 80, piece
        assert piece == piece.rstrip()
    assert text[-1].startswith("1 cancelled, 5 completed, 2 failed in")
