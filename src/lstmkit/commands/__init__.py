"""The CLI's commands: each takes the composed Hydra config and does one job."""
