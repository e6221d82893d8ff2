"""Language-model scoring with torch/transformers: offline model resolution, scorers,
batching. The only place torch is imported, and only when a model is loaded."""
