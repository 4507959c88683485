"""The run machinery: run folders, checkpoints, resume, stopping, progress, hardware and the Trainer's settings."""
