"""onestep training: EDM teacher pre-training, D2O one-step fine-tuning, evaluation."""
