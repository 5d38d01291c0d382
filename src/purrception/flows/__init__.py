"""Training objectives and their samplers; pick one by name from :data:`METHODS`."""

from purrception.flows.base import METHODS, FlowMethod, LossOutput, SamplerSettings, get_method, register_method
from purrception.flows.purrception import Purrception

__all__ = ["METHODS", "FlowMethod", "LossOutput", "SamplerSettings", "get_method", "register_method", "Purrception"]
