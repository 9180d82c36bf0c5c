"""Fused MobileNetV2 vs ONNX Runtime vs OpenVINO (vs eager PyTorch) on the CPU, each engine in its own process.

    .venv/bin/python benchmarks/engines_cpu.py --batch 1 32 --threads 2 --rounds 3 --calls 15
    (the main job, python -m mnv2_kernels, runs it too when an engine is installed; workers run this file by
    path, so an ONNX Runtime or OpenVINO process never imports torch or mnv2_kernels)

Same weights (torchvision's ImageNet MobileNetV2, ``mnv2_kernels.models.mobilenet_v2(weights="imagenet")``;
random BN statistics when the checkpoint is not installed), same input (seeded, saved once), same thread
count, fp32 everywhere (OpenVINO is pinned to f32: on AVX512-BF16/AMX machines it would otherwise run bf16).
The ONNX model is exported once with ``torch.onnx.export(model, x, path, dynamo=False, opset_version=17)``.

Why one process per engine and timed run: ONNX Runtime's and OpenVINO's thread pools spin or linger after a
run and steal the cores from whatever runs next in the same process. The rounds alternate the engines (the
order rotates each round) so that slow drifts of a shared machine hit every engine alike; each process warms
up, then times ``--calls`` calls; the table shows, per engine, the median over rounds of the per-round medians,
and the ratio of each engine to the fused model. Each process also reports its peak RSS (VmHWM: the whole
process, libraries included; torch alone is ~0.4 GiB), "run +MiB" (peak RSS minus the RSS once the engine
and model are loaded: what running inference adds) and the logits, which are checked against the fused
model's (top-5 and max abs difference).

Engines whose package is missing are skipped with a note (install: ``pip install -e .[bench]``, or
``pip install onnxruntime openvino onnx``). Needs the fused CPU kernel (``mnv2_kernels._C``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ENGINES = ("fused", "onnxruntime", "openvino", "eager")


def _model():
    from mnv2_kernels.models import mobilenet_v2
    from mnv2_kernels.testing import randomize_bn_
    try:
        return mobilenet_v2(weights="imagenet"), "imagenet"
    except RuntimeError:
        import torch
        torch.manual_seed(0)
        return randomize_bn_(mobilenet_v2()), "random weights, random BN statistics"


def _rss_mib() -> float:
    """Peak resident set of this process so far (MiB): VmHWM (ru_maxrss would include the parent's peak, as
    Linux keeps it across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------------------------------------
# Worker: one engine, one batch size, in a fresh process.
# ------------------------------------------------------------------------------------------------------------
def _make_runner(engine: str, x, onnx_path: str, threads: int):
    """callable() -> numpy logits [N, 1000] for the engine, built on input x (numpy, NCHW float32)."""
    import numpy as np
    if engine in ("fused", "eager"):
        import torch
        torch.set_num_threads(threads)
        model, _ = _model()
        model = model.eval().to(memory_format=torch.channels_last)
        if engine == "fused":
            from mnv2_kernels import fuse
            model = fuse(model, inplace=True)  # (no deep copy alive while fuse() packs: peak memory)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                return model(xt).numpy()
        return run
    if engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: x})[0]
    if engine == "openvino":
        import openvino as ov
        core = ov.Core()
        compiled = core.compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()

        def run():
            req.infer({0: x})
            return np.array(req.get_output_tensor(0).data, copy=True)
        return run
    raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")


def _engine_version(engine: str) -> str:
    try:
        if engine in ("fused", "eager"):
            import torch
            v = f"torch {torch.__version__}"
            if engine == "fused":
                v += f", isa {torch.ops.mnv2.cpu_isa()}" if hasattr(torch.ops.mnv2, "cpu_isa") else ""
            return v
        if engine == "onnxruntime":
            import onnxruntime
            return f"onnxruntime {onnxruntime.__version__}"
        if engine == "openvino":
            import openvino
            return f"openvino {openvino.__version__}"
    except Exception as exc:  # pragma: no cover - informational only
        return f"? ({exc})"
    return "?"


def worker(args) -> None:
    import numpy as np
    x = np.load(args.input)
    rss0 = _current_rss_mib()
    run = _make_runner(args.engine, x, args.onnx, args.threads)
    if args.engine == "fused":
        import mnv2_kernels  # noqa: F401  (registers torch.ops.mnv2.*)
    rss_setup = _current_rss_mib()
    for _ in range(args.warmup):
        y = run()
    times = []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        y = run()
        times.append((time.perf_counter() - t0) * 1e3)
    np.save(args.out, y)
    print(json.dumps({"engine": args.engine, "median_ms": statistics.median(times), "times_ms": times,
                      "peak_rss_mib": _rss_mib(), "rss_before_mib": rss0, "rss_setup_mib": rss_setup,
                      "version": _engine_version(args.engine)}))


# ------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------
def _available(engine: str) -> str | None:
    """None when the engine can run here, else why not."""
    import importlib.util
    need = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}.get(engine, ())
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install -e .[bench])"
    return None


def _export(path: str, batch: int) -> None:
    import torch
    model, _ = _model()
    model.eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def available_engines() -> list:
    """The other CPU engines installed here (onnxruntime, openvino)."""
    return [e for e in ("onnxruntime", "openvino") if _available(e) is None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mnv2_kernels.demo.engines", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=15, help="timed calls per process (batch 32: at least 5)")
    p.add_argument("--engines", nargs="+", default=["fused", "onnxruntime", "openvino"], choices=ENGINES)
    p.add_argument("--json", help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", dest="engine", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine:
        worker(args)
        return 0

    import numpy as np
    engines = []
    for e in args.engines:
        why = _available(e)
        if why:
            print(f"skipping {e}: {why}")
        else:
            engines.append(e)
    _, weights = _model()
    tmp = tempfile.mkdtemp(prefix="mnv2_engines_")
    onnx_path = os.path.join(tmp, "mobilenet_v2.onnx")
    if any(e in ("onnxruntime", "openvino") for e in engines):
        _export(onnx_path, 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        xin = os.path.join(tmp, f"x{batch}.npy")
        np.save(xin, x)
        calls = args.calls if batch < 8 else max(5, args.calls // 3)
        per = {e: [] for e in engines}
        info = {}
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for e in order:
                out = os.path.join(tmp, f"y_{e}_{batch}.npy")
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, "--input", xin, "--onnx", onnx_path,
                       "--out", out, "--threads", str(args.threads), "--calls", str(calls),
                       "--warmup", str(3 if batch < 8 else 2)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    print(f"{e} batch {batch} failed:\n{res.stderr[-2000:]}")
                    continue
                rec = json.loads(res.stdout.strip().splitlines()[-1])
                per[e].append(rec["median_ms"])
                info.setdefault(e, []).append(rec)
        ref = np.load(os.path.join(tmp, f"y_fused_{batch}.npy")) if per.get("fused") else None
        rows = {}
        for e in engines:
            if not per[e]:
                continue
            y = np.load(os.path.join(tmp, f"y_{e}_{batch}.npy"))
            agree = None
            if ref is not None:
                top = lambda a: np.argsort(-a, axis=1)[:, :5]  # noqa: E731
                agree = {"max_abs_diff_vs_fused": float(np.abs(y - ref).max()),
                         "same_top5_as_fused": bool((top(y) == top(ref)).all())}
            rows[e] = {"median_ms": statistics.median(per[e]), "round_medians_ms": per[e],
                       "peak_rss_mib": max(i["peak_rss_mib"] for i in info[e]),
                       "rss_setup_mib": statistics.median(i["rss_setup_mib"] for i in info[e]),
                       "run_delta_mib": max(i["peak_rss_mib"] - i["rss_setup_mib"] for i in info[e]),
                       "version": info[e][0]["version"], **(agree or {})}
        results[batch] = rows
        base = rows.get("fused", {}).get("median_ms")
        print(f"\nbatch {batch}, {args.threads} threads, fp32, {weights}; {args.rounds} alternating rounds x "
              f"{calls} calls, one process per engine per round")
        print(f"{'engine':<12} {'median ms':>10} {'img/s':>8} {'vs fused':>9} {'peak RSS MiB':>13} "
              f"{'run +MiB':>9}  {'top5=fused':>10} {'max|dy|':>9}  round medians / version")
        for e, r in rows.items():
            ratio = r["median_ms"] / base if base else float("nan")
            print(f"{e:<12} {r['median_ms']:>10.2f} {batch / r['median_ms'] * 1e3:>8.1f} {ratio:>8.2f}x "
                  f"{r['peak_rss_mib']:>13.0f} {r['run_delta_mib']:>9.0f}  "
                  f"{str(r.get('same_top5_as_fused', '-')):>10} "
                  f"{r.get('max_abs_diff_vs_fused', float('nan')):>9.2e}  "
                  f"{' '.join(f'{v:.1f}' for v in r['round_medians_ms'])} / {r['version']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
