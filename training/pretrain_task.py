"""EDM pre-training as a ``TrainingTask``: the denoiser, its optimizer, EMA and sample grid, built from a run config.

``python -m training.pretrain`` parses the command line into a run config and hands ``build_task``'s result to
``training.loop.run_training``; ``training.rundir.export_state_snapshot`` rebuilds the network the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from training.checkpoint import save_model
from training.configs import network_config
from training.datasets import BatchStream, open_dataset
from training.distributed import World, broadcast_module
from training.ema import EMA
from training.images import GRID_SEED, grid_labels
from training.losses import EDMLoss
from training.precond import EDMPrecond
from training.run_config import PretrainConfig
from training.sampling import sample, seeded_noise


class PretrainTask:
    """EDM denoising training of an EDMPrecond with Adam, LR ramp-up, gradient clipping and EMA."""

    def __init__(self, net: EDMPrecond, world: World, cfg: PretrainConfig):
        self.net = net.to(world.device).train().requires_grad_(True)
        self.world = world
        self.cfg = cfg
        broadcast_module(self.net, world)
        self.ddp = DistributedDataParallel(self.net) if world.distributed else self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.ema = EMA(self.net, halflife_kimg=cfg.ema_halflife_kimg, rampup_ratio=cfg.ema_rampup)
        self.loss_fn = EDMLoss(sigma_data=net.sigma_data)
        self.batch_size = cfg.batch
        n = cfg.grid_size
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
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        full = torch.empty((self.batch_size, *images.shape[1:]))
        rnd_normal, unit_noise = self.loss_fn.draw(full, generator=gen)
        sl = slice(world.rank * per_rank, (world.rank + 1) * per_rank)
        rnd_normal, unit_noise = rnd_normal[sl].to(images.device), unit_noise[sl].to(images.device)

        lr = cfg.lr * min(images_seen / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        autocast = images.device.type == "cuda" and cfg.bf16
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = self.loss_fn(self.ddp, images, labels if self.net.label_dim else None, rnd_normal, unit_noise)
        loss.sum().mul(1 / per_rank).backward()
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip or float("inf"))
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
        return sample(net, self.grid_noise.to(device), labels, nfe=self.cfg.grid_nfe).clamp(-1, 1)

    def export_model(self, out_dir: Path, images_seen: int) -> None:
        save_model(
            self.ema.net,
            out_dir,
            name=self.cfg.desc,
            class_names=list(self.cfg.class_names),
            extra=dict(
                dataset=dict(spec=self.cfg.data, resolution=self.net.img_resolution),
                training=dict(stage="pretrain", images_seen=images_seen, arch=self.cfg.arch),
            ),
        )


def build_task(cfg: PretrainConfig, world: World) -> tuple[PretrainTask, BatchStream]:
    """The task and this rank's batch stream; the task's ``cfg`` is ``cfg`` with the data set's class names."""
    dataset = open_dataset(cfg.data, split="train", resolution=cfg.resolution, path=cfg.data_path)
    label_dim = 0 if cfg.uncond else dataset.num_classes
    cfg = cfg.replace(class_names=tuple(dataset.class_names) if label_dim else ())
    arch = network_config(cfg.arch)
    model_type = arch.pop("model_type")
    if cfg.dropout is not None:
        arch["dropout"] = cfg.dropout
    torch.manual_seed(cfg.seed)
    net = EDMPrecond(
        img_resolution=dataset.resolution,
        img_channels=dataset.channels,
        label_dim=label_dim,
        model_type=model_type,
        **arch,
    )
    stream = BatchStream(
        dataset, cfg.batch, seed=cfg.seed, rank=world.rank, world_size=world.world_size, xflip=cfg.xflip
    )
    return PretrainTask(net, world, cfg), stream
