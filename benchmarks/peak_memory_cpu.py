"""Peak resident memory of one MobileNetV2 forward (batch 32, fp32, CPU) per variant, each in a fresh process.

    .venv/bin/python benchmarks/peak_memory_cpu.py [--batch 32]
Prints the growth of the process's peak RSS during the forward (after the model is built and warmed at
batch 1), a measure of the activations a variant materialises.
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
import mnv2_kernels
from mnv2_kernels.models import mobilenet_v2
from mnv2_kernels.testing import randomize_bn_
from mnv2_kernels.demo.variants import build_variants, wants_channels_last
name, batch = sys.argv[1], int(sys.argv[2])
v = build_variants(randomize_bn_(mobilenet_v2()), torch.device("cpu"), torch.float32,
                   with_compile=name == "compile_freezing")[name]
fmt = torch.channels_last if wants_channels_last(name) else torch.contiguous_format
with torch.inference_mode():
    v(torch.randn(1, 3, 224, 224).contiguous(memory_format=fmt))
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    v(x)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"variant": name, "peak_growth_mb": (after - before) / 1024, "isa": torch.ops.mnv2.cpu_isa()}))
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--variants", nargs="+", default=["eager", "eager_cl", "eager_folded_cl", "fused"])
    args = p.parse_args()
    print(f"| variant | peak RSS growth during one batch-{args.batch} forward (MB) |\n|---|---:|")
    for name in args.variants:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.batch)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['peak_growth_mb']:.0f} |" + (f" (CPU kernel ISA: {r['isa']})" if name == "fused" else ""))


if __name__ == "__main__":
    main()
