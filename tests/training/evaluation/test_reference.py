import torch

from training.evaluation.reference import class_ordered


def test_class_ordered_grid_indices():
    labels = torch.tensor([2, 0, 0, 1, 2, 1])
    assert class_ordered(labels, 5, 3).tolist() == [1, 3, 0, 2, 5]
    assert class_ordered(labels, 3, 0).tolist() == [0, 1, 2]
