"""results.png: how many times better genro_tasks is than each peer, one small panel per metric.

Every panel lists the same peer rows in the same order (each peer at its default start
method, then at forkserver), so a reader can compare peers side by side and metrics
at a glance: a bar to the right of the line at 1x means genro_tasks is ahead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from _libs import BY_KEY, MP_DEFAULT, PEERS
from _report import CANCEL_RETURNS_EARLY, REASONS, TABLES, Summary, Table, advantage, median

LABELS = {
    ("throughput", "tps"): "throughput",
    ("roundtrip", "median_us"): "sequential round trip",
    ("roundtrip_one_core", "median_us"): "round trip, one CPU",
    ("cancel", "cancel_ms"): "cancel latency",
    ("cancel", "restore_ms"): "capacity restore after cancel",
    ("cancel", "worker_gone_ms"): "cancelled worker gone",
    ("startup_2", "ready_ms"): "startup, 2 workers",
    ("startup_8", "ready_ms"): "startup, 8 workers",
    ("echo", "echo_s"): "big payload echo",
    ("scale_big", "bytes_per_task"): "memory per queued task",
    ("scale_big", "drain_tps"): "drain, many queued",
    ("scale_small", "drain_tps"): "drain, 1k queued",
}
AHEAD, BEHIND, ASIDE = "#2e7d32", "#c62828", "#9e9e9e"


def _fmt(v: float) -> str:
    return f"{v:.0f}x" if v >= 10 else f"{v:.2g}x"


COLS = 4


def _panel_tables(s: Summary) -> list[Table]:
    """The tables with a genro_tasks figure and at least one peer figure."""
    return [
        t
        for t in TABLES
        if median(s, t.key, t.subject, t.value) is not None
        and any(median(s, t.key, p, t.value) is not None for p in PEERS)
    ]


def short_label(key: str, mp_default: str) -> str:
    """``family: start method`` with a ``*`` for the library's default start method."""
    lib = BY_KEY[key]
    if lib.family == "anyio":
        return "anyio: subprocess (only)"
    start = mp_default if lib.start == MP_DEFAULT else lib.start
    return f"{lib.family}: {start}{' *' if lib.default_start else ''}"


def write_chart(path: Path, s: Summary, meta: dict[str, Any]) -> None:
    """Draw the panels (log scale, 1x line, bar labels) and save them to ``path``."""
    tables = _panel_tables(s)
    rows = max(1, math.ceil(len(tables) / COLS))
    labels = [short_label(p, meta["default_start_method"]) for p in PEERS]
    height = 0.3 * len(PEERS) * rows + 1.0 * rows + 1.4
    fig, axes = plt.subplots(rows, COLS, figsize=(3.3 * COLS + 1.8, height), squeeze=False, sharey=True)
    ys = list(range(len(PEERS)))[::-1]
    for ax, t in zip(axes.flat, tables, strict=False):
        genro = median(s, t.key, t.subject, t.value)
        assert genro is not None
        values: list[float] = []
        for p in PEERS:
            other = median(s, t.key, p, t.value)
            values.append(advantage(t, genro, other) if other is not None else math.nan)
        finite = [v for v in values if math.isfinite(v)]
        lo, hi = min([*finite, 1 / 3]), max([*finite, 3.0])
        ax.set_xscale("log")
        ax.set_xlim(lo / 3, hi * 3)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        for y, v, p in zip(ys, values, PEERS, strict=True):
            if math.isfinite(v):
                ahead = v >= 1
                # A cancel that returns before the worker has exited is drawn aside (grey): not comparable.
                early = (t.key, t.value) == ("cancel", "cancel_ms") and BY_KEY[p].family in CANCEL_RETURNS_EARLY
                color = ASIDE if early else AHEAD if ahead else BEHIND
                ax.barh(y, v - 1 if ahead else 1 - v, left=1.0 if ahead else v, color=color)
                text = _fmt(v) + ("\nbefore exit" if early else "")
                x = v * (1.1 if ahead else 1 / 1.1)
                ax.text(x, y, text, va="center", fontsize=6 if early else 7, ha="left" if ahead else "right")
            else:
                word = REASONS.get((t.key, p), "not run").split(":")[0]
                ax.text(1.0, y, f" {word}", va="center", fontsize=7, color="gray")
        ax.axvline(1.0, color="black", linewidth=0.8)
        better = "higher" if t.higher_better else "lower"
        ax.set_title(f"{LABELS.get((t.key, t.value), t.key)}\n({t.unit}, {better} is better)", fontsize=9)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="both", alpha=0.25)
    for ax in list(axes.flat)[len(tables) :]:
        ax.set_visible(False)
    draft = "" if meta.get("publishable", True) else " - NOT PUBLISHABLE (uncommitted changes)"
    fig.suptitle(
        "genro_tasks advantage over each peer: x times better (green, right of 1x: genro_tasks ahead; "
        "* = the library's default start method)\n"
        f"medians of {meta['rounds']} interleaved round(s), {meta['mode']} run, commit "
        f"{str(meta.get('commit', '?'))[:10]}, {meta['date']}{draft}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
