"""fedclip: synthetic-data retinal CLIP models, federated DP fine-tuning and privacy audits."""

__version__ = "0.1.0"
