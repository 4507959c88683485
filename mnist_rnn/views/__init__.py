"""The views: TensorBoard dashboards of a run and of how the network reads."""
