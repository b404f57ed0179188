"""tnn.model: the TNN family in PyTorch, its ETSC recurrent form, sampling and the model directory."""

from tnn.model.config import SsmConfig, TnnConfig
from tnn.model.conversion import attach_ssm
from tnn.model.loading import load, save_model
from tnn.model.tnn import TnnLM, TnnState

__all__ = ["SsmConfig", "TnnConfig", "TnnLM", "TnnState", "attach_ssm", "load", "save_model"]
