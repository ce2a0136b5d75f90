"""Every library variant the benchmark runs: which library, which worker start method, how it is driven.

A *variant* is one row of the result tables. Each peer runs with its default start
method and with its best one (forkserver), so a reader can tell the start method's
share of a difference from the library's. Stdlib only: both the runner and the
measurement processes import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

GENRO = "genro_tasks"
#: The floor rows (no library): a bare pipe to a child process.
RAW = "raw"
#: Placeholder for "whatever multiprocessing's default start method is here".
MP_DEFAULT = "mp-default"


@dataclass(frozen=True)
class Lib:
    """One library variant: a results key, its library, its start method and how it is driven."""

    key: str
    family: str
    start: str
    default_start: bool
    driven: str
    #: The start method the measurement asks for (None: the library's own default).
    method: str | None = None
    #: What the rows call it, when not just its library (a variant with a store or another backend).
    name: str | None = None

    @property
    def is_peer(self) -> bool:
        return self.family not in (GENRO, RAW)

    def label(self, mp_default: str) -> str:
        """Row label: the library, its start method, and whether that is the library's default.

        Args:
            mp_default: multiprocessing's default start method on the measuring machine.
        """
        start = self.start.replace(MP_DEFAULT, f"{mp_default}, multiprocessing's default")
        if self.default_start and MP_DEFAULT not in self.start and self.family != RAW:
            start += ", its default"
        return f"{self.name or self.family} ({start})"


_TP = (
    "`open_worker_context(idle_timeout=inf, worker_type=...)` held open; a batch goes through a memory "
    "channel read by one consumer task per worker, each awaiting `ctx.run_sync(kill_on_cancel=True, "
    "limiter=CapacityLimiter(workers))`; a single call awaits `ctx.run_sync` directly"
)
_ANYIO = (
    "`anyio.to_process.run_sync(cancellable=True, limiter=CapacityLimiter(workers))` (trio backend); a batch "
    "goes through a memory object stream read by one consumer task per worker; a single call awaits "
    "`run_sync` directly. anyio has no start-method option: workers are `python -m` subprocesses"
)
_PPE = (
    "`ProcessPoolExecutor(max_workers, mp_context=...)`; a batch is `submit` of every job then "
    "`as_completed` in one helper thread (`trio.to_thread`); a single call awaits one future through "
    "a done-callback; it cannot cancel a running job"
)
_MP_POOL = (
    "`multiprocessing.Pool(workers)`: `imap(fn, items, chunksize=1)` consumed in one helper thread (`tm.map` rows only)"
)
_PEBBLE = (
    "`pebble.ProcessPool(max_workers, context=...)`; `schedule` per job, futures awaited through "
    "done-callbacks (a batch: `as_completed` in one helper thread); `future.cancel()` kills the worker"
)

LIBS: tuple[Lib, ...] = (
    Lib(
        GENRO,
        GENRO,
        "forkserver",
        True,
        "`TaskManager(max_workers)`: a batch is `submit` of every job, then `gather`; "
        "a single call is `run`; `cancel` / `watch`",
    ),
    Lib(f"{GENRO}+spawn", GENRO, "spawn", False, "as above, `start_method='spawn'` (start-method rows only)", "spawn"),
    Lib("trio_parallel", "trio_parallel", "spawn", True, _TP),
    Lib("trio_parallel+forkserver", "trio_parallel", "forkserver", False, _TP, "forkserver"),
    Lib("anyio", "anyio", "`python -m` subprocess, no start-method option", False, _ANYIO),
    Lib("ppe", "ppe", MP_DEFAULT, True, _PPE),
    Lib("ppe+forkserver", "ppe", "forkserver", False, _PPE, "forkserver"),
    Lib("pebble", "pebble", MP_DEFAULT, True, _PEBBLE),
    Lib("pebble+forkserver", "pebble", "forkserver", False, _PEBBLE, "forkserver"),
    Lib("mp_pool", "mp_pool", MP_DEFAULT, True, _MP_POOL),
    # Rows for capabilities still to land (issue 16, item 7): planned, skipped while absent.
    Lib(
        f"{GENRO}+store",
        GENRO,
        "forkserver",
        True,
        "`TaskManager(store=path)` on the shared SQLite store, driven as above",
        name=f"{GENRO} on the SQLite store",
    ),
    Lib(
        f"{GENRO}+ray",
        GENRO,
        "Ray workers",
        True,
        "`TaskManager(backend=RayBackend())`, driven as above",
        name=f"{GENRO} on Ray",
    ),
    Lib("ray", "ray", "Ray workers", True, "plain Ray: `ray.remote` tasks, `ray.cancel(force=True)`"),
    Lib(RAW, RAW, "subprocess / forkserver", True, "no library: a bare pipe to a child process (the floor)"),
)
BY_KEY = {lib.key: lib for lib in LIBS}
KEYS = tuple(BY_KEY)
#: The peers of the process-pool metrics (plain Ray has rows of its own).
PEERS = tuple(lib.key for lib in LIBS if lib.is_peer and lib.family != "ray")
#: Peers measured only by the map rows (they have no pool adapter).
MAP_ONLY = ("mp_pool",)
#: Every variant that runs the pool metrics (genro_tasks at its default, every peer variant).
POOL_LIBS = (GENRO, *(key for key in PEERS if BY_KEY[key].family not in MAP_ONLY))
#: The variants of the ``tm.map`` rows: genro_tasks and the peers' own map functions.
MAP_LIBS = (GENRO, "ppe", "ppe+forkserver", "pebble", "pebble+forkserver", "mp_pool")


def start_method(key: str) -> str | None:
    """The multiprocessing start method a variant asks for (None: the library's own default)."""
    return BY_KEY[key].method
