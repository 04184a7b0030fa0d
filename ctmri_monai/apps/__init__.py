"""The apps on top: the `ctmri` command, the demo, the paper reproduction, benchmarks and previews."""
