"""results.png: how many times better genro_tasks is than each peer, per metric (log scale)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from _report import GENRO, PEERS, REASONS, TABLES, Summary, advantage, median

LABELS = {
    ("throughput", "tps"): "throughput",
    ("roundtrip", "median_us"): "round trip",
    ("cancel", "cancel_ms"): "cancel",
    ("cancel", "restore_ms"): "capacity\nrestore",
    ("cancel", "worker_gone_ms"): "worker gone\nafter cancel",
    ("startup_2", "ready_ms"): "startup\n2 workers",
    ("startup_8", "ready_ms"): "startup\n8 workers",
    ("echo", "echo_s"): "big payload\necho",
    ("scale_big", "bytes_per_task"): "memory per\nqueued task",
    ("scale_big", "drain_tps"): "drain\nmany queued",
    ("scale_small", "drain_tps"): "drain\n1k queued",
}


def write_chart(path: Path, s: Summary, meta: dict[str, Any]) -> None:
    tables = [
        t
        for t in TABLES
        if median(s, t.key, GENRO, t.value) is not None and any(median(s, t.key, p, t.value) for p in PEERS)
    ]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.25 * len(tables) + 2), 5.5))
    width = 0.8 / len(PEERS)
    for i, peer in enumerate(PEERS):
        xs: list[float] = []
        ys: list[float] = []
        for j, t in enumerate(tables):
            genro, other = median(s, t.key, GENRO, t.value), median(s, t.key, peer, t.value)
            if genro is not None and other is not None and math.isfinite(adv := advantage(t, genro, other)):
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(adv)
            else:  # cannot, n/a or error: say so where the bar would be
                word = REASONS.get((t.key, peer), "n/a").split(":")[0]
                x = j - 0.4 + width * (i + 0.5)
                ax.text(x, 1.05, word, fontsize=6, rotation=90, ha="center", va="bottom", color="gray")
        bars = ax.bar(xs, ys, width, label=peer)
        ax.bar_label(bars, labels=[f"{y:.2g}" for y in ys], fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(tables)), [LABELS.get((t.key, t.value), t.key) for t in tables], fontsize=8)
    ax.set_ylabel("genro_tasks advantage (x, log scale)\n> 1: genro_tasks better, < 1: the peer is better")
    ax.set_title(
        f"genro_tasks vs peers, medians of {meta['rounds']} interleaved round(s), {meta['mode']} run, {meta['date']}",
        fontsize=10,
    )
    ax.legend(title="peer", fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
