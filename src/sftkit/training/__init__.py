"""Fine-tuning: the loss, the loop, schedules, checkpoints, metrics and plots."""
