"""``armlab bench ...``: each benchmark prints its figure with a same-run baseline."""
