"""The commands behind `trackd COMMAND` that are more than starting the pipeline."""
