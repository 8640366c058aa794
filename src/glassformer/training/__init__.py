"""The one training loop every model kind uses, its learning-rate schedules and run directories."""
