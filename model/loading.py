"""The model directory: config.json + model.safetensors (+ ssm.safetensors, tokenizer files). No pickle anywhere.

`load(path)` also takes an original fairseq `.pt` (tnn.model.fairseq).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from tnn.model.config import TnnConfig
from tnn.model.fairseq import load_fairseq
from tnn.model.ssm import ModalParams, SsmParams, UnstablePole, require_stable
from tnn.model.tnn import TnnLM
from tnn.model.toeplitz import fft_dtype

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SSM_FILE = "ssm.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
HELD_OUT_FILE = "held_out.txt"  # a slice of held-out text: `tnn convert` measures the conversion's fidelity on it
# what else a model directory may hold that a conversion carries over unchanged: request defaults (read by the
# server), the training record (provenance) and the held-out text
COMPANION_FILES = ("generation_config.json", "training.json", HELD_OUT_FILE)


def load(path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TnnLM:
    """A TnnLM in eval mode from a model directory or an original fairseq checkpoint (.pt).

    dtype: the weights' dtype (default float32). The recurrent state is float64 for float64, float32 else.
    """
    path = Path(path)
    if path.is_dir():
        config = TnnConfig.load(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else None
        if config is None:
            raise FileNotFoundError(f"{path}: not a model directory (no {CONFIG_FILE})")
        state = _read_safetensors(path / WEIGHTS_FILE)
        source = path / WEIGHTS_FILE
    elif path.is_file():
        config, state = load_fairseq(path)
        source = path
    else:
        raise FileNotFoundError(f"{path}: no such model directory or checkpoint file")
    model = build_model(config, state, source=source, device=device, dtype=dtype or torch.float32)
    if config.ssm is not None:
        ssm_path = path / SSM_FILE
        if not ssm_path.exists():
            raise FileNotFoundError(f"{ssm_path}: config.json declares an SSM conversion but the file is missing")
        attach_ssm_file(model, ssm_path)
    return model


def build_model(
    config: TnnConfig,
    state: dict[str, Tensor],
    *,
    source: Path,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> TnnLM:
    """Instantiate on the meta device and assign `state` after a strict key and shape check."""
    with torch.device("meta"):
        model = TnnLM(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(
            f"{source}: missing key {missing[0]!r} (shape {tuple(expected[missing[0]].shape)})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    if unexpected:
        raise ValueError(
            f"{source}: unexpected key {unexpected[0]!r} (shape {tuple(state[unexpected[0]].shape)})"
            + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
        if not state[key].is_floating_point():
            raise ValueError(f"{source}: key {key!r} has dtype {state[key].dtype}, expected a floating point tensor")
        require_finite(state[key], key, source)
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)  # keeps requires_grad=False on the fixed gamma
    return model.eval()


def require_finite(tensor: Tensor, key: str, source: Path) -> None:
    """A NaN or inf weight poisons every logit: refuse the file, naming the tensor and its layer."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        parts = key.split(".")
        layer = f" (layer {parts[1]})" if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit() else ""
        raise ValueError(
            f"{source}: key {key!r}{layer} has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) "
            f"of {tensor.numel()}"
        )


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from exc


def save_model(model: TnnLM, directory: str | Path, *, tokenizer_dir: str | Path | None = None) -> None:
    """Write config.json, model.safetensors, ssm.safetensors (if converted) and tokenizer files (if given)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    if model.is_converted:
        save_ssm(model, directory / SSM_FILE)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), directory)


def copy_tokenizer(source: Path, destination: Path) -> bool:
    """Copy the Hugging Face tokenizer files found in `source`; False if there is no tokenizer.json."""
    if not (source / "tokenizer.json").exists():
        return False
    _copy_present(source, destination, TOKENIZER_FILES)
    return True


def copy_companions(source: Path, destination: Path) -> list[str]:
    """Copy the COMPANION_FILES found in `source`; their names."""
    return _copy_present(source, destination, COMPANION_FILES)


def _copy_present(source: Path, destination: Path, names: tuple[str, ...]) -> list[str]:
    """Copy those of `names` that are files in `source` (nothing to do when it is `destination`); their names."""
    present = [name for name in names if (source / name).is_file()]
    if source.resolve() != destination.resolve():
        for name in present:
            (destination / name).write_bytes((source / name).read_bytes())
    return present


def save_ssm(model: TnnLM, path: Path) -> None:
    """Per layer, in float64: poles and weights (real/imag); ETSC adds mode indices, kernel period and decay,
    the reduced method its FIR taps ("fir", (h, D))."""
    tensors: dict[str, Tensor] = {}
    for i, layer in enumerate(model.layers):
        params = layer.gtu.tno.ssm
        assert params is not None  # is_converted checked by the caller
        require_stable(params.poles, f"layer {i}")  # never write an unstable pole
        prefix = f"layers.{i}."
        tensors[prefix + "poles.real"] = params.poles.real.double()
        tensors[prefix + "poles.imag"] = params.poles.imag.double()
        tensors[prefix + "weights.real"] = params.weights.real.double()
        tensors[prefix + "weights.imag"] = params.weights.imag.double()
        if isinstance(params, SsmParams):
            tensors[prefix + "modes"] = params.modes.long()
            tensors[prefix + "period"] = params.period.double()
            tensors[prefix + "decay"] = params.decay.double()
        else:
            tensors[prefix + "fir"] = params.fir.double()
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def attach_ssm_file(model: TnnLM, path: Path) -> None:
    """Load ssm.safetensors onto the model's Tno modules, in the model's compute precision.

    Checks every key's presence and shape against config.json and refuses a pole with |lambda| >= 1,
    naming the file and the key."""
    tensors = _read_safetensors(path)
    for key, tensor in tensors.items():
        require_finite(tensor, key, path)
    real_dtype = fft_dtype(model.dtype)
    ssm = model.config.ssm
    assert ssm is not None
    channels = model.config.d_inner
    for i, (layer, modes) in enumerate(zip(model.layers, ssm.layer_modes(len(model.layers)), strict=True)):
        prefix = f"layers.{i}."

        def get(name: str, shape: tuple[int, ...] | None, prefix: str = prefix) -> Tensor:
            key = prefix + name
            if key not in tensors:
                raise ValueError(f"{path}: missing key {key!r}")
            if shape is not None and tuple(tensors[key].shape) != shape:
                raise ValueError(f"{path}: key {key!r} has shape {tuple(tensors[key].shape)}, expected {shape}")
            return tensors[key]

        expected = (modes, channels)
        poles = torch.complex(get("poles.real", expected).double(), get("poles.imag", expected).double())
        try:
            require_stable(poles, f"{path}: key {prefix + 'poles'!r}")
        except UnstablePole as exc:
            raise ValueError(str(exc)) from exc
        weights = torch.complex(get("weights.real", expected).double(), get("weights.imag", expected).double())
        params: SsmParams | ModalParams
        if ssm.method == "reduced":
            params = ModalParams(poles=poles, weights=weights, fir=get("fir", (ssm.fir_length, channels)).double())
        else:
            params = SsmParams(
                poles=poles,
                weights=weights,
                modes=get("modes", (modes,)),
                period=get("period", None).double(),
                decay=get("decay", (channels,)).double(),
            )
        layer.gtu.tno.ssm = params.to(device=model.device, real_dtype=real_dtype)
