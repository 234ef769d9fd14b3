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

LAYOUT_FREE = "layout_free_buffers"
"""The PrimFunc attribute :func:`mark_layout_free` sets: which arguments tuning may lay out as it likes."""

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


PREPROC_BLOCK = "meta_schedule.layout_rewrite_preproc"
"""The block annotation ``RewriteLayout`` leaves where an applied schedule changes a weight's layout."""


def _rewrites_layout(func: Any) -> bool:
    """Whether a kernel's applied schedule changes the layout of a weight (it holds a preproc block). Read
    from the printed function: TVM 0.27 has no Python visitor over TIR statements."""
    return PREPROC_BLOCK in func.script()


def _stub(func: Any) -> Any:
    """A kernel with ``func``'s signature and one empty block: what ``SplitLayoutRewritePreproc`` sees in
    place of a kernel it has nothing to split in (it stops TVM with an InternalError on a kernel with no
    block at all, e.g. MoE's top-k and scatter, built without blocks)."""
    from tvm import s_tir, tirx

    empty = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "stub", tirx.Evaluate(0)))
    root = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", empty))
    return func.with_body(root)


def _split_layout_changes(mod: Any, rewriting: set[str]) -> Any:
    """``SplitLayoutRewritePreproc`` on the kernels named in ``rewriting`` only: each other kernel is a
    :func:`_stub` while the pass runs and itself again after."""
    from tvm import relax, tirx

    kept = {gv.name_hint: func for gv, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc) and gv.name_hint not in rewriting}
    shown = mod.clone()
    for gv, func in mod.functions_items():
        if gv.name_hint in kept:
            shown.update_func(gv, _stub(func))
    split = relax.transform.SplitLayoutRewritePreproc()(shown)
    for gv in split.get_global_vars():
        if gv.name_hint in kept:
            split.update_func(gv, kept[gv.name_hint])
    return split


def lift_layouts(mod: Any, first: str) -> tuple[Any, list[str]]:
    """Split the layout changes out of the tuned kernels of ``mod`` and lift them into :data:`PREPACK_PARAMS`.

    ``first`` is the name of the weight-transform function already in ``mod`` (if any). Returns the module
    and the chain of transform functions to run at load, in order; where no kernel's schedule changed a
    layout (untuned, or every kernel plain) the module is returned as it is, with no second function.
    """
    import tvm
    from tvm import relax, tirx

    names = {gv.name_hint for gv in mod.get_global_vars()}
    unchanged = (mod, [first] if first in names else [])
    rewriting = {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)
                 and f.attrs is not None and LAYOUT_FREE in f.attrs and _rewrites_layout(f)}
    if not rewriting:
        return unchanged
    split = _split_layout_changes(mod, rewriting)
    stash = f"{first}_stage1"
    if first in names:
        split = _rename(split, first, stash)
    mod = tvm.transform.Sequential([relax.transform.LiftTransformParams(), relax.transform.FoldConstant()])(split)
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
           ) -> tuple[bool, dict[bool, Any], str, Any | None]:
    """The form a network is tuned in, when the user did not say: the form whose tasks the tuning database
    knows more of; if it knows as many of each, the one whose known tasks add up to less time (best measured
    time x calls); if it knows none (or there is no database), prepacked when tuning now and plain otherwise
    (untuned, both forms are the same code). :func:`per_kernel` then settles each kernel on its own.

    ``lower(prepack)`` lowers the network one way or the other. Returns the choice, the network lowered each
    way (plain only where there is nothing to ask), the reason in words, and the database snapshot it read
    (None without a database; reading one parses every record, so a compile that tunes nothing reuses it).
    """
    from nasforge.backends.tvm_tuning import best_ms, extract_tasks

    if not database.exists() and not tuning:  # nothing to ask: skip lowering the network twice
        return False, {False: lower(False)}, "prepack off: no tuning database for this target yet", None
    forms = {flag: lower(flag) for flag in (False, True)}
    tasks = {flag: extract_tasks(mod, target) for flag, mod in forms.items()}
    known = {flag: [0, 0.0] for flag in forms}  # tasks with a record, their milliseconds per network call
    snapshot = database.snapshot(work) if database.exists() else None
    if snapshot is not None:
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
    return prepack, forms, why, snapshot


def per_kernel(marked: Any, database: Any, prepack: bool) -> tuple[Any, str | None]:
    """Each kernel's weights prepacked or not, kernel by kernel: ``marked`` (lowered with the marks) keeps a
    kernel's marks where ``database`` (a snapshot) measured its prepacked schedule faster than its plain one,
    or knows only the prepacked one; the other kernels lose them. A kernel known neither way follows
    ``prepack``, the network's form (:func:`choose`).

    Why: neither form wins everywhere. After the same tuning, ResNet-50's 1x1 convolutions and its 7x7 stage
    ran faster prepacked, while several of its 3x3 convolutions kept faster plain schedules (0.81 ms plain vs
    1.39 prepacked for one); the two forms are separate tasks of one database, so each kernel can take the
    faster.
    Returns the module (for :func:`lift_layouts`) and a note (None when the database knows no kernel).
    """
    import tvm
    from tvm import tirx

    from nasforge.backends.tvm_tuning import best_ms

    workload = tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")  # the key tasks are stored under
    mod, counts = marked.clone(), {True: 0, False: 0}
    for gv, func in marked.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or LAYOUT_FREE not in func.attrs:
            continue
        plain = func.without_attr(LAYOUT_FREE)
        packed_ms, plain_ms = (best_ms(database, workload(f)) for f in (func, plain))
        if packed_ms is None and plain_ms is None:
            keep = prepack
        else:
            keep = plain_ms is None or (packed_ms is not None and packed_ms <= plain_ms)
            counts[keep] += 1
        if not keep:
            mod.update_func(gv, plain)
    kernels = counts[True] + counts[False]
    note = (f"kernel by kernel: {counts[True]} of {kernels} tuned kernels read prepacked weights and "
            f"{counts[False]} plain, each the form the tuning database measured faster") if kernels else None
    return mod, note
