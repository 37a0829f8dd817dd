"""ddattn: dataset distillation with attention labels for fine-tuning BERT (Maekawa et al., ACL 2023)."""

__version__ = "0.1.0"
