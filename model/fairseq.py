"""Import of original fairseq TNN checkpoints into native names: fairseq-evo's `tnn_v2_lm` archs (spec §3-4) and
jonathanmei/ski-tnn's `laxtnn_lm` archs (TNN, FD-TNN) and its RoBERTa-style `ski_blm_inv_time` (SKI-TNN encoder).

The .pt is read with `torch.load(weights_only=True)`: no pickle code runs. Hyperparameters come from
cfg["model"] (a dict or an argparse.Namespace), then the arch table, then the layer defaults; every size is read
from the tensor shapes and cross-checked against the cfg. Anything that cannot be loaded exactly is refused
with the key, the shapes and the file named.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tnn.model.config import ACTIVATIONS, TnnConfig

logger = logging.getLogger(__name__)

# Values the registered archs set (spec §3.2) on top of tnn_v2_decay_99_pre; None marks archs we refuse.
_MAIN_ARCH: dict[str, Any] = {
    "decoder_layers": 7,
    "decoder_normalize_before": True,
    "use_decay": True,
    "use_norm": False,
    "rpe_layers": 6,
}
ARCHS: dict[str, dict[str, Any] | None] = {
    "tnn_v2_decay_99_pre": {},
    "tnn_v2_no_decay": {"use_decay": False},
    "tnn_v2_decay_99_post": {"decoder_normalize_before": False},
    "tnn_v2_decay_99_post_usenorm": {"decoder_normalize_before": False, "use_norm": True},
    "tnn_v2_decay_99_pre_usenorm": {"use_norm": True},
    "tnn_v2_decay_99_pre_l6": {"decoder_layers": 6},
    "tnn_v2_decay_99_pre_l12": {"decoder_layers": 12, "rpe_layers": 1},
    "tnn_v2_decay_99_pre_l1": {"rpe_layers": 1},
    "tnn_v2_decay_99_pre_gluv2": None,
    "tnn_v2_decay_99_pre_glu_v2_gtu_v3": None,
    "tnn_v2_decay_99_pre_glu_v2_gtu_v3_l6": None,
    "tnn_v2_decay_99_pre_e768": None,
    # jonathanmei/ski-tnn (laxtnn/models/language_model.py): `tno_type` picks the token mixer
    "laxtnn_alm_baseline": {},
    "laxtnn_alm_baseline_3lyrs": {"rpe_layers": 3},
    "laxtnn_no_decay": {"use_decay": False, "decoder_normalize_before": False},
    "laxtnn_alm_tno_fd": {"use_decay": False, "tno_type": "tno_fd"},
    "laxtnn_alm_tno_fd_3lyrs": {"use_decay": False, "tno_type": "tno_fd", "rpe_layers": 3},
    "laxtnn_alm_tno_fd_0lyrs": {"use_decay": False, "tno_type": "tno_fd", "rpe_layers": 0},
    "laxtnn_alm_tno_fd_norpe": None,
    # laxtnn/models/bidirectional_lm.py on fairseq's RoBERTa base_architecture (post-norm, embedding LayerNorm,
    # no embedding scale, masked-LM head); encoder_* arguments are read as decoder_* below
    "ski_blm_inv_time": {
        "decoder_layers": 12,
        "decoder_normalize_before": False,
        "causal": False,
        "tno_type": "skitno_inv_time",
        "rank": 32,
        "nk": 16,
        "layernorm_embedding": True,
        "no_scale_embedding": True,
    },
}
# tno_type of ski-tnn -> our `operator`; other mixers of that repo (skitno, tno_fd_norpe) are refused
_OPERATORS = {"tno": "tnn", "tno_fd": "fd", "skitno_inv_time": "ski"}
# Layer defaults the original code falls back to when cfg["model"] omits an argument (golden/README.md).
_LAYER_DEFAULTS: dict[str, Any] = {
    "decoder_attention_heads": 1,
    "no_decoder_final_norm": False,
    "no_scale_embedding": False,
    "share_decoder_input_output_embed": True,
    "act_fun": "silu",
    "causal": True,
    "expand_ratio": 3,
    "norm_type": "simplermsnorm",
    "use_multi_decay": False,
    "gamma": 0.99,
    "rpe_embedding": 64,
    "residual": False,
    "glu_act": "silu",
    "glu_dim": 512,
    "rpe_act": "relu",
    "par_type": 1,
    "act_type": "none",
    "normalize": False,
    "glu_type": 1,
    "gtu_type": 2,
    "fina_act": "None",
    "bias": True,
    "dropout": 0.1,
    "final_layernorm": "layernorm",
    "adaptive_input": False,
    "adaptive_softmax_cutoff": None,
    "tno_type": "tno",
    "rank": 32,
    "nk": 16,
    "layernorm_embedding": False,
}
# (fairseq name, native name) of every parameter, both ways: `{field}` is one dotted part, matched by _FIELDS
KEY_NAMES: list[tuple[str, str]] = [
    ("decoder.embed_tokens.weight", "embed.weight"),
    ("decoder.layer_norm.{wb}", "final_norm.{wb}"),
    ("decoder.layers.{layer}.self_attn.gtu.o.{wb}", "layers.{layer}.gtu.out_proj.{wb}"),
    ("decoder.layers.{layer}.self_attn.gtu.{uv}.{wb}", "layers.{layer}.gtu.{uv}.{wb}"),
    ("decoder.layers.{layer}.self_attn.gtu.toep.{tensor}", "layers.{layer}.gtu.tno.{tensor}"),
    ("decoder.layers.{layer}.self_attn.gtu.toep.rpe.pos_proj.{wb}", "layers.{layer}.gtu.tno.rpe.pos_proj.{wb}"),
    ("decoder.layers.{layer}.self_attn.gtu.toep.rpe.layers.{rpe}.2.{wb}", "layers.{layer}.gtu.tno.rpe.layers.{rpe}.linear.{wb}"),
    ("decoder.layers.{layer}.self_attn.gtu.toep.rpe.out.2.{wb}", "layers.{layer}.gtu.tno.rpe.out.linear.{wb}"),
    ("decoder.layers.{layer}.glu.{glu}.{wb}", "layers.{layer}.glu.{glu}.{wb}"),
    ("decoder.layernorm_embedding.{wb}", "embed_norm.{wb}"),
    ("encoder.lm_head.dense.{wb}", "mlm_head.dense.{wb}"),
    ("encoder.lm_head.layer_norm.{wb}", "mlm_head.norm.{wb}"),
    ("encoder.lm_head.bias", "mlm_head.bias"),
]  # fmt: skip
_FIELDS = {
    "wb": "weight|bias",
    "layer": r"\d+",
    "rpe": r"\d+",
    "uv": "u_proj|v_proj",
    "glu": "l1|l2|l3",
    "tensor": "gamma|alphas|betas|conv_kernel",  # gamma: the TNN's decay; the rest: SKI-TNN's
}


def _key_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    regex = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})" for i, part in enumerate(parts))
    return re.compile(regex)


_TO_NATIVE = [(_key_regex(fairseq), native) for fairseq, native in KEY_NAMES]
_TO_FAIRSEQ = [(_key_regex(native), fairseq) for fairseq, native in KEY_NAMES]


def _rename(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for regex, template in table:
        if match := regex.fullmatch(key):
            return template.format(**match.groupdict())
    return None


# RoBERTa-style encoders (ski_blm_inv_time) keep the layers under this prefix; read as the decoder's
ENCODER_PREFIX = "encoder.sentence_encoder."
# Non-parameter leftovers fairseq-evo itself drops on load (spec §4.1)
_IGNORED_KEYS = {
    "decoder.version",
    "decoder.output_projection.weight",
    "decoder.cache_matrix",
    "decoder.causal_mask",
    "encoder.lm_head.weight",  # tied to the embedding (checked)
}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True; argparse.Namespace (how fairseq-evo stores cfg) is allow-listed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises several types; all mean "not safely loadable"
        raise ValueError(f"{path}: cannot be loaded safely with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict)")
    return checkpoint


def encoder_as_decoder(state: dict[str, Tensor], args: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A RoBERTa-style encoder's keys and encoder_* arguments renamed to the decoder's, so one importer reads
    both; a decoder checkpoint passes through unchanged."""
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        return state, args
    state = {
        ("decoder." + k.removeprefix(ENCODER_PREFIX) if k.startswith(ENCODER_PREFIX) else k): v
        for k, v in state.items()
    }
    args = dict(args)
    for name in ("embed_dim", "layers", "attention_heads", "normalize_before"):
        if f"encoder_{name}" in args:
            args[f"decoder_{name}"] = args.pop(f"encoder_{name}")
    args.setdefault("causal", False)  # the encoder layer's default
    return state, args


def _model_args(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    cfg = checkpoint.get("cfg")
    args = cfg.get("model") if isinstance(cfg, dict) else None
    if args is None:
        args = checkpoint.get("args")  # legacy checkpoints keep a Namespace here
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        raise ValueError(f"{path}: no model arguments found in cfg['model'] or args")
    return dict(args)


def _task_args(checkpoint: dict[str, Any]) -> dict[str, Any]:
    cfg = checkpoint.get("cfg")
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if isinstance(task, argparse.Namespace):
        task = vars(task)
    return task if isinstance(task, dict) else {}


def _resolve_args(args: dict[str, Any], path: Path) -> dict[str, Any]:
    arch = args.get("arch") or args.get("_name")
    if arch in ARCHS and ARCHS[arch] is None:
        raise ValueError(f"{path}: arch {arch!r} (GLUV2 / GtuV3 / project_in_dim) is not supported")
    if arch not in ARCHS:
        logger.warning("%s: unknown arch %r; using cfg values and tnn_v2_decay_99_pre defaults", path, arch)
    resolved = {**_LAYER_DEFAULTS, **_MAIN_ARCH, **(ARCHS.get(arch) or {})}
    resolved.update({k: v for k, v in args.items() if v is not None or k not in resolved})
    return resolved


def _refuse_unsupported(args: dict[str, Any], path: Path) -> None:
    supported = {
        "gtu_type": 2,
        "glu_type": 1,
        "par_type": 1,
        "norm_type": "simplermsnorm",
        "final_layernorm": "layernorm",
        "adaptive_input": False,
        "adaptive_softmax_cutoff": None,
        "share_decoder_input_output_embed": True,
    }
    for key, value in supported.items():
        if args.get(key) != value:
            raise ValueError(f"{path}: cfg['model'][{key!r}] = {args.get(key)!r} is not supported (only {value!r})")
    if str(args.get("fina_act")).lower() != "none":
        raise ValueError(f"{path}: cfg['model']['fina_act'] = {args['fina_act']!r} is not supported (only 'None')")


def _shape(state: dict[str, Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise ValueError(f"{path}: missing key {key!r}")
    return tuple(state[key].shape)


def _activation_name(name: Any) -> str:
    """The original maps any unknown name (e.g. 'None') to identity."""
    return name if name in ACTIVATIONS else "none"


def _operator(args: dict[str, Any], path: Path) -> str:
    operator = _OPERATORS.get(str(args["tno_type"]))
    if operator is None:
        raise ValueError(
            f"{path}: cfg['model']['tno_type'] = {args['tno_type']!r} is not supported (only {sorted(_OPERATORS)})"
        )
    return operator


def _mixer_sizes(state: dict[str, Tensor], operator: str, args: dict[str, Any], path: Path) -> dict[str, Any]:
    """The token mixer's sizes from the tensors: RPE width and depth (TNN, FD) or SKI rank and taps."""
    prefix = "decoder.layers.0.self_attn.gtu.toep."
    if operator == "ski":
        rank = _shape(state, prefix + "alphas", path)[-1]
        columns = _shape(state, prefix + "conv_kernel", path)[1]
        taps = columns if not args["causal"] else 2 * columns - 1  # a causal model keeps taps//2 + 1
        nk = int(args["nk"]) + 1 - int(args["nk"]) % 2
        if int(args["rank"]) != rank or nk != taps:
            raise ValueError(f"{path}: cfg rank/nk = {args['rank']}/{args['nk']} but the tensors give {rank}/{taps}")
        return {"ski_rank": rank, "ski_taps": taps}
    rpe_ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"rpe\.layers\.(\d+)\.", k))}
    sizes = {"d_rpe": _shape(state, prefix + "rpe.pos_proj.weight", path)[0], "n_rpe_layers": len(rpe_ids)}
    for arg, found in [("rpe_embedding", sizes["d_rpe"]), ("rpe_layers", sizes["n_rpe_layers"])]:
        if args.get(arg) is not None and int(args[arg]) != found:
            raise ValueError(f"{path}: cfg['model'][{arg!r}] = {args[arg]} but the tensors give {found}")
    return sizes


def _decay(state: dict[str, Tensor], operator: str, args: dict[str, Any], path: Path) -> str:
    """TNN: fixed / learned / none from the cfg; FD-TNN: none; SKI-TNN: fixed (the warp's gamma)."""
    has_gamma = "decoder.layers.0.self_attn.gtu.toep.gamma" in state
    if operator == "tnn":
        decay = "learned" if args["use_multi_decay"] else "fixed" if args["use_decay"] else "none"
    else:
        decay = "none" if operator == "fd" else "fixed"
    if has_gamma != (decay != "none"):
        raise ValueError(
            f"{path}: decay {decay!r} from cfg, but the key 'toep.gamma' is {'present' if has_gamma else 'absent'}"
        )
    return decay


def config_from_fairseq(checkpoint: dict[str, Any], path: Path) -> TnnConfig:
    """Hyperparameters from cfg + arch table, sizes from the tensors (cross-checked)."""
    state, args = encoder_as_decoder(checkpoint["model"], _model_args(checkpoint, path))
    args = _resolve_args(args, path)
    _refuse_unsupported(args, path)
    operator = _operator(args, path)
    vocab_size, d_model = _shape(state, "decoder.embed_tokens.weight", path)
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(r"^decoder\.layers\.(\d+)\.", k))}
    n_layers = max(layer_ids) + 1 if layer_ids else 0
    d_inner = _shape(state, "decoder.layers.0.self_attn.gtu.v_proj.weight", path)[0]
    d_glu = _shape(state, "decoder.layers.0.glu.l1.weight", path)[0]
    for arg, found in [("decoder_embed_dim", d_model), ("decoder_layers", n_layers), ("glu_dim", d_glu)]:
        stated = args.get(arg)
        if stated is not None and int(stated) != found:
            raise ValueError(f"{path}: cfg['model'][{arg!r}] = {stated} but the tensors give {found}")
    mixer = _mixer_sizes(state, operator, args, path)
    decay = _decay(state, operator, args, path)
    version = state.get("decoder.version")
    version_value = float(version.flatten()[0]) if isinstance(version, Tensor) and version.numel() else 1.0
    final_norm = bool(args["decoder_normalize_before"]) and not args["no_decoder_final_norm"]
    if version_value <= 2 and final_norm:
        logger.warning(
            "%s: decoder.version %.1f <= 2: fairseq drops the final layer norm, so do we", path, version_value
        )
        final_norm = False

    heads = int(args["decoder_attention_heads"])
    expand_ratio = float(args["expand_ratio"])
    if int(expand_ratio * d_model) // heads * heads != d_inner:
        expand_ratio = d_inner / d_model
    task = _task_args(checkpoint)
    train_length = task.get("tokens_per_sample") or args.get("tokens_per_sample")
    padding_idx = 1 if vocab_size > 1 else None
    gamma = state.get("decoder.layers.0.self_attn.gtu.toep.gamma")
    return TnnConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=heads,
        expand_ratio=expand_ratio,
        d_glu=d_glu,
        rpe_act=_activation_name(args["rpe_act"]),
        rpe_residual=bool(args["residual"]),
        causal=bool(args["causal"]),
        operator=operator,
        decay=decay,
        gamma=float(gamma.flatten()[0]) if operator == "ski" and gamma is not None else float(args["gamma"]),
        kernel_act=_activation_name(args["act_type"]),
        normalize=bool(args["normalize"]),
        gtu_act=_activation_name(args["act_fun"]),
        gtu_norm=bool(args["use_norm"]),
        glu_act=_activation_name(args["glu_act"]),
        norm_position="pre" if args["decoder_normalize_before"] else "post",
        final_norm=final_norm,
        embed_norm="decoder.layernorm_embedding.weight" in state,
        mlm_head="encoder.lm_head.dense.weight" in state,
        scale_embedding=not args["no_scale_embedding"],
        bias=bool(args["bias"]),
        padding_idx=padding_idx,
        dropout=float(args["dropout"]),
        train_length=int(train_length) if train_length else 512,
        **mixer,
    )


def native_key(key: str) -> str | None:
    """The native name of a fairseq-evo state-dict key, or None if it is not a TNN LM parameter."""
    return _rename(key, _TO_NATIVE)


def fairseq_key(native: str) -> str:
    """The fairseq-evo name of a native parameter (decoder layout; KeyError if it has none): the inverse of
    `native_key`, from the same table, for writing checkpoints in fairseq's layout."""
    key = _rename(native, _TO_FAIRSEQ)
    if key is None:
        raise KeyError(native)
    return key


def native_state_from_fairseq(state: dict[str, Tensor], config: TnnConfig, path: Path) -> dict[str, Tensor]:
    """Rename keys; reshape gamma (h, 1, e) -> (h*e,) head-major; check the tied output projection."""
    native: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key in _IGNORED_KEYS:
            continue
        if not config.final_norm and key.startswith("decoder.layer_norm."):
            continue  # dropped by fairseq's version upgrade
        name = native_key(key)
        if name is None:
            raise ValueError(f"{path}: unexpected key {key!r} {tuple(tensor.shape)} in the checkpoint")
        if name.endswith("tno.gamma") and config.operator == "tnn":
            expected = (config.n_heads, 1, config.d_head)
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{path}: key {key!r} has shape {tuple(tensor.shape)}, expected {expected}")
            tensor = tensor.reshape(-1)
        native[name] = tensor
    embed = state["decoder.embed_tokens.weight"]
    for key in ("decoder.output_projection.weight", "encoder.lm_head.weight"):
        tied = state.get(key)
        if tied is not None and (tied.shape != embed.shape or not torch.equal(tied, embed)):
            raise ValueError(
                f"{path}: {key!r} differs from the token embedding; only tied output projections are supported"
            )
    return native


def load_fairseq(path: str | Path) -> tuple[TnnConfig, dict[str, Tensor]]:
    """(config, native state dict) from an original fairseq-evo checkpoint."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    config = config_from_fairseq(checkpoint, path)
    state, _ = encoder_as_decoder(checkpoint["model"], {})
    return config, native_state_from_fairseq(state, config, path)
