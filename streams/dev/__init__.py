"""Development tools: local brokers, the simulator of firms and checkpoints, the demo, and a log
generator for the bench."""
