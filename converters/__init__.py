"""One package per model family; the harness discovers them by folder name."""
