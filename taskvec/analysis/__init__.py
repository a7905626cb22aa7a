"""The paper's analyses of task vectors."""
from .disentanglement import disentanglement_error, disentanglement_grid, plot_disentanglement

__all__ = ["disentanglement_error", "disentanglement_grid", "plot_disentanglement"]
