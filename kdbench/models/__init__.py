"""Model zoo: registered architectures, the dense-representation protocol, weights, complexity.

Every zoo model has `features(x) -> (N, D)`, `classifier` and `forward == classifier(features)`;
conv models add `feature_map(x)`. `dense_view` extends the protocol to any module."""
from . import cifar_resnet, paper, plain, students  # noqa: F401  (registration side effects)
from .budget import PAPER_BUDGETS, Budget, budget_student
from .complexity import count_macs, count_params
from .dense import DenseView, dense_view
from .placement import memory_format_name, place
from .protocol import NORMALIZATIONS, StagedNet, ZooModel
from .weights import load_weights, read_state_dict
from .zoo import MODELS, create_model, list_models, register_model

__all__ = [
    "MODELS",
    "NORMALIZATIONS",
    "PAPER_BUDGETS",
    "Budget",
    "DenseView",
    "StagedNet",
    "ZooModel",
    "budget_student",
    "count_macs",
    "count_params",
    "create_model",
    "dense_view",
    "list_models",
    "load_weights",
    "memory_format_name",
    "place",
    "read_state_dict",
    "register_model",
]
