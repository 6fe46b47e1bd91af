"""Other routes to a small model: structured pruning and low-bit weights, repaired by BatchNorm
re-estimation on unlabeled images (He & Cheng, ECCV 2018)."""
