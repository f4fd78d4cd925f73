"""nsmagic's start-up benchmark: developer tooling of the source checkout, not in the package."""
