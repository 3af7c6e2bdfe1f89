"""fabricsim: the command-line front door. The models live in `hwmodels`, `simcore`, `kernels` and `validate`."""

__version__ = "0.1.0"
