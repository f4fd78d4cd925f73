"""Container lifecycle: spec -> running container -> result -> cleanup."""
