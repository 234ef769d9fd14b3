"""Weights prepacked into each tuned kernel's own layout, once at load (TVM's CPU weight prepacking).

Why: MetaSchedule's direct NCHW convolution vectorizes along the output width, reading weights one scalar at
a time. For ResNet-50's 14x14 and 7x7 stages a row is narrower than a 16-lane AVX-512 vector, and tuned
kernels there ran at 160-240 GFLOP/s in the network, level with eager PyTorch overall. Marking the weights
*layout free* before tuning lets MetaSchedule's ``RewriteLayout`` postprocessor choose, per schedule, the
layout its loops want (output channels innermost, tiled like the loop nest), so it can vectorize over output
channels with contiguous weight loads: in effect the channel-blocked layouts of TVM's hand-written x86
schedules, found by search.

The layout change of each weight is split out of its kernel (``SplitLayoutRewritePreproc``) and lifted into
a function that runs once when the weights load, after the weight-only work lifted earlier (BatchNorm
folding, transposes; :data:`nasforge.backends.tvm_worker.TRANSFORM_PARAMS`). A module therefore carries a
chain of transform functions, applied in order to the saved weights.

The marks change every kernel's workload, so records tuned without them do not apply to a prepacked
compile, and the reverse: each is its own set of tasks in the same database. That is why the default
(:func:`choose`) asks the database: a network tuned before prepacking existed keeps its records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

PREPACK_PARAMS = "main_prepack_params"
"""The lifted layout changes: the second function of the chain, fed the first one's outputs."""


def default_for(kind: str) -> bool | None:
    """The request's ``prepack`` when the user did not say: ``None`` (let :func:`choose` decide) for CPU code,
    off elsewhere (CUDA kernels keep their weights as they are; prepacking was measured on CPU only)."""
    return None if kind == "llvm" else False


def mark_layout_free() -> Any:
    """The pass run after fusion and before tuning: every kernel argument that is a weight (or constant) is
    free for MetaSchedule to lay out."""
    from tvm import relax

    return relax.transform.AttachAttrLayoutFreeBuffers()


def _rename(mod: Any, old: str, new: str) -> Any:
    """``mod`` with the function ``old`` renamed ``new`` (nothing calls the transform functions, so no call
    sites change). The renamed function loses its ``num_input`` mark, so ``LiftTransformParams`` leaves it
    alone (it would lift a weight transform's whole body out of itself)."""
    import tvm

    functions = {}
    for gv, func in mod.functions_items():
        if gv.name_hint == old:
            gv, func = tvm.ir.GlobalVar(new), func.with_attr("global_symbol", new).without_attr("num_input")
        functions[gv] = func
    return tvm.IRModule(functions, attrs=mod.attrs)


def lift_layouts(mod: Any, first: str) -> tuple[Any, list[str]]:
    """Split the layout changes out of the tuned kernels of ``mod`` and lift them into :data:`PREPACK_PARAMS`.

    ``first`` is the name of the weight-transform function already in ``mod`` (if any). Returns the module
    and the chain of transform functions to run at load, in order.
    """
    import tvm
    from tvm import relax

    names = {gv.name_hint for gv in mod.get_global_vars()}
    stash = f"{first}_stage1"
    if first in names:
        mod = _rename(mod, first, stash)
    mod = tvm.transform.Sequential([relax.transform.SplitLayoutRewritePreproc(), relax.transform.LiftTransformParams(),
                                    relax.transform.FoldConstant()])(mod)
    lifted = {gv.name_hint for gv in mod.get_global_vars()}
    chain = []
    if first in names:
        mod = _rename(mod, first, PREPACK_PARAMS) if first in lifted else mod
        mod = _rename(mod, stash, first)
        chain.append(first)
        if first in lifted:
            chain.append(PREPACK_PARAMS)
    elif first in lifted:
        chain.append(first)
    return mod, chain


def choose(lower: Callable[[bool], Any], target: Any, database: Any, tuning: bool, work: Path
           ) -> tuple[bool, Any, str]:
    """Prepack or not, when the user did not say: the form whose tasks the tuning database knows more of; if
    it knows as many of each, the one whose known tasks add up to less time (best measured time x calls);
    if it knows none (or there is no database), prepacked when tuning now and plain otherwise (untuned, both
    forms are the same code).
    Returns the choice, the module lowered that way and the reason in words.

    ``lower(prepack)`` lowers the network one way or the other.
    """
    from nasforge.backends.tvm_tuning import best_ms, extract_tasks

    if not database.exists() and not tuning:  # nothing to ask: skip lowering the network twice
        return False, lower(False), "prepack off: no tuning database for this target yet"
    forms = {flag: lower(flag) for flag in (False, True)}
    tasks = {flag: extract_tasks(mod, target) for flag, mod in forms.items()}
    known = {flag: [0, 0.0] for flag in forms}  # tasks with a record, their milliseconds per network call
    if database.exists():
        snapshot = database.snapshot(work)
        for flag, found in tasks.items():
            for task in found:
                ms = best_ms(snapshot, task.dispatched[0])
                if ms is not None:
                    known[flag][0] += 1
                    known[flag][1] += ms * int(task.weight)
    if known[True][0] != known[False][0]:
        prepack = known[True][0] > known[False][0]
    elif known[True][0]:
        prepack = known[True][1] <= known[False][1]
    else:
        prepack = tuning
    why = (f"prepack {'on' if prepack else 'off'}: the tuning database knows {known[True][0]} of {len(tasks[True])} "
           f"tasks prepacked ({known[True][1]:.1f} ms) and {known[False][0]} of {len(tasks[False])} plain "
           f"({known[False][1]:.1f} ms)")
    return prepack, forms[prepack], why
