"""fabricsim: how long weights and KV cache take to move across GPU machines and clusters.

One import name, layers you can see (docs/architecture.md):

- `fabricsim.hwmodels`: what the hardware is (specs, topologies, presets, calibration profiles);
- `fabricsim.simcore`: the engine (clock, fluid bandwidth sharing, engines, tasks, memory, records, scenarios,
  the collective cost model);
- `fabricsim.workloads`: what moves and why (models, placement, decode, weight sync, serving, KV policies);
- `fabricsim.harness`: studies, sweeps, the results store and plots;
- `fabricsim.kernels`: Triton kernels and the CUDA-IPC `WeightPool` that really run on GPUs;
- `fabricsim.validate`: measuring GPUs (`validate.gpu`) and fitting/reporting (`validate.fit`);
- `fabricsim.studies`: the bundled studies.

Importing `fabricsim` imports none of them, so `from fabricsim import FabricsimError` stays cheap.
"""

from .errors import FabricsimError

__version__ = "0.1.0"

__all__ = ["FabricsimError", "__version__"]
