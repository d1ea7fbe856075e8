"""kdbench's distillation methods, one module each; every module registers its method on import."""
