"""tnn.model: the TNN family in PyTorch, its ETSC recurrent form, sampling and the model directory."""

from tnn.model.config import SsmConfig, TnnConfig
from tnn.model.conversion import attach_ssm
from tnn.model.default import default_model_dir
from tnn.model.loading import load, save_model
from tnn.model.tnn import TnnLM, TnnState

__all__ = ["SsmConfig", "TnnConfig", "TnnLM", "TnnState", "attach_ssm", "default_model_dir", "load", "save_model"]
