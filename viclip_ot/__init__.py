"""Training-side library of ViCLIP-OT: losses, metrics, data collation, the SIGROT trainer."""
