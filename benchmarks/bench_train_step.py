"""Seconds per 64^3 training step, side by side in one process: today's gan3d, strided-stem ResUNet variants, the
yardstick.

Every case is built first; then the steps run round-robin (one step of each case per round), so machine noise hits
all cases alike. The median over rounds is reported, with patches per minute (batch patches per step), the
ratio to today's generator (batch 1) and GFLOP per step (forward FLOPs from modalsynth.flops; a G+D step counts
3 x G + 9 x D forward passes, an L1 step 3 x the network's).

Batch matters on CPU beyond amortising overhead: for batch-1 float32 input, PyTorch (2.13) sends a 3D convolution
to oneDNN only when N*C*D*H > 20480, else to its slow im2col path (slow_conv3d), which is what every conv below
full resolution of a 64^3 patch gets. Batch 2 sends them all to oneDNN. Extras: "bf16" runs the step under CPU
bfloat16 autocast (oneDNN always); "cl" puts networks and inputs in channels_last_3d.

    python benchmarks/bench_train_step.py --json /tmp/bench_train_step.json [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

PATCH = (64, 64, 64)
TODAY = "today: residual b16 (d32)"
RES16 = {"base_channels": 16, "stem": "residual"}
S16 = {"base_channels": 16, "stem": "strided", "full_res_channels": 8}
# name: (generator options for ResUNet, discriminator channels, batch, extra); depth 4 throughout
GAN_CASES = {
    TODAY: (RES16, 32, 1, ""),
    "residual b16 (d32) batch 2": (RES16, 32, 2, ""),
    "strided b16 f8 (d32)": (S16, 32, 1, ""),
    "strided b16 f8 (d32) batch 2": (S16, 32, 2, ""),
    "strided b16 f8 (d32) batch 4": (S16, 32, 4, ""),
    "strided b16 f16 (d32) batch 2": ({**S16, "full_res_channels": 16}, 32, 2, ""),
    "strided b24 f12 (d32) batch 2": ({"base_channels": 24, "stem": "strided", "full_res_channels": 12}, 32, 2, ""),
    "strided b32 f16 (d32) batch 2": ({"base_channels": 32, "stem": "strided", "full_res_channels": 16}, 32, 2, ""),
    "strided b16 f8 (d16) batch 2": (S16, 16, 2, ""),
    "strided b16 f8 (d32) bf16": (S16, 32, 1, "bf16"),
    "strided b16 f8 (d32) cl": (S16, 32, 1, "cl"),
    "strided b16 f8 (d32) batch 2 cl": (S16, 32, 2, "cl"),
}
YARDSTICK = "yardstick: MONAI UNet L1"
YARDSTICK_CASES = {YARDSTICK: 1, f"{YARDSTICK} batch 2": 2}


def build_gan(generator_options: dict, disc_channels: int, extra: str = ""):
    """A gan3d method (resolved settings + build_method) with its generator swapped for the variant."""
    from modalsynth.config import resolve_config
    from modalsynth.methods import build_method, method_class
    from modalsynth.nets import ResUNet

    settings = {
        "model": {"disc_channels": disc_channels, "disc_layers": 3},
        "device": "cpu",
        "patch": list(PATCH),
        "init": None,
    }
    config = resolve_config([("bench_train_step", settings)], method_class)
    method = build_method(config)
    # the method builds ResUNet without the stem options (its default layout); put the variant in its place
    method.nets["generator"] = ResUNet(spatial_dims=3, depth=4, norm="instance", **generator_options)
    method.to(torch.device("cpu"))
    if extra == "cl":
        for net in method.nets.values():
            net.to(memory_format=torch.channels_last_3d)
    method.make_optimizers()
    method.train_mode(True)
    if extra == "bf16":
        method.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # Method.autocast is a no-op on CPU
    return method


def gan_step_flops(method, batch: int) -> float:
    from modalsynth.flops import count_flops

    g = count_flops(method.nets["generator"], (batch, 1, *PATCH))
    d = count_flops(method.nets["discriminator"], (batch, 2, *PATCH))
    return (3 * g + 9 * d) / 1e9


class YardstickStep:
    """The yardstick's training step (../shared/yardsticks/monai_unet_l1.py): MONAI UNet, L1, Adam 2e-4."""

    def __init__(self):
        from monai.networks.nets import UNet

        self.net = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=(16, 32, 64, 128),
            strides=(2, 2, 2),
            num_res_units=2,
        )
        self.opt = torch.optim.Adam(self.net.parameters(), 2e-4)

    def training_step(self, batch: dict, gen: torch.Generator) -> None:
        loss = torch.nn.functional.l1_loss(self.net(batch["source"]), batch["target"])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def flops(self, batch: int) -> float:
        from modalsynth.flops import count_flops

        return 3 * count_flops(self.net, (batch, 1, *PATCH)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="bench_train_step.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names to keep (default all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    def make_batch(n: int, extra: str) -> dict[str, torch.Tensor]:
        fmt = torch.channels_last_3d if extra == "cl" else torch.contiguous_format
        return {
            k: (torch.rand(n, 1, *PATCH) * 2 - 1).contiguous(memory_format=fmt) for k in ("source", "target", "mask")
        }

    keep = args.cases.split(",") if args.cases else []
    cases: dict[str, tuple[object, float, dict, int]] = {}
    for name, (options, disc, n, extra) in GAN_CASES.items():
        if name == TODAY or not keep or any(s in name for s in keep):
            method = build_gan(options, disc, extra)
            cases[name] = (method, gan_step_flops(method, n), make_batch(n, extra), n)
    for name, n in YARDSTICK_CASES.items():
        yardstick = YardstickStep()
        cases[name] = (yardstick, yardstick.flops(n), make_batch(n, ""), n)
    params = {
        name: sum(
            p.numel() for p in (obj.net if isinstance(obj, YardstickStep) else obj.nets["generator"]).parameters()
        )
        for name, (obj, *_) in cases.items()
    }

    for obj, _, batch, _ in cases.values():  # warm-up
        obj.training_step(batch, gen)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (obj, _, batch, _) in cases.items():
            start = time.perf_counter()
            obj.training_step(batch, gen)
            times[name].append(time.perf_counter() - start)

    today = 60 / statistics.median(times[TODAY])
    rows = []
    for name, (_, gflop, _, n) in cases.items():
        s = statistics.median(times[name])
        rows.append(
            {
                "case": name,
                "batch": n,
                "s_per_step": s,
                "patches_per_min": 60 * n / s,
                "speedup_vs_today": 60 * n / s / today,
                "gflop_per_step": gflop,
                "gflop_per_s": gflop / s,
                "generator_params": params[name],
                "times": times[name],
            }
        )
    result = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "patch": list(PATCH),
        "rounds": args.rounds,
        "rows": rows,
    }
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"| case | s/step (median of {args.rounds}) | patches/min | x today | GFLOP/step | GFLOP/s | G params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['s_per_step']:.3f} | {r['patches_per_min']:.0f} | {r['speedup_vs_today']:.2f} | "
            f"{r['gflop_per_step']:.1f} | {r['gflop_per_s']:.0f} | {r['generator_params'] / 1e6:.2f} M |"
        )
    print(
        f"\n{args.threads} threads, {PATCH[0]}^3 patches; 'x today' = patches/min over today's batch-1 gan3d; "
        f"JSON in {args.json}"
    )


if __name__ == "__main__":
    main()
