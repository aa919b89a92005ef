"""The `labeler` command line: training, explaining, and Label Studio project tooling
(init, import, prelabel, sync, export, stats)."""
