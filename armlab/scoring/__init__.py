"""Language-model recommender variants: configs, offline model loading, scorers, batching.

Only this subpackage imports torch/transformers, and only inside functions that load a model;
``armlab.scoring.variants`` stays torch-free so the registry can validate variants cheaply.
"""
