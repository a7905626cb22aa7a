"""taskvec: task arithmetic in weight space and in the tangent space.

    import taskvec as tv
    base = tv.build_backbone("effnet-lite0")
    mnist = tv.setup_task(base, "mnist")
    tau = tv.finetune_task(base, mnist, mode="linear", steps=150, lr=3e-4)
    print(mnist.accuracy(tau.apply_to(base)))
    multi = tv.merge([tau, other_tau], method="ties", k=0.2)   # a merged direction d; θ0 + α·d
"""
from .api import TaskSetup, finetune_task, setup_task
from .errors import TaskvecError
from .kinds import EVAL_METHODS, FINETUNE_MODES
from .linearize import LinearizedBackbone, linearize
from .merging import MERGE_METHODS, merge
from .models import available_backbones, build_backbone
from .task_vector import TaskVector, sum_vectors
from .tasks import available_tasks, get_task, load_task_data
from .train import TrainConfig, finetune

__version__ = "0.1.0"

__all__ = [
    "EVAL_METHODS", "FINETUNE_MODES", "MERGE_METHODS", "merge", "LinearizedBackbone", "TaskSetup", "TaskVector", "TaskvecError", "TrainConfig", "available_backbones",
    "available_tasks", "build_backbone", "finetune", "finetune_task", "get_task", "linearize", "load_task_data",
    "setup_task", "sum_vectors",
]
