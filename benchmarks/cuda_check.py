"""Check TVM cuda artifacts on a GPU: agreement with torch on the same GPU, and latency (medians).

Usage, on a machine with an NVIDIA GPU and a CUDA-enabled TVM runtime:
    nasforge compile specs/models/mobilenet_v2.yaml --backend tvm --target cuda -o mnv2_cuda   # anywhere (nvcc)
    python benchmarks/cuda_check.py mnv2_cuda [more artifacts...]    # on the GPU machine; writes $OUT/cuda_check.json

For each artifact: load it with nasforge.load_artifact (TVM cuda runtime, the sm_90 library), run it on fixed
inputs, compare with torch on the same GPU running the same optimized graph with the artifact's own weights, and
time TVM vs torch eager vs torch.compile (medians, CUDA-synchronized)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.numpy import load_file

import nasforge
from nasforge.compiler.passes import optimize


def cuda_median_ms(fn: Callable[[], Any], warmup: int = 20, repeats: int = 200) -> float:
    """Median wall time of ``fn`` with the GPU synchronized after each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def check(directory: Path) -> dict[str, Any]:
    """One artifact: TVM on the GPU vs torch (same optimized graph, same weights, fp32 without TF32)."""
    meta = json.loads((directory / "metadata.json").read_text())
    row: dict[str, Any] = {"artifact": directory.name, "name": meta["name"], "gpu": torch.cuda.get_device_name()}
    module = nasforge.load_artifact(directory)
    inputs = module.example_arrays(seed=1)
    tvm_out = module.run_numpy(*inputs)
    graph_module = optimize(nasforge.loads((directory / "spec.yaml").read_text()).build().eval())
    weights = {k: torch.from_numpy(v.copy()) for k, v in load_file(str(directory / "weights.safetensors")).items()}
    missing, unexpected = graph_module.load_state_dict(weights, strict=False)
    row["state_dict_missing"], row["state_dict_unexpected"] = len(missing), len(unexpected)
    graph_module = graph_module.cuda()
    tensors = [torch.from_numpy(a).cuda() for a in inputs]
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        torch_out = graph_module(*tensors)
        torch_out = [torch_out] if torch.is_tensor(torch_out) else list(torch_out)
        row["max_abs_err_vs_torch_cuda_fp32"] = max(
            float(np.abs(a - b.float().cpu().numpy()).max()) for a, b in zip(tvm_out, torch_out))
        row["torch_eager_ms"] = cuda_median_ms(lambda: graph_module(*tensors))
        compiled = torch.compile(graph_module)
        compiled(*tensors)
        row["torch_compile_ms"] = cuda_median_ms(lambda: compiled(*tensors))
    row["tvm_ms_incl_host_copies"] = module.latency(warmup=20, repeats=200).median_ms
    return row


def main(paths: list[str]) -> None:
    results = []
    for path in paths:
        results.append(check(Path(path)))
        print(json.dumps(results[-1]), flush=True)
    Path(os.environ.get("OUT", "."), "cuda_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
