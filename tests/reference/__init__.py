"""A reference runtime for security tests: the same probe under runc with Docker's defaults."""
