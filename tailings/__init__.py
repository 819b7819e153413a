"""The `tailings` command line: the top of the stack, wiring data, components, pipeline, serving."""
