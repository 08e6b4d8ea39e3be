"""Pre-train an EDM teacher: ``python -m training.pretrain --data fmnist --arch fmnist``.

Rerun with ``--resume runs/NNNNN-...`` to continue a run exactly where its last snapshot left it.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from training.checkpoint import CheckpointError, load_state, read_json_object, save_model
from training.configs import NETWORK_CONFIGS, network_config
from training.datasets import BatchStream, open_dataset
from training.distributed import World, broadcast_module, init_distributed, shutdown_distributed
from training.ema import EMA
from training.loop import STATE_NAME, LoopOptions, open_run_dir, resolve_run_config, run_training
from training.losses import EDMLoss
from training.precond import EDMPrecond, count_parameters
from training.sampling import sample, seeded_noise

GRID_SEED = 2025


def grid_labels(label_dim: int, n: int) -> torch.Tensor | None:
    """Class i in column i: a grid with one column per class."""
    return torch.arange(n) % label_dim if label_dim else None


class PretrainTask:
    """EDM denoising training of an EDMPrecond with Adam, LR ramp-up, gradient clipping and EMA."""

    def __init__(self, net: EDMPrecond, world: World, cfg: dict[str, Any]):
        self.net = net.to(world.device).train().requires_grad_(True)
        self.world = world
        self.cfg = cfg
        broadcast_module(self.net, world)
        self.ddp = DistributedDataParallel(self.net) if world.distributed else self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
        self.ema = EMA(self.net, halflife_kimg=cfg["ema_halflife_kimg"], rampup_ratio=cfg["ema_rampup"])
        self.loss_fn = EDMLoss(sigma_data=net.sigma_data)
        self.batch_size = cfg["batch"]
        n = cfg["grid_size"]
        self.grid_noise = seeded_noise(
            range(GRID_SEED, GRID_SEED + n), (net.img_channels, net.img_resolution, net.img_resolution)
        )
        self.grid_labels = grid_labels(net.label_dim, n)
        self.grid_cols = net.label_dim or None  # one column per class

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int, images_seen: int) -> dict[str, float]:
        cfg, world = self.cfg, self.world
        per_rank = images.shape[0]
        # The loss's randomness is drawn for the whole global batch from the step number, identically on every
        # rank, so a data-parallel step equals a single-process step on the same global batch.
        gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
        full = torch.empty((self.batch_size, *images.shape[1:]))
        rnd_normal, unit_noise = self.loss_fn.draw(full, generator=gen)
        sl = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        rnd_normal, unit_noise = rnd_normal[sl].to(images.device), unit_noise[sl].to(images.device)

        lr = cfg["lr"] * min(images_seen / max(cfg["lr_rampup_kimg"] * 1000, 1e-8), 1)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        autocast = images.device.type == "cuda" and cfg.get("bf16", False)
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = self.loss_fn(self.ddp, images, labels if self.net.label_dim else None, rnd_normal, unit_noise)
        loss.sum().mul(1 / per_rank).backward()
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg["grad_clip"] or float("inf"))
        self.opt.step()
        self.ema.update(self.net, self.batch_size, images_seen + self.batch_size)
        return {"loss": loss.detach().mean().item(), "grad_norm": float(grad_norm), "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        return dict(net=self.net.state_dict(), ema=self.ema.net.state_dict(), opt=self.opt.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.net.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        net = self.ema.net
        device = next(net.parameters()).device
        labels = self.grid_labels.to(device) if self.grid_labels is not None else None
        return sample(net, self.grid_noise.to(device), labels, nfe=self.cfg["grid_nfe"]).clamp(-1, 1)

    def export_model(self, out_dir: Path, images_seen: int) -> None:
        save_model(
            self.ema.net,
            out_dir,
            name=self.cfg["desc"],
            class_names=self.cfg.get("class_names"),
            extra=dict(
                dataset=dict(spec=self.cfg["data"], resolution=self.net.img_resolution),
                training=dict(stage="pretrain", images_seen=images_seen, arch=self.cfg["arch"]),
            ),
        )


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description="Pre-train an EDM teacher (class-conditional when the data has labels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", default="fmnist", help="fmnist | idx:IMAGES,LABELS | cifar10:DIR | folder | file.zip | synthetic:N"
    )
    g.add_argument("--data-path", default=None, help="directory of the Fashion-MNIST IDX files (default: Debian's)")
    g.add_argument("--resolution", type=int, default=None, help="resize images to this size (default: native)")
    g.add_argument("--xflip", action="store_true", help="random horizontal flips")
    g.add_argument("--uncond", action="store_true", help="ignore labels: train an unconditional model")
    g = p.add_argument_group("network")
    g.add_argument("--arch", default="fmnist", choices=sorted(NETWORK_CONFIGS), help="named network config")
    g.add_argument("--dropout", type=float, default=None, help="override the config's dropout")
    g = p.add_argument_group("optimization")
    g.add_argument("--duration", type=float, default=2000, help="training length in kimg (thousands of images)")
    g.add_argument("--batch", type=int, default=64, help="global batch size")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--lr-rampup-kimg", type=float, default=100, help="linear LR warm-up length")
    g.add_argument("--ema-halflife-kimg", type=float, default=50, help="EMA half-life")
    g.add_argument("--ema-rampup", type=float, default=0.05, help="EMA half-life ramp: at most this x images seen")
    g.add_argument("--grad-clip", type=float, default=0, help="max gradient norm (0 = off; EDM clips nothing)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU only)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order and noise")
    g = p.add_argument_group("I/O")
    g.add_argument("--outdir", default="runs", help="where run dirs are created")
    g.add_argument("--desc", default=None, help="run name suffix (default: data-arch)")
    g.add_argument("--tick", type=float, default=2, help="kimg between stats lines")
    g.add_argument("--snap", type=int, default=10, help="ticks between snapshots")
    g.add_argument("--snap-minutes", type=float, default=15, help="also snapshot after this many minutes")
    g.add_argument("--grid-size", type=int, default=60, help="images in each sample grid")
    g.add_argument("--grid-nfe", type=int, default=35, help="Heun NFE for the sample grids")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run from its last snapshot")
    g.add_argument("--max-steps", type=int, default=None, help="stop (with a snapshot) after this many steps")
    g.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def run_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    cfg = {k: v for k, v in vars(args).items() if k not in ("resume", "max_steps", "device", "threads")}
    cfg["desc"] = args.desc or f"{args.data.split(':')[0]}-{args.arch}"
    return cfg


def build_task(cfg: dict[str, Any], world: World) -> tuple[PretrainTask, BatchStream]:
    dataset = open_dataset(cfg["data"], split="train", resolution=cfg["resolution"], path=cfg["data_path"])
    label_dim = 0 if cfg["uncond"] else dataset.num_classes
    cfg["class_names"] = list(dataset.class_names) if label_dim else []
    arch = network_config(cfg["arch"])
    model_type = arch.pop("model_type")
    if cfg["dropout"] is not None:
        arch["dropout"] = cfg["dropout"]
    torch.manual_seed(cfg["seed"])
    net = EDMPrecond(
        img_resolution=dataset.resolution,
        img_channels=dataset.channels,
        label_dim=label_dim,
        model_type=model_type,
        **arch,
    )
    stream = BatchStream(
        dataset, cfg["batch"], seed=cfg["seed"], rank=world.rank, world_size=world.world_size, xflip=cfg["xflip"]
    )
    return PretrainTask(net, world, cfg), stream


def export_state_snapshot(run_dir: str | Path) -> Path | None:
    """Write ``network-snapshot-KKKKKK`` (EMA weights) from a pre-training run's ``training-state.pt``.

    A fresh clone holds only the teacher's resumable state and run config (runs/README.md), while fine-tuning,
    pair making and evaluation read model dirs; this rebuilds the network from the run config and exports it.
    Returns the new model dir, or None when ``run_dir`` is not a pre-training run dir with a state.
    """
    run_dir = Path(run_dir)
    state_path, config_path = run_dir / STATE_NAME, run_dir / "config.json"
    if not (state_path.is_file() and config_path.is_file()):
        return None
    cfg = read_json_object(config_path, "a pre-training run dir holds its run config.json")
    if "kind" in cfg or "teacher" in cfg or "arch" not in cfg:  # a model dir, or a fine-tune run
        return None
    with torch.random.fork_rng(devices=[]):  # build_task seeds torch; callers keep their RNG state
        task, _ = build_task(dict(cfg), World())
    state = load_state(state_path)
    try:
        task.ema.net.load_state_dict(state["task"]["ema"])  # the exported weights; net and optimizer are unused
        images_seen = int(state["progress"]["images_seen"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{state_path}: does not fit the network of {config_path} ({e})") from e
    out = run_dir / f"network-snapshot-{images_seen // 1000:06d}"
    # Written beside and renamed into place, so that DDP ranks exporting at once never see half a model dir.
    tmp = run_dir / f".{out.name}.tmp-{os.getpid()}"
    task.export_model(tmp, images_seen)
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process exported the same state first
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = init_distributed(args.device)
    try:
        cfg, run_dir = resolve_run_config(parser, args, argv, world, run_config_from_args)
        task, stream = build_task(cfg, world)
        if run_dir is None:
            run_dir = open_run_dir(cfg, world, {"parameters": count_parameters(task.net)})
        if world.is_main:
            print(f"Run dir: {run_dir}  parameters: {count_parameters(task.net):,}  world size: {world.world_size}")
        options = LoopOptions.from_run_config(cfg)
        progress = run_training(
            task, stream, options, world, run_dir, resume=bool(args.resume), max_steps=args.max_steps
        )
        return {"run_dir": str(run_dir), **progress}
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
