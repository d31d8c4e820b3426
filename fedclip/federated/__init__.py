"""Federated fine-tuning across hospitals: Flower apps, DP client training, privacy ledgers, strategies."""
