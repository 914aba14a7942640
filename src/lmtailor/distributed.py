"""Several processes (``accelerate launch``, ``torchrun``): who this process is, who writes, how the processes agree.

Every helper is a no-op in a single process, and torch.distributed is initialised only when a launcher started
several processes (``WORLD_SIZE`` > 1). Then ``setup()`` joins the launcher's process group through Accelerate (the
group the Hugging Face Trainer then uses for DDP, FSDP or DeepSpeed: gloo on CPUs, nccl on GPUs) and opens a second,
gloo group for lmtailor's own messages (the run directory, each row's outcome). Keeping them apart means lmtailor's
messages never pair up with a gradient all-reduce of a process that is still training while another has failed.

Timeouts: ``LMTAILOR_DIST_TIMEOUT`` seconds (default 1800, PyTorch's and Transformers' default) bound any wait in
the training group; lmtailor's group waits twice as long, so a process stuck behind a failed peer times out in
training first and can then report to the others instead of both giving up at once.
"""

from __future__ import annotations

import atexit
import logging
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

from lmtailor.errors import UserError

T = TypeVar("T")
_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")  # torchrun, then MPI launchers
_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
TIMEOUT_ENV = "LMTAILOR_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800
_control: Any = None  # lmtailor's gloo process group, once setup() ran


class MainProcessError(RuntimeError):
    """Work only the main process does (writing the run directory) failed; every process raises this."""


class ProcessesOutOfStep(UserError):
    """The processes can no longer be trusted to meet in the same collective: the run stops, resumable."""


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def world_size() -> int:
    """Number of processes the launcher started (1 without a launcher)."""
    return _env_int(_SIZE_VARS, 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _env_int(_RANK_VARS, 0)


def is_distributed() -> bool:
    """True when a launcher started more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """True on the process that writes the run directory (global rank 0, or the only process)."""
    return rank() == 0


def machines() -> int:
    """Number of machines the processes run on (world size / processes per machine; 1 without a launcher)."""
    return max(1, world_size() // max(1, _env_int(_LOCAL_SIZE_VARS, world_size())))


def timeout_s() -> int:
    """Seconds any process waits for the others in a collective (``LMTAILOR_DIST_TIMEOUT``, default 1800)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = int(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={raw!r} is not a whole number of seconds; e.g. {TIMEOUT_ENV}=600") from None
    if value < 1:
        raise UserError(f"{TIMEOUT_ENV} must be at least 1 second, not {value}")
    return value


def setup(cpu: bool) -> None:
    """Join the launcher's process group (``cpu``: gloo even where CUDA exists) and open lmtailor's message group.

    Call before any model is loaded: on GPUs Accelerate then makes ``cuda`` mean this process's own device. A no-op
    in one process and when already set up; the Trainer later finds the group initialised and uses it.
    """
    global _control
    if not is_distributed() or _control is not None:
        return
    import torch.distributed as dist
    from accelerate import PartialState

    timeout = timedelta(seconds=timeout_s())
    PartialState(cpu=cpu, timeout=timeout)  # init_process_group from the launcher's environment (rank, master)
    _control = dist.new_group(backend="gloo", timeout=2 * timeout)
    atexit.register(_shutdown)


def align_launcher_precision(precision: str) -> str | None:
    """Make Accelerate's launcher precision (``--mixed_precision``) the runtime's; say so when they differed.

    The Trainer takes ``ACCELERATE_MIXED_PRECISION`` from the launcher when the runtime's dtype is fp32, so
    ``accelerate launch --mixed_precision bf16`` would switch on bf16 behind an fp32 runtime: lmtailor's runtime
    decides precision (lmtailor.runtime), in one process or several.
    """
    wanted = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    given = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if given is None:
        return None
    os.environ["ACCELERATE_MIXED_PRECISION"] = wanted
    if given.lower() in (wanted, "no"):
        return None
    return (f"accelerate launch asked for mixed precision {given!r}, but this run's precision is {precision} "
            "(runtime.precision in the experiment decides it); training uses " + precision)


def weights_checksum(model: Any) -> float:
    """A float64 sum over every parameter: equal on two processes when their copies of the model are identical.

    Summed in chunks, so the float64 copy never holds more than a few million values of a large tensor at once.
    """
    import torch

    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            for chunk in p.detach().reshape(-1).split(1 << 22):
                total += float(chunk.double().sum())
    return total


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()  # PyTorch warns about (and may leak) a group left open at exit


def _group() -> Any:
    """lmtailor's message group, set up on first use (CPU unless CUDA is there) when several processes run."""
    if _control is None:
        import torch

        setup(cpu=not torch.cuda.is_available())
    return _control


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier(group=_group())


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as process ``src`` has it, on every process (any picklable object)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=_group())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_group())
    return out


def all_reduce_sum(value: int | float) -> int | float:
    """The sum of ``value`` over every process (an int stays an int)."""
    if not is_distributed():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64 if isinstance(value, int) else torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=_group())
    return t.item()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only; every process returns its result, or raises the same error.

    Every process must call it (the outcome is broadcast). A failure on the main process travels as a message, so
    the others raise it too instead of waiting for the main one at the next collective; and because every process
    raises the same error (a ``UserError`` keeps its message, anything else becomes a ``MainProcessError`` naming
    it, chained to the original on the main process), a row that fails this way fails alike everywhere.
    """
    if not is_distributed():
        return fn()
    result, failure = None, None
    if is_main_process():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - shared first, raised right after
            failure = e
    shared = broadcast_object((result, None if failure is None else
                               (type(failure).__name__, str(failure), isinstance(failure, UserError))))
    if shared[1] is None:
        return shared[0]
    kind, message, is_user_error = shared[1]
    if is_user_error:
        raise UserError(message) from failure
    raise MainProcessError(f"the main process failed: {kind}: {message}") from failure


def check_same(value: Any, what: str) -> None:
    """Raise on every process unless every process has the same ``value`` (e.g. a digest of the data splits)."""
    values = gather_objects(value)
    if any(v != values[0] for v in values):
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise UserError(f"the processes disagree on {what} (ranks {differing} differ from rank 0): every process "
                        "must read the same data and experiment; check that the data files are the same everywhere")


class _RankPrefix(logging.Filter):
    """Prefixes a log message with this process's rank, once even when several handlers see the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_lmtailor_rank", False):
            record.msg, record._lmtailor_rank = f"[rank {rank()}] {record.msg}", True
        return True


@contextmanager
def rank_logging(logger_name: str = "lmtailor") -> Iterator[None]:
    """On processes other than the main one: only warnings and errors, prefixed with the rank, and no Hugging Face
    progress bars (the main process logs the run, and its log says what every process did)."""
    if not is_distributed() or is_main_process():
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    logger, prefix = logging.getLogger(logger_name), _RankPrefix()
    handlers, level = list(logging.getLogger().handlers), logger.level
    bars = (datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled())
    for h in handlers:
        h.addFilter(prefix)
    logger.setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        for h in handlers:
            h.removeFilter(prefix)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            hf_logging.enable_progress_bar()
