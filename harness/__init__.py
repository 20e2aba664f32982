"""An ablation harness for image classification: tricks as toggles, one training loop, MLflow."""

__version__ = "0.1.0"
