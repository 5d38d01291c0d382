"""Training objectives and their samplers; pick one by name from :data:`METHODS`."""

from purrception.flows.base import METHODS, FlowMethod, LossOutput, Snap, get_method, register_method
from purrception.flows.cfm import CFM
from purrception.flows.cfm_endpoint import CFMEndpoint
from purrception.flows.dfm import DFM
from purrception.flows.purrception import Purrception

__all__ = ["METHODS", "FlowMethod", "LossOutput", "Snap", "get_method", "register_method", "Purrception",
           "CFM", "CFMEndpoint", "DFM"]
