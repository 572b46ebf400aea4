"""``fraud-detection-v3``: a small MLP trained by mini-batch SGD in plain numpy.

30 inputs → 64 → 32 → 1, ReLU, sigmoid output, class-weighted binary cross-entropy. Weights are
initialised from a generator the caller passes (the experiment's ``("model", "init")`` draw).
"""

from __future__ import annotations

import numpy as np

MODEL_NAME = "fraud-detection-v3"
HIDDEN = (64, 32)


class FraudMLP:
    """The model: its weights as a map of float32 arrays, a training step and predictions."""

    def __init__(self, inputs: int, rng: np.random.Generator, hidden: tuple[int, ...] = HIDDEN
                 ) -> None:
        sizes = (inputs, *hidden, 1)
        self.weights: dict[str, np.ndarray] = {}
        for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            scale = np.sqrt(2.0 / fan_in)
            self.weights[f"w{layer}"] = (rng.standard_normal((fan_in, fan_out)) * scale
                                         ).astype(np.float32)
            self.weights[f"b{layer}"] = np.zeros(fan_out, dtype=np.float32)
        self.layers = len(sizes) - 1

    def _forward(self, x: np.ndarray) -> list[np.ndarray]:
        activations = [x]
        for layer in range(1, self.layers + 1):
            z = activations[-1] @ self.weights[f"w{layer}"] + self.weights[f"b{layer}"]
            activations.append(np.maximum(z, 0) if layer < self.layers else z)
        return activations

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (logits), one per sample."""
        return self._forward(x)[-1][:, 0]

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, pos_weight: float) -> float:
        """One SGD step on a batch; returns the batch's weighted cross-entropy."""
        activations = self._forward(x)
        logits = activations[-1][:, 0]
        target = y.astype(np.float32)
        weight = np.where(target > 0, np.float32(pos_weight), np.float32(1.0))
        probability = 1.0 / (1.0 + np.exp(-logits))
        loss = float(np.mean(weight * (np.logaddexp(0, logits) - target * logits)))
        delta = ((probability - target) * weight / len(x))[:, None].astype(np.float32)
        for layer in range(self.layers, 0, -1):
            below = activations[layer - 1]
            grad_w = below.T @ delta
            grad_b = delta.sum(axis=0)
            if layer > 1:
                delta = (delta @ self.weights[f"w{layer}"].T) * (below > 0)
            self.weights[f"w{layer}"] -= np.float32(lr) * grad_w
            self.weights[f"b{layer}"] -= np.float32(lr) * grad_b
        return loss


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
