"""The fit loop: Adam, ReduceLROnPlateau (x0.1), early stopping on the validation loss, checkpoints
that resume bit-identically, DistributedDataParallel under torchrun, bf16 autocast on CUDA.
The run folder's files: :mod:`.runfiles`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from BreastCMSLLib import distributed
from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.metrics import safe_auc
from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.header import read_model_metadata
from BreastCMSLLib.network.modelfile import save_model

from . import fastconv
from .cache import Cache, open_cache
from .calibration import UnusableSplitError
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import Augment, VolumeSource, device_index
from .domain import fit_domain
from .evaluate import calibrate
from .inference import predict, prepare, run_forward
from .methods import MethodConfig, build_network, model_config
from .runfiles import run_files


@dataclass(frozen=True)
class FitConfig:
    """Everything ``breastcmsl-train fit`` takes. ``batch_size`` is the global batch over all ranks."""

    cache: str
    out: str
    method: str = "cmsl"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    width_factor: float = 1.0
    s: float = 20.0
    m: float = 0.35
    lr_patience: int = 3  # epochs without improvement of the monitored loss before lr /= 10
    plateau_on: str = "train"  # the loss whose stagnation divides the lr by 10: "train" or "val"
    early_stop: int = 8  # epochs without validation-loss improvement before stopping
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    init: str | None = None
    resident_gb: float = 8.0  # keep a split on the device when it needs at most this many GB
    sparsity: float = 0.1
    aux_weight: float = 0.5
    conv1: str = "s2d"  # CUDA: exact conv1 rewrite for tensor cores, "s2d", "pad" or "none" (Training.fastconv)
    compile: bool = False  # CUDA: torch.compile the network (inductor; its first steps then take minutes)


def load_init(model: nn.Module, source: str) -> list[str]:
    """Initialize from a trained model file or run folder (its best model); returns keys not loaded."""
    path = Path(source)
    if path.is_dir():
        path = run_files(path)["best"]
    read_model_metadata(path)  # checks that it is one of our safetensors models (never unpickles)
    state = load_file(str(path))
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with the training-only conv1 wrapper removed from the key names."""
    return {k.replace("conv1.conv.", "conv1."): v for k, v in unwrap(model).state_dict().items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    net = unwrap(model)
    if isinstance(getattr(getattr(net, "backbone", None), "conv1", None), fastconv.FastConv1):
        state = {k.replace("backbone.conv1.", "backbone.conv1.conv."): v for k, v in state.items()}
    net.load_state_dict(state)


class Trainer:
    """One training run (one process of a torchrun job)."""

    def __init__(self, fit: FitConfig, resume: bool = False):
        self.fit, self.files = fit, run_files(fit.out)
        self.dist, self.device = distributed.setup(fit.device)
        if fit.batch_size % self.dist.world:
            raise InputError("--batch-size", f"{fit.batch_size} is not divisible by the {self.dist.world} ranks")
        self.cache: Cache = open_cache(fit.cache)
        self.train_cases, self.val_cases = self.cache.split("train"), self.cache.split("val")
        if not self.train_cases or not self.val_cases:
            raise InputError(fit.cache, f"needs finished train and val cases (has {len(self.train_cases)} train, "
                             f"{len(self.val_cases)} val)")
        channels = int(self.cache.load(self.train_cases[0].subject_id).shape[0])
        base = ModelConfig(in_channels=channels, width_factor=fit.width_factor, s=fit.s, m=fit.m,
                           preprocess=self.cache.preprocess)
        self.cfg = model_config(fit.method, base)
        self.method = MethodConfig(fit.method, fit.sparsity, fit.aux_weight)
        torch.manual_seed(fit.seed)
        np.random.seed(fit.seed)
        net = build_network(self.cfg)
        self.not_initialized = load_init(net, fit.init) if fit.init else []
        if self.cfg.angular:  # cos(theta) does not involve the head's bias: freeze it (DDP needs every
            net.head.bias.requires_grad_(False)  # trainable parameter to get a gradient)
        cuda = self.device.type == "cuda"
        torch.backends.cudnn.benchmark = cuda  # fixed input size: let cuDNN pick its fastest 3D kernels
        self.conv1 = fit.conv1 if cuda and fastconv.install(net, fit.conv1) else "none"
        net.to(self.device)
        if cuda:
            net.to(memory_format=torch.channels_last_3d)
            if fit.compile:
                net.compile()  # in place: parameter names and state dicts stay those of the plain network
        self.model: nn.Module = net
        if self.dist.world > 1:
            if cuda:  # batch statistics over the global batch (SyncBatchNorm has no CPU implementation)
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            self.model = DistributedDataParallel(net, device_ids=[self.device.index] if cuda else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=fit.lr, fused=cuda)  # fused: one kernel
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=0.1,
                                                                    patience=fit.lr_patience)
        budget = int(fit.resident_gb * 1e9)
        self.train_data = VolumeSource(self.cache, self.train_cases, self.device, budget)
        self.val_data = VolumeSource(self.cache, self.val_cases, self.device, budget)
        self.augment = Augment()
        self.state = {"epoch": 0, "step": 0, "global_step": 0, "epoch_losses": [], "best_loss": math.inf,
                      "bad_epochs": 0, "stopped": False, "history": []}
        if resume:
            self._resume()
        elif self.dist.main:
            Path(fit.out).mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.files["run"], json.dumps(
                {"fit": dataclasses.asdict(fit), "model": json.loads(self.cfg.to_json()),
                 "method": dataclasses.asdict(self.method), "world_size": self.dist.world,
                 "not_initialized": self.not_initialized}, indent=1))

    # -- state ---------------------------------------------------------------------------------------
    def _resume(self) -> None:
        ckpt = load_checkpoint(self.files["checkpoint"])
        if ckpt["fit"] != json.dumps(dataclasses.asdict(self.fit), sort_keys=True):
            raise InputError(self.files["checkpoint"], "was written by a run with other fit options; resume with "
                             "the same options (or start a new --out)")
        load_weights(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = json.loads(ckpt["state"])
        set_rng_state(ckpt["rng"])

    def _checkpoint(self) -> None:
        if not self.dist.main:
            return
        save_checkpoint(self.files["checkpoint"], {
            "fit": json.dumps(dataclasses.asdict(self.fit), sort_keys=True),
            "model": weights(self.model), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "state": json.dumps(self.state), "rng": rng_state()})

    def _save_model(self, path: Path, extra: dict) -> None:
        provenance = {"method": self.fit.method, "untrained": False, "trained_on": str(Path(self.fit.cache).resolve()),
                      "fit": dataclasses.asdict(self.fit), "method_config": dataclasses.asdict(self.method), **extra}
        net = build_network(self.cfg)
        net.load_state_dict(weights(self.model))
        save_model(path, net, self.cfg, provenance)

    # -- batches -------------------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch: DistributedSampler order cut into per-rank batches."""
        sampler = DistributedSampler(range(len(self.train_data)), num_replicas=self.dist.world,
                                     rank=self.dist.rank, shuffle=True, seed=self.fit.seed)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        per_rank = self.fit.batch_size // self.dist.world
        return [idx[n:n + per_rank] for n in range(0, len(idx) - per_rank + 1, per_rank)]

    def prepared(self, order: list[list[int]], epoch: int, overlap: bool = True):
        """Yield (indices, augmented network input) for each batch of ``order``.

        On CUDA (with ``overlap``), batch t + 1 is gathered and augmented on a side stream while the model
        step of batch t runs on the main stream, so the data path overlaps the compute.
        """
        def make(idx, batch):
            return prepare(batch, self.device, self.conv1, self.augment, self.fit.seed, epoch, idx)

        if self.device.type != "cuda" or not overlap:
            for idx, batch in self.train_data.batches(order):
                yield idx, make(idx, batch)
            return
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        batches, pending = iter(self.train_data.batches(order)), None
        while True:
            with torch.cuda.stream(side):  # the generator's gather runs here too
                item = next(batches, None)
                ready = None
                if item is not None:
                    ready = (item[0], make(*item), torch.cuda.Event())
                    ready[2].record(side)
            if pending is not None:
                idx, x, event = pending
                main.wait_event(event)
                x.record_stream(main)  # allocated on the side stream, consumed on main
                yield idx, x
            if ready is None:
                return
            pending = ready

    def train_step(self, x: torch.Tensor, index: list[int]) -> torch.Tensor:
        """One optimizer step on a prepared input of train-split indices; returns the (detached) loss."""
        self.model.train()
        dev_index = device_index(index, self.device)
        loss, _ = run_forward(self.method, self.cfg, self.model, x, self.train_data.labels_dev[dev_index],
                              self.train_data.birads_dev[dev_index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def predict(self, source: VolumeSource) -> dict[str, np.ndarray]:
        return predict(self.method, self.cfg, unwrap(self.model), source,
                       max(1, self.fit.batch_size // self.dist.world), self.dist, self.conv1)

    # -- loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until the epoch limit or early stopping; returns the last history row."""
        fit, st = self.fit, self.state
        writer = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.files["tb"]), purge_step=st["epoch"])
        while st["epoch"] < fit.epochs and not st["stopped"]:
            epoch, t0 = st["epoch"], time.perf_counter()
            order = self._epoch_order(epoch)
            done = list(st["epoch_losses"])  # step losses before a mid-epoch resume
            losses: list[torch.Tensor] = []  # kept on the device: no host sync per step
            for idx, x in self.prepared(order[st["step"]:], epoch):
                losses.append(self.train_step(x, idx))
                st["step"] += 1
                st["global_step"] += 1
                if fit.checkpoint_every and st["global_step"] % fit.checkpoint_every == 0:
                    st["epoch_losses"] = done + [float(v) for v in losses]
                    self._checkpoint()
            step_losses = done + [float(v) for v in losses]
            train_loss = math.fsum(step_losses) / len(step_losses) if step_losses else math.nan  # split-exact
            if self.dist.world > 1:
                train_loss = float(np.nanmean(distributed.gather_objects(train_loss, self.dist)))
            self._end_epoch(epoch, train_loss, time.perf_counter() - t0, writer)
        if self.dist.main:
            self._save_model(self.files["last"], {"epoch": st["epoch"]})
            if not self.files["best"].exists():
                self._save_model(self.files["best"], {"epoch": st["epoch"]})
        if writer:
            writer.close()
        return st["history"][-1] if st["history"] else {}

    def _end_epoch(self, epoch: int, train_loss: float, seconds: float, writer) -> None:
        st = self.state
        val = self.predict(self.val_data)
        val_loss = float(val["loss"].mean())
        pred = (val["probability"] >= 0.5).astype(int)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
               "val_auc": safe_auc(val["label"], val["probability"]),
               "val_accuracy": float((pred == val["label"]).mean()),
               "lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds}
        self.scheduler.step(train_loss if self.fit.plateau_on == "train" else val_loss)
        improved = val_loss < st["best_loss"]
        st["best_loss"] = min(st["best_loss"], val_loss)
        st["bad_epochs"] = 0 if improved else st["bad_epochs"] + 1
        st["stopped"] = st["bad_epochs"] >= self.fit.early_stop
        st["history"].append(row)
        st["epoch"], st["step"], st["epoch_losses"] = epoch + 1, 0, []
        if self.dist.main:
            if improved:
                self._save_model(self.files["best"], {"epoch": epoch + 1, "val_loss": val_loss,
                                                      "val_auc": row["val_auc"]})
            self._write_log(writer, row)
        self._checkpoint()

    def _write_log(self, writer, row: dict) -> None:
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=list(row), lineterminator="\n")
        w.writeheader()
        w.writerows(self.state["history"])
        atomic_write_text(self.files["log"], text.getvalue())
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def fit(cfg: FitConfig, resume: bool = False) -> dict:
    """Run ``breastcmsl-train fit`` and calibrate the best model on the validation split; returns the last
    epoch's log row with the calibration's summary (or why the validation split could not calibrate)."""
    trainer = Trainer(cfg, resume=resume)
    try:
        row = dict(trainer.run())
        if trainer.dist.main:
            row["domain"] = fit_domain(cfg.out, cfg.device)  # rewrites model_best: before its calibration
            try:
                row["calibration"] = calibrate(cfg.out, device=cfg.device)
            except UnusableSplitError as err:  # the run stays usable, uncalibrated (T = 1)
                run_files(cfg.out)["calibration"].unlink(missing_ok=True)  # one of an earlier model in this folder
                print(f"not calibrated: {err}", flush=True)
                row["calibration"] = f"not calibrated: {err}"
        return row
    finally:
        distributed.teardown()
