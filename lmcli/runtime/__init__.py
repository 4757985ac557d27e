"""What every command runs on: errors and exit codes, atomic file writes, progress, signals, the run dir's lock and
pending files, the metrics log, the watchdog, TensorFlow's setup."""
