"""The `labeler` command line: training, explaining, and (later) Label Studio project tooling."""
