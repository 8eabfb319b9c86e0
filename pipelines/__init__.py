"""kdl pipelines: recipes -> stages (train, export, ...) -> run directory + MLflow."""
