"""The paper's analyses of task vectors: weight disentanglement (Fig. 3) and NTK eigenfunction
localization (Fig. 6). The random-init ablation (Table 3) is a pipeline stage."""

from .disentanglement import disentanglement_error, disentanglement_grid, mean_xi, plot_disentanglement
from .ntk import empirical_ntk, ntk_localization, plot_ntk_localization

__all__ = [
    "disentanglement_error",
    "disentanglement_grid",
    "empirical_ntk",
    "mean_xi",
    "ntk_localization",
    "plot_disentanglement",
    "plot_ntk_localization",
]
