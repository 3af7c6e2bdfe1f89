"""What the hardware is: component specs, topology graphs, presets, topology files and calibration profiles."""

from fabricsim.errors import CalibrationError, FabricsimError, TopologyError

from . import presets
from .calibration import CalibrationProfile, load_profile
from .topology import Path, Topology

__all__ = ["CalibrationError", "CalibrationProfile", "FabricsimError", "Path", "Topology", "TopologyError",
           "load_profile", "presets"]
