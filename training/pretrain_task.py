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
from training.steps import accumulation_rounds, autocast, grad_scaler, no_sync_unless, resolve_precision


class PretrainTask:
    """EDM denoising training of an EDMPrecond with Adam, LR ramp-up, gradient clipping and EMA.

    ``cfg.precision`` must be resolved (fp32, bf16 or fp16; ``build_task`` resolves ``auto``); ``cfg.batch_gpu``
    splits this rank's share of each batch into accumulation rounds (``training.steps``).
    """

    def __init__(self, net: EDMPrecond, world: World, cfg: PretrainConfig):
        self.net = net.to(world.device).train().requires_grad_(True)
        self.world = world
        self.cfg = cfg
        self.precision = resolve_precision(cfg.precision, world.device)
        broadcast_module(self.net, world)
        self.ddp = self.net
        if world.distributed:
            device_ids = [world.device.index] if world.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.net, device_ids=device_ids)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
        self.scaler = grad_scaler(self.precision, world.device)
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
        y = labels if self.net.label_dim else None
        rounds = accumulation_rounds(per_rank, cfg.batch_gpu)
        loss_sum = torch.zeros((), device=images.device)
        for i, r in enumerate(rounds):
            # Each round's summed loss over the rank's batch size: the rounds' gradients add up to the batch mean's.
            with no_sync_unless(i == len(rounds) - 1, self.ddp), autocast(self.precision, images.device):
                loss = self.loss_fn(self.ddp, images[r], None if y is None else y[r], rnd_normal[r], unit_noise[r])
                self.scaler.scale(loss.sum().mul(1 / per_rank)).backward()
            loss_sum += loss.detach().float().sum()
        self.scaler.unscale_(self.opt)
        for p in self.net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip or float("inf"))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.net, self.batch_size, images_seen + self.batch_size)
        return {"loss": loss_sum.item() / images[0].numel() / per_rank, "grad_norm": float(grad_norm), "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        state = dict(net=self.net.state_dict(), ema=self.ema.net.state_dict(), opt=self.opt.state_dict())
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.net.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

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
    """The task and this rank's batch stream; the task's ``cfg`` is ``cfg`` with the data set's class names and
    the precision ``auto`` resolved to (what the run dir's config.json records)."""
    accumulation_rounds(cfg.batch // world.world_size, cfg.batch_gpu)  # a --batch-gpu that does not divide: now
    dataset = open_dataset(cfg.data, split="train", resolution=cfg.resolution, path=cfg.data_path)
    label_dim = 0 if cfg.uncond else dataset.num_classes
    cfg = cfg.replace(
        class_names=tuple(dataset.class_names) if label_dim else (),
        precision=resolve_precision(cfg.precision, world.device),
    )
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once
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
