"""Training: the run (`run.train`), the loop (`loop.Trainer`), the step, the objective, tf.distribute, memory
planning, optimizers, schedules, checkpoints, validation and the NaN message."""
