"""Slow float64 NumPy oracles for sslit.evaluate (never imports sslit)."""

from __future__ import annotations

import numpy as np


def preprocess(images, mean, std):
  """(images / 255 − mean) / std for uint8, (images − mean) / std for floats."""
  images = np.asarray(images)
  x = images.astype(np.float64)
  if np.issubdtype(images.dtype, np.integer):
    x = x / 255.0
  return (x - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def knn_predict(train_x, train_y, test_x, *, num_classes, k, temperature):
  """Cosine kNN, one query at a time: weights exp(sim/T) over the k most similar.

  Returns ``(top1 [m], votes [m, C])``; ties in the vote go to the smallest class.
  """
  train_x = np.asarray(train_x, np.float64)
  test_x = np.asarray(test_x, np.float64)
  train_y = np.asarray(train_y)
  preds, all_votes = [], []
  for q in test_x:
    sims = []
    for j, t in enumerate(train_x):
      sims.append((float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)), j))
    # Most similar first; equal similarities: the smaller training index first.
    sims.sort(key=lambda s: (-s[0], s[1]))
    votes = np.zeros(num_classes)
    for sim, j in sims[:k]:
      votes[train_y[j]] += np.exp(sim / temperature)
    preds.append(int(np.argmax(votes)))
    all_votes.append(votes)
  return np.asarray(preds), np.asarray(all_votes)


def batchnorm_batch_stats(h_batches):
  """Example-weighted average over batches of each batch's mean and biased var.

  ``h_batches``: list of ``[b, f]`` BatchNorm inputs. Returns ``(mean [f], var [f])``.
  """
  total = sum(h.shape[0] for h in h_batches)
  mean = sum(h.shape[0] * h.mean(0) for h in h_batches) / total
  var = sum(h.shape[0] * h.var(0) for h in h_batches) / total
  return mean, var
