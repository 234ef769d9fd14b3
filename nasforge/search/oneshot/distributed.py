"""Distributed supernet training: N processes train one supernet as one process would with the global batch.

``nasforge search SPACE --strategy darts --nproc N`` starts N processes that form a ``torch.distributed``
group (:func:`spawn`), or, when a launcher such as torchrun has set ``RANK`` and ``WORLD_SIZE``, joins the
group it made (:func:`joined`). The backend is NCCL with one GPU per process where CUDA has enough devices,
gloo on the CPU otherwise. What keeps the ranks one search:

* **The same random decisions, never communicated.** Every rank seeds the same generators, so it builds the
  same initial supernet and draws the same data order, the same Gumbel samples (GDAS) and the same single
  paths (SPOS). Each global batch of ``--batch-size`` examples is cut into N equal consecutive parts, one per
  rank (:meth:`Group.part`): the global batch is the per-rank batch times N, so ``--batch-size`` must be a
  multiple of N, and the splits of the training data into the weights' and the architecture's halves, and
  the validation split, are sharded the same way.
* **Gradients averaged before every use.** After each ``backward()`` the gradients of the weights and of
  the architecture parameters are summed over the ranks in one flat all-reduce per dtype and divided by N
  (:meth:`Group.average`): the mean of the ranks' mean losses is the global batch's mean loss, so every
  rank takes the step one process would take on the whole batch. Manual rather than
  ``DistributedDataParallel``: DDP's reducer hooks one ``backward()`` over one parameter set, while DARTS's
  second-order step differentiates the supernet four times with respect to different sets (the training
  gradient of w for the virtual step; the validation gradients of alpha and w'; the training gradients of
  alpha at w + r v and w - r v). Each of those results is averaged before it is used (the virtual step, the
  norm of v, the finite difference), which makes the unrolled step of N ranks the unrolled step of the
  global batch. The price: communication does not overlap the backward pass.
* **Batch statistics of the global batch.** In training mode every batch norm normalizes with the mean and
  variance of the whole global batch (:class:`GlobalBatchNorm`: per-rank statistics all-gathered and merged,
  with autograd through the gather as ``torch.nn.SyncBatchNorm`` does, but on any device and for every call
  of ``F.batch_norm``, PC-DARTS's narrowed norms included). Per-rank statistics would make the result depend on
  N; with global ones the running statistics are the same on every rank as well.
* **Checked.** After every epoch the ranks all-gather a hash of their architecture parameters, weights and
  buffers (:meth:`Group.check_identical`); a difference is a bug and stops the search.

Rank 0 alone opens the study, writes checkpoints, logs and plots and shows progress; every rank resumes
from rank 0's checkpoint. Since the arithmetic depends on the global batch only, a checkpoint resumes under
any number of processes that divides it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import TensorDataset

from nasforge.errors import Location, SpecError
from nasforge.search.training import accuracy

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Group:
    """This process's place in a distributed search. The default, one rank on the CPU, is a search without
    torch.distributed: every collective is skipped and the code path is the one a single process takes."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes files, records trials and talks to the user."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def part(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's consecutive share of ``items`` along the first axis (a global batch, a split to
        evaluate): shares differ in size by one at most, and are equal when N divides the length."""
        n = len(items)
        return items[self.rank * n // self.world:(self.rank + 1) * n // self.world]

    def batch(self, data: Sequence[torch.Tensor], picks: torch.Tensor) -> Batch:
        """This rank's share of the global batch ``picks`` (indices into ``data``'s images and labels), on
        this rank's device."""
        mine = self.part(picks)
        images, labels = data
        return images[mine].to(self.device), labels[mine].to(self.device)

    def check_batch(self, batch_size: int) -> None:
        """Every rank must take as many examples of each global batch: the mean of their mean losses is
        then the global batch's mean loss."""
        if batch_size % self.world:
            raise SpecError("the global batch does not split evenly over the processes",
                            location=Location("--batch-size"), expected=f"a multiple of --nproc {self.world}",
                            found=str(batch_size),
                            hint="--batch-size is the global batch: each process takes batch-size / nproc examples")

    # -- collectives ----------------------------------------------------------------------------------
    def average(self, grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """The mean over the ranks of each gradient in ``grads`` (shaped as ``like``, the tensors they are
        gradients of). A gradient that is None on some ranks counts as zeros there; it is None in the result
        only where every rank had none (the optimizers skip those parameters, as one process would)."""
        out = list(grads)
        if self.world == 1:
            return out
        for dtype in dict.fromkeys(t.dtype for t in like):
            index = [i for i, t in enumerate(like) if t.dtype == dtype]
            present = torch.tensor([grads[i] is not None for i in index], dtype=dtype, device=self.device)
            flat = torch.cat([present, *((torch.zeros_like(like[i]) if grads[i] is None else grads[i]).reshape(-1)
                                         for i in index)])
            dist.all_reduce(flat)
            counts, values = flat[:len(index)].tolist(), flat[len(index):].div_(self.world)
            for i, had, value in zip(index, counts, values.split([like[i].numel() for i in index])):
                out[i] = value.view_as(like[i]) if had else None
        return out

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each parameter's ``.grad`` by its mean over the ranks (after ``backward()``)."""
        for p, grad in zip(params, self.average([p.grad for p in params], params)):
            p.grad = grad

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks (float64: epoch totals of losses and counts)."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def decide(self, decision: Callable[[], bool]) -> bool:
        """Rank 0's answer to ``decision`` on every rank (a measured latency may differ between ranks, and
        ranks that decide differently no longer run one search); the other ranks do not compute it."""
        if self.world == 1:
            return decision()
        flag = torch.tensor([float(decision()) if self.lead else 0.0], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def accuracy(self, model: nn.Module, data: TensorDataset) -> float:
        """Top-1 accuracy of ``model`` on ``data``, each rank evaluating its share."""
        images, labels = (self.part(t).to(self.device) for t in data.tensors)
        # accuracy() returns correct / n: times n it is the (integer) count again
        correct = round(accuracy(model, TensorDataset(images, labels)) * len(labels)) if len(labels) else 0
        return self.sum([correct])[0] / len(data)

    def batch_norm(self) -> ContextManager[Any]:
        """Within this context every training-mode batch norm uses the global batch's statistics."""
        return GlobalBatchNorm() if self.world > 1 else nullcontext()

    def check_identical(self, parts: Mapping[str, Iterable[torch.Tensor]]) -> None:
        """Raise if any named group of tensors differs between ranks (compared by a hash of their bytes)."""
        if self.world == 1:
            return
        mine = torch.tensor([digest(tensors) for tensors in parts.values()], dtype=torch.int64, device=self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        for rank, theirs in enumerate(everyone):
            differ = [name for name, a, b in zip(parts, mine.tolist(), theirs.tolist()) if a != b]
            if differ:
                raise RuntimeError(f"the {' and '.join(differ)} of rank {rank} differ from rank {self.rank}'s: "
                                   "the processes no longer train one supernet")


SOLO = Group()
"""One process, no torch.distributed."""


def digest(tensors: Iterable[torch.Tensor]) -> int:
    """A 64-bit hash of the tensors' values, in order."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)


# -- batch norm over the global batch ---------------------------------------------------------------------

BATCH_NORM = inspect.signature(F.batch_norm)


class GlobalBatchNorm(TorchFunctionMode):
    """Routes every ``F.batch_norm`` call that normalizes with batch statistics (what ``nn.BatchNorm*``
    and PC-DARTS's elastic norms call in training mode) to :func:`global_batch_norm`; everything else runs
    as it is. A function mode rather than swapped modules: it catches every batch norm, whatever module or
    op lowering calls it, with no copy of ``nn.BatchNorm``'s momentum bookkeeping."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            call = BATCH_NORM.bind(*args, **kwargs)
            call.apply_defaults()
            if call.arguments["training"]:
                return global_batch_norm(**call.arguments)
        return func(*args, **kwargs)


def global_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                      weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` in training mode with the statistics of every rank's batch together. Each rank
    computes its per-channel count, mean and sum of squared deviations from that mean; the ranks' triples
    are all-gathered and merged (Chan et al.'s parallel variance: no cancellation, unlike sums of squares,
    which in float32 drift measurably from one process's statistics within a few epochs). The gather is
    differentiable (its backward pass sums each rank's gradients over the ranks), so each rank's input gets
    the gradient of the global loss through the shared statistics. Running statistics are updated in place
    as ``F.batch_norm`` updates them (unbiased variance)."""
    channels = input.shape[1]
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    x = input.to(torch.promote_types(input.dtype, torch.float32))
    count = x.numel() // max(1, channels)
    mine = x.mean(dims) if count else x.new_zeros(channels)  # a rank may have no share of a small batch
    squares = (x - mine.view(shape)).square().sum(dims)
    stats = gathered(torch.stack([x.new_full((channels,), count), mine, squares]))
    counts, means, m2s = stats.view(-1, 3, channels).unbind(1)
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    var = (m2s.sum(0) + (counts * (means - mean).square()).sum(0)) / n
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * n / (n - 1).clamp_min(1)).to(running_var.dtype))
    out = ((x - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)).to(input.dtype)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


def gathered(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along the first axis, in rank order, differentiably: the backward
    pass sums the gradients of each rank's part over the ranks (torch's functional collectives)."""
    gather = getattr(collectives, "all_gather_single_autograd", None) \
        or collectives.all_gather_tensor_autograd  # its name before torch 2.13 (GPU images lag behind)
    out = gather(t, 0, dist.group.WORLD)
    return out.wait() if isinstance(out, collectives.AsyncCollectiveTensor) else out


# -- forming the group ------------------------------------------------------------------------------------

def launched_world() -> int | None:
    """The number of processes a launcher (torchrun) started this one among, or None when it was not."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def device_for(local_rank: int, local_world: int) -> torch.device:
    """One GPU per process where CUDA has one for every process on this machine; else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextmanager
def joined(rank: int | None = None, world: int | None = None, init_method: str = "env://") -> Iterator[Group]:
    """Form (join) the default process group; destroyed on leaving. Without arguments it is the one a
    launcher described in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)."""
    env = os.environ
    rank = int(env["RANK"]) if rank is None else rank
    world = int(env["WORLD_SIZE"]) if world is None else world
    local_rank = int(env.get("LOCAL_RANK", rank)) if init_method == "env://" else rank
    local_world = int(env.get("LOCAL_WORLD_SIZE", world)) if init_method == "env://" else world
    group = Group(rank, world, device_for(local_rank, local_world))
    if group.device.type == "cuda":
        torch.cuda.set_device(group.device)
    dist.init_process_group(group.backend, init_method=init_method, rank=rank, world_size=world)
    try:
        yield group
    finally:
        dist.destroy_process_group()


def spawn(nproc: int, main: Callable[..., Any], args: tuple) -> None:
    """Run ``main(group, *args)`` in ``nproc`` new processes that form one group (rendezvous through a
    file, so no port is needed); return when all have finished. The first process to fail ends the others:
    its SpecError is raised here (the user's mistake, said once), any other failure as a RuntimeError with
    its traceback. ``main`` must be importable by name (the processes start fresh interpreters)."""
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    torch_log = logging.getLogger("torch.multiprocessing.spawn")  # its "Terminating process" repeats ours
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="nasforge-group-") as folder:
        store = f"file://{Path(folder) / 'rendezvous'}"
        processes = mp.start_processes(run_rank, (nproc, store, errors, main, args), nprocs=nproc, join=False,
                                       start_method="spawn")
        try:
            while not processes.join():
                pass
        except mp.ProcessExitedException as failed:
            if not errors.empty():
                raise errors.get() from None
            raise RuntimeError(f"a training process failed: {failed}") from None
        except mp.ProcessRaisedException as failed:
            raise RuntimeError(f"a training process failed: {failed}") from None
        finally:
            torch_log.setLevel(level)
            for process in processes.processes:
                if process.is_alive():
                    process.terminate()
                process.join()


def run_rank(index: int, world: int, store: str, errors: Any, main: Callable[..., Any], args: tuple) -> None:
    """One spawned process: join the group as rank ``index`` and run ``main``; a SpecError goes to the
    parent (which reports it once) and the exit code says the process failed."""
    try:
        with joined(index, world, store) as group:
            main(group, *args)
    except SpecError as err:
        errors.put(err)
        sys.exit(1)
