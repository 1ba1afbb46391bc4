"""Fine-tuning: the loop (`loop`), the step strategies beside it (`steps`: plain, in-backward),
the loss (`loss`: the fused head), the optimizer (`optim`), schedules, checkpoints, Ctrl-C
between steps (`interrupts`), metrics and plots."""
