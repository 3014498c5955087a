"""Typed, documented configuration of the build stages (frozen dataclasses, one comment per field)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from edge_sparse.errors import EdgeSparseError

Augment = Literal["none", "crop", "crop_flip"]
SparsityReg = Literal["none", "bn_l1", "group_lasso"]
SparsityWeighting = Literal["uniform", "cost"]
Schedule = Literal["cosine", "onecycle", "constant"]
AdvTrain = Literal["none", "pgd"]
Precision = Literal["fp32", "bf16"]
# What "dense" means in every dense-vs-shipped number: "teacher" = the train stage's dense model itself (trained
# all the dense epochs, then the fine-tune's distillation teacher); "retrain" = the train stage's model given the
# fine-tune epochs too, unpruned; "warmup" = the train stage's model as is, with no claim of an equal budget.
Reference = Literal["teacher", "retrain", "warmup"]


@dataclass(frozen=True)
class TrainConfig:
    """How one training (or fine-tuning) run goes."""

    epochs: int = 6  # passes over the train split
    batch_size: int = 128  # per process (DDP multiplies it by the world size)
    lr: float = 0.1  # peak SGD learning rate
    momentum: float = 0.9  # SGD momentum (Nesterov)
    weight_decay: float = 5e-4  # L2 on conv/linear weights (not on BN, which the sparsity term owns)
    schedule: Schedule = "cosine"  # learning-rate schedule over all steps ("onecycle": linear warm-up, then cosine to ~0)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    augment: Augment = "crop_flip"  # random 4-pixel-padded crop (+ horizontal flip)
    sparsity_reg: SparsityReg = "bn_l1"  # network slimming (L1 on BN scales) or group lasso on channels
    sparsity_lambda: float = 2e-3  # strength of the sparsity term (high: the epoch budget is short)
    sparsity_weighting: SparsityWeighting = "uniform"  # "cost": scale each channel's term by what it costs (H*W*C)
    kd_alpha: float = 0.0  # weight of distillation from a teacher (0 = plain cross-entropy)
    kd_temperature: float = 4.0  # distillation temperature
    adv_train: AdvTrain = "none"  # PGD adversarial training (Madry et al.) mixed into each batch
    adv_eps: float = 2.0  # PGD-AT epsilon, pixels /255
    seed: int = 0  # seeds init, shuffling and augmentation
    device: str = "cpu"  # "cpu" or "cuda"
    precision: Precision = "fp32"  # "bf16": bfloat16 autocast of forward and loss (CUDA only)

    def __post_init__(self):
        if self.epochs < 0:
            raise EdgeSparseError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise EdgeSparseError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise EdgeSparseError(f"lr must be > 0, got {self.lr}")
        if not self.kd_temperature > 0:
            raise EdgeSparseError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if not 0 <= self.kd_alpha <= 1:
            raise EdgeSparseError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if self.sparsity_lambda < 0:
            raise EdgeSparseError(f"sparsity_lambda must be >= 0, got {self.sparsity_lambda}")
        for name, allowed in (("augment", Augment), ("sparsity_reg", SparsityReg), ("schedule", Schedule),
                              ("adv_train", AdvTrain), ("sparsity_weighting", SparsityWeighting),
                              ("precision", Precision)):
            valid = allowed.__args__
            if getattr(self, name) not in valid:
                raise EdgeSparseError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class BuildConfig:
    """Everything a `make build` decides besides the target profile."""

    dataset: str = "fashion-mnist"  # fashion-mnist | cifar10 | cifar100 | folder
    data_dir: Optional[str] = None  # the user's data (not needed for fashion-mnist)
    model: str = "resnet8"  # a registered architecture
    image_size: int = 64  # side length for folder datasets (others keep their native size)
    criterion: str = "bn_scale"  # channel importance for pruning
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # candidates the budget search tries
    # Default recipe (BENCHMARKS.md, "Training recipes"; `python -m benchmarks.recipes`): the dense model trains
    # first, all its epochs (one-cycle, L1 on BN scales), and is both the report's dense reference and the teacher
    # the pruned model distils from. No augmentation: these small nets underfit Fashion-MNIST, and crop+flip cost
    # the dense model 1.9 pt of validation accuracy (90.68 vs 92.57 %) and the shipped one 1.3 pt on 10k test images.
    train: TrainConfig = TrainConfig(epochs=9, schedule="onecycle", augment="none")  # the dense model, with the sparsity objective
    prune_steps: int = 1  # >1: reach the chosen sparsity in this many prune -> fine-tune (1 epoch) steps
    # after pruning: labels alone at the dense peak rate. Distilling from the dense model (--kd-alpha 0.8, lr 0.05, the
    # default until 2026-12-02) measured 0.45 pt worse over 3 seeds (92.05 vs 92.50 %, recipes `default` vs
    # `default-kd0-ftlr1`): a 9-epoch teacher (92.2 %) holds back a student that can pass it.
    finetune: TrainConfig = TrainConfig(epochs=9, lr=0.1, schedule="onecycle", augment="none", sparsity_reg="none",
                                        kd_alpha=0.0)
    reference: Reference = "teacher"  # the report's dense reference (see `Reference`)
    calib_size: int = 512  # calibration images for int8 (from calib_data/ or the train split)
    eval_size: int = 2000  # held-out test images shipped in eval.npz and used for parity
    limit_train: Optional[int] = None  # train on a class-balanced slice (QUICK)
    limit_eval: Optional[int] = None  # val/test slices (QUICK)
    robust_eps: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # PGD epsilons (/255) measured on the shipped model
    robust_n: int = 500  # test images used for robustness
    seed: int = 0  # one seed for data splits, init, shuffling
    search: str = "allocate"  # "allocate": per-group widths under the latency table; "global": one threshold per sparsity
    weights: Optional[str] = None  # start from these trained weights (safetensors / weights-only torch checkpoint)
    no_train: bool = False  # with weights: no training at all; prune (data-driven importance), recover BN, export
    target_device: Optional[str] = None  # user@host or adb[:serial]: time the search's finalists there, ship only what fits
    fixed_sparsity: Optional[float] = None  # study mode: ship exactly this sparsity, budget reported not enforced
    enforce_parity: bool = True  # parity gates (int8/float agreement, int8 accuracy loss) fail the build
    enforce_accuracy_floor: bool = True  # QUICK builds report the floor but do not fail on it
    accuracy_floor_pct: Optional[float] = None  # overrides the profile's floor (stated for its default dataset)
    workers: Optional[int] = None  # processes decoding folder images (None: one per core, at most 8; 0: the main one)
    skip_bad_images: bool = False  # folder datasets: leave unreadable images out (counted in metadata) instead of failing

    def __post_init__(self):
        if self.prune_steps < 1:
            raise EdgeSparseError(f"prune_steps must be >= 1, got {self.prune_steps}")
        if self.reference not in Reference.__args__:
            raise EdgeSparseError(f"reference must be one of {', '.join(Reference.__args__)}, got {self.reference!r}")

    @classmethod
    def quick(cls, **kw) -> "BuildConfig":
        """QUICK=1: the same stages on a small slice and short epochs. An undertrained model's int8
        top-1 flips more, so parity and accuracy gates are measured and reported, not enforced;
        the latency and size budgets still are."""
        base = dict(
            limit_train=8000, limit_eval=500, eval_size=500, robust_n=200, sparsities=(0.2, 0.3, 0.5, 0.7),
            train=TrainConfig(epochs=3, schedule="onecycle", augment="none"), enforce_parity=False,
            enforce_accuracy_floor=False, finetune=TrainConfig(epochs=2, lr=0.05, schedule="onecycle", augment="none",
                                                               sparsity_reg="none", kd_alpha=0.8),
        )
        base.update(kw)
        return cls(**base)
