"""Self-knowledge distillation with adaptive mixed attention, and the deployment pipeline."""

__version__ = "0.1.0"
