"""D2O / D2O-F: turn an EDM teacher into a one-step generator with a GAN loss alone.

The fine-tune task behind ``python -m training.finetune`` (the command line lives there).

G(z, y) = D2OPrecond copy of the teacher's EMA network, evaluated once at sigma = 80 on 80 z. Per step (one global
batch of B real images, B generated ones with the real batch's labels; "images" counts both sides once):

1. D step: L_D = softplus(-D(x)) + softplus(D(G(z))), summed over D's feature levels; on every
   ``r1_interval``-th step (step % interval == 0) the lazy R1 term ``gamma/2 * ||grad_x D(x)||^2 * interval`` on
   the reals is added to the same step (so no extra optimizer step and no Adam correction are needed).
2. G step: L_G = softplus(-D(G(z))) (non-saturating), plus ``distill_weight`` times the distance between G and the
   teacher's Heun output on pairs from ``training.make_pairs`` when the objective includes ``distill``, plus
   ``mode_seeking`` times MSGAN's term on G(z) and G(z') for a second noise z' of the same class when it is set.
The losses are ``training.losses.D2OLoss``, ``DistillLoss`` and ``ModeSeekingLoss``; the options a
``training.run_config.FinetuneConfig``.
Adam betas (0, 0.99) for both nets, EMA of G with EDM's half-life ramp. All per-step randomness (z, pair order)
comes from (seed, step) for the whole global batch, so a torchrun step equals a single-process one; gradients
are averaged across ranks by hand (no DDP wrapper: R1 needs a double backward, which DDP does not support).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import build_precond, precond_kwargs, save_model
from training.datasets import BatchStream, open_dataset
from training.diffaugment import DiffAugment, draw
from training.discriminator import Discriminator, TeacherEncoder, build_discriminator, count_trainable
from training.distributed import World, broadcast_module
from training.ema import EMA, EMATrack
from training.freeze import FreezeReport, apply_freeze
from training.images import GRID_SEED, grid_labels
from training.losses import Augment, D2OLoss, DistillLoss, ModeSeekingLoss
from training.pairs import PairsReader
from training.precond import SIGMA_MAX, EDMPrecond, OneStepGenerator, count_parameters
from training.run_config import FinetuneConfig
from training.sampling import seeded_noise
from training.steps import accumulation_rounds, autocast, grad_scaler, resolve_precision
from training.teacher import Teacher, load_teacher


def build_generator(teacher: EDMPrecond, dropout: float | None = 0.0, sigma: float = SIGMA_MAX) -> OneStepGenerator:
    """A D2O-preconditioned copy of the teacher (same weights), wrapped as G(z, y) at ``sigma``."""
    kw = precond_kwargs(teacher)
    if dropout is not None:
        kw["dropout"] = dropout
    net = build_precond("d2o", kw)
    net.load_state_dict(teacher.state_dict(), strict=True)
    return OneStepGenerator(net.to(next(teacher.parameters()).device), sigma=sigma)


def _all_reduce_grads(params: list[torch.nn.Parameter], world: World) -> None:
    """Mean of the gradients across ranks (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world.distributed and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _sanitize_grads(params: list[torch.nn.Parameter]) -> None:
    """The paper's NaN/Inf guard."""
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)


def _average_grads(params: list[torch.nn.Parameter], world: World) -> None:
    """Mean of the gradients across ranks (one flat all-reduce), then the paper's NaN/Inf guard."""
    _all_reduce_grads(params, world)
    _sanitize_grads(params)


class FinetuneTask:
    """One D2O fine-tuning step per global batch; see the module docstring."""

    def __init__(
        self,
        generator: OneStepGenerator,
        disc: Discriminator | None,
        world: World,
        cfg: FinetuneConfig,
        teacher: Teacher | None = None,
        pairs: PairsReader | None = None,
    ):
        self.world = world
        self.cfg = cfg
        self.precision = resolve_precision(cfg.precision, world.device)
        self.scaler = grad_scaler(self.precision, world.device)
        self.objective = cfg.objective
        self.use_gan = cfg.use_gan
        self.use_distill = cfg.use_distill
        device = world.device
        self.g = generator.to(device).train()
        self.net = self.g.denoiser
        self.freeze: FreezeReport = apply_freeze(self.net, cfg.freeze)
        broadcast_module(self.net, world)
        self.g_params = [p for p in self.net.parameters() if p.requires_grad]
        self.g_opt = torch.optim.Adam(self.g_params, lr=cfg.g_lr, betas=(0.0, 0.99), eps=1e-8)
        self.ema = EMA(self.net, halflife_kimg=cfg.ema_halflife_kimg, rampup_ratio=cfg.ema_rampup)
        self.ema_tracks = [(tr, EMA(self.net, tr.halflife_kimg, tr.rampup_ratio)) for tr in cfg.ema_tracks()]
        self.gan_loss = D2OLoss(r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval)
        self.disc = disc
        if self.use_gan:
            if disc is None:
                raise ValueError(f"objective {self.objective!r} needs a discriminator")
            self.disc = disc.to(device).train()
            broadcast_module(self.disc, world)
            self.d_params = self.disc.trainable_parameters()
            self.d_opt = torch.optim.Adam(self.d_params, lr=cfg.d_lr, betas=(0.0, 0.99), eps=1e-8)
        self.pairs = pairs
        encoder: TeacherEncoder | None = None  # the teacher's encoder, for the feature distances

        def teacher_encoder(option: str) -> TeacherEncoder:
            nonlocal encoder
            if teacher is None:
                raise ValueError(f"{option} needs the teacher")
            if encoder is None:
                encoder = TeacherEncoder(teacher.net.to(device), cfg.disc_sigmas)
            return encoder

        self.distill_loss: DistillLoss | None = None
        if self.use_distill:
            if pairs is None:
                raise ValueError(f"objective {self.objective!r} needs --pairs (python -m training.make_pairs)")
            backbone = teacher_encoder("--distill-loss feature") if cfg.distill_loss == "feature" else None
            self.distill_loss = DistillLoss(cfg.distill_loss, backbone=backbone)
        self.mode_seeking: ModeSeekingLoss | None = None
        if cfg.mode_seeking > 0:
            self.mode_seeking = ModeSeekingLoss(teacher_encoder("--mode-seeking"))
        self.batch_size = cfg.batch
        self.augment = DiffAugment(cfg.augment)
        self.label_dim = self.net.label_dim
        self.img_shape = self.g.img_shape
        self.last_r1 = 0.0
        self._pair_perms: dict[int, torch.Tensor] = {}
        n = cfg.grid_size
        self.grid_noise = seeded_noise(range(GRID_SEED, GRID_SEED + n), self.img_shape)
        self.grid_labels = grid_labels(self.label_dim, n)
        self.grid_cols = self.label_dim or None  # one column per class

    # ------------------------------------------------------------ per-step randomness

    def _rank_slice(self, per_rank: int) -> slice:
        return slice(self.world.rank * per_rank, (self.world.rank + 1) * per_rank)

    def _pair_indices(self, step: int, per_rank: int) -> torch.Tensor:
        """Pair indices of this rank's share of step ``step``: epochs of seeded permutations, cut in batches."""
        num = len(self.pairs)
        pos = step * self.batch_size + torch.arange(self.batch_size)[self._rank_slice(per_rank)]
        out = torch.empty_like(pos)
        for epoch in pos.div(num, rounding_mode="floor").unique().tolist():
            if epoch not in self._pair_perms:
                g = torch.Generator().manual_seed(self.cfg.seed * 7919 + 104729 * epoch + 17)
                self._pair_perms[epoch] = torch.randperm(num, generator=g)
                for old in [e for e in self._pair_perms if e < epoch - 1]:
                    del self._pair_perms[old]
            sel = pos.div(num, rounding_mode="floor") == epoch
            out[sel] = self._pair_perms[epoch][pos[sel] % num]
        return out

    # ------------------------------------------------------------ the step

    def _set_d_grad(self, flag: bool) -> None:
        for p in self.d_params:
            p.requires_grad_(flag)

    def r1_due(self, step: int) -> bool:
        return self.gan_loss.r1_due(step)

    def _augment(self, step: int, per_rank: int, *, reals_and_fakes: bool, rows: slice | None = None) -> Augment | None:
        """This rank's DiffAugment for the D step (reals then fakes) or the G step (fakes), or None when off.

        The parameters are drawn for the whole global batch from (seed, step, which step) and then sliced (to this
        rank's share, and to ``rows`` of it for an accumulation round), so a data-parallel or accumulated step
        transforms each image as a single process would.
        """
        if not self.augment:
            return None
        which = 0 if reals_and_fakes else 1
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_033 + 2 * step + which)
        b = self.batch_size
        params = draw(b * (2 if reals_and_fakes else 1), self.img_shape[1], self.img_shape[2], gen)
        mine = torch.arange(b)[self._rank_slice(per_rank)]
        if rows is not None:
            mine = mine[rows]
        params = params.select(torch.cat([mine, b + mine]) if reals_and_fakes else mine)
        return lambda x: self.augment(x, params)

    @contextlib.contextmanager
    def _power_iteration(self, enabled: bool) -> Iterator[None]:
        """Spectral norm's power iteration only where ``enabled``: one per D or G step, whatever the rounds (later
        rounds reuse the vectors the first one updated), so an accumulated step equals the whole-batch step."""
        modules = [] if self.disc is None else self.disc.modules()
        modules = [m for m in modules if type(m).__name__ == "_SpectralNorm" and m.training]
        if enabled or not modules:
            yield
            return
        try:
            for m in modules:
                m.train(False)
            yield
        finally:
            for m in modules:
                m.train(True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int, images_seen: int) -> dict[str, float]:
        """One D step and one G step on this rank's share of the global batch, in accumulation rounds of
        ``cfg.batch_gpu`` images (each round's losses weighted by its share; one optimizer step each)."""
        cfg = self.cfg
        device = images.device
        per_rank = images.shape[0]
        y = labels if self.label_dim else None
        rounds = accumulation_rounds(per_rank, cfg.batch_gpu)
        whole = len(rounds) == 1
        stats: dict[str, float] = {}
        self.g.train()

        def part(t: torch.Tensor | None, r: slice) -> torch.Tensor | None:
            return None if t is None or whole else t[r]

        fake = z = z_partner = None
        if self.use_gan:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            z = torch.randn((self.batch_size, *self.img_shape), generator=gen)[self._rank_slice(per_rank)].to(device)
            if self.mode_seeking is not None:
                # A second noise per sample, drawn apart so the GAN's draws stay as they are (CPU generators seed
                # from the low 32 bits: the offset keeps these seeds clear of z's).
                gen = torch.Generator().manual_seed(2_000_000_000 + cfg.seed * 1_000_037 + step)
                z_partner = torch.randn((self.batch_size, *self.img_shape), generator=gen)
                z_partner = z_partner[self._rank_slice(per_rank)].to(device)
            if whole:  # the generated images of the D step are the G step's, its graph kept
                with autocast(self.precision, device):
                    fake = self.g(z, y)

            # D step on reals and (detached) fakes in one forward per round, with lazy R1 on its interval.
            self._set_d_grad(True)
            self.d_opt.zero_grad(set_to_none=True)
            sums = dict.fromkeys(("loss_d", "loss_r1", "d_real", "d_fake"), 0.0)
            penalty = None
            for i, r in enumerate(rounds):
                w = (r.stop - r.start) / per_rank
                reals, yr = (images, y) if whole else (images[r], part(y, r))
                with self._power_iteration(i == 0), autocast(self.precision, device):
                    if whole:
                        fake_r = fake
                    else:
                        with torch.no_grad():
                            fake_r = self.g(z[r], yr)
                    augment = self._augment(step, per_rank, reals_and_fakes=True, rows=None if whole else r)
                    d = self.gan_loss.discriminator_loss(self.disc, reals, fake_r, yr, step, augment=augment)
                self.scaler.scale(d.total if whole else d.total * w).backward()
                if d.penalty is not None:
                    penalty = (0.0 if penalty is None else penalty) + d.penalty.item() * w
                sums["loss_d"] += d.loss.item() * w
                sums["loss_r1"] += d.r1.item() * w
                sums["d_real"] += d.logits_real.detach().float().mean().item() * w
                sums["d_fake"] += d.logits_fake.detach().float().mean().item() * w
            if penalty is not None:
                self.last_r1 = penalty
            self._step(self.d_opt, self.d_params)
            self._set_d_grad(False)
            stats.update(
                loss_d=sums["loss_d"],
                loss_r1=sums["loss_r1"],
                r1_penalty=self.last_r1,
                d_real=sums["d_real"],
                d_fake=sums["d_fake"],
            )

        # G step.
        g_lr = cfg.g_lr_at(images_seen)
        for group in self.g_opt.param_groups:
            group["lr"] = g_lr
        self.g_opt.zero_grad(set_to_none=True)
        pair_indices = self._pair_indices(step, per_rank) if self.use_distill else None
        g_sums: dict[str, float] = {}
        for i, r in enumerate(rounds):
            w = (r.stop - r.start) / per_rank
            yr = y if whole else part(y, r)
            loss_g = torch.zeros((), device=device)
            with self._power_iteration(i == 0), autocast(self.precision, device):
                if self.use_gan:
                    fake_r = fake if whole else self.g(z[r], yr)
                    augment = self._augment(step, per_rank, reals_and_fakes=False, rows=None if whole else r)
                    loss_gan = self.gan_loss.generator_loss(self.disc, fake_r, yr, augment=augment)
                    loss_g = loss_g + loss_gan
                    g_sums["loss_g"] = g_sums.get("loss_g", 0.0) + loss_gan.item() * w
                    if self.mode_seeking is not None:
                        z_r, zp_r = (z, z_partner) if whole else (z[r], z_partner[r])
                        partner = self.g(zp_r, yr)
                        loss_ms = self.mode_seeking(fake_r, partner, z_r, zp_r, yr)
                        loss_g = loss_g + cfg.mode_seeking * loss_ms
                        g_sums["loss_ms"] = g_sums.get("loss_ms", 0.0) + loss_ms.item() * w
                if self.use_distill:
                    zp, yp, target = self.pairs.get(pair_indices if whole else pair_indices[r])
                    zp, target = zp.to(device), target.to(device)
                    yp = yp.to(device) if self.label_dim else None
                    loss_distill = self.distill_loss(self.g(zp, yp), target, yp)
                    loss_g = loss_g + cfg.distill_weight * loss_distill
                    g_sums["loss_distill"] = g_sums.get("loss_distill", 0.0) + loss_distill.item() * w
            self.scaler.scale(loss_g if whole else loss_g * w).backward()
        stats.update(g_sums)
        if cfg.g_lr_end is not None:
            stats["g_lr"] = g_lr
        self._step(self.g_opt, self.g_params)
        self.scaler.update()
        for ema in [self.ema, *(ema for _, ema in self.ema_tracks)]:
            ema.update(self.net, self.batch_size, images_seen + self.batch_size)
        return stats

    def _step(self, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
        """Average the (summed-over-rounds) gradients across ranks, unscale (fp16), guard NaN/Inf, step.

        The all-reduce comes before the unscale so that an overflow on one rank skips the step on every rank.
        """
        _all_reduce_grads(params, self.world)
        self.scaler.unscale_(opt)
        _sanitize_grads(params)
        self.scaler.step(opt)

    # ------------------------------------------------------------ state, samples, export

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(
            g=self.net.state_dict(),
            ema=self.ema.net.state_dict(),
            g_opt=self.g_opt.state_dict(),
            last_r1=self.last_r1,
        )
        if self.ema_tracks:
            state["ema_extra"] = {track.dirname: ema.net.state_dict() for track, ema in self.ema_tracks}
        if self.use_gan:
            state.update(d=self.disc.trainable_state_dict(), d_opt=self.d_opt.state_dict())
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["g"])
        self.ema.net.load_state_dict(state["ema"])
        saved = state.get("ema_extra", {})
        for track, ema in self.ema_tracks:
            if track.dirname not in saved:
                raise ValueError(f"the training state holds no EMA track {track.dirname} (it has {sorted(saved)})")
            ema.net.load_state_dict(saved[track.dirname])
        self.g_opt.load_state_dict(state["g_opt"])
        self.last_r1 = float(state.get("last_r1", 0.0))
        if self.use_gan:
            self.disc.load_trainable_state_dict(state["d"])
            self.d_opt.load_state_dict(state["d_opt"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def ema_generator(self, net: torch.nn.Module | None = None) -> OneStepGenerator:
        """A one-step generator around ``net`` (default: the main EMA of G)."""
        return OneStepGenerator(self.ema.net if net is None else net, sigma=self.g.sigma)

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        gen = self.ema_generator()
        device = self.world.device
        labels = self.grid_labels.to(device) if self.grid_labels is not None else None
        out = [
            gen(self.grid_noise[i : i + 64].to(device), labels[i : i + 64] if labels is not None else None)
            for i in range(0, self.grid_noise.shape[0], 64)
        ]
        return torch.cat(out).clamp(-1, 1)

    def export_model(self, out_dir: Path, images_seen: int) -> None:
        """The main EMA to ``out_dir``; each extra track to ``<dir of out_dir>/<track dirname>/<name of out_dir>``."""
        cfg = self.cfg
        self._save_generator(self.ema.net, cfg.main_ema_track, out_dir, images_seen)
        for track, ema in self.ema_tracks:
            self._save_generator(ema.net, track, out_dir.parent / track.dirname / out_dir.name, images_seen)

    def _save_generator(self, net: torch.nn.Module, track: EMATrack, out_dir: Path, images_seen: int) -> None:
        cfg = self.cfg
        save_model(
            self.ema_generator(net),
            out_dir,
            name=cfg.desc,
            class_names=list(cfg.class_names) or None,
            extra=dict(
                dataset=dict(spec=cfg.data, resolution=self.net.img_resolution),
                training=dict(
                    stage="finetune",
                    images_seen=images_seen,
                    freeze=cfg.freeze,
                    frozen_fraction=round(self.freeze.fraction, 6),
                    objective=cfg.objective,
                    augment=cfg.augment,
                    disc=cfg.disc,
                    ema=dict(halflife_kimg=track.halflife_kimg, rampup=track.rampup_ratio),
                    teacher=dict(cfg.teacher_info) if cfg.teacher_info is not None else {"path": cfg.teacher},
                ),
            ),
        )


def build_task(cfg: FinetuneConfig, world: World) -> tuple[FinetuneTask, BatchStream]:
    """The task and this rank's batch stream; the task's ``cfg`` is ``cfg`` with the teacher's record and the
    class names filled in, and the precision ``auto`` resolved to (what the run dir's config.json holds)."""
    accumulation_rounds(cfg.batch // world.world_size, cfg.batch_gpu)  # a --batch-gpu that does not divide: now
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once
    teacher = load_teacher(cfg.teacher, device=world.device)
    known = (cfg.teacher_info or {}).get("fingerprint")
    if known and known != teacher.info["fingerprint"]:
        raise ValueError(f"--teacher {cfg.teacher}: its weights changed since this run started; cannot resume")
    net = teacher.net
    dataset = open_dataset(
        cfg.data, split="train", resolution=net.img_resolution, path=cfg.data_path, channels=net.img_channels
    )
    if (dataset.channels, dataset.resolution) != (net.img_channels, net.img_resolution):
        raise ValueError(
            f"--data {cfg.data}: {dataset.channels}x{dataset.resolution}px images, but the teacher makes "
            f"{net.img_channels}x{net.img_resolution}px"
        )
    if net.label_dim and dataset.num_classes != net.label_dim:
        raise ValueError(
            f"--data {cfg.data}: {dataset.num_classes} classes, but the teacher is conditional on {net.label_dim}"
        )
    class_names = teacher.class_names or (list(dataset.class_names) if net.label_dim else [])
    cfg = cfg.replace(
        teacher_info=teacher.info,
        class_names=tuple(class_names),
        precision=resolve_precision(cfg.precision, world.device),
    )
    pairs = None
    if cfg.use_distill:
        pairs = PairsReader(cfg.pairs)
        if pairs.meta.get("teacher_fingerprint") != teacher.info["fingerprint"]:
            raise ValueError(f"--pairs {cfg.pairs}: made from another teacher than --teacher {cfg.teacher}")
    generator = build_generator(net, dropout=cfg.dropout, sigma=cfg.sigma)
    torch.manual_seed(cfg.seed)  # D's initialization: the same on every rank
    disc = None
    if cfg.use_gan:
        disc = build_discriminator(
            cfg.disc,
            teacher=net,
            img_channels=net.img_channels,
            img_resolution=net.img_resolution,
            label_dim=net.label_dim,
            width=cfg.disc_width,
            sigmas=cfg.disc_sigmas,
            backbone_weights=cfg.disc_backbone,
            backbone_config=cfg.disc_backbone_config,
            mbstd_group=cfg.disc_mbstd,
            class_projection=cfg.disc_cond == "projection",
        )
    task = FinetuneTask(generator, disc, world, cfg, teacher=teacher, pairs=pairs)
    stream = BatchStream(dataset, cfg.batch, seed=cfg.seed, rank=world.rank, world_size=world.world_size)
    return task, stream


def describe(task: FinetuneTask) -> dict[str, Any]:
    """What the run records about its networks (config.json) and prints."""
    out: dict[str, Any] = dict(
        generator_parameters=count_parameters(task.net),
        generator_trainable=count_trainable(task.net),
        freeze_report=task.freeze.as_dict(),
    )
    if task.disc is not None:
        out["discriminator_trainable"] = count_trainable(task.disc)
    return out
